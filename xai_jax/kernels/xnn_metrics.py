"""The quantitative metrics of an explanation network (XNN paper section 4.2, DESIGN "XNN with SRAE").

- Faithfulness: :func:`f_reg` (mean absolute error of the approximation ``ybar`` of a logit ``yhat``) and
  :func:`f_cls` (share of samples whose multi-class decision survives replacing the logit by ``ybar``).
- Orthogonality: the correlation matrix ``P`` of the x-features' heatmaps over a dataset (the paper's are
  per-image distributions over pixels, :func:`pixel_distribution`)
  (:func:`heatmap_correlation`, or streamed with :func:`correlation_init` / :func:`correlation_update` /
  :func:`correlation_matrix`), then :func:`o1` ``= ||P||_F - sqrt(n)`` and :func:`o2` ``= -logdet(P)``;
  both are 0 when ``P`` is the identity.
- Locality: the entropy of each x-feature's heatmap mass over annotated parts (:func:`locality`). Parts
  are soft pixel regions ``P(part p | pixel)``: the Voronoi regions of part keypoints weighted by
  ``1 - normalised distance`` (paper Algorithm 1, :func:`voronoi_part_weights`, CUB), or object masks
  (:func:`mask_part_weights`, Places/ADE20K). A streamed pass sums :func:`part_probabilities` over the
  batches and ends with :func:`locality_from_histogram`.

Heatmaps are ``[N, n, H, W]``: per image, one non-negative map per x-feature; part weights are
``[N, P, H, W]`` on the same pixel grid.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The mean of ``values[M, ...]`` over the unmasked rows (leading axis); NaN if none is left."""
    if mask is None:
        return jnp.mean(values, axis=0)
    mask = mask.reshape(mask.shape + (1,) * (values.ndim - 1))
    return jnp.sum(jnp.where(mask, values, 0), axis=0) / jnp.sum(mask, axis=0)


@jax.jit
def f_reg(approx: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``F_reg = (1/M) sum_m |ybar_m - yhat_m|``, the regression faithfulness (paper section 4.2).

    Args:
      approx: ``[M]`` approximations ``ybar`` (or ``[M, c]``: then one value per output).
      target: the explained logits ``yhat``, shaped like ``approx``.
      mask: optional ``bool[M]``, False in padding rows.

    Returns:
      A scalar (``[c]`` for ``[M, c]`` inputs).
    """
    return _masked_mean(jnp.abs(approx - target), mask)


def _decision_kept(logits: jax.Array, class_index: jax.Array, approx: jax.Array) -> jax.Array:
    """``bool[M]``: whether ``argmax`` of each row is unchanged when ``logits[:, class_index] = approx``."""
    replaced = logits.at[:, class_index].set(approx.astype(logits.dtype))
    return jnp.argmax(replaced, axis=1) == jnp.argmax(logits, axis=1)


@jax.jit
def f_cls(logits: jax.Array, class_index: int | jax.Array, approx: jax.Array,
          mask: jax.Array | None = None) -> jax.Array:
    """``F_cls = c_r / M``, the classification faithfulness (paper section 4.2).

    ``c_r`` counts the samples whose multi-class prediction ``argmax_j logits[m, j]`` is the same before
    and after the explained class's logit ``logits[m, class_index]`` is replaced by its approximation
    ``ybar_m``. Ties go to the lower class index, as in ``argmax``, on both sides.

    Args:
      logits: ``[M, C]`` the classifier's pre-softmax outputs.
      class_index: the explained class, an int; or ``i32[K]`` to evaluate ``K`` one-vs-all explainers in
        one call (``vmap`` over classes).
      approx: ``[M]`` approximations of ``logits[:, class_index]``; ``[M, K]`` with ``K`` classes, column
        ``k`` approximating class ``class_index[k]``.
      mask: optional ``bool[M]``, False in padding rows.

    Returns:
      The share in ``[0, 1]``: a scalar, or ``[K]`` for ``K`` classes.
    """
    logits, class_index, approx = jnp.asarray(logits), jnp.asarray(class_index), jnp.asarray(approx)
    if class_index.ndim == 0:
        kept = _decision_kept(logits, class_index, approx)
    else:
        kept = jax.vmap(_decision_kept, in_axes=(None, 0, 1), out_axes=1)(logits, class_index, approx)
    return _masked_mean(kept.astype(jnp.float32), mask)


class CorrelationState(NamedTuple):
    """The running moments of a streamed heatmap-correlation pass over ``n`` x-features, a pytree.

    Attributes:
      count: ``f32[]``, the number of pixels seen.
      mean: ``f32[n]``, each x-feature's mean heatmap value.
      comoment: ``f32[n, n]``, the centred co-moments ``sum (h_l - mean_l)(h_l' - mean_l')``.
    """

    count: jax.Array
    mean: jax.Array
    comoment: jax.Array


def correlation_init(num_features: int) -> CorrelationState:
    """The empty accumulators of a streamed heatmap-correlation pass over ``num_features`` x-features.

    Args:
      num_features: ``n``.

    Returns:
      A :class:`CorrelationState` of zeros.
    """
    return CorrelationState(count=jnp.zeros((), jnp.float32), mean=jnp.zeros((num_features,), jnp.float32),
                            comoment=jnp.zeros((num_features, num_features), jnp.float32))


@jax.jit
def correlation_update(state: CorrelationState, heatmaps: jax.Array,
                       mask: jax.Array | None = None) -> CorrelationState:
    """Adds one batch of heatmaps to the correlation accumulators.

    Every pixel of every unmasked image is one observation of the ``n``-vector of x-feature heatmap
    values. The batch's own mean and centred co-moments are merged into the running ones with Chan et
    al.'s pairwise update, so the sums stay centred (no cancellation of large raw second moments in
    float32) however many batches the pass has. With ``N = count``, ``M`` the batch's pixel count and
    ``delta = mean_batch - mean``::

        count' = N + M,   mean' = mean + delta * M / (N + M),
        comoment' = comoment + comoment_batch + outer(delta, delta) * N * M / (N + M)

    Args:
      state: accumulators from :func:`correlation_init` (or a previous update).
      heatmaps: ``[B, n, H, W]``.
      mask: optional ``bool[B]``, False in padding rows.

    Returns:
      The updated state.
    """
    heatmaps = heatmaps.astype(jnp.float32)
    batch, n = heatmaps.shape[:2]
    rows = jnp.ones((batch,), bool) if mask is None else mask
    values = jnp.where(rows[:, None, None], heatmaps.reshape(batch, n, -1), 0)
    batch_count = jnp.sum(rows).astype(jnp.float32) * values.shape[2]
    batch_mean = jnp.sum(values, axis=(0, 2)) / jnp.maximum(batch_count, 1)
    centred = jnp.where(rows[:, None, None], values - batch_mean[None, :, None], 0)
    batch_comoment = jnp.einsum("bnp,bmp->nm", centred, centred)
    count = state.count + batch_count
    share = batch_count / jnp.maximum(count, 1)
    delta = batch_mean - state.mean
    return CorrelationState(count=count, mean=state.mean + delta * share,
                            comoment=state.comoment + batch_comoment + jnp.outer(delta, delta) * state.count * share)


@jax.jit
def correlation_matrix(state: CorrelationState) -> jax.Array:
    """``P = diag(C)^-1/2 C diag(C)^-1/2`` from the accumulated co-moments (paper section 4.2).

    The diagonal is exactly 1. An x-feature whose heatmaps are constant over the pass (e.g. a dead one,
    always 0) has no correlation with anything: its row and column are NaN, as in ``numpy.corrcoef``,
    and so are :func:`o1` and :func:`o2` of such a ``P``.

    Args:
      state: accumulators after a pass of :func:`correlation_update`.

    Returns:
      ``f32[n, n]``, symmetric.
    """
    comoment = state.comoment
    variance = jnp.diagonal(comoment)
    defined = variance > 0
    # Dividing by sqrt(C_ll * C_l'l') rather than multiplying inverse roots makes a duplicated heatmap's
    # entry exactly 1, so that o2 sees an exactly singular matrix.
    scale = jnp.sqrt(variance[:, None] * variance[None, :])
    both = defined[:, None] & defined[None, :]
    p = jnp.where(both, comoment / jnp.where(both, scale, 1), jnp.nan)
    return jnp.where(jnp.eye(comoment.shape[0], dtype=bool) & both, 1, p)


def heatmap_correlation(heatmaps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The correlation matrix ``P`` of the x-features' heatmaps over a dataset, in one call.

    The paper "treats attention maps of different x-features as different vectors" and correlates them
    over the dataset. This reads it as: x-feature ``l`` is one variable whose observations are its
    heatmap values at every pixel of every image, so each x-feature's heatmaps ``[N, H, W]`` are
    flattened into one vector of ``N * H * W`` values and ``P`` is the Pearson correlation of those ``n``
    vectors (the ``numpy.corrcoef`` of the ``[n, N*H*W]`` matrix). The values are correlated as given:
    pass the per-image normalised c-MWP maps ``S^{n,m}_{ij}`` to follow the paper; a common scale per
    x-feature does not change ``P``, a per-image one does.

    Args:
      heatmaps: ``[N, n, H, W]``.
      mask: optional ``bool[N]``, False in padding rows.

    Returns:
      ``f32[n, n]`` (see :func:`correlation_matrix` for constant heatmaps).
    """
    return correlation_matrix(correlation_update(correlation_init(heatmaps.shape[1]), heatmaps, mask))


@jax.jit
def o1(p: jax.Array) -> jax.Array:
    """``O1 = ||P||_F - sqrt(n)``: 0 for the identity, ``n - sqrt(n)`` when every pair is fully correlated.

    Args:
      p: ``[n, n]`` correlation matrix.

    Returns:
      A scalar (NaN if ``p`` has NaN entries).
    """
    return jnp.sqrt(jnp.sum(jnp.square(p))) - jnp.sqrt(jnp.asarray(p.shape[0], p.dtype))


@jax.jit
def o2(p: jax.Array) -> jax.Array:
    """``O2 = -logdet(P)``: 0 for the identity, growing as x-features correlate; ``+inf`` when singular.

    A correlation matrix is symmetric positive semi-definite with unit diagonal, so ``det(P) <= 1`` and
    ``O2 >= 0``. ``logdet`` is the sum of the logs of ``P``'s eigenvalues (``eigvalsh``; the same number
    as ``slogdet`` for a positive definite ``P``). ``P`` counts as singular, and ``O2`` is ``+inf``, when
    its smallest eigenvalue is at most ``n * eps * largest`` — the rank tolerance of
    ``numpy.linalg.matrix_rank`` — so that two duplicated heatmaps give ``+inf`` rather than the
    ``-log`` of a rounding error.

    Args:
      p: ``[n, n]`` correlation matrix.

    Returns:
      A scalar: ``+inf`` for a singular ``p``, NaN if ``p`` has NaN entries.
    """
    eigenvalues = jnp.linalg.eigvalsh(jnp.where(jnp.isnan(p), 0, p))
    tolerance = p.shape[0] * jnp.finfo(p.dtype).eps * jnp.max(jnp.abs(eigenvalues))
    singular = eigenvalues[0] <= tolerance
    value = -jnp.sum(jnp.log(jnp.where(singular, 1, eigenvalues)))
    return jnp.where(jnp.any(jnp.isnan(p)), jnp.nan, jnp.where(singular, jnp.inf, value))


@functools.partial(jax.jit, static_argnames=("height", "width"))
def voronoi_part_weights(keypoints: jax.Array, visible: jax.Array, height: int, width: int,
                         box: jax.Array | None = None) -> jax.Array:
    """``P(part p | pixel (i, j))`` for one image from its part keypoints (paper Algorithm 1, CUB).

    The visible keypoints split the image into Voronoi regions ``G_p`` (the pixels nearer to keypoint
    ``p`` than to any other visible keypoint; a pixel equidistant from several goes to the lowest part
    index). In its own region a pixel gets ``1 - d_ijp / max_{(i', j') in G_p} d_i'j'p``, where ``d_ijp``
    is its Euclidean distance to the keypoint: Algorithm 1's normalised distance is the distance divided
    by the largest distance within the part's region, so the farthest pixel of the region weighs 0 and
    a pixel on the keypoint 1 (a region whose largest distance is 0 weighs 1). Outside its region a part
    weighs 0 (``d_bar = 1``). An invisible part has no region and weighs 0 everywhere.

    With a bounding ``box`` the Voronoi regions are cut to the box (the paper partitions the bounding
    box), the normalising maximum runs over the region's pixels inside the box, and one more part,
    "context", weighs 1 outside the box and 0 inside (the paper's 16th CUB part).

    Coordinates: pixel ``(i, j)`` (row ``i``, column ``j``) sits at ``x = j``, ``y = i``; keypoints are
    ``(x, y)`` on that grid (CUB's ``part_locs.txt`` order), rescaled by the caller to the heatmaps'
    resolution. Use ``jax.vmap`` for a batch of images.

    Args:
      keypoints: ``[P, 2]`` part locations ``(x, y)``.
      visible: ``bool[P]``, False for parts not annotated in this image.
      height, width: the pixel grid (static).
      box: optional ``[4]`` ``(x_min, y_min, x_max, y_max)``, inclusive, on the same grid.

    Returns:
      ``f32[P, H, W]``, or ``f32[P + 1, H, W]`` with a box (context last).
    """
    keypoints = jnp.asarray(keypoints, jnp.float32)
    visible = jnp.asarray(visible, bool)
    rows = jnp.arange(height, dtype=jnp.float32)[None, :, None]
    columns = jnp.arange(width, dtype=jnp.float32)[None, None, :]
    squared = jnp.square(columns - keypoints[:, 0, None, None]) + jnp.square(rows - keypoints[:, 1, None, None])
    # The owner is chosen on squared distances: exact for integer keypoints, so ties go by index.
    owner = jnp.argmin(jnp.where(visible[:, None, None], squared, jnp.inf), axis=0)
    in_region = (owner[None] == jnp.arange(keypoints.shape[0])[:, None, None]) & visible[:, None, None]
    if box is not None:
        box = jnp.asarray(box, jnp.float32)
        inside = ((columns[0] >= box[0]) & (columns[0] <= box[2]) & (rows[0] >= box[1]) & (rows[0] <= box[3]))
        in_region = in_region & inside[None]
    distance = jnp.sqrt(squared)
    farthest = jnp.max(jnp.where(in_region, distance, 0), axis=(1, 2), keepdims=True)
    weights = jnp.where(in_region, 1 - distance / jnp.where(farthest > 0, farthest, 1), 0)
    if box is None:
        return weights
    return jnp.concatenate([weights, (~inside)[None].astype(weights.dtype)])


def mask_part_weights(masks: jax.Array, num_parts: int | None = None) -> jax.Array:
    """``P(object p | pixel)`` from object masks (Places/ADE20K): 1 on the object's pixels, 0 elsewhere.

    With it the part mass of a heatmap is the paper's ``P(Object_p | Neuron_n) = sum_{(i, j) in
    Object_p} S_ij``. Overlapping masks count a pixel towards every object that covers it; pixels of no
    object count towards none.

    Args:
      masks: ``[..., P, H, W]`` boolean (or 0/1) masks, one per object; or, with ``num_parts``, an integer
        label map ``[..., H, W]`` whose values in ``[0, num_parts)`` name the object of a pixel (anything
        else, e.g. -1, is no object).
      num_parts: the number of objects of a label map; None for masks.

    Returns:
      ``f32[..., P, H, W]``.
    """
    masks = jnp.asarray(masks)
    if num_parts is None:
        return (masks != 0).astype(jnp.float32)
    one_hot = jax.nn.one_hot(masks, num_parts, dtype=jnp.float32)  # out-of-range labels give all zeros
    return jnp.moveaxis(one_hot, -1, -3)


@jax.jit
def pixel_distribution(heatmaps: jax.Array) -> jax.Array:
    """``S_ij = C_ij / sum_ij C_ij``: each ``[H, W]`` map normalised to sum to 1 (paper section 4.2).

    This is the paper's "c-MWP normalized on each neuron for each image", ``P(pixel ij | neuron n)`` on one
    image, which both its orthogonality and its locality read. An all-zero map has no distribution and
    stays 0.

    Args:
      heatmaps: ``[..., H, W]`` non-negative maps ``C``.

    Returns:
      ``f32[..., H, W]``.
    """
    heatmaps = heatmaps.astype(jnp.float32)
    totals = jnp.sum(heatmaps, axis=(-2, -1), keepdims=True)
    return jnp.where(totals > 0, heatmaps / jnp.where(totals > 0, totals, 1), 0)


@jax.jit
def part_probabilities(heatmaps: jax.Array, part_weights: jax.Array) -> jax.Array:
    """``S^{n,m}_p = sum_{ij} P(part p | pixel ij) * S^{n,m}_{ij}`` for each image, x-feature and part.

    ``S^{n,m}_{ij} = C_ij / sum_ij C_ij`` is x-feature ``n``'s heatmap on image ``m`` normalised to sum
    to 1 (:func:`pixel_distribution`; paper section 4.2, Algorithm 1 line 9). An all-zero heatmap has no
    distribution: its row is 0 and adds nothing to the histogram.

    Args:
      heatmaps: ``[N, n, H, W]`` non-negative heatmaps ``C``.
      part_weights: ``[N, P, H, W]`` from :func:`voronoi_part_weights` or :func:`mask_part_weights`.

    Returns:
      ``f32[N, n, P]``; sum it over images (the padding rows left out) for :func:`locality_from_histogram`.
    """
    return jnp.einsum("bnhw,bphw->bnp", pixel_distribution(heatmaps), part_weights.astype(jnp.float32))


@jax.jit
def locality_from_histogram(histogram: jax.Array) -> jax.Array:
    """``H_n = -sum_p s_p log s_p`` with ``s_p = S_bar^n_p / sum_p S_bar^n_p`` (paper section 4.2), in nats.

    The paper's histogram ``S_bar^n_p`` is the mean of :func:`part_probabilities` over the images; a sum
    gives the same entropy. The natural log follows the paper ("roughly the log of the number of parts
    captured"): 0 for all mass on one part, ``log P`` for mass spread evenly over ``P`` parts;
    ``0 log 0 = 0``. An x-feature with no mass on any part has no distribution: NaN.

    Args:
      histogram: ``[n, P]`` non-negative part masses per x-feature.

    Returns:
      ``f32[n]``.
    """
    total = jnp.sum(histogram, axis=1, keepdims=True)
    share = histogram / jnp.where(total > 0, total, 1)
    entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(jnp.where(share > 0, share, 1)), 0), axis=1)
    return jnp.where(total[:, 0] > 0, entropy, jnp.nan)


@jax.jit
def locality(heatmaps: jax.Array, part_weights: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Each x-feature's locality: the entropy (nats) of its heatmap mass over the parts, in one call.

    :func:`part_probabilities` per image, averaged over the unmasked images, then
    :func:`locality_from_histogram`. Lower is more local; compare methods rather than read it as a
    number of parts.

    Args:
      heatmaps: ``[N, n, H, W]`` non-negative heatmaps.
      part_weights: ``[N, P, H, W]``.
      mask: optional ``bool[N]``, False in padding rows.

    Returns:
      ``f32[n]``.
    """
    probabilities = part_probabilities(heatmaps, part_weights)
    if mask is not None:
        probabilities = jnp.where(mask[:, None, None], probabilities, 0)
    return locality_from_histogram(jnp.sum(probabilities, axis=0))
