"""ClaDec kernels: the decoder loss (eq. 1), the comprehensibility/fidelity measures and occlusion relevance.

Paper: Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts" (``cladec.txt``):
eq. (1) ``Loss_ClaDec = (1 - alpha) sum_i (X_i - Xhat_i)^2 + alpha Loss(C(Xhat), Y)``; RefAE's loss is the first
term alone; section 5 ``dRec = mean ||X - Xhat_E|| - ||X - Xhat_R||`` and ``dAcc = Acc(C_eval^ClaDec) -
Acc(C_eval^RefAE)``; section 6.6 occlusion relevance ``R^ClaDec(O) = sum_{i in O} ||Xhat^occ_i - Xhat_i||^2`` and
``R^GradCAM(O) = sum_{i in O} S_i(X)`` over 16 squares of 12x12 with corners in {0, 6, 12, 20}^2.

All functions are pure ``jnp`` over whole batches; the 16 occlusions are one leading axis, never a loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

OCCLUSION_CORNERS = (0, 6, 12, 20)
OCCLUSION_SIZE = 12


def reconstruction_loss(images: jax.Array, reconstructions: jax.Array, reduction: str = "sum") -> jax.Array:
    """Per-image reconstruction loss ``sum_i (X_i - Xhat_i)^2`` (eq. 1, first term; RefAE's whole loss).

    Args:
      images: ``[N, H, W, C]`` targets ``X`` in [0, 1].
      reconstructions: ``[N, H, W, C]`` ``Xhat``.
      reduction: ``"sum"`` over pixels and channels (the paper's eq. 1) or ``"mean"`` (the authors' code,
        ``nn.MSELoss``, which is what tables 2-3 report).

    Returns:
      ``[N]`` losses.
    """
    sq = jnp.square(images.astype(jnp.float32) - reconstructions.astype(jnp.float32))
    axes = tuple(range(1, sq.ndim))
    return jnp.mean(sq, axis=axes) if reduction == "mean" else jnp.sum(sq, axis=axes)


def cladec_loss(images: jax.Array, reconstructions: jax.Array, logits: jax.Array | None, labels: jax.Array,
                alpha: float, reduction: str = "sum") -> tuple[jax.Array, dict]:
    """The ClaDec decoder loss, eq. (1), averaged over the batch.

    Args:
      images: ``[N, H, W, C]`` targets in [0, 1].
      reconstructions: ``[N, H, W, C]`` decoder outputs ``Xhat_E``.
      logits: ``[N, K]`` the frozen classifier's logits on ``Xhat_E`` (``None`` when ``alpha == 0``).
      labels: ``[N]`` int true classes ``Y``.
      alpha: trade-off in [0, 1]; 0 is the base method (reconstruction only).
      reduction: of the reconstruction term, see :func:`reconstruction_loss`.

    Returns:
      ``(loss, {"loss", "reconstruction", "classification"})``, batch means.
    """
    rec = jnp.mean(reconstruction_loss(images, reconstructions, reduction))
    if logits is None:
        ce = jnp.zeros((), jnp.float32)
    else:
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        ce = -jnp.mean(jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1))
    loss = (1.0 - alpha) * rec + alpha * ce
    return loss, {"loss": loss, "reconstruction": rec, "classification": ce}


def reconstruction_distance(images: jax.Array, reconstructions: jax.Array) -> jax.Array:
    """``[N]`` Euclidean distances ``||X - Xhat||`` (the norm inside dRec, section 5)."""
    diff = (images.astype(jnp.float32) - reconstructions.astype(jnp.float32)).reshape(images.shape[0], -1)
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1))


def d_rec(images: jax.Array, cladec: jax.Array, refae: jax.Array) -> jax.Array:
    """``dRec = (1/|D|) sum_X ||X - Xhat_E|| - ||X - Xhat_R||`` (section 5): > 0 when ClaDec reconstructs worse."""
    return jnp.mean(reconstruction_distance(images, cladec) - reconstruction_distance(images, refae))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 accuracy of ``[N, K]`` logits."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def d_acc(logits_cladec: jax.Array, logits_refae: jax.Array, labels: jax.Array) -> jax.Array:
    """``dAcc = Acc(C_eval^ClaDec) - Acc(C_eval^RefAE)`` from the two evaluation classifiers' test logits."""
    return accuracy(logits_cladec, labels) - accuracy(logits_refae, labels)


@functools.lru_cache(maxsize=None)
def occlusion_masks(height: int = 32, width: int = 32, size: int = OCCLUSION_SIZE,
                    corners: tuple[int, ...] = OCCLUSION_CORNERS) -> np.ndarray:
    """``[len(corners)^2, H, W]`` boolean squares of ``size`` with upper-left corners ``(y, x)`` in ``corners``^2,
    row-major in ``y`` then ``x`` (section 6.6: 16 squares of 12x12 at {0, 6, 12, 20})."""
    masks = np.zeros((len(corners) ** 2, height, width), bool)
    for k, (y, x) in enumerate((y, x) for y in corners for x in corners):
        masks[k, y:y + size, x:x + size] = True
    return masks


def occlude(images: jax.Array, masks: jax.Array, fill: jax.Array) -> jax.Array:
    """All occlusions of every image: ``[M, N, H, W, C]`` where square ``m`` is replaced by ``fill``.

    Args:
      images: ``[N, H, W, C]``.
      masks: ``[M, H, W]`` boolean.
      fill: scalar or ``[C]``, the training mean (a grey tone).
    """
    fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), images.shape[-1:])
    return jnp.where(masks[:, None, :, :, None], fill, images[None])


def cladec_relevance(reconstruction: jax.Array, occluded_reconstructions: jax.Array, masks: jax.Array) -> jax.Array:
    """``R^ClaDec(O) = sum_{i in O} ||Xhat^occ_i - Xhat_i||^2`` (section 6.6), per image and occlusion.

    Args:
      reconstruction: ``[N, H, W, C]`` ClaDec reconstruction of the unoccluded image.
      occluded_reconstructions: ``[M, N, H, W, C]`` reconstructions of the ``M`` occluded images.
      masks: ``[M, H, W]`` the occluded squares.

    Returns:
      ``[N, M]`` relevances.
    """
    sq = jnp.sum(jnp.square(occluded_reconstructions - reconstruction[None]), axis=-1)  # [M, N, H, W]
    return jnp.sum(sq * masks[:, None], axis=(-2, -1)).T


def gradcam_relevance(saliency: jax.Array, masks: jax.Array) -> jax.Array:
    """``R^GradCAM(O) = sum_{i in O} S_i(X)`` with ``S`` the [0, 1]-normalised Grad-CAM map at image size.

    Args:
      saliency: ``[N, H, W]`` normalised maps.
      masks: ``[M, H, W]``.

    Returns:
      ``[N, M]`` relevances.
    """
    return jnp.einsum("nhw,mhw->nm", saliency, masks.astype(saliency.dtype))


def select_min_max(relevance: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Indices of the least and the most relevant occlusion per image, ties broken uniformly at random.

    Args:
      relevance: ``[N, M]``.
      key: randomness of the tie-breaking.

    Returns:
      ``(argmin, argmax)``, each ``[N]`` int32: among the occlusions equal to the row's minimum (maximum), the
      one with the largest of independent uniform draws.
    """
    u_min, u_max = jax.random.uniform(key, (2, *relevance.shape))
    low = relevance == jnp.min(relevance, axis=-1, keepdims=True)
    high = relevance == jnp.max(relevance, axis=-1, keepdims=True)
    pick = lambda ties, u: jnp.argmax(jnp.where(ties, u, -1.0), axis=-1).astype(jnp.int32)
    return pick(low, u_min), pick(high, u_max)
