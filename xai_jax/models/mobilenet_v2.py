"""MobileNetV2 (Sandler et al. 2018) in torchvision's layout, width multiplier 1.0.

``features`` is a 32-channel 3x3 stride-2 stem, 17 inverted-residual blocks built from the settings
(t, c, n, s) below, and a 1x1 convolution to 1280 channels, each followed by batch norm and ReLU6 (the
projection of a block has no activation; a block adds its input when stride is 1 and the width is
unchanged). Then global average pooling, dropout 0.2 and a linear layer. PyTorch's ``padding=1`` of the
3x3 convolutions is kept explicit, so torchvision checkpoints (``features.0.0.weight``,
``features.1.conv.0.0.weight``, ..., ``classifier.1.weight``) convert exactly.

Taps: ``features.{i}`` after each of the 19 feature modules (i = 0 .. 18, as torchvision indexes
``features``; 112x112x32 down to 7x7x1280 at 224x224), ``pool`` (1280) and ``logits``.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xai_jax.models.common import IMAGENET_MEAN, IMAGENET_STD, batch_norm, tap
from xai_jax.models.registry import ModelSpec, register
from xai_jax.weights.layout import StateDict

# (expansion t, output channels c, repeats n, first stride s) per stage
INVERTED_RESIDUAL_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                              (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT = 0.2


def block_configs() -> list[tuple[int, int, int, int]]:
    """``(in_channels, out_channels, stride, expand_ratio)`` of ``features.1`` .. ``features.17``."""
    configs, inp = [], STEM_CHANNELS
    for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
        for i in range(n):
            configs.append((inp, c, s if i == 0 else 1, t))
            inp = c
    return configs


class ConvBNReLU6(nn.Module):
    """torchvision's ``Conv2dNormActivation``: conv without bias, batch norm, ReLU6."""

    features: int
    kernel: int = 3
    stride: int = 1
    depthwise: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = (self.kernel - 1) // 2
        groups = x.shape[-1] if self.depthwise else 1
        x = nn.Conv(self.features, (self.kernel, self.kernel), self.stride, padding=((pad, pad), (pad, pad)),
                    feature_group_count=groups, use_bias=False, name="conv")(x)
        return jnp.clip(batch_norm(train, "bn")(x), 0.0, 6.0)


class InvertedResidual(nn.Module):
    out_channels: int
    stride: int
    expand_ratio: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        inp = x.shape[-1]
        hidden = int(round(inp * self.expand_ratio))
        out = x
        if self.expand_ratio != 1:
            out = ConvBNReLU6(hidden, kernel=1, name="expand")(out, train)
        out = ConvBNReLU6(hidden, stride=self.stride, depthwise=True, name="depthwise")(out, train)
        out = nn.Conv(self.out_channels, (1, 1), padding="VALID", use_bias=False, name="project")(out)
        out = batch_norm(train, "project_bn")(out)
        if self.stride == 1 and inp == self.out_channels:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2; dropout before the classifier is active only when ``train`` and a ``dropout`` rng
    is passed to ``apply``."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBNReLU6(STEM_CHANNELS, stride=2, name="features_0")(x, train)
        x = tap(self, "features.0", x)
        for i, (_, out, stride, expand) in enumerate(block_configs(), start=1):
            x = InvertedResidual(out, stride, expand, name=f"features_{i}")(x, train)
            x = tap(self, f"features.{i}", x)
        last = len(block_configs()) + 1
        x = ConvBNReLU6(LAST_CHANNELS, kernel=1, name=f"features_{last}")(x, train)
        x = tap(self, f"features.{last}", x)
        x = tap(self, "pool", jnp.mean(x, axis=(1, 2)))
        x = nn.Dropout(DROPOUT, deterministic=not (train and self.has_rng("dropout")))(x)
        return tap(self, "logits", nn.Dense(self.num_classes, name="classifier")(x))


def _conv_bn(sd: StateDict, prefix: str) -> tuple[dict, dict]:
    """A torchvision ``Conv2dNormActivation`` at ``prefix`` -> ``ConvBNReLU6`` params and stats."""
    bn_params, bn_stats = sd.batch_norm(f"{prefix}.1")
    return {"conv": sd.conv(f"{prefix}.0"), "bn": bn_params}, {"bn": bn_stats}


def convert_mobilenet_v2(tensors: Mapping[str, np.ndarray]) -> dict:
    """torchvision ``mobilenet_v2`` state dict -> Flax variables of :class:`MobileNetV2`.

    Args:
      tensors: the state dict (``features.0.0.weight`` ... ``classifier.1.bias``) as NumPy arrays.

    Returns:
      ``{"params": ..., "batch_stats": ...}``.

    Raises:
      XaiJaxError: a tensor is missing or left over (not a width-1.0 torchvision MobileNetV2).
    """
    sd = StateDict(tensors, "MobileNetV2 checkpoint")
    params, stats = {}, {}
    params["features_0"], stats["features_0"] = _conv_bn(sd, "features.0")
    for i, (_, _, _, expand) in enumerate(block_configs(), start=1):
        src = f"features.{i}.conv"
        p, s = {}, {}
        j = 0
        if expand != 1:
            p["expand"], s["expand"] = _conv_bn(sd, f"{src}.0")
            j = 1
        p["depthwise"], s["depthwise"] = _conv_bn(sd, f"{src}.{j}")
        p["project"] = sd.conv(f"{src}.{j + 1}")
        p["project_bn"], s["project_bn"] = sd.batch_norm(f"{src}.{j + 2}")
        params[f"features_{i}"], stats[f"features_{i}"] = p, s
    last = len(block_configs()) + 1
    params[f"features_{last}"], stats[f"features_{last}"] = _conv_bn(sd, f"features.{last}")
    params["classifier"] = sd.linear("classifier.1")
    sd.finish()
    return {"params": params, "batch_stats": stats}


register(ModelSpec(
    name="mobilenet_v2",
    build=lambda num_classes: MobileNetV2(num_classes=num_classes),
    input_shape=(224, 224, 3),
    num_classes=1000,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    resize=256,
    convert=convert_mobilenet_v2,
    description="MobileNetV2 width 1.0, ReLU6 (torchvision layout)",
))
