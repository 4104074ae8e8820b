"""Pieces shared by the backbones: recording taps and PyTorch-compatible layers."""

from __future__ import annotations

import flax.linen as nn

from xai_jax.models.registry import OFFSETS, TAPS, TAPS_VARIABLE

# torchvision's ImageNet normalisation, also used by akamaster's CIFAR ResNets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tap(module: nn.Module, name: str, x):
    """Records ``x`` as the tap ``name`` of ``module`` (a no-op unless the caller asked for taps).

    Only the top-level backbone records taps, so the names are flat ("layer1", "layer2.0", "pool").
    All taps live in one sown dict because sown variables share a namespace with submodules, and a tap
    is often best named like the layer it follows ("conv1"). Returns ``x`` so it can wrap an expression;
    callers must continue from the returned value, because an offset the caller passed for this tap
    (``apply_model(..., offsets=...)``) is added here: the gradient with respect to a zero offset is the
    gradient with respect to the activation, which is how attribution methods differentiate at a tap.
    """
    if module.has_variable(OFFSETS, TAPS_VARIABLE):
        offsets = module.get_variable(OFFSETS, TAPS_VARIABLE)
        if name in offsets:
            x = x + offsets[name].astype(x.dtype)
    module.sow(TAPS, TAPS_VARIABLE, {name: x}, init_fn=dict, reduce_fn=lambda taps, new: {**taps, **new})
    return x


BATCH_NORM_EPSILON = 1e-5  # PyTorch's default, which every converted checkpoint was trained with
BATCH_NORM_MOMENTUM = 0.9  # flax's convention for PyTorch's default momentum 0.1


def batch_norm(train: bool, name: str | None = None, epsilon: float = BATCH_NORM_EPSILON,
               momentum: float = BATCH_NORM_MOMENTUM):
    """BatchNorm with PyTorch's defaults (eps 1e-5, running-average momentum 0.1 in PyTorch's sense)."""
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon, name=name)


def residual_stages(module: nn.Module, x, make_block, stage_planes, blocks_per_stage, train: bool):
    """The stages of a ResNet: block ``b`` of stage ``s`` is the submodule ``layer{s}_{b}``, with stride 2 on
    the first block of every stage but the first, tapped as ``layer{s}.{b}`` and the stage as ``layer{s}``.

    Args:
      module: the backbone recording the taps.
      x: the stem's output.
      make_block: ``make_block(planes, stride, name=...)`` -> a module called as ``block(x, train)``.
      stage_planes: width of each stage.
      blocks_per_stage: number of blocks of each stage.
      train: batch-norm mode.
    """
    for stage, (planes, blocks) in enumerate(zip(stage_planes, blocks_per_stage), start=1):
        for b in range(blocks):
            stride = 2 if stage > 1 and b == 0 else 1
            x = make_block(planes, stride, name=f"layer{stage}_{b}")(x, train)
            x = tap(module, f"layer{stage}.{b}", x)
        x = tap(module, f"layer{stage}", x)
    return x


def basic_residual_branch(x, planes: int, stride: int, train: bool):
    """The residual branch of a ResNet basic block: conv3x3 (stride) - BN - ReLU - conv3x3 - BN.

    Called inside a block's compact ``__call__``, so its submodules (``conv1``, ``bn1``, ``conv2``, ``bn2``)
    belong to that block; the CIFAR and torchvision basic blocks differ only in their shortcut.
    """
    pad = ((1, 1), (1, 1))
    out = nn.Conv(planes, (3, 3), stride, padding=pad, use_bias=False, name="conv1")(x)
    out = nn.relu(batch_norm(train, "bn1")(out))
    out = nn.Conv(planes, (3, 3), 1, padding=pad, use_bias=False, name="conv2")(out)
    return batch_norm(train, "bn2")(out)
