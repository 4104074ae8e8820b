"""Pieces shared by the backbones: recording taps and PyTorch-compatible layers."""

from __future__ import annotations

import flax.linen as nn

from xai_jax.models.registry import TAPS, TAPS_VARIABLE


def tap(module: nn.Module, name: str, x):
    """Records ``x`` as the tap ``name`` of ``module`` (a no-op unless the caller asked for taps).

    Only the top-level backbone records taps, so the names are flat ("layer1", "layer2.0", "pool").
    All taps live in one sown dict because sown variables share a namespace with submodules, and a tap
    is often best named like the layer it follows ("conv1"). Returns ``x`` so it can wrap an expression.
    """
    module.sow(TAPS, TAPS_VARIABLE, {name: x}, init_fn=dict, reduce_fn=lambda taps, new: {**taps, **new})
    return x


def batch_norm(train: bool, name: str | None = None, epsilon: float = 1e-5, momentum: float = 0.9):
    """BatchNorm with PyTorch's defaults (eps 1e-5, running-average momentum 0.1 in PyTorch's sense)."""
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, name=name)
