"""WWW kernels (Ahn, Kim and Kim, CVPR 2024; ``../shared/papers/www_what_where_why.txt``): what, where, why.

Every function is a pure map over whole arrays: all neurons, all concepts and all images of a batch at once.

- What: a streamed top-n buffer of each neuron's most activating probe images (no activation matrix is ever
  stored), the adaptive cosine score of eq. 1 for all neurons in one matrix product, and the adaptive
  selection of eq. 2 (major concepts on whole images, minor concepts on crops around each neuron's peak).
- Where/why: Taylor-Shapley contributions ``w_u = a_u * d f_c / d a_u`` (eq. 3) through one ``jax.vjp`` for a
  batch, class-wise mean contributions by segment sums (section 3.4), top-k neurons, concept maps and the
  overall heatmap of eq. 4 (weights normalised as in the authors' code).
- Trust: cosine similarity of the sample and class heatmaps; the rejection curve and AUROC for catching
  mispredictions.
- Baseline and metrics: CLIP-Dissect's soft-WPMI; hit rate, precision/recall/F1 and pair cosines of the selected
  concepts against the label of a final-layer neuron.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from xai_jax.kernels.platform import platform_of


def l2_normalise(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / max(|x|, 1e-12)`` along ``axis``: unit vectors for the cosines, a zero vector stays zero.

    Args:
      x: embeddings, any shape.
      axis: the axis of the vectors.

    Returns:
      ``x`` with each vector scaled to unit L2 norm.
    """
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@jax.jit
def neuron_activations(activations: jax.Array) -> jax.Array:
    """One scalar per neuron and image: conv taps ``[B, H, W, U]`` are averaged over space, ``[B, U]`` is kept.

    Args:
      activations: ``[B, U]`` or ``[B, H, W, U]``.

    Returns:
      ``[B, U]``.
    """
    if activations.ndim == 4:
        return jnp.mean(activations, axis=(1, 2))
    if activations.ndim != 2:
        raise ValueError(f"activations must be [B, U] or [B, H, W, U]; got shape {activations.shape}")
    return activations


# --- what: the probe pass ------------------------------------------------------------------------------------

class TopNState(NamedTuple):
    """Each neuron's ``n`` most activating images so far (the D_rep of section 3.2), a pytree.

    Attributes:
      values: ``f32[n, U]``, per neuron (column) its largest activations in descending order, ``-inf`` while
        fewer than ``n`` images have been seen.
      indices: ``i32[n, U]``, the dataset position of each value, ``-1`` for an empty slot.
    """

    values: jax.Array
    indices: jax.Array


def topn_init(num_neurons: int, n: int) -> TopNState:
    """An empty top-n buffer: ``values`` ``[n, U]`` at -inf and ``indices`` ``[n, U]`` at -1.

    Args:
      num_neurons: ``U``.
      n: images kept per neuron.

    Returns:
      A :class:`TopNState`.
    """
    return TopNState(values=jnp.full((n, num_neurons), -jnp.inf, jnp.float32),
                     indices=jnp.full((n, num_neurons), -1, jnp.int32))


@jax.jit
def topn_update(state: TopNState, activations: jax.Array, index: jax.Array, mask: jax.Array) -> TopNState:
    """Merges a batch into each neuron's top-n buffer (the D_rep of section 3.2, streamed).

    Args:
      state: from :func:`topn_init` or a previous update.
      activations: ``[B, U]`` (or ``[B, H, W, U]``, averaged over space) activations of the batch.
      index: ``[B]`` dataset positions of the batch's images.
      mask: ``[B]`` bool, False on padding rows (they never enter the buffer).

    Returns:
      The new state: per neuron the n largest activations seen so far, in descending order, with the dataset
      position of each; ties keep the image seen first (the buffer precedes the batch).
    """
    n = state.values.shape[0]
    acts = jnp.where(mask[:, None], neuron_activations(activations).astype(jnp.float32), -jnp.inf)
    values = jnp.concatenate([state.values, acts], axis=0)                     # [n + B, U]
    indices = jnp.concatenate([state.indices,
                               jnp.broadcast_to(index.astype(jnp.int32)[:, None], acts.shape)], axis=0)
    top_values, rows = jax.lax.top_k(values.T, n)                               # [U, n]
    top_indices = jnp.take_along_axis(indices.T, rows, axis=1)
    return TopNState(values=top_values.T, indices=top_indices.T)


# --- what: adaptive cosine similarity and adaptive selection -------------------------------------------------

@jax.jit
def mean_image_embeddings(image_embeddings: jax.Array, topn_indices: jax.Array) -> jax.Array:
    """Per neuron, the mean of its top-n images' L2-normalised CLIP image embeddings.

    Args:
      image_embeddings: ``[P, D]`` embeddings of the probe images (any norm).
      topn_indices: ``[n, U]`` probe positions of each neuron's top-n images (from :func:`topn_update`).

    Returns:
      ``[U, D]``: ``(1/n) sum_o v_o / |v_o|``. Because the cosine is linear in the normalised image embedding,
      ``mean_o cos(v_o, t) = mean_image_embedding . t / |t|`` — eq. 1 becomes one matrix product.
    """
    v = l2_normalise(image_embeddings.astype(jnp.float32))
    return jnp.mean(v[topn_indices], axis=0)


@jax.jit
def cosine_scores(neuron_embeddings: jax.Array, concept_embeddings: jax.Array) -> jax.Array:
    """Plain cosine scores (Table 5's rows without ACS): ``s_j = (1/n) sum_o cos(v_o, t_j)``.

    Args:
      neuron_embeddings: ``[U, D]`` from :func:`mean_image_embeddings`, or ``[U, n, D]`` raw embeddings of each
        neuron's own n images, normalised and averaged here.
      concept_embeddings: ``[M, D]`` CLIP text embeddings of the concepts (prompted or bare words).

    Returns:
      ``[U, M]`` mean cosine similarities.
    """
    if neuron_embeddings.ndim == 3:
        neuron_embeddings = jnp.mean(l2_normalise(neuron_embeddings.astype(jnp.float32)), axis=1)
    return neuron_embeddings @ l2_normalise(concept_embeddings.astype(jnp.float32)).T


@jax.jit
def adaptive_cosine_scores(neuron_embeddings: jax.Array, concept_embeddings: jax.Array,
                           template_embedding: jax.Array) -> jax.Array:
    """Eq. 1: ``s_j = (1/n) sum_o cos(v_o, t_j) - cos(v_o, t_tem)`` for every neuron and concept at once.

    Args:
      neuron_embeddings: ``[U, D]`` from :func:`mean_image_embeddings`, or ``[U, n, D]`` raw embeddings of each
        neuron's own n images (crops, for minor concepts), normalised and averaged here.
      concept_embeddings: ``[M, D]`` CLIP text embeddings of "A photo of a {concept}".
      template_embedding: ``[D]`` CLIP text embedding of the bare template "A photo of a".

    Returns:
      ``[U, M]`` adaptive cosine scores.
    """
    if neuron_embeddings.ndim == 3:
        neuron_embeddings = jnp.mean(l2_normalise(neuron_embeddings.astype(jnp.float32)), axis=1)
    t_tem = l2_normalise(template_embedding.astype(jnp.float32))
    return cosine_scores(neuron_embeddings, concept_embeddings) - (neuron_embeddings @ t_tem)[:, None]


@jax.jit
def adaptive_threshold(scores: jax.Array, alpha: float) -> jax.Array:
    """Eq. 2: ``delta = alpha * max_j s_j`` per neuron, ``[U, M] -> [U]``.

    For a neuron whose best score is negative (every concept less similar than the bare template),
    ``alpha * max`` would lie above the maximum and select nothing; the threshold is then
    ``max - (1 - alpha) |max|``, which equals eq. 2 for ``max >= 0`` and keeps the best concept otherwise.
    """
    best = jnp.max(scores, axis=-1)
    return best - (1 - alpha) * jnp.abs(best)


@jax.jit
def adaptive_selection(scores: jax.Array, alpha: float) -> jax.Array:
    """Eq. 2: the ``[U, M]`` bool mask of concepts with ``s_j >= delta`` (see :func:`adaptive_threshold`)."""
    return scores >= adaptive_threshold(scores, alpha)[..., None]


@functools.partial(jax.jit, static_argnames="max_concepts")
def select_concepts(scores: jax.Array, alpha: float, max_concepts: int) -> dict:
    """Adaptive selection reported compactly: the best ``max_concepts`` per neuron and which are selected.

    Args:
      scores: ``[U, M]`` adaptive cosine scores.
      alpha: concept sensitivity (0.95 major, 0.90 minor).
      max_concepts: how many candidates to return per neuron (static).

    Returns:
      ``{"indices": [U, K], "scores": [U, K], "selected": [U, K] bool, "count": [U]}`` with ``K =
      min(max_concepts, M)``, candidates in descending score; ``count`` is the number selected over all ``M``
      concepts (it can exceed ``K``).
    """
    k = min(max_concepts, scores.shape[-1])
    top_scores, top_indices = jax.lax.top_k(scores, k)
    threshold = adaptive_threshold(scores, alpha)
    return {"indices": top_indices, "scores": top_scores, "selected": top_scores >= threshold[:, None],
            "count": jnp.sum(scores >= threshold[:, None], axis=-1)}


@functools.partial(jax.jit, static_argnames="crop_size")
def peak_crop_corners(maps: jax.Array, image_size: tuple[int, int] | jax.Array,
                      crop_size: tuple[int, int]) -> jax.Array:
    """Top-left corners of crops centred on each map's peak (the minor-concept crops of section 3.2).

    Args:
      maps: ``[B, h, w]`` one neuron's activation map on one image each.
      image_size: ``(H, W)`` of the images the maps were computed from.
      crop_size: ``(ch, cw)`` crop size in image pixels (static).

    Returns:
      ``[B, 2]`` int32 ``(top, left)``: the peak's cell centre mapped to image pixels, minus half the crop,
      clipped so that the crop stays inside the image.
    """
    b, h, w = maps.shape
    flat = jnp.argmax(maps.reshape(b, h * w), axis=-1)
    row, col = flat // w, flat % w
    height, width = image_size
    centre_y = (row.astype(jnp.float32) + 0.5) * height / h
    centre_x = (col.astype(jnp.float32) + 0.5) * width / w
    top = jnp.clip(jnp.round(centre_y - crop_size[0] / 2), 0, height - crop_size[0]).astype(jnp.int32)
    left = jnp.clip(jnp.round(centre_x - crop_size[1] / 2), 0, width - crop_size[1]).astype(jnp.int32)
    return jnp.stack([top, left], axis=-1)


def grid_crop_corners(image_size: tuple[int, int], crop_size: tuple[int, int], grid: int) -> jax.Array:
    """Top-left corners of a ``grid x grid`` lattice of crops spanning the image (the paper's probe set of crops).

    Args:
      image_size: ``(H, W)``.
      crop_size: ``(ch, cw)`` in pixels.
      grid: crops per axis; the first crop touches the top/left edge, the last the bottom/right one
        (``grid = 1``: one centred crop).

    Returns:
      ``[grid * grid, 2]`` int32 ``(top, left)``, row-major.
    """
    def axis(size, crop):
        if grid == 1:
            return jnp.asarray([(size - crop) // 2], jnp.int32)
        return jnp.round(jnp.linspace(0, size - crop, grid)).astype(jnp.int32)

    top, left = jnp.meshgrid(axis(image_size[0], crop_size[0]), axis(image_size[1], crop_size[1]), indexing="ij")
    return jnp.stack([top.ravel(), left.ravel()], axis=-1)


@functools.partial(jax.jit, static_argnames=("crop_size", "out_size"))
def crop_images(images: jax.Array, corners: jax.Array, crop_size: tuple[int, int],
                out_size: tuple[int, int] | None = None) -> jax.Array:
    """Crops ``[B, H, W, C]`` images at ``corners`` ``[B, 2]`` to ``crop_size``, resized bilinearly to ``out_size``.

    Returns float32 in the images' value range (uint8 input gives values in [0, 255]).
    """
    def one(image, corner):
        return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), crop_size + (image.shape[-1],))

    crops = jax.vmap(one)(images.astype(jnp.float32), corners)
    if out_size is not None and tuple(out_size) != tuple(crop_size):
        crops = jax.image.resize(crops, (crops.shape[0],) + tuple(out_size) + (crops.shape[-1],), "bilinear")
    return crops


# --- where / why: Taylor-Shapley contributions ---------------------------------------------------------------

def contributions_from_gradients(activations: jax.Array, gradients: jax.Array, mode: str = "signed") -> jax.Array:
    """Eq. 3: ``w_u = a_u * d f_c / d a_u``, summed over space for a conv tap (first-order effect of zeroing u).

    Args:
      activations: ``[B, U]`` or ``[B, H, W, U]``.
      gradients: the same shape, ``d f_c / d a`` for each image's explained class ``c``.
      mode: ``"signed"`` (the authors' code, the default) or ``"abs"`` (eq. 3 as printed).

    Returns:
      ``[B, U]``.
    """
    w = activations * gradients
    if w.ndim == 4:
        w = jnp.sum(w, axis=(1, 2))
    if mode == "abs":
        return jnp.abs(w)
    if mode != "signed":
        raise ValueError(f"mode must be 'signed' or 'abs'; got {mode!r}")
    return w


def taylor_shapley(forward_from_offset: Callable[[jax.Array], tuple[jax.Array, jax.Array]], zero_offset: jax.Array,
                   classes: jax.Array, mode: str = "signed") -> tuple[jax.Array, jax.Array, jax.Array]:
    """Taylor-Shapley contributions of every neuron of a layer for a whole batch, through one ``jax.vjp``.

    Args:
      forward_from_offset: ``offset -> (logits [B, C], activations at the layer [B, ...])``; the offset is
        added to the layer's activations (``make_forward(..., offsets=...)``), so the gradient with respect to a
        zero offset is the gradient at the layer.
      zero_offset: zeros of the layer's batch shape.
      classes: ``[B]`` int class ``c`` explained for each image, or a function ``logits -> [B]`` (e.g. the
        prediction, ``lambda logits: jnp.argmax(logits, -1)``).
      mode: ``"signed"`` or ``"abs"`` (see :func:`contributions_from_gradients`).

    Returns:
      ``(contributions [B, U], logits [B, C], activations)``.
    """
    (logits, activations), pullback = jax.vjp(forward_from_offset, zero_offset)
    if callable(classes):
        classes = classes(logits)
    cotangent = jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype)
    (gradients,) = pullback((cotangent, jnp.zeros_like(activations)))
    return contributions_from_gradients(activations, gradients, mode), logits, activations


class ClassContributionState(NamedTuple):
    """The accumulators of the class-wise mean contributions of section 3.4, a pytree.

    Attributes:
      sums: ``f32[C, U]``, ``sums[c, u] = sum_x w_u(x)`` over the images ``x`` of class ``c``.
      counts: ``f32[C]``, the number of images of each class.
    """

    sums: jax.Array
    counts: jax.Array


def class_sums_init(num_classes: int, num_neurons: int) -> ClassContributionState:
    """Zero accumulators of class-wise contribution sums ``[C, U]`` and counts ``[C]``.

    Args:
      num_classes: ``C``.
      num_neurons: ``U``.

    Returns:
      A :class:`ClassContributionState` of zeros.
    """
    return ClassContributionState(sums=jnp.zeros((num_classes, num_neurons), jnp.float32),
                                  counts=jnp.zeros((num_classes,), jnp.float32))


@jax.jit
def class_sums_update(state: ClassContributionState, contributions: jax.Array, classes: jax.Array,
                      mask: jax.Array) -> ClassContributionState:
    """Adds a batch's contributions to the sums of their classes (segment sums; padding rows weigh 0).

    ``sums[c] += sum_b [classes_b = c] mask_b w_b`` and ``counts[c] += sum_b [classes_b = c] mask_b``.

    Args:
      state: from :func:`class_sums_init` or a previous update.
      contributions: ``[B, U]``.
      classes: ``[B]`` int class of each image (its label, or its prediction).
      mask: ``[B]`` bool.

    Returns:
      The updated state.
    """
    num_classes = state.counts.shape[0]
    weight = mask.astype(jnp.float32)
    sums = jax.ops.segment_sum(contributions * weight[:, None], classes, num_segments=num_classes)
    counts = jax.ops.segment_sum(weight, classes, num_segments=num_classes)
    return ClassContributionState(sums=state.sums + sums, counts=state.counts + counts)


@jax.jit
def class_means(state: ClassContributionState) -> jax.Array:
    """Section 3.4: the class-wise contribution ``[C, U]``, the mean over each class's samples (0 if none)."""
    return state.sums / jnp.maximum(state.counts, 1)[:, None]


@functools.partial(jax.jit, static_argnames="k")
def top_k_neurons(contributions: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k most contributing neurons of each row of ``[..., U]``: ``(values [..., k], indices [..., k])``."""
    return jax.lax.top_k(contributions, k)


# --- where: concept maps and heatmaps ------------------------------------------------------------------------

def gather_maps(activation_maps: jax.Array, neurons: jax.Array) -> jax.Array:
    """Picks the maps of chosen neurons: ``[B, h, w, U]`` and ``[B, k]`` -> ``[B, k, h, w]``."""
    return jnp.moveaxis(jnp.take_along_axis(activation_maps, neurons[:, None, None, :], axis=-1), -1, 1)


@jax.jit
def class_activation_maps(features: jax.Array, head_weights: jax.Array, classes: jax.Array) -> jax.Array:
    """CAM (Zhou et al. 2016) of chosen classes: ``M_c(y, x) = sum_k A_k(y, x) W[k, c]``.

    For a global-average-pooled linear head ``logit_c = mean_yx A(y, x) . W[:, c] + b_c``, so the spatial mean of
    ``M_c`` plus the bias is the logit exactly.

    Args:
      features: ``[B, h, w, K]`` the last convolutional features (pooled into the head).
      head_weights: ``[K, C]`` the head's weights.
      classes: ``[B, k]`` int, the classes (final-layer neurons) whose maps each image needs.

    Returns:
      ``[B, k, h, w]``.
    """
    chosen = jnp.take(head_weights.astype(jnp.float32), classes, axis=1)            # [K, B, k]
    return jnp.einsum("byxK,Kbk->bkyx", features.astype(jnp.float32), chosen)


@functools.partial(jax.jit, static_argnames=("size", "percentile"))
def concept_maps(maps: jax.Array, size: tuple[int, int], percentile: float = 70.0) -> tuple[jax.Array, jax.Array]:
    """Section 3.3: neuron activation maps upsampled bilinearly to the image and thresholded at a percentile.

    Args:
      maps: ``[..., h, w]`` activation maps of the chosen neurons.
      size: ``(H, W)`` of the image (static).
      percentile: per map, pixels above this percentile of the upsampled map form the concept region.

    Returns:
      ``(upsampled [..., H, W], regions [..., H, W] bool)``.
    """
    up = jax.image.resize(maps.astype(jnp.float32), maps.shape[:-2] + tuple(size), "bilinear")
    flat = up.reshape(up.shape[:-2] + (-1,))
    threshold = jnp.percentile(flat, percentile, axis=-1)
    return up, up > threshold[..., None, None]


@functools.partial(jax.jit, static_argnames="size")
def overall_heatmap(maps: jax.Array, weights: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    """Eq. 4 with normalised weights: ``M = sum_u (w_u / sum_k w_k) A_u`` over the top-k neurons.

    Args:
      maps: ``[B, k, h, w]`` activation maps of each image's top-k neurons.
      weights: ``[B, k]`` their contributions.
      size: ``(H, W)`` to upsample to bilinearly (static), or ``None`` to stay at ``(h, w)``.

    Returns:
      ``[B, H, W]``. Where the weights sum to 0 the map is 0.
    """
    total = jnp.sum(weights, axis=-1, keepdims=True)
    share = jnp.where(total != 0, weights / jnp.where(total != 0, total, 1), 0)
    heat = jnp.einsum("bk,bkhw->bhw", share, maps.astype(jnp.float32))
    if size is not None:
        heat = jax.image.resize(heat, heat.shape[:1] + tuple(size), "bilinear")
    return heat


@jax.jit
def heatmap_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Section 4.3.2: cosine similarity of two heatmaps per image, ``[B, H, W]`` x2 -> ``[B]`` (0 for a zero map)."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.where(norms > 0, jnp.sum(a * b, axis=-1) / jnp.where(norms > 0, norms, 1), 0)


# --- trust: rejection curve and AUROC ------------------------------------------------------------------------

@jax.jit
def rejection_curve(confidence: jax.Array, wrong: jax.Array) -> jax.Array:
    """Figure 4 (right): mispredictions caught when the least confident images are rejected first.

    Args:
      confidence: ``[N]`` trust score (heatmap similarity, maximum softmax probability); low = rejected first.
      wrong: ``[N]`` bool, the image is mispredicted.

    Returns:
      ``[N + 1]`` int: entry r is the number of mispredictions among the r least confident images
      (ties broken by position, stably).
    """
    order = jnp.argsort(confidence, stable=True)
    caught = jnp.cumsum(wrong[order].astype(jnp.int32))
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), caught])


@jax.jit
def auroc(scores: jax.Array, positive: jax.Array) -> jax.Array:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney: ties count one half).

    Args:
      scores: ``[N]``, larger = more likely positive.
      positive: ``[N]`` bool.

    Returns:
      A scalar; NaN when one class is empty.
    """
    positive = positive.astype(bool)
    big = jnp.finfo(jnp.float32).max
    negatives = jnp.sort(jnp.where(positive, big, scores.astype(jnp.float32)))   # positives pushed to the end
    num_neg = jnp.sum(~positive)
    below = jnp.minimum(jnp.searchsorted(negatives, scores, side="left"), num_neg)
    upto = jnp.minimum(jnp.searchsorted(negatives, scores, side="right"), num_neg)
    wins = jnp.sum(jnp.where(positive, below + 0.5 * (upto - below), 0.0))
    num_pos = jnp.sum(positive)
    return wins / (num_pos * num_neg)


# --- baseline: CLIP-Dissect soft-WPMI ------------------------------------------------------------------------

@jax.jit
def concept_probabilities(similarity: jax.Array, a: float = 10.0) -> jax.Array:
    """CLIP-Dissect's ``softmax(a * sim)`` over the concepts of each probe image: ``[P, M]``, float32."""
    return jax.nn.softmax(a * similarity.astype(jnp.float32), axis=1)


@functools.partial(jax.jit, static_argnames=("top_k", "one_neuron_at_a_time"))
def _log_p_given_e(probabilities, activations, top_k, p_start, p_end, min_prob, one_neuron_at_a_time):
    _, top = jax.lax.top_k(activations.T, top_k)                                   # [U, top_k]
    p = p_start - jnp.arange(top_k, dtype=jnp.float32) / top_k * (p_start - p_end)

    def terms(rows):  # [..., top_k] image indices -> [..., M]
        return jnp.sum(jnp.log(1 + p[:, None] * (probabilities[rows] - 1) + min_prob), axis=-2)

    return jax.lax.map(terms, top) if one_neuron_at_a_time else terms(top)


def log_p_given_e(probabilities: jax.Array, activations: jax.Array, top_k: int = 100, p_start: float = 0.998,
                  p_end: float = 0.97, min_prob: float = 1e-7, *, one_neuron_at_a_time: bool | None = None
                  ) -> jax.Array:
    """CLIP-Dissect's ``log p(d | E_u)`` from the concept probabilities (:func:`concept_probabilities`).

    One form per backend: on an accelerator all neurons' ``[U, top_k, M]`` gathered probabilities are taken at
    once; on a CPU one neuron's ``[top_k, M]`` at a time (a ``lax.map``), which stays in cache: 4.9x faster for
    64 neurons, 5,000 probe images and 1,000 concepts on a 2-core CPU (9.8 ms against 2.0 ms; 4 or 16 neurons a
    step: 4 ms).

    Args:
      probabilities: ``[P, M]`` softmax over the concepts of each probe image.
      activations: ``[P, U]`` neuron activations (spatially averaged) of the probe images.
      top_k, p_start, p_end, min_prob: CLIP-Dissect's defaults (``top_k`` static).
      one_neuron_at_a_time: force a form; None chooses by the platform of ``probabilities``.

    Returns:
      ``[U, M]``: ``sum_r log(1 + p_r (probabilities[e_r, d] - 1) + min_prob)`` over each neuron's ``top_k``
      images ``e_r``, with ``p_r`` falling linearly from ``p_start`` to ``p_end``.
    """
    if one_neuron_at_a_time is None:
        one_neuron_at_a_time = platform_of(probabilities) == "cpu"
    return _log_p_given_e(probabilities, activations, top_k, p_start, p_end, min_prob, bool(one_neuron_at_a_time))


def soft_wpmi_log_p_given_e(similarity: jax.Array, activations: jax.Array, top_k: int = 100, a: float = 10.0,
                            p_start: float = 0.998, p_end: float = 0.97, min_prob: float = 1e-7) -> jax.Array:
    """CLIP-Dissect's ``log p(d | E_u)`` for a block of neurons (the part of soft-WPMI that is per neuron):
    :func:`log_p_given_e` of :func:`concept_probabilities`.

    Args:
      similarity: ``[P, M]`` cosine similarities of probe images and concepts.
      activations: ``[P, U]`` neuron activations (spatially averaged) of the probe images.
      top_k, a, p_start, p_end, min_prob: CLIP-Dissect's defaults.

    Returns:
      ``[U, M]`` (see :func:`log_p_given_e`).
    """
    return log_p_given_e(concept_probabilities(similarity, a), activations, top_k, p_start, p_end, min_prob)


@jax.jit
def soft_wpmi_from_log_p(log_p_given_e: jax.Array, lam: float = 1.0) -> jax.Array:
    """CLIP-Dissect's soft-WPMI ``log p(d|E_u) - lambda log p(d)``, ``log p(d) = logsumexp_u log p(d|E_u) - log U``."""
    log_p_d = jax.nn.logsumexp(log_p_given_e, axis=0, keepdims=True) - jnp.log(log_p_given_e.shape[0])
    return log_p_given_e - lam * log_p_d


def soft_wpmi(similarity: jax.Array, activations: jax.Array, top_k: int = 100, a: float = 10.0, lam: float = 1.0,
              p_start: float = 0.998, p_end: float = 0.97, min_prob: float = 1e-7) -> jax.Array:
    """CLIP-Dissect (Oikarinen and Weng, ICLR 2023) soft-WPMI for all neurons at once: ``[U, M]`` scores."""
    return soft_wpmi_from_log_p(soft_wpmi_log_p_given_e(similarity, activations, top_k, a, p_start, p_end, min_prob),
                                lam)


# --- metrics for final-layer neurons -------------------------------------------------------------------------

@jax.jit
def selection_metrics(selected: jax.Array, correct: jax.Array) -> dict:
    """Section 4.1.2: per neuron, precision/recall/F1 of the selected concepts and whether one hits the label.

    Args:
      selected: ``[U, M]`` bool, concepts selected for each neuron.
      correct: ``[U, M]`` bool, concepts equal to a synonym of the neuron's class label.

    Returns:
      ``{"hit", "precision", "recall", "f1"}`` each ``[U]`` (0 where undefined); the hit rate is ``mean(hit)``.
    """
    selected, correct = selected.astype(bool), correct.astype(bool)
    tp = jnp.sum(selected & correct, axis=-1).astype(jnp.float32)
    num_sel = jnp.sum(selected, axis=-1)
    num_true = jnp.sum(correct, axis=-1)
    precision = jnp.where(num_sel > 0, tp / jnp.maximum(num_sel, 1), 0.0)
    recall = jnp.where(num_true > 0, tp / jnp.maximum(num_true, 1), 0.0)
    denom = precision + recall
    f1 = jnp.where(denom > 0, 2 * precision * recall / jnp.where(denom > 0, denom, 1), 0.0)
    return {"hit": tp > 0, "precision": precision, "recall": recall, "f1": f1}


@jax.jit
def mean_pair_cosine(selected: jax.Array, concept_embeddings: jax.Array, target_embeddings: jax.Array) -> jax.Array:
    """Mean cosine over (selected concept, true label) pairs per neuron: CLIP-text cos or sentence-encoder cos.

    Args:
      selected: ``[U, M]`` bool.
      concept_embeddings: ``[M, D]`` text embeddings of the concepts.
      target_embeddings: ``[U, D]`` embedding of each neuron's class label (or ``[U, L, D]``, several synonyms,
        averaged over pairs).

    Returns:
      ``[U]``; NaN for a neuron with nothing selected.
    """
    t = l2_normalise(concept_embeddings.astype(jnp.float32))
    weights = selected.astype(jnp.float32)
    mean_selected = weights @ t / jnp.sum(weights, axis=-1, keepdims=True)       # mean of normalised embeddings
    targets = l2_normalise(target_embeddings.astype(jnp.float32))
    if targets.ndim == 3:
        targets = jnp.mean(targets, axis=1)
    return jnp.sum(mean_selected * targets, axis=-1)
