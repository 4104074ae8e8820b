"""ClaDec's passes over data: the explained layer's activations, reconstructions, the classifier's accuracy.

Each jitted function is built once per static argument set (``lru_cache`` on model, tap, neuron range and
decoder module), so a second pass over other data of the same shapes reuses the compiled program. Per-image
outputs go through :func:`xai_jax.rowstore.store`: NumPy arrays, or, given a folder, :class:`DiskRows` files
that everything after the pass reads a block at a time (host memory then does not grow with the dataset).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import engine, models, rowstore
from xai_jax.data.base import Source
from xai_jax.models.cladec import Decoder, refae_apply

if TYPE_CHECKING:
    from xai_jax.methods.cladec.result import ClaDecResult


def to_unit(spec, images: jax.Array) -> jax.Array:
    """Images at the model's input size with pixels in [0, 1]: the targets the decoders reconstruct."""
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)
    return models.preprocess(spec, images) * std + mean


def select_neurons(code, neurons: tuple[int, int] | None):
    """Channels ``[start, stop)`` of a code (its last axis), or the whole code for ``None``."""
    return code if neurons is None else code[..., neurons[0]:neurons[1]]


def subfolder(directory: str | None, name: str) -> str | None:
    """``directory/name``, created, for one pass's :class:`xai_jax.rowstore.DiskRows` files (their names are the
    outputs' keys, so each pass needs its own folder); None for None (in memory)."""
    if directory is None:
        return None
    path = os.path.join(directory, name)
    os.makedirs(path, exist_ok=True)
    return path


def channel_mean(x, block_bytes: int = 64 << 20) -> np.ndarray:
    """``[C]`` float32: the mean of ``x`` (``[n, ..., C]``, in memory or :class:`xai_jax.rowstore.DiskRows`) over
    every axis but the last, summed in float64 over row blocks of about ``block_bytes``."""
    row_bytes = max(1, rowstore.nbytes(x) // max(1, len(x)))
    block = max(1, block_bytes // (2 * row_bytes))  # the float64 copy of a block is twice its float32 size
    total = np.zeros(x.shape[-1], np.float64)
    for start in range(0, len(x), block):
        part = np.asarray(x[start:start + block], np.float64)
        total += part.reshape(-1, part.shape[-1]).sum(0)
    return (total / (int(np.prod(x.shape[:-1])))).astype(np.float32)


# Rows per call of the maps over stored arrays: the same for every call, so that each map compiles once.
_CHUNK = 256


@functools.lru_cache(maxsize=None)
def _logits_fn(model: str):
    """``fn(rows, variables) -> logits`` for :func:`engine.map_arrays`, one object per model (compiled once)."""
    forward = models.make_forward(model)

    def fn(rows, variables):
        return forward(rows["images"], variables)["logits"]

    return fn


def classifier_accuracy(model: str, variables, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the classifier ``model`` on ``images`` (uint8 or [0, 1] floats)."""
    logits = engine.map_arrays(_logits_fn(model), {"images": images}, variables, chunk=_CHUNK)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


@functools.lru_cache(maxsize=None)
def _activation_fn(model: str, tap: str):
    spec = models.get(model)
    forward = models.make_forward(model, (tap,))

    def fn(batch, variables):
        return {"x": to_unit(spec, batch["images"]), "code": forward(batch["images"], variables)[tap],
                "labels": batch["labels"]}

    return fn


def layer_activations(model: str, variables, source: Source, tap: str, *, batch_size: int = 256,
                      progress: bool | None = None, directory: str | None = None) -> dict[str, np.ndarray]:
    """One pass over ``source``.

    Args:
      model, variables: the classifier.
      source: labelled images.
      tap: the explained layer (the whole layer: a neuron range is taken where the codes are read).
      batch_size: images per step.
      progress: a progress bar.
      directory: an existing folder to keep the rows in as ``x.npy``, ``code.npy``, ``labels.npy``
        (:class:`xai_jax.rowstore.DiskRows`, read back a block at a time; the caller removes the folder), or
        None to hold them in memory.

    Returns:
      ``{"x": targets in [0, 1] at the model's input size, "code": the tap, "labels"}`` (NumPy or DiskRows).
    """
    return engine.collect_rows(_activation_fn(model, tap), source, variables, batch_size=batch_size,
                               desc=f"{tap} activations", progress=progress, directory=directory)


def _images_fn(batch, params):
    return {"images": batch["images"], "labels": batch["labels"]}


def source_images(source: Source, *, batch_size: int = 256, progress: bool | None = None,
                  directory: str | None = None) -> dict:
    """``{"images", "labels"}`` of ``source`` as it stores them (``source.all()``, through
    :func:`xai_jax.rowstore.store`: given an existing folder, :class:`xai_jax.rowstore.DiskRows` files that
    :func:`xai_jax.methods.cladec.train_classifier` reads a minibatch at a time)."""
    return engine.collect_rows(_images_fn, source, batch_size=batch_size, desc="images", progress=progress,
                               directory=directory)


@functools.lru_cache(maxsize=None)
def _decode_fn(model: str, tap: str, neurons, decoder: Decoder, with_refae: bool):
    """``fn(rows, (decoder_vars, refae_vars)) -> {"cladec"[, "refae"]}`` for :func:`engine.map_arrays`."""
    spec = models.get(model)
    encoder = spec.module()
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)

    def fn(batch, variables):
        decoder_vars, refae_vars = variables
        out = {"cladec": decoder.apply(decoder_vars, select_neurons(batch["code"], neurons))}
        if with_refae:
            out["refae"] = refae_apply(encoder, decoder, tap, refae_vars, (batch["x"] - mean) / std,
                                       neurons=neurons)[0]
        return out

    return fn


def reconstruct_codes(result: ClaDecResult, acts: Mapping[str, np.ndarray],
                      directory: str | None = None) -> dict[str, np.ndarray]:
    """Reconstructions of stored activations.

    Args:
      result: the trained decoder (and RefAE).
      acts: :func:`layer_activations` output (the whole layer; the result's neuron range is taken on device).
      directory: an existing folder for the reconstructions as ``cladec.npy``, ``refae.npy``
        (:class:`xai_jax.rowstore.DiskRows`), or None to return them in memory.

    Returns:
      ``{"cladec": ..., "refae": ... (if trained)}``, images in [0, 1].
    """
    fn = _decode_fn(result.model, result.tap, result.config.neurons, result.decoder_module,
                    result.refae is not None)
    return engine.map_arrays(fn, {"code": acts["code"], "x": acts["x"]}, (result.decoder, result.refae),
                             chunk=_CHUNK, directory=directory)


@functools.lru_cache(maxsize=None)
def reconstruct_fn(model: str, tap: str, neurons, decoder: Decoder, with_refae: bool):
    """``fn(images, classifier, decoder_vars, refae_vars) -> {"x", "cladec", "refae" (if trained), "logits"}``,
    jitted: raw images through the classifier to ``tap`` and back through the decoder (and through RefAE)."""
    spec = models.get(model)
    forward = models.make_forward(model, (tap,))
    encoder = spec.module()

    @jax.jit
    def fn(images, variables, decoder_vars, refae_vars):
        out = forward(images, variables)
        result = {"x": to_unit(spec, images), "cladec": decoder.apply(decoder_vars, select_neurons(out[tap], neurons)),
                  "logits": out["logits"]}
        if with_refae:
            result["refae"] = refae_apply(encoder, decoder, tap, refae_vars, models.preprocess(spec, images),
                                          neurons=neurons)[0]
        return result

    return fn
