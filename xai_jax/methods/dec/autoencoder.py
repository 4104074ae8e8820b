"""DEC's autoencoder for one layer's activations: the normalisation, the encoder to the sphere, its training loss,
and the blocked embedding of host activations.

The networks are :class:`xai_jax.models.mlp.MLP` (``d -> hidden -> e`` and back); a layer's trained part is
``{"encoder": params, "norm": {"mean", "scale"}}``. Every jitted function is cached per shape-defining
hyper-parameters (widths, embedding size, radius), so that refitting a layer of the same size compiles nothing.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

from xai_jax import engine
from xai_jax.kernels.clustering import project_to_sphere
from xai_jax.models.mlp import MLP


def normalise(x, norm):
    """``(x - mean) / scale`` in float32 (``norm``: ``{"mean": [d], "scale": []}``)."""
    # Activations differ in scale between layers: centre each feature, divide by the layer's overall std,
    # so every autoencoder sees inputs of unit scale while the features keep their relative sizes.
    return (x.astype(jnp.float32) - norm["mean"]) / norm["scale"]


def normalisation(x: np.ndarray, block_bytes: int = 64 << 20) -> dict:
    """The layer's ``{"mean": [d], "scale": []}`` from host activations ``[n, d]`` (any float dtype, or
    :class:`xai_jax.rowstore.DiskRows`).

    The statistics are summed in float64 blocks of about ``block_bytes``, so that an array of several GiB is
    never converted whole.
    """
    n, dim = x.shape
    block = max(1, block_bytes // (8 * dim))
    mean = np.zeros(dim, np.float64)
    for s in range(0, n, block):
        mean += x[s:s + block].astype(np.float64).sum(0)
    mean /= n
    var = 0.0
    for s in range(0, n, block):
        var += float(np.square(x[s:s + block].astype(np.float64) - mean).sum())
    scale = max(np.sqrt(var / (n * dim)), 1e-6)
    return {"mean": jnp.asarray(mean, jnp.float32), "scale": jnp.asarray(scale, jnp.float32)}


@functools.lru_cache(maxsize=None)
def encoder(hidden: tuple[int, ...], embedding: int) -> MLP:
    """``d -> hidden -> embedding`` (the input size comes from the parameters)."""
    return MLP(hidden + (embedding,))


@functools.lru_cache(maxsize=None)
def decoder(hidden: tuple[int, ...], dim: int) -> MLP:
    """``embedding -> reversed(hidden) -> dim``."""
    return MLP(tuple(reversed(hidden)) + (dim,))


def encode(hidden: tuple[int, ...], embedding: int, radius: float, layer: dict, x):
    """Sphere-projected embeddings ``[n, e]`` of raw activations ``[n, d]``.

    Args:
      hidden, embedding, radius: the config's ``hidden``, ``embedding_size`` and ``radius``.
      layer: ``{"encoder": params, "norm": {"mean", "scale"}}``.
      x: the layer's flattened activations.
    """
    z = encoder(hidden, embedding).apply({"params": layer["encoder"]}, normalise(x, layer["norm"]))
    return project_to_sphere(z, radius)


@functools.lru_cache(maxsize=None)
def pretrain_loss(hidden: tuple[int, ...], embedding: int, dim: int):
    """The reconstruction loss of :func:`xai_jax.train.fit` (one function per shape, so ``fit`` jits it once):
    params ``{"encoder", "decoder"}``, model state ``{"norm"}``, batch ``{"x"}``."""
    enc, dec = encoder(hidden, embedding), decoder(hidden, dim)

    def loss_fn(params, model_state, batch, key):
        x = normalise(batch["x"], model_state["norm"])
        reconstruction = dec.apply({"params": params["decoder"]}, enc.apply({"params": params["encoder"]}, x))
        loss = jnp.mean(jnp.square(reconstruction - x))
        return loss, (model_state, {"loss": loss})

    return loss_fn


@functools.lru_cache(maxsize=None)
def embedder(hidden: tuple[int, ...], embedding: int, radius: float) -> Callable:
    """``fn({"x": [c, d]}, layer) -> [c, e]`` (:func:`encode`) for :func:`engine.map_arrays`, one object per
    architecture, so that every call reuses one compiled program."""
    def fn(rows, layer):
        return encode(hidden, embedding, radius, layer, rows["x"])

    return fn


def embed_rows(hidden: tuple[int, ...], embedding: int, radius: float, layer: dict, x: np.ndarray,
               chunk: int = 4096, chunk_bytes: int = 32 << 20) -> np.ndarray:
    """Sphere-projected embeddings ``[n, e]`` of host activations ``[n, d]`` (any float dtype, or
    :class:`xai_jax.rowstore.DiskRows`), ``chunk`` rows per call but no more than ``chunk_bytes`` of float32
    inputs: the float16 store is never converted whole."""
    chunk = max(1, min(chunk, chunk_bytes // (4 * x.shape[1])))
    return engine.map_arrays(embedder(tuple(hidden), int(embedding), float(radius)), {"x": x}, layer, chunk=chunk)
