"""Reads PyTorch checkpoints without executing code from the file.

``torch.load(..., weights_only=True)`` unpickles only tensors, containers and primitive types, for both
the zip format (``torch.save`` since 1.6) and the legacy pickle format. A checkpoint that needs more (a
pickled ``nn.Module``, custom classes) is refused with one clear line instead of being run.
Safetensors files are read with the ``safetensors`` package, which never executes code.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from xai_jax.errors import XaiJaxError

# Keys under which training scripts commonly nest the weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def _require_torch():
    try:
        import torch
    except ImportError:
        raise XaiJaxError(
            "reading PyTorch checkpoints needs the torch extra: pip install 'xai-jax[torch]'"
        ) from None
    return torch


def _find_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    torch = _require_torch()
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj:
                return _find_state_dict(obj[key], path)
    raise XaiJaxError(f"{path}: no state dict of tensors found (top-level keys: "
                      f"{', '.join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__})")


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a ``.pt``/``.pth``/``.th``/``.bin`` checkpoint as ``{name: float32 NumPy array}``.

    Args:
      path: a zip-format or legacy-format ``torch.save`` file holding a state dict, possibly nested under
        ``state_dict``/``model``/... as training scripts save it.

    Returns:
      The tensors by name, on the CPU, as NumPy arrays.

    Raises:
      XaiJaxError: the file is missing, is not a checkpoint, or needs arbitrary code to unpickle.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise XaiJaxError(f"weights file not found: {path}")
    torch = _require_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError depending on damage
        text = str(err)
        # Only "Unsupported global" means a well-formed pickle that names code to run; garbage bytes also
        # fail the weights-only unpickler, with "Unsupported operand".
        if "Unsupported global" in text:
            culprit = text[text.index("Unsupported global"):].splitlines()[0].strip()
            raise XaiJaxError(f"{path}: refusing to load, the checkpoint needs code execution to unpickle "
                              f"({culprit}); save its state_dict() instead") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
        if "Unsupported operand" in text:
            first = "not a PyTorch pickle"
        raise XaiJaxError(f"{path}: not a readable PyTorch checkpoint ({first[:200]})") from None
    tensors = _find_state_dict(obj, path)
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in tensors.items()}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads a ``.safetensors`` file as ``{name: NumPy array}`` (float tensors as float32)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise XaiJaxError(f"weights file not found: {path}")
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise XaiJaxError("reading safetensors needs: pip install safetensors") from None
    try:
        tensors = load_file(path)
    except Exception as err:
        raise XaiJaxError(f"{path}: not a readable safetensors file ({err})") from None
    return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}
