"""Weights: PyTorch/safetensors readers, converters to Flax layouts, orbax save/restore."""

from __future__ import annotations

import os

import jax
import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.weights.layout import StateDict, strip_prefix
from xai_jax.weights.store import is_checkpoint_dir, load_variables, save_variables
from xai_jax.weights.torch_reader import read_safetensors, read_torch_state_dict

_TORCH_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt", ".tar")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch or safetensors checkpoint into ``{name: array}`` with ``module.`` prefixes removed."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return strip_prefix(read_safetensors(path))
    return strip_prefix(read_torch_state_dict(path))


def load(spec, path: str | os.PathLike) -> dict:
    """Loads weights for the model ``spec`` from an orbax directory or a PyTorch/safetensors file.

    Args:
      spec: a :class:`xai_jax.models.ModelSpec`.
      path: a directory written by :func:`save_variables`, or a checkpoint file that ``spec.convert``
        understands.

    Returns:
      Flax variables (``params`` and, where the model has batch norm, ``batch_stats``).
    """
    path = os.fspath(path)
    if is_checkpoint_dir(path):
        variables, meta = load_variables(path)
        if meta.get("model") not in (None, spec.name):
            raise XaiJaxError(f"{path} holds weights of {meta['model']!r}, not {spec.name!r}")
        return variables
    if os.path.isdir(path):
        raise XaiJaxError(f"{path}: a directory but not an xai_jax checkpoint (expected variables/ inside)")
    if not os.path.exists(path):
        raise XaiJaxError(f"weights file not found: {path}")
    if spec.convert is None:
        raise XaiJaxError(f"{spec.name} has no PyTorch converter; pass an xai_jax checkpoint directory")
    variables = spec.convert(read_state_dict(path))
    return jax.tree.map(np.asarray, variables)


__all__ = ["StateDict", "load", "load_variables", "read_safetensors", "read_state_dict",
           "read_torch_state_dict", "save_variables", "strip_prefix"]
