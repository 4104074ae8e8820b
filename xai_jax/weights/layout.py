"""PyTorch -> Flax parameter layouts, and a state-dict reader that insists every tensor is used.

PyTorch stores convolutions as ``[O, I, kh, kw]`` and linear layers as ``[out, in]``; Flax wants
``[kh, kw, I, O]`` and ``[in, out]``. Batch norm maps weight/bias/running stats to
scale/bias/mean/var.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from xai_jax.errors import XaiJaxError

_IGNORED_SUFFIXES = ("num_batches_tracked",)


class StateDict:
    """A PyTorch state dict consumed tensor by tensor, so a converter cannot silently skip weights.

    Args:
      tensors: name -> array (NumPy or anything ``np.asarray`` takes).
      what: how to name the checkpoint in error messages.
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], what: str = "checkpoint"):
        self._tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()
                         if not k.endswith(_IGNORED_SUFFIXES)}
        self._what = what

    def take(self, name: str) -> np.ndarray:
        try:
            return self._tensors.pop(name)
        except KeyError:
            raise XaiJaxError(f"{self._what} has no tensor {name!r}; is it the right model?") from None

    def has(self, name: str) -> bool:
        return name in self._tensors

    def conv(self, prefix: str, bias: bool = False) -> dict:
        """``prefix.weight`` ``[O, I/g, kh, kw]`` -> ``{"kernel": [kh, kw, I/g, O]}`` (+ bias)."""
        out = {"kernel": self.take(f"{prefix}.weight").transpose(2, 3, 1, 0)}
        if bias:
            out["bias"] = self.take(f"{prefix}.bias")
        return out

    def linear(self, prefix: str, bias: bool = True) -> dict:
        out = {"kernel": self.take(f"{prefix}.weight").T}
        if bias:
            out["bias"] = self.take(f"{prefix}.bias")
        return out

    def batch_norm(self, prefix: str) -> tuple[dict, dict]:
        """Returns ``(params, batch_stats)`` of one batch-norm layer."""
        params = {"scale": self.take(f"{prefix}.weight"), "bias": self.take(f"{prefix}.bias")}
        stats = {"mean": self.take(f"{prefix}.running_mean"), "var": self.take(f"{prefix}.running_var")}
        return params, stats

    def finish(self) -> None:
        """Raises if any tensor was not converted (a sign of the wrong model or depth)."""
        if self._tensors:
            extra = sorted(self._tensors)
            raise XaiJaxError(
                f"{self._what} has {len(extra)} tensors the model does not use, e.g. {extra[0]!r}; "
                "is it the right model?"
            )


def strip_prefix(tensors: Mapping[str, np.ndarray], prefix: str = "module.") -> dict[str, np.ndarray]:
    """Drops a DataParallel-style prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
