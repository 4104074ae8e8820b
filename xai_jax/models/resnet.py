"""ImageNet ResNet-18 and ResNet-50 in torchvision's layout (He et al. 2016; ResNet v1.5).

A 7x7 stride-2 stem with batch norm, ReLU and a 3x3 stride-2 max pool, four stages of 64, 128, 256 and
512 planes (the first block of stages 2-4 has stride 2), global average pooling and a linear layer.
ResNet-18 stacks [2, 2, 2, 2] basic blocks; ResNet-50 stacks [3, 4, 6, 3] bottlenecks (expansion 4)
whose stride sits on the 3x3 convolution, as in torchvision ("v1.5"). Downsampling shortcuts are a 1x1
convolution with batch norm. torchvision state dicts convert exactly (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``/``.1``, ``fc``).

Taps: ``stem`` (after the max pool, 56x56x64 at 224), ``layer{s}.{b}`` after each block, ``layer1`` ..
``layer4`` after each stage, ``pool`` and ``logits``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.models.common import (IMAGENET_MEAN, IMAGENET_STD, basic_residual_branch, batch_norm,
                                   residual_stages, tap)
from xai_jax.models.registry import ModelSpec, register
from xai_jax.weights.layout import StateDict

_PAD1 = ((1, 1), (1, 1))
_PAD3 = ((3, 3), (3, 3))
_STAGE_PLANES = (64, 128, 256, 512)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch's ``MaxPool2d(3, stride=2, padding=1)`` on NHWC input.

    The border is padded with -inf (never 0), so a window that overlaps the border takes the maximum
    of the real pixels only, exactly as PyTorch does even when activations are negative.

    Args:
      x: ``[N, H, W, C]``.

    Returns:
      ``[N, ceil(H/2), ceil(W/2), C]`` for the odd/even sizes a stride-2 stem produces
      (``floor((H + 2 - 3) / 2) + 1``).
    """
    return jax.lax.reduce_window(
        x, jnp.array(-jnp.inf, x.dtype), jax.lax.max,
        window_dimensions=(1, 3, 3, 1), window_strides=(1, 2, 2, 1),
        padding=((0, 0), (1, 1), (1, 1), (0, 0)),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the first carries the stride."""

    planes: int
    stride: int
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = basic_residual_branch(x, self.planes, self.stride, train)
        return nn.relu(out + _shortcut(x, self.planes, self.stride, train))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride, torchvision v1.5), 1x1 expand by 4."""

    planes: int
    stride: int
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = nn.Conv(self.planes, (1, 1), 1, padding="VALID", use_bias=False, name="conv1")(x)
        out = nn.relu(batch_norm(train, "bn1")(out))
        out = nn.Conv(self.planes, (3, 3), self.stride, padding=_PAD1, use_bias=False, name="conv2")(out)
        out = nn.relu(batch_norm(train, "bn2")(out))
        out = nn.Conv(self.planes * 4, (1, 1), 1, padding="VALID", use_bias=False, name="conv3")(out)
        out = batch_norm(train, "bn3")(out)
        return nn.relu(out + _shortcut(x, self.planes * 4, self.stride, train))


def _shortcut(x, out_channels: int, stride: int, train: bool):
    """Identity, or torchvision's ``downsample`` (1x1 strided conv + BN) when the shape changes.

    Called inside a block's compact ``__call__``, so the layers are named within that block.
    """
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    x = nn.Conv(out_channels, (1, 1), stride, padding="VALID", use_bias=False, name="downsample_conv")(x)
    return batch_norm(train, "downsample_bn")(x)


class ResNet(nn.Module):
    """torchvision ResNet with ``block`` ("basic" or "bottleneck") repeated ``layers`` times per stage."""

    block: str = "basic"
    layers: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        x = nn.Conv(64, (7, 7), 2, padding=_PAD3, use_bias=False, name="conv1")(x)
        x = nn.relu(batch_norm(train, "bn1")(x))
        x = tap(self, "stem", max_pool_3x3_s2(x))
        x = residual_stages(self, x, block_cls, _STAGE_PLANES, self.layers, train)
        x = tap(self, "pool", jnp.mean(x, axis=(1, 2)))
        return tap(self, "logits", nn.Dense(self.num_classes, name="fc")(x))


def convert_resnet(block: str, layers: Sequence[int], what: str):
    """Returns a converter from a torchvision-layout ResNet state dict to Flax variables.

    Args:
      block: ``"basic"`` or ``"bottleneck"``.
      layers: blocks per stage.
      what: how error messages name the checkpoint.
    """
    convs = (1, 2) if block == "basic" else (1, 2, 3)

    def convert(tensors: Mapping[str, np.ndarray]) -> dict:
        sd = StateDict(tensors, what)
        params, stats = {"conv1": sd.conv("conv1")}, {}
        params["bn1"], stats["bn1"] = sd.batch_norm("bn1")
        for stage, blocks in enumerate(layers, start=1):
            for b in range(blocks):
                src, dst = f"layer{stage}.{b}", f"layer{stage}_{b}"
                p, s = {}, {}
                for i in convs:
                    p[f"conv{i}"] = sd.conv(f"{src}.conv{i}")
                    p[f"bn{i}"], s[f"bn{i}"] = sd.batch_norm(f"{src}.bn{i}")
                # The first block of a stage has a downsample branch when it changes the shape: always
                # for bottlenecks (64 -> 256 channels in stage 1), from stage 2 on for basic blocks.
                if b == 0 and (stage > 1 or block == "bottleneck"):
                    p["downsample_conv"] = sd.conv(f"{src}.downsample.0")
                    p["downsample_bn"], s["downsample_bn"] = sd.batch_norm(f"{src}.downsample.1")
                params[dst], stats[dst] = p, s
        params["fc"] = sd.linear("fc")
        sd.finish()
        return {"params": params, "batch_stats": stats}

    return convert


_CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2), "ResNet-18"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "ResNet-50"),
}

for _name, (_block, _layers, _title) in _CONFIGS.items():
    register(ModelSpec(
        name=_name,
        build=lambda num_classes, block=_block, layers=_layers: ResNet(block, layers, num_classes),
        input_shape=(224, 224, 3),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize=256,
        convert=convert_resnet(_block, _layers, f"{_title} checkpoint"),
        description=f"ImageNet {_title} (torchvision layout)",
    ))
