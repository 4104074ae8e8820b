"""Deep Embedded Clustering kernels for the activation clustering surrogate (DESIGN "DEC activation
clustering surrogate"; Liu & Arik, "Explaining Deep Neural Networks using Unsupervised Clustering", section 3.2,
which adapts DEC of Xie, Girshick & Farhadi 2016, equations numbered below as in DEC).

Per selected layer the method projects the encoder's embeddings onto a hypersphere (footnote 2, radius 8),
starts the centroids by k-means, then minimises ``KL(P || Q)`` between DEC's soft assignment ``Q`` and its
sharpened target ``P``::

    z = project_to_sphere(encoder(a))                      # paper footnote 2
    centroids, labels, _ = kmeans(z, k, key)                # k = 15, 20 restarts
    q = soft_assignment(z, centroids, alpha=100.0)          # DEC eq. 1, alpha from footnote 3
    p = target_distribution(q)                              # DEC eq. 3, held fixed between refreshes
    loss = kl_divergence(p, q)                              # DEC eq. 2

and explains a query by its nearest training samples under the weighted sum of per-layer embedding distances
(paper section 4), :func:`nearest_neighbours`, computed over the bank in blocks with a running top-m.

Measured on a 2-core CPU (``experiments/bench_dec_kernels.py``, BENCHMARKS.md "DEC kernels"): the DEC loss is
5-8x faster than NumPy at N = 1M and the nearest neighbours 2x faster than SciPy's ``cdist``; k-means reaches
scikit-learn's inertia (see :func:`kmeans` for its speed and its form per backend).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xai_jax.kernels.platform import platform_of

#: squared distances below are cancellation-prone matrix products: never let an accelerator run them in TF32/bf16
_EXACT = lax.Precision.HIGHEST


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# --------------------------------------------------------------------------------------------- DEC loss


def _pairwise_sq_distances(z: jax.Array, centroids: jax.Array) -> jax.Array:
    """``|z_i - mu_k|^2`` from the differences themselves (XLA fuses them into the reduction, no ``[n, k, d]``
    temporary): exact where the ``|z|^2 - 2 z.mu + |mu|^2`` expansion would cancel, and differentiable at 0."""
    return jnp.sum(jnp.square(z[:, None, :] - centroids[None, :, :]), axis=-1)


@jax.jit
def log_soft_assignment(z: jax.Array, centroids: jax.Array, alpha: float = 1.0) -> jax.Array:
    """The logarithm of DEC's Student-t soft assignment (DEC eq. 1), normalised in log space.

    ``log q_ik = l_ik - logsumexp_k' l_ik'`` with ``l_ik = -(alpha + 1) / 2 * log1p(|z_i - mu_k|^2 / alpha)``.
    Unlike the direct ratio, this stays finite when every kernel value of a row underflows (``alpha = 100``
    with distances of a few hundred already gives ``(1 + d^2 / alpha)^(-50.5) < 1e-38``).

    Args:
      z: ``[n, e]`` embeddings.
      centroids: ``[k, e]`` cluster centres ``mu``.
      alpha: degrees of freedom of the Student-t kernel (traced; the paper uses 100, DEC's default is 1).

    Returns:
      ``[n, k]`` log-probabilities; ``logsumexp`` over each row is 0.
    """
    z, centroids = _as_float(z), _as_float(centroids)
    logits = -(alpha + 1) / 2 * jnp.log1p(_pairwise_sq_distances(z, centroids) / alpha)
    return jax.nn.log_softmax(logits, axis=-1)


@jax.jit
def soft_assignment(z: jax.Array, centroids: jax.Array, alpha: float = 1.0) -> jax.Array:
    """DEC's soft assignment of embeddings to clusters (DEC eq. 1; paper section 3.2)::

        q_ik = (1 + |z_i - mu_k|^2 / alpha)^(-(alpha + 1) / 2) / sum_k' (1 + |z_i - mu_k'|^2 / alpha)^(-(alpha + 1) / 2)

    computed as ``exp(log_soft_assignment(...))`` so that large ``alpha`` and large distances do not turn
    rows into ``0 / 0``.

    Args:
      z: ``[n, e]`` embeddings.
      centroids: ``[k, e]`` cluster centres.
      alpha: Student-t degrees of freedom (traced; paper footnote 3: 100).

    Returns:
      ``[n, k]`` probabilities, each row summing to 1.
    """
    return jnp.exp(log_soft_assignment(z, centroids, alpha))


@jax.jit
def cluster_frequencies(q: jax.Array) -> jax.Array:
    """DEC's soft cluster frequencies ``f_k = sum_i q_ik`` (the denominator of DEC eq. 3).

    Summed over the whole training set (possibly batch by batch) and passed to :func:`target_distribution`,
    they give the targets of a mini-batch as if ``P`` were computed over all samples at once.

    Args:
      q: ``[n, k]`` soft assignments.

    Returns:
      ``[k]`` column sums.
    """
    return jnp.sum(_as_float(q), axis=0)


@jax.jit
def target_distribution(q: jax.Array, frequencies: jax.Array | None = None) -> jax.Array:
    """DEC's auxiliary target distribution (DEC eq. 3)::

        p_ik = (q_ik^2 / f_k) / sum_k' (q_ik'^2 / f_k'),   f_k = sum_i q_ik

    Squaring sharpens the assignments; dividing by ``f_k`` keeps large clusters from taking over.

    Args:
      q: ``[n, k]`` soft assignments (rows summing to 1).
      frequencies: ``[k]`` the ``f_k`` to use; ``None`` sums ``q`` itself. Pass
        :func:`cluster_frequencies` of the whole training set to get the targets of a batch.

    Returns:
      ``[n, k]`` targets, rows summing to 1. A cluster with ``f_k = 0`` gets ``p_ik = 0``; a row whose
      squares all underflow to 0 falls back to ``q`` itself instead of ``0 / 0``.
    """
    q = _as_float(q)
    f = jnp.sum(q, axis=0) if frequencies is None else _as_float(frequencies)
    weight = jnp.where(f > 0, jnp.square(q) / jnp.where(f > 0, f, 1), 0)
    total = jnp.sum(weight, axis=-1, keepdims=True)
    return jnp.where(total > 0, weight / jnp.where(total > 0, total, 1), q)


@jax.jit
def kl_divergence_log(p: jax.Array, log_q: jax.Array) -> jax.Array:
    """:func:`kl_divergence` from ``log q`` (``log_soft_assignment``): no clipping, exact gradients even
    where ``q`` underflows."""
    p, log_q = _as_float(p), _as_float(log_q)
    per_sample = jnp.sum(jax.scipy.special.xlogy(p, p) - jnp.where(p > 0, p * log_q, 0), axis=-1)
    return jnp.mean(per_sample)


@jax.jit
def kl_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """DEC's clustering loss ``L = KL(P || Q)`` (DEC eq. 2), with the "batchmean" reduction::

        L = (1 / n) sum_i sum_k p_ik log(p_ik / q_ik)

    i.e. the divergence of each sample's distributions summed over clusters, then averaged over samples —
    what DEC's Keras code (``loss="kld"``) and PyTorch's ``kl_div(..., reduction="batchmean")`` compute.
    DEC's paper writes the plain sum over samples: ``n`` times this value, the same minimiser.
    Terms with ``p_ik = 0`` are 0. ``q`` is clipped at the smallest normal float before its logarithm; use
    :func:`kl_divergence_log` with ``log_soft_assignment`` to avoid the clip altogether.

    Args:
      p: ``[n, k]`` targets (treated as constants by DEC: wrap in ``lax.stop_gradient``).
      q: ``[n, k]`` soft assignments.

    Returns:
      Scalar loss.
    """
    q = _as_float(q)
    return kl_divergence_log(p, jnp.log(jnp.maximum(q, jnp.finfo(q.dtype).tiny)))


@jax.jit
def project_to_sphere(z: jax.Array, radius: float = 8.0) -> jax.Array:
    """Projects embeddings onto the hypersphere of the given radius: ``z * radius / |z|`` along the last axis
    (paper section 3.2, footnote 2: radius 8 for every layer, so the layers' distances are comparable).

    Args:
      z: ``[..., e]`` embeddings.
      radius: the sphere's radius (traced).

    Returns:
      Same shape; each vector has norm ``radius``, except zero vectors, which stay 0 (with zero gradient,
      not NaN).
    """
    z = _as_float(z)
    squared = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
    nonzero = squared > 0
    # The inner where keeps rsqrt's gradient finite at 0; the outer one gives the zero vector its value.
    return jnp.where(nonzero, z * (radius * lax.rsqrt(jnp.where(nonzero, squared, 1))), 0)


# ---------------------------------------------------------------------------------------------- k-means


def _sq_distances(x: jax.Array, x_sq: jax.Array, centroids: jax.Array) -> jax.Array:
    """``|x_i - c_k|^2 = |x_i|^2 - 2 x_i.c_k + |c_k|^2``: one matrix product, clipped at 0 (rounding)."""
    cross = jnp.dot(x, centroids.T, precision=_EXACT)
    return jnp.maximum(x_sq[:, None] - 2 * cross + jnp.sum(jnp.square(centroids), axis=-1)[None, :], 0)


def _closest(x, x_sq, centroids):
    """Labels and squared distances of the points' closest centroids. The distances are laid out ``[k, n]``:
    the reduction over the few centroids then runs across rows, which vectorises better on CPU than a
    reduction over a short last axis (20 % faster per Lloyd step here).

    The label is the first centroid at the minimum distance, as ``argmin`` gives it, but found by two plain
    reductions (the minimum, then the lowest index that attains it): XLA:CPU lowers ``argmin`` to a variadic
    (value, index) reduction that does not vectorise, 4x slower than both of these together at N = 100,000,
    k = 50 (12 ms against 3 ms a step on a 2-core CPU; BENCHMARKS "DEC kernels")."""
    k = centroids.shape[0]
    cross = jnp.dot(centroids, x.T, precision=_EXACT)
    distances = jnp.maximum(jnp.sum(jnp.square(centroids), axis=-1)[:, None] - 2 * cross + x_sq[None, :], 0)
    closest = jnp.min(distances, axis=0)
    first = jnp.where(distances == closest[None, :], jnp.arange(k, dtype=jnp.int32)[:, None], k)
    return jnp.min(first, axis=0), closest


def _default_local_trials(k: int) -> int:
    return 2 + int(math.log(k))  # scikit-learn's choice (Arthur & Vassilvitskii's greedy variant)


@functools.partial(jax.jit, static_argnames=("k", "local_trials"))
def kmeans_plusplus(x: jax.Array, k: int, key: jax.Array, *, local_trials: int | None = None) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniformly at random, each next one
    drawn with probability proportional to ``D(x)^2``, the squared distance to the closest centre so far.

    With ``local_trials = t > 1`` each step draws ``t`` candidates that way and keeps the one that lowers the
    potential ``sum_x D(x)^2`` most (scikit-learn's greedy k-means++); ``t = 1`` is the plain algorithm.
    When every point already sits on a centre (fewer distinct points than ``k``), candidates are drawn
    uniformly, so duplicate centres are possible and harmless.

    Args:
      x: ``[n, d]`` points, ``n >= k``.
      k: number of centres (static).
      key: ``jax.random`` key.
      local_trials: candidates per step (static); ``None`` for scikit-learn's ``2 + int(log k)``.

    Returns:
      ``[k, d]`` centres, each one of the points.
    """
    x = _as_float(x)
    n = x.shape[0]
    trials = _default_local_trials(k) if local_trials is None else local_trials
    x_sq = jnp.sum(jnp.square(x), axis=1)
    first_key, key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, n)
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = _sq_distances(x, x_sq, x[first][None])[:, 0]

    def add_centre(i, state):
        centres, closest, key = state
        key, draw_key = jax.random.split(key)
        potential = jnp.sum(closest)
        probabilities = jnp.where(potential > 0, closest / jnp.where(potential > 0, potential, 1), 1 / n)
        candidates = jax.random.choice(draw_key, n, (trials,), p=probabilities)
        # [n, trials]: each point's closest distance if that candidate were added
        updated = jnp.minimum(closest[:, None], _sq_distances(x, x_sq, x[candidates]))
        best = jnp.argmin(jnp.sum(updated, axis=0))  # ties: the first drawn
        return centres.at[i].set(x[candidates[best]]), updated[:, best], key

    centres, _, _ = lax.fori_loop(1, k, add_centre, (centres, closest, key))
    return centres


def _chunked(x: jax.Array, chunk_rows: int):
    """The points as ``[chunks, rows, d]`` with their squared norms and a validity mask (zero padding at the
    end), so that a Lloyd step streams over cache-sized pieces instead of materialising ``[n, k]`` arrays."""
    n, d = x.shape
    rows = min(chunk_rows, n)
    chunks = -(-n // rows)
    padded = jnp.pad(x, ((0, chunks * rows - n), (0, 0)))
    valid = jnp.arange(chunks * rows) < n
    return (padded.reshape(chunks, rows, d), jnp.sum(jnp.square(padded), axis=1).reshape(chunks, rows),
            valid.reshape(chunks, rows))


def _assign(chunks, centroids):
    """Assignment pass over the chunks: per-cluster sums and counts, labels and squared distances to the
    closest centroid (``-1`` in padding rows), the last two flattened to the padded length."""
    k, d = centroids.shape

    def one_chunk(totals, chunk):
        sums, counts = totals
        x, x_sq, valid = chunk
        labels, closest = _closest(x, x_sq, centroids)
        one_hot = ((jnp.arange(k)[:, None] == labels[None, :]) & valid[None, :]).astype(x.dtype)  # [k, rows]
        sums = sums + jnp.dot(one_hot, x, precision=_EXACT)
        return (sums, counts + jnp.sum(one_hot, axis=1)), (labels, jnp.where(valid, closest, -1))

    start = (jnp.zeros((k, d), centroids.dtype), jnp.zeros((k,), centroids.dtype))
    (sums, counts), (labels, closest) = lax.scan(one_chunk, start, chunks)
    return sums, counts, labels.reshape(-1), closest.reshape(-1)


def _lloyd_step(chunks, centroids):
    """One assignment + update step of Lloyd's algorithm with empty-cluster re-seeding (see :func:`lloyd_step`)."""
    k = centroids.shape[0]
    points = chunks[0].reshape(-1, centroids.shape[1])
    sums, counts, labels, closest = _assign(chunks, centroids)
    # Empty cluster number r (in cluster order) takes the r-th farthest point from its own centroid, as
    # scikit-learn's _relocate_empty_clusters does; the point leaves its old cluster's sums. Padding rows
    # have closest = -1, so they are never taken.
    empty = counts == 0
    _, farthest = lax.top_k(closest, k)
    moved = farthest[jnp.cumsum(empty) - 1]  # [k]; meaningful where empty
    moved_points = jnp.where(empty[:, None], points[moved], 0)
    sums = sums.at[labels[moved]].add(-moved_points)
    counts = counts.at[labels[moved]].add(-empty.astype(counts.dtype))
    sums = jnp.where(empty[:, None], moved_points, sums)
    counts = jnp.where(empty, 1, counts)
    # A donor cluster left with nothing (its only point moved) keeps its centroid.
    updated = jnp.where(counts[:, None] > 0, sums / jnp.where(counts > 0, counts, 1)[:, None], centroids)
    return updated, labels, empty


@functools.partial(jax.jit, static_argnames=("chunk_rows",))
def lloyd_step(x: jax.Array, centroids: jax.Array, *, chunk_rows: int = 4096
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One iteration of Lloyd's algorithm: assign each point to its closest centroid, move each centroid to
    the mean of its points.

    Empty clusters (no point assigned) are re-seeded with the points farthest from their assigned
    centroids: the empty clusters, in index order, take the farthest, second farthest, ... point, and each
    such point is removed from the cluster it was assigned to (scikit-learn's rule). A cluster left
    without points by that removal keeps its previous centroid.

    Args:
      x: ``[n, d]`` points, ``n >= k``.
      centroids: ``[k, d]`` current centroids.
      chunk_rows: points per chunk of the assignment pass (static; see :func:`kmeans`).

    Returns:
      ``(centroids [k, d], labels [n], reseeded bool[k])``: the new centroids, the assignment they were
      computed from, and which clusters were empty and re-seeded.
    """
    x, centroids = _as_float(x), _as_float(centroids)
    updated, labels, empty = _lloyd_step(_chunked(x, chunk_rows), centroids)
    return updated, labels[:x.shape[0]], empty


def _lloyd(chunks, n, centroids, max_iter, tol):
    def not_done(state):
        iteration, _, shift = state
        return (iteration < max_iter) & (shift > tol)

    def step(state):
        iteration, centroids, _ = state
        updated, _, _ = _lloyd_step(chunks, centroids)
        return iteration + 1, updated, jnp.sum(jnp.square(updated - centroids))

    start = (jnp.asarray(0, jnp.int32), centroids, jnp.asarray(jnp.inf, centroids.dtype))
    iterations, centroids, _ = lax.while_loop(not_done, step, start)
    _, _, labels, closest = _assign(chunks, centroids)
    return centroids, labels[:n], jnp.sum(jnp.maximum(closest, 0)), iterations


def _centre(x, tol):
    """Centred points (scikit-learn centres too: smaller norms, less cancellation in the distance expansion),
    their mean, and ``tol`` made absolute: times the mean per-feature variance."""
    mean = jnp.mean(x, axis=0)
    return x - mean, mean, tol * jnp.mean(jnp.var(x, axis=0))


@functools.partial(jax.jit, static_argnames=("max_iter", "chunk_rows"))
def lloyd(x: jax.Array, centroids: jax.Array, *, max_iter: int = 300, tol: float = 1e-4, chunk_rows: int = 4096):
    """Lloyd's algorithm from given centroids, in a ``lax.while_loop``, until the total squared centroid
    shift ``sum_k |mu_k^new - mu_k^old|^2`` is at most ``tol * mean_j var(x[:, j])`` (scikit-learn's
    criterion) or ``max_iter`` steps ran. Steps are :func:`lloyd_step` (empty clusters re-seeded).

    Args:
      x: ``[n, d]`` points.
      centroids: ``[k, d]`` starting centroids, ``k <= n``.
      max_iter: most steps (static).
      tol: relative tolerance (traced).
      chunk_rows: points per chunk of each assignment pass (static; see :func:`kmeans`).

    Returns:
      ``(centroids [k, d], labels [n], inertia, iterations)`` with labels and inertia (sum of squared
      distances to the closest centroid) recomputed from the final centroids.
    """
    x, centroids = _as_float(x), _as_float(centroids)
    centred, mean, absolute_tol = _centre(x, tol)
    out, labels, inertia, iterations = _lloyd(_chunked(centred, chunk_rows), x.shape[0], centroids - mean,
                                              max_iter, absolute_tol)
    return out + mean, labels, inertia, iterations


@functools.partial(jax.jit, static_argnames=("k", "n_init", "max_iter", "local_trials", "chunk_rows",
                                             "batched_restarts"))
def _kmeans(x, k, key, n_init, max_iter, tol, local_trials, chunk_rows, batched_restarts):
    centred, mean, absolute_tol = _centre(x, tol)
    chunks = _chunked(centred, chunk_rows)

    def one_run(run_key):
        seeds = kmeans_plusplus(centred, k, run_key, local_trials=local_trials)
        return _lloyd(chunks, x.shape[0], seeds, max_iter, absolute_tol)

    run_all = jax.vmap(one_run) if batched_restarts else functools.partial(lax.map, one_run)
    centroids, labels, inertia, _ = run_all(jax.random.split(key, n_init))
    best = jnp.argmin(inertia)  # ties: the first restart
    return centroids[best] + mean, labels[best], inertia[best]


def kmeans(x: jax.Array, k: int, key: jax.Array, *, n_init: int = 20, max_iter: int = 300, tol: float = 1e-4,
           local_trials: int | None = None, chunk_rows: int = 4096, batched_restarts: bool | None = None
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """k-means clustering (DESIGN "DEC activation clustering surrogate": k = 15, 20 restarts, to start DEC's
    centroids): ``n_init`` restarts, each seeded by :func:`kmeans_plusplus` and refined by :func:`lloyd`, in
    one compiled program; the restart with the lowest inertia is returned.

    The data are centred first (and the centroids shifted back), distances come from one matrix product
    each step (``|x|^2 - 2 x.c + |c|^2``, clipped at 0), the loop stops when the total squared centroid shift
    is at most ``tol`` times the mean per-feature variance (scikit-learn's rule), and empty clusters are
    re-seeded with the points farthest from their centroids (:func:`lloyd_step`). ``n = k``, ``k = 1`` and
    duplicate points are fine. Compiled once per shape and static argument.

    Cost: each step streams the points in chunks of ``chunk_rows`` (a ``lax.scan``) so that the ``[rows,
    n_init * k]`` distances stay in cache instead of ``[n, n_init * k]`` going through memory (on a 2-core
    CPU, 4,096 rows made a step at N = 100,000 several times faster than one whole-array pass).

    One form per backend: on an accelerator the restarts run side by side in one ``vmap``, which keeps the
    device busy but runs every restart until the slowest one converges (converged restarts keep being
    computed); on a CPU they run one after another in a ``lax.map``, each for its own steps, as scikit-learn
    does. On a 2-core CPU the sequential form is 1.2-1.8x faster at N = 10,000-100,000, k = 15-50 (restarts
    converge after 2 to 68 steps), hence the choice (BENCHMARKS "DEC kernels"). Both give the same result.

    Args:
      x: ``[n, d]`` points.
      k: number of clusters, ``1 <= k <= n`` (static).
      key: ``jax.random`` key; the same key gives the same result.
      n_init: restarts (static).
      max_iter: most Lloyd steps per restart (static).
      tol: relative tolerance on the centroid shift (traced).
      local_trials: k-means++ candidates per centre (static); ``None`` = scikit-learn's greedy
        ``2 + int(log k)``, 1 = plain D^2 sampling.
      chunk_rows: points per chunk of each assignment pass (static).
      batched_restarts: ``True`` for the ``vmap`` form, ``False`` for the sequential one; ``None`` chooses
        by the platform ``x`` is on (sequential on a CPU).

    Returns:
      ``(centroids [k, d], labels int32[n], inertia)``: inertia is the sum of squared distances of the
      points to their closest centroid, from the returned centroids.

    Raises:
      ValueError: ``x`` not 2-D, ``k`` outside ``[1, n]``, or ``n_init``, ``max_iter``, ``local_trials``
        or ``chunk_rows`` < 1.
    """
    x = _as_float(x)
    if x.ndim != 2:
        raise ValueError(f"k-means needs points of shape [n, d], got {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= n, got k = {k} for n = {x.shape[0]} points")
    for name, value in (("n_init", n_init), ("max_iter", max_iter), ("local_trials", local_trials),
                        ("chunk_rows", chunk_rows)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if batched_restarts is None:
        batched_restarts = platform_of(x) != "cpu"
    return _kmeans(x, k, key, n_init, max_iter, jnp.asarray(tol, x.dtype), local_trials, min(chunk_rows, x.shape[0]),
                   bool(batched_restarts))


# ----------------------------------------------------------------------------------- nearest neighbours


def _euclidean(queries: jax.Array, block: jax.Array, samples_minor: bool) -> jax.Array:
    """``[q, b]`` Euclidean distances from the differences (fused by XLA into the reduction): exact near 0,
    where the expansion would leave ``sqrt(eps) * |z|`` of noise (2e-3 on the radius-8 sphere).

    ``samples_minor`` lays the differences out as ``[q, e, b]`` and sums over the middle axis, so the block's
    samples are the contiguous axis: XLA:CPU then vectorises along them, where a sum over a short minor ``e``
    axis does not (one 200 x 4,096 block at e = 20 x 4 layers: 10 against 27 ms on an AVX2 host). The other
    form is kept for accelerators, where it was the one measured; both give the same distances to rounding."""
    if samples_minor:
        return jnp.sqrt(jnp.sum(jnp.square(queries[:, :, None] - block.T[None, :, :]), axis=1))
    return jnp.sqrt(jnp.sum(jnp.square(queries[:, None, :] - block[None, :, :]), axis=-1))


@functools.partial(jax.jit, static_argnames=("block_size", "samples_minor"))
def _nearest(queries, bank, weights, best, offset, valid, block_size, samples_minor):
    """The running ``best = (distances, indices)`` [q, m] merged with the first ``valid`` rows of ``bank``,
    whose row ``i`` is sample ``offset + i``."""
    n = bank[0].shape[0]
    m = best[0].shape[1]
    blocks = -(-n // block_size)
    padded = blocks * block_size
    bank_blocks = tuple(jnp.pad(layer, ((0, padded - n), (0, 0))).reshape(blocks, block_size, layer.shape[1])
                        for layer in bank)

    def merge_block(best, inputs):
        best_distances, best_indices = best
        block_index, layers = inputs
        distances = sum(w * _euclidean(q, b, samples_minor) for w, q, b in zip(weights, queries, layers))
        rows = block_index * block_size + jnp.arange(block_size, dtype=jnp.int32)
        distances = jnp.where(rows[None, :] < valid, distances, jnp.inf)  # padding rows never win
        # The running best come first: on equal distances top_k keeps the earlier (lower) bank index.
        candidates = jnp.concatenate([best_distances, distances], axis=1)
        candidate_indices = jnp.concatenate([best_indices, jnp.broadcast_to(offset + rows, distances.shape)], axis=1)
        negated, positions = lax.top_k(-candidates, m)
        return (-negated, jnp.take_along_axis(candidate_indices, positions, axis=1)), None

    best, _ = lax.scan(merge_block, best, (jnp.arange(blocks, dtype=jnp.int32), bank_blocks))
    return best


#: how much of a bank :func:`nearest_neighbours` reads at a time by default (as float32)
BANK_CHUNK_BYTES = 32 << 20


def _bank_chunk(layer, start: int, rows: int) -> jax.Array:
    """Rows ``start .. start + rows`` of one bank layer as a float array of exactly ``rows`` rows (the last
    chunk padded with zeros), read by slicing: a :class:`xai_jax.rowstore.DiskRows` reads only them."""
    chunk = _as_float(layer[start:start + rows])
    return chunk if len(chunk) == rows else jnp.pad(chunk, ((0, rows - len(chunk)), (0, 0)))


def validate_layer_weights(layer_weights, num_layers: int) -> np.ndarray:
    """Checks the layers' weights of the surrogate and of :func:`nearest_neighbours` (paper section 3.1:
    a weighted average of the layers, equal weights by default).

    Args:
      layer_weights: one number per layer.
      num_layers: how many layers there are.

    Returns:
      The weights as a float64 array.

    Raises:
      ValueError: wrong count, a negative or non-finite weight, or all weights zero.
    """
    weights = np.asarray(layer_weights, np.float64).reshape(-1)
    if weights.size != num_layers:
        raise ValueError(f"expected {num_layers} layer weights, got {weights.size}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"layer weights must be finite and non-negative, got {weights.tolist()}")
    if not np.any(weights > 0):
        raise ValueError("layer weights are all zero: at least one layer must count")
    return weights


def nearest_neighbours(queries_per_layer: Sequence[jax.Array], bank_per_layer: Sequence[Any],
                       layer_weights, m: int, *, block_size: int = 4096,
                       chunk_rows: int | None = None,
                       samples_minor: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """The ``m`` bank samples most similar to each query by the weighted sum of per-layer embedding distances
    (paper section 4, "sample-based" explanations, with the layer weights of section 3.1)::

        D(x, s) = sum_j w_j |z_j(x) - z_j(s)|      (Euclidean norm in layer j's embedding space)

    The bank is scanned in blocks of ``block_size`` samples (``lax.scan``); each block's ``[q, block]``
    distances are merged with the running best ``m`` by ``lax.top_k``, so memory is ``O(q * (block + m))``
    whatever the bank size ``N``. Equal distances keep the lower bank index (a stable sort's order).
    The bank is read ``chunk_rows`` samples at a time by slicing (``bank[a:b]``), so it may live on disk
    (:class:`xai_jax.rowstore.DiskRows`, e.g. a saved surrogate's penultimate features at ImageNet size): each
    chunk goes to the device, and the running best ``m`` carry over, so host and device memory are
    ``O(chunk_rows * e)``. Every chunk has the same shape (the last is padded): compiled once per query shape,
    chunk, ``m`` and ``block_size``; the weights and the chunk's position are traced.

    Args:
      queries_per_layer: one ``[q, e_j]`` array per layer.
      bank_per_layer: one ``[N, e_j]`` array per layer, in the same layer order: anything sliced by rows
        (NumPy, JAX, :class:`xai_jax.rowstore.DiskRows`); integer and float16 rows are compared in float32.
      layer_weights: ``w_j``, one non-negative number per layer, not all zero.
      m: neighbours per query, ``1 <= m <= N`` (static; may exceed ``block_size``).
      block_size: bank samples per block at most (static; need not divide the chunk: the chunk is cut into
        the fewest blocks of at most this size, all of one size, so fewer padding rows than blocks are computed).
      chunk_rows: bank samples read and sent to the device at a time (clamped to ``N``, need not divide it;
        default: :data:`BANK_CHUNK_BYTES` of float32 rows, 4,096 of ResNet-50's 2,048 features).
      samples_minor: the layout of the distance reduction (see :func:`_euclidean`); default: on a CPU only.

    Returns:
      ``(indices int32[q, m], distances [q, m])``, nearest first.

    Raises:
      ValueError: mismatched layers or shapes, bad weights (see :func:`validate_layer_weights`), ``m``
        outside ``[1, N]``, or ``block_size`` or ``chunk_rows`` < 1.
    """
    queries = tuple(_as_float(q) for q in queries_per_layer)
    bank = tuple(b if hasattr(b, "shape") else np.asarray(b) for b in bank_per_layer)
    if not queries or len(queries) != len(bank):
        raise ValueError(f"need the same positive number of query and bank layers, got {len(queries)} and {len(bank)}")
    weights = validate_layer_weights(layer_weights, len(queries))
    for j, (q, b) in enumerate(zip(queries, bank)):
        if q.ndim != 2 or b.ndim != 2 or q.shape[1] != b.shape[1]:
            raise ValueError(f"layer {j}: queries {q.shape} and bank {b.shape} must be [q, e] and [N, e]")
        if q.shape[0] != queries[0].shape[0] or b.shape[0] != bank[0].shape[0]:
            raise ValueError(f"layer {j}: every layer needs the same queries and bank samples")
    n = bank[0].shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"m must be in [1, N] = [1, {n}], got {m}")
    if chunk_rows is None:
        chunk_rows = max(1, BANK_CHUNK_BYTES // (4 * sum(b.shape[1] for b in bank)))
    if block_size < 1 or chunk_rows < 1:
        raise ValueError(f"block_size and chunk_rows must be >= 1, got {block_size} and {chunk_rows}")
    dtype = queries[0].dtype
    weights = tuple(jnp.asarray(w, dtype) for w in weights)
    rows = min(chunk_rows, n)
    blocks = -(-rows // block_size)
    block_size = -(-rows // blocks)  # equal blocks: 10,000 rows are 3 x 3,334, not 3 x 4,096 with 2,288 padding
    if samples_minor is None:
        samples_minor = platform_of(queries[0]) == "cpu"
    num_queries = queries[0].shape[0]
    best = (jnp.full((num_queries, m), jnp.inf, dtype), jnp.full((num_queries, m), -1, jnp.int32))
    for start in range(0, n, rows):  # a loop over reads of the bank: one program for every chunk
        chunk = tuple(_bank_chunk(layer, start, rows) for layer in bank)
        best = _nearest(queries, chunk, weights, best, jnp.int32(start), jnp.int32(min(rows, n - start)),
                        block_size, bool(samples_minor))
    return best[1], best[0]
