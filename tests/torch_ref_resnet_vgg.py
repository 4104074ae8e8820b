"""Plain-PyTorch reference definitions of torchvision's ResNet-18/50 and VGG-11/16/19 and of
akamaster's CIFAR ResNet, for parity tests of the Flax backbones and their converters.

torchvision cannot be installed here, so the modules are re-typed from torchvision 0.2x
(``torchvision/models/resnet.py``, ``vgg.py``) and akamaster/pytorch_resnet_cifar10 (``resnet.py``)
with the same attribute names, so their ``state_dict()`` keys equal the originals' and real
checkpoints load with ``strict=True``. Also here: capturing taps with forward hooks, and randomising
batch-norm statistics so that batch norm is not the identity in a parity test.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# torchvision ResNet (v1.5: the stride of a bottleneck sits on its 3x3 convolution)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers: Sequence[int], num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


def resnet_taps(layers: Sequence[int]) -> dict[str, tuple[str, str, Callable | None]]:
    """Tap name -> (module name, "output", transform) of a torchvision ResNet, matching xai_jax's taps."""
    taps = {"stem": ("maxpool", "output", None)}
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            taps[f"layer{stage}.{b}"] = (f"layer{stage}.{b}", "output", None)
        taps[f"layer{stage}"] = (f"layer{stage}", "output", None)
    taps["pool"] = ("avgpool", "output", lambda t: torch.flatten(t, 1))
    taps["logits"] = ("fc", "output", None)
    return taps


# --------------------------------------------------------------------------------------------------
# torchvision VGG (no batch norm)

VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def _make_features(cfg) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG; ``hidden`` (4096 there) may be narrowed to keep a test small."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, hidden: int = 4096,
                 dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg(name: str, num_classes: int = 1000, hidden: int = 4096) -> VGG:
    return VGG(_make_features(VGG_CFGS[name]), num_classes, hidden)


def vgg_taps(name: str) -> dict[str, tuple[str, str, Callable | None]]:
    """Tap name -> (module name, "output", transform) of a torchvision VGG, matching xai_jax's taps."""
    taps = {}
    block, conv, index = 1, 1, 0
    for v in VGG_CFGS[name]:
        if v == "M":
            taps[f"block{block}"] = (f"features.{index}", "output", None)
            block, conv, index = block + 1, 1, index + 1
        else:
            taps[f"conv{block}_{conv}"] = (f"features.{index + 1}", "output", None)  # the ReLU
            conv, index = conv + 1, index + 2
    taps["fc6"] = ("classifier.1", "output", None)
    taps["fc7"] = ("classifier.4", "output", None)
    taps["logits"] = ("classifier.6", "output", None)
    return taps


# --------------------------------------------------------------------------------------------------
# akamaster/pytorch_resnet_cifar10 (option-A shortcuts)


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, num_blocks: Sequence[int], num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet([n, n, n], num_classes)


def cifar_resnet_taps(depth: int) -> dict[str, tuple[str, str, Callable | None]]:
    """Tap name -> (module name, "output"/"input", transform) of akamaster's CIFAR ResNet.

    Its stem ReLU and pooling are functional, so ``stem`` is ``bn1``'s output through a ReLU and ``pool``
    is the input of ``linear``.
    """
    taps = {"stem": ("bn1", "output", F.relu)}
    for stage in (1, 2, 3):
        for b in range((depth - 2) // 6):
            taps[f"layer{stage}.{b}"] = (f"layer{stage}.{b}", "output", None)
        taps[f"layer{stage}"] = (f"layer{stage}", "output", None)
    taps["pool"] = ("linear", "input", None)
    taps["logits"] = ("linear", "output", None)
    return taps


# --------------------------------------------------------------------------------------------------
# Helpers for parity tests


TapSources = Mapping[str, tuple[str, str, Callable | None]]


def capture_taps(model: nn.Module, x: torch.Tensor,
                 taps: TapSources) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Runs ``model`` on ``x`` under ``no_grad`` and records activations with forward hooks.

    Args:
      model: a module in eval mode.
      x: NCHW input.
      taps: tap name -> (name of a submodule, ``"output"`` or ``"input"``, optional transform).

    Returns:
      ``(logits, {tap: array})`` as NumPy, 4-D activations transposed to NHWC like xai_jax's taps.
    """
    modules = dict(model.named_modules())
    recorded: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(tap_name: str, which: str, transform):
        def hook(module, inputs, output):
            value = inputs[0] if which == "input" else output
            value = value.detach().clone()  # in-place ReLUs later in the net must not change it
            recorded[tap_name] = transform(value) if transform is not None else value
        return hook

    try:
        for tap_name, (module_name, which, transform) in taps.items():
            handles.append(modules[module_name].register_forward_hook(hook_for(tap_name, which, transform)))
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, value in recorded.items():
        value = value.numpy()
        out[name] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
    return logits.numpy(), out


def randomize_batch_norm(model: nn.Module, generator: torch.Generator, residual_scale: float = 1.0) -> None:
    """Gives every BatchNorm2d random affine parameters and running statistics, so that in eval mode it
    is a real per-channel affine map and a converter that swaps scale/var or mean/bias fails a test.

    Args:
      model: a module holding BatchNorm2d layers.
      generator: the source of randomness (seeded by the caller).
      residual_scale: multiplies the scale of the last batch norm of every residual branch; below 1 it
        keeps deep ResNets' activations O(1) instead of growing block by block, so that a fixed absolute
        tolerance means the same thing at every depth.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=generator) * 0.8 + 0.6)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(7)
        for m in model.modules():
            last = {BasicBlock: "bn2", CifarBasicBlock: "bn2", Bottleneck: "bn3"}.get(type(m))
            if last is not None:
                getattr(m, last).weight.mul_(residual_scale)


def state_dict_numpy(model: nn.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """``model.state_dict()`` as ``{prefix + name: NumPy array}``, views sharing the tensors' memory."""
    return {prefix + k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
