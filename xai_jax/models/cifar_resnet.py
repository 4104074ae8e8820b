"""CIFAR ResNet-20/32/44/56 (He et al. 2016, section 4.2) with option-A shortcuts.

Layout and names follow akamaster/pytorch_resnet_cifar10, whose trained checkpoints convert exactly:
a 3x3 stem of 16 channels, three stages of n = (depth - 2) / 6 basic blocks of 16, 32 and 64 channels
(the first block of stages 2 and 3 has stride 2), global average pooling and a linear layer. The
option-A shortcut of a downsampling block is ``x[:, ::2, ::2]`` zero-padded by ``planes // 4`` channels
on each side.

Taps: ``stem`` (32x32x16), ``layer{s}.{b}`` after each block, ``layer{s}`` after each stage,
``pool`` (64) and ``logits``.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xai_jax.models.common import (IMAGENET_MEAN, IMAGENET_STD, basic_residual_branch, batch_norm,
                                   residual_stages, tap)
from xai_jax.models.registry import ModelSpec, register
from xai_jax.weights.layout import StateDict

_PAD1 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
    planes: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = basic_residual_branch(x, self.planes, self.stride, train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            pad = self.planes // 4
            shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
    depth: int = 56
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {self.depth}")
        blocks = (self.depth - 2) // 6
        x = nn.Conv(16, (3, 3), 1, padding=_PAD1, use_bias=False, name="conv1")(x)
        x = tap(self, "stem", nn.relu(batch_norm(train, "bn1")(x)))
        x = residual_stages(self, x, BasicBlock, (16, 32, 64), (blocks,) * 3, train)
        x = tap(self, "pool", jnp.mean(x, axis=(1, 2)))
        return tap(self, "logits", nn.Dense(self.num_classes, name="linear")(x))


def convert_cifar_resnet(depth: int):
    """Returns a converter from an akamaster-layout state dict of the given depth to Flax variables."""

    def convert(tensors: Mapping[str, np.ndarray]) -> dict:
        sd = StateDict(tensors, f"CIFAR ResNet-{depth} checkpoint")
        params, stats = {"conv1": sd.conv("conv1")}, {}
        params["bn1"], stats["bn1"] = sd.batch_norm("bn1")
        for stage in (1, 2, 3):
            for b in range((depth - 2) // 6):
                src, dst = f"layer{stage}.{b}", f"layer{stage}_{b}"
                p, s = {}, {}
                for i in (1, 2):
                    p[f"conv{i}"] = sd.conv(f"{src}.conv{i}")
                    p[f"bn{i}"], s[f"bn{i}"] = sd.batch_norm(f"{src}.bn{i}")
                params[dst], stats[dst] = p, s
        params["linear"] = sd.linear("linear")
        sd.finish()
        return {"params": params, "batch_stats": stats}

    return convert


for _depth in (20, 32, 44, 56):
    register(ModelSpec(
        name=f"cifar_resnet{_depth}",
        build=lambda num_classes, depth=_depth: CifarResNet(depth=depth, num_classes=num_classes),
        input_shape=(32, 32, 3),
        num_classes=10,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        convert=convert_cifar_resnet(_depth),
        description=f"CIFAR ResNet-{_depth}, option-A shortcuts (akamaster/pytorch_resnet_cifar10 layout)",
    ))
