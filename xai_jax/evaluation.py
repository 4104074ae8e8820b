"""Method-independent dataset passes of a backbone: per-image outputs, and confusion counts."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import engine
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.models import get, make_forward, tap_shapes


def check_taps(name: str, taps, num_classes: int | None = None) -> tuple[str, ...]:
    """Validates tap names against the model's list, with one clear error naming the valid ones."""
    valid = tap_shapes(name, num_classes)
    taps = tuple(taps)
    for t in taps:
        if t not in valid:
            raise XaiJaxError(f"{name} has no tap {t!r}; valid taps: {', '.join(valid)}")
    return taps


@functools.lru_cache(maxsize=None)
def _predict_fn(name: str, taps: tuple[str, ...], num_classes: int | None, compute_dtype: str | None):
    forward = make_forward(name, taps, num_classes, compute_dtype)

    def predict_batch(batch, variables):
        return {**forward(batch["images"], variables), "labels": batch["labels"]}

    return predict_batch


def predict(name: str, variables, source: Source, taps=(), *, num_classes: int | None = None,
            batch_size: int = 128, compute_dtype: str | None = None, progress: bool | None = None,
            directory: str | None = None) -> dict:
    """Runs model ``name`` over ``source`` and returns ``logits``, ``labels`` and each tap, in dataset order.

    Args:
      name, variables: the model and its weights.
      source: the images.
      taps: the activations to return besides the logits (``xai-jax info --model`` lists their shapes: taps of
        a large dataset are large).
      num_classes: outputs of the head if not the model's default.
      batch_size: images per step.
      compute_dtype: the backbone's dtype (e.g. ``"bfloat16"``; outputs stay float32).
      progress: show a progress bar (default: when stderr is a terminal).
      directory: an existing folder to write every array into as a ``.npy`` :class:`xai_jax.rowstore.DiskRows`
        (host memory then stays that of one batch), or None to return NumPy arrays.

    Returns:
      ``{"logits": [n, K], "labels": [n], tap: [n, ...]}``.
    """
    taps = check_taps(name, taps, num_classes)
    fn = _predict_fn(name, taps, num_classes, compute_dtype)
    return engine.collect_rows(fn, source, variables, batch_size=batch_size, desc=f"{name} predict",
                               progress=progress, directory=directory)


@functools.lru_cache(maxsize=None)
def _confusion_step(name: str, num_classes: int, compute_dtype: str | None):
    forward = make_forward(name, (), num_classes, compute_dtype)

    def confusion_step(counts, batch, variables):
        predicted = jnp.argmax(forward(batch["images"], variables)["logits"], axis=-1)
        return counts.at[batch["labels"], predicted].add(batch["mask"].astype(counts.dtype))

    return confusion_step


def confusion_counts(name: str, variables, source: Source, *, num_classes: int | None = None,
                     batch_size: int = 256, compute_dtype: str | None = None,
                     progress: bool | None = None) -> np.ndarray:
    """``counts[true, predicted]`` over ``source``, accumulated on device in one streamed pass."""
    classes = num_classes or get(name).num_classes
    step = _confusion_step(name, classes, compute_dtype)
    counts = engine.run(step, jnp.zeros((classes, classes), jnp.int32), source, variables,
                        batch_size=batch_size, desc=f"{name} confusion", progress=progress)
    return np.asarray(jax.device_get(counts))
