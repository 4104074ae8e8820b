"""Near-miss analysis (NMA, paper section 3.1): the near-miss matrix and the connection graph's weights.

One dataset pass folds :func:`near_miss_update` over batches of class probabilities; the state holds
device sums, so the pass streams over any number of images. Then

    p = near_miss_matrix(state)            # p[i, j], paper section 3.1 / DESIGN "Near-miss analysis"
    p = label_probability_matrix(state)    # or the paper's p[i, j] literally: all images, all labels
    w = connection_weights(p)              # undirected edge weights, inf = no edge
    d = fill_disconnected(floyd_warshall(w))

gives the shortest-path metric that the hierarchical clustering runs on (section 3.2).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

SYMMETRIZE = ("mean", "max")
MODES = ("probability", "summed", "count")


class NearMissState(NamedTuple):
    """The accumulators of a near-miss pass over ``C`` labels (a pytree: it folds through ``jax.jit``).

    Attributes:
      sums: ``f32[C, C]``, ``sums[i, j] = sum_x P(j | x)`` over the counted images ``x`` of class ``i`` whose
        near misses include ``j``.
      events: ``i32[C, C]``, how many of those images there are.
      counts: ``f32[C]``, ``N_i``, the number of counted images of class ``i``.
      label_sums: ``f32[C, C]``, ``label_sums[i, j] = sum_x P(j | x)`` over *every* (non-padding) image ``x``
        of class ``i``, correctly classified or not, and every label ``j``: the paper's sum, literally.
      label_counts: ``f32[C]``, the number of (non-padding) images of class ``i``.
    """

    sums: jax.Array
    events: jax.Array
    counts: jax.Array
    label_sums: jax.Array
    label_counts: jax.Array


def near_miss_init(num_classes: int) -> NearMissState:
    """The empty accumulators of a near-miss pass over ``num_classes`` labels.

    Args:
      num_classes: ``C``.

    Returns:
      A :class:`NearMissState` of zeros.
    """
    return NearMissState(sums=jnp.zeros((num_classes, num_classes), jnp.float32),
                         events=jnp.zeros((num_classes, num_classes), jnp.int32),
                         counts=jnp.zeros((num_classes,), jnp.float32),
                         label_sums=jnp.zeros((num_classes, num_classes), jnp.float32),
                         label_counts=jnp.zeros((num_classes,), jnp.float32))


@functools.partial(jax.jit, static_argnames=("k",))
def near_miss_update(state: NearMissState, probs: jax.Array, labels: jax.Array, mask: jax.Array, *, k: int = 3,
                     t: float = 1e-6, min_confidence: float = 0.0) -> NearMissState:
    """Adds one batch of classifications to the near-miss accumulators.

    An image counts when it is not padding, is correctly classified (``argmax(probs) == label``, ties
    going to the lower label as in ``argmax``) and its top-1 probability is at least ``min_confidence``.
    Its near misses are the labels ``j != label`` among its top-``k`` probabilities (``lax.top_k``, ties
    to the lower label) with ``P(j | x) >= t``. For each near miss ``sums[label, j] += P(j | x)`` and
    ``events[label, j] += 1``; ``counts[label] += 1`` once per counted image.

    Every non-padding image also adds its whole probability row to ``label_sums[label]`` and 1 to
    ``label_counts[label]`` (the paper's ``p_ij`` taken literally, :func:`label_probability_matrix`).

    Only the ``B * k`` top entries are scattered into the ``[C, C]`` sums, and ``B`` rows into the label
    sums, so a step costs ``O(B * C)`` for the top-k and the rows plus ``O(B * k)`` scattered adds, whatever
    ``C`` (21,841 for ImageNet-21k; the two ``[C, C]`` float sums and the events then take 5.7 GB).

    Args:
      state: accumulators from :func:`near_miss_init` (or a previous update).
      probs: ``f32[B, C]`` class probabilities, one row per image.
      labels: ``i32[B]`` true labels in ``[0, C)``.
      mask: ``bool[B]``, False in padding rows.
      k: how many top labels to look at (static; ``1 <= k < C``, validated by the caller). With ``k = 1``
        a correctly classified image has no near misses and only counts towards ``N_i``.
      t: probability cut-off of a near miss (traced: changing it does not recompile).
      min_confidence: smallest top-1 probability of a counted image (traced).

    Returns:
      The updated state (same structure, shapes and dtypes).
    """
    # The barrier keeps XLA from merging the column-0 slice into top_k's own slice of the sorted rows:
    # with two different slices it falls back from the TopK kernel to a full stable sort (70x slower on CPU).
    top_probs, top_labels = jax.lax.optimization_barrier(jax.lax.top_k(probs, k))
    counted = mask & (top_labels[:, 0] == labels) & (top_probs[:, 0] >= min_confidence)
    near = counted[:, None] & (top_labels != labels[:, None]) & (top_probs >= t)
    rows = jnp.broadcast_to(labels[:, None], top_labels.shape)
    sums = state.sums.at[rows, top_labels].add(jnp.where(near, top_probs, 0).astype(state.sums.dtype))
    events = state.events.at[rows, top_labels].add(near.astype(state.events.dtype))
    counts = state.counts.at[labels].add(counted.astype(state.counts.dtype))
    # Padding rows go to a label past the end, which the scatter drops: the rows are scattered as given, with
    # no masked [B, C] copy (341 MiB at B = 4,096, C = 21,841).
    num_classes = state.label_sums.shape[0]
    image_labels = jnp.where(mask, labels, num_classes)
    label_sums = state.label_sums.at[image_labels].add(probs.astype(state.label_sums.dtype), mode="drop")
    label_counts = state.label_counts.at[image_labels].add(jnp.ones_like(labels, state.label_counts.dtype),
                                                           mode="drop")
    return NearMissState(sums=sums, events=events, counts=counts, label_sums=label_sums, label_counts=label_counts)


@jax.jit
def near_miss_matrix(state: NearMissState) -> jax.Array:
    """The near-miss probabilities ``p[i, j] = (1 / N_i) * sum_x P(j | x) [j is a near miss of x]``.

    The sum runs over the counted images ``x`` of class ``i`` (paper section 3.1; DESIGN "Near-miss
    analysis"), ``N_i`` is their number.

    Args:
      state: accumulators after a pass of :func:`near_miss_update`.

    Returns:
      ``f32[C, C]``; rows of labels without counted images are all 0.
    """
    counts = state.counts[:, None]
    return jnp.where(counts > 0, state.sums / jnp.where(counts > 0, counts, 1), 0)


@jax.jit
def label_probability_matrix(state: NearMissState) -> jax.Array:
    """The paper's ``p[i, j] = (1 / N_i) * sum_x P(j | x)`` literally (section 3.1): the sum runs over all
    ``N_i`` images ``x`` of label ``i``, correctly classified or not, for every label ``j != i``.

    Args:
      state: accumulators after a pass of :func:`near_miss_update`.

    Returns:
      ``f32[C, C]`` with a zero diagonal (a label is not its own near miss); rows of labels without images are
      all 0.
    """
    counts = state.label_counts[:, None]
    p = jnp.where(counts > 0, state.label_sums / jnp.where(counts > 0, counts, 1), 0)
    return jnp.where(jnp.eye(p.shape[0], dtype=bool), 0, p)


@functools.partial(jax.jit, static_argnames=("symmetrize", "mode"))
def connection_weights(p: jax.Array, events: jax.Array | None = None, *, t: float = 1e-6,
                       symmetrize: str = "mean", mode: str = "probability") -> jax.Array:
    """Edge weights of the undirected connections graph (paper section 3.1); ``inf`` means no edge.

    With ``s = (p + p.T) / 2`` (``symmetrize="mean"``) or ``s = max(p, p.T)`` (``"max"``):

    - ``mode="probability"`` (the paper's and DESIGN's default): ``w[i, j] = 1 - s[i, j]`` if
      ``s[i, j] >= t``, else ``inf`` — the paper's ``w = 1 - p_ij`` made symmetric.
    - ``mode="summed"``: ``w[i, j] = (1 - p[i, j]) + (1 - p[j, i])`` if ``s[i, j] >= t``, else ``inf`` —
      the dissimilarities of both directions added (the reference package's summed weights).
    - ``mode="count"``: with ``n = events + events.T`` (near-miss events in either direction),
      ``w[i, j] = 1 / n[i, j]`` if ``n[i, j] > 0``, else ``inf`` — more events, closer labels;
      ``symmetrize`` and ``t`` play no part.

    The diagonal is 0 in every mode.

    Args:
      p: ``f32[C, C]`` near-miss matrix from :func:`near_miss_matrix`.
      events: ``i32[C, C]`` event counts (``state.events``); required by ``mode="count"``.
      t: smallest symmetrised probability that makes an edge.
      symmetrize: ``"mean"`` or ``"max"``.
      mode: ``"probability"``, ``"summed"`` or ``"count"``.

    Returns:
      ``[C, C]`` symmetric weights, dtype of ``p``.

    Raises:
      ValueError: an unknown ``symmetrize`` or ``mode``, or ``mode="count"`` without ``events``.
    """
    if symmetrize not in SYMMETRIZE:
        raise ValueError(f"unknown symmetrize {symmetrize!r}; valid: {', '.join(SYMMETRIZE)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    p = jnp.asarray(p)
    dtype = p.dtype if jnp.issubdtype(p.dtype, jnp.floating) else jnp.float32
    p = p.astype(dtype)
    if mode == "count":
        if events is None:
            raise ValueError("mode 'count' needs the event counts (state.events)")
        n = (events + events.T).astype(dtype)
        w = jnp.where(n > 0, 1 / jnp.where(n > 0, n, 1), jnp.inf)
    else:
        s = (p + p.T) / 2 if symmetrize == "mean" else jnp.maximum(p, p.T)
        dissimilarity = 1 - s if mode == "probability" else (1 - p) + (1 - p.T)
        w = jnp.where(s >= t, dissimilarity, jnp.inf)
    return jnp.where(jnp.eye(p.shape[0], dtype=bool), 0, w).astype(dtype)


@jax.jit
def fill_disconnected(d: jax.Array) -> jax.Array:
    """Gives disconnected pairs (``+inf`` shortest paths) twice the largest finite off-diagonal distance.

    So that the clustering, which needs finite distances, merges separate components last (DESIGN
    "Near-miss analysis"). When no off-diagonal distance is finite (no edges at all) the pairs get
    1.0 instead, so every label merges at the same height.

    Args:
      d: ``[C, C]`` shortest-path distances (``floyd_warshall``'s output).

    Returns:
      ``d`` with every ``+inf`` replaced; finite entries unchanged.
    """
    off_diagonal = ~jnp.eye(d.shape[0], dtype=bool)
    finite = jnp.isfinite(d) & off_diagonal
    largest = jnp.max(jnp.where(finite, d, -jnp.inf), initial=-jnp.inf)
    fill = jnp.where(jnp.any(finite), 2 * largest, 1).astype(d.dtype)
    return jnp.where(jnp.isposinf(d), fill, d)
