"""Weights: PyTorch/safetensors readers, converters to Flax layouts, orbax save/restore."""

from __future__ import annotations

import functools
import numbers
import os
from typing import Any, Mapping

import jax
import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.weights.layout import StateDict, strip_prefix
from xai_jax.weights.store import is_checkpoint_dir, load_variables, save_variables
from xai_jax.weights.torch_reader import read_safetensors, read_torch_state_dict

_TORCH_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt", ".tar")

Shapes = dict[str, tuple[int, ...]]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch or safetensors checkpoint into ``{name: array}`` with ``module.`` prefixes removed."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return strip_prefix(read_safetensors(path))
    return strip_prefix(read_torch_state_dict(path))


def _leaf_shapes(tree: Any, prefix: str = "") -> Shapes:
    """``{"params/Dense_0/kernel": shape}`` for every array of a nested dict (lists and tuples by index)."""
    if isinstance(tree, Mapping):
        items = ((str(k), v) for k, v in tree.items())
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tuple(int(d) for d in np.shape(tree))}
    out: Shapes = {}
    for key, value in items:
        out.update(_leaf_shapes(value, f"{prefix}/{key}" if prefix else key))
    return out


def _abstract_shapes(spec, num_classes: int) -> Shapes:
    from xai_jax import models  # models import weights.layout: import here, not at the top

    abstract = jax.eval_shape(lambda: models.init_variables(spec, jax.random.key(0), num_classes))
    return _leaf_shapes(abstract)


@functools.lru_cache(maxsize=None)
def _registered_shapes(name: str, num_classes: int) -> Shapes:
    from xai_jax import models

    return _abstract_shapes(models.get(name), num_classes)


def _expected_shapes(spec, num_classes: int) -> Shapes:
    """The model's variables as ``{path: shape}``, from ``jax.eval_shape`` (no arrays are made)."""
    from xai_jax import models

    try:
        registered = models.get(spec.name) is spec
    except XaiJaxError:
        registered = False
    # Cached per (name, num_classes) for registered models; a spec built by hand is traced each time.
    return dict(_registered_shapes(spec.name, num_classes) if registered else _abstract_shapes(spec, num_classes))


def _check_num_classes(spec, num_classes) -> int:
    if num_classes is None:
        return spec.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise XaiJaxError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    return int(num_classes)


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _head_axis(spec, num_classes: int, leaf: str, want: tuple[int, ...]) -> int | None:
    """The axis of ``leaf`` whose size is the number of outputs, or ``None`` if it is not a head variable."""
    other = _expected_shapes(spec, num_classes + 1).get(leaf)
    if other is None or len(other) != len(want):
        return None
    axes = [i for i, (a, b) in enumerate(zip(want, other)) if a != b]
    return axes[0] if len(axes) == 1 else None


def _check_shapes(spec, variables: Any, num_classes: int, path: str) -> None:
    """Raises one line naming the first variable that is missing, unexpected or of the wrong shape."""
    want = _expected_shapes(spec, num_classes)
    got = _leaf_shapes(variables)
    model = f"{spec.name} with {num_classes} outputs"
    missing = [k for k in want if k not in got]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise XaiJaxError(f"{path}: has no {missing[0]}{more}, which {model} expects with shape "
                          f"{_fmt(want[missing[0]])}; are these the weights of the right model?")
    unexpected = [k for k in got if k not in want]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise XaiJaxError(f"{path}: holds {unexpected[0]}{more} of shape {_fmt(got[unexpected[0]])}, which "
                          f"{model} does not have; are these the weights of the right model?")
    wrong = [k for k in want if got[k] != want[k]]
    if not wrong:
        return
    heads = {k: _head_axis(spec, num_classes, k, want[k]) for k in wrong}

    def outputs_in_file(k):  # the file's number of outputs if ``k`` differs from the model only there
        axis = heads[k]
        if axis is None or len(got[k]) != len(want[k]):
            return None
        same_elsewhere = all(g == w for i, (g, w) in enumerate(zip(got[k], want[k])) if i != axis)
        return got[k][axis] if same_elsewhere else None

    # A mismatch in the body matters more than one in the head; of the head's, name the kernel (more axes).
    first = min(wrong, key=lambda k: (outputs_in_file(k) is not None, -len(want[k]), k))
    message = f"{path}: {first} has shape {_fmt(got[first])} but {model} expects {_fmt(want[first])}"
    outputs = outputs_in_file(first)
    if outputs is not None:
        message += f"; pass --num-classes {outputs} if the head has {outputs} outputs"
    raise XaiJaxError(message)


def load(spec, path: str | os.PathLike, num_classes: int | None = None) -> dict:
    """Loads weights for the model ``spec`` from an orbax directory or a PyTorch/safetensors file.

    Args:
      spec: a :class:`xai_jax.models.ModelSpec`.
      path: a directory written by :func:`save_variables`, or a checkpoint file that ``spec.convert``
        understands.
      num_classes: outputs of the model's head (default: the spec's).

    Returns:
      Flax variables (``params`` and, where the model has batch norm, ``batch_stats``), each of the shape
      that ``spec``'s module with ``num_classes`` outputs has.

    Raises:
      XaiJaxError: the file or directory is missing, damaged, of another model, or holds a variable that
        is missing, unexpected or of the wrong shape (one line naming the first; a head of another size
        suggests ``--num-classes``).
    """
    num_classes = _check_num_classes(spec, num_classes)
    path = os.fspath(path)
    if is_checkpoint_dir(path):
        variables, meta = load_variables(path)
        if meta.get("model") not in (None, spec.name):
            raise XaiJaxError(f"{path} holds weights of {meta['model']!r}, not {spec.name!r}")
    else:
        if os.path.isdir(path):
            raise XaiJaxError(f"{path}: a directory but not an xai_jax checkpoint (expected variables/ inside)")
        if not os.path.exists(path):
            raise XaiJaxError(f"weights file not found: {path}")
        if spec.convert is None:
            raise XaiJaxError(f"{spec.name} has no PyTorch converter; pass an xai_jax checkpoint directory")
        variables = jax.tree.map(np.asarray, spec.convert(read_state_dict(path)))
    _check_shapes(spec, variables, num_classes, path)
    return variables


__all__ = ["StateDict", "load", "load_variables", "read_safetensors", "read_state_dict",
           "read_torch_state_dict", "save_variables", "strip_prefix"]
