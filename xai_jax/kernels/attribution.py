"""Attribution maps from activations and gradients at a tap (shared by XNN, ClaDec and WWW).

The gradients come from one ``jax.vjp`` through the backbone with a zero offset at the tap
(:func:`xai_jax.models.make_forward`), so every function here is a pure map over whole batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def grad_cam(activations: jax.Array, gradients: jax.Array) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017): ``L = ReLU(sum_k alpha_k A_k)`` with ``alpha_k = mean_ij dy/dA_kij``.

    Args:
      activations: ``[N, H, W, K]`` activations ``A`` of a convolutional tap.
      gradients: ``[N, H, W, K]`` gradients ``dy / dA`` of the explained score ``y`` (one per image).

    Returns:
      ``[N, H, W]`` non-negative maps at the tap's resolution.
    """
    alpha = jnp.mean(gradients, axis=(1, 2), keepdims=True)
    return jax.nn.relu(jnp.sum(alpha * activations, axis=-1))


@jax.jit
def normalise_maps(maps: jax.Array) -> jax.Array:
    """Scales each ``[..., H, W]`` map to [0, 1] by its min and max; a constant map becomes all zeros."""
    low = jnp.min(maps, axis=(-2, -1), keepdims=True)
    span = jnp.max(maps, axis=(-2, -1), keepdims=True) - low
    return jnp.where(span > 0, (maps - low) / jnp.where(span > 0, span, 1), 0)


def upsample_maps(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``[N, H, W]`` (or ``[N, n, H, W]``) maps to ``size = (H', W')``."""
    return jax.image.resize(maps, maps.shape[:-2] + tuple(size), method="bilinear")
