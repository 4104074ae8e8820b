"""ImageNet VGG-11, VGG-16 and VGG-19 without batch norm, in torchvision's layout (Simonyan & Zisserman 2015).

Five blocks of 3x3 convolutions with ReLU (64, 128, 256, 512 and 512 channels), each followed by a 2x2
max pool; an adaptive average pool to 7x7; then fc6 (25088 -> 4096), ReLU, dropout, fc7 (4096 -> 4096),
ReLU, dropout and the classifier. torchvision state dicts (``features.N``, ``classifier.N``) convert
exactly; the first classifier weight is permuted because torchvision flattens NCHW and Flax NHWC.

Taps: ``conv{block}_{i}`` after each convolution's ReLU (``conv1_1`` .. ``conv5_3`` for VGG-16),
``block1`` .. ``block5`` after each max pool, ``fc6`` and ``fc7`` after their ReLU, and ``logits``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.models.common import IMAGENET_MEAN, IMAGENET_STD, tap
from xai_jax.models.registry import ModelSpec, register
from xai_jax.weights.layout import StateDict

_PAD1 = ((1, 1), (1, 1))
_BLOCK_WIDTHS = (64, 128, 256, 512, 512)
_POOLED = 7  # torchvision's AdaptiveAvgPool2d((7, 7))

# Convolutions per block: torchvision's configurations "A", "D" and "E".
CONVS_PER_BLOCK = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``[out_size, in_size]`` averaging matrix of PyTorch's adaptive average pooling along one axis.

    Output cell ``i`` averages inputs ``floor(i * in / out)`` to ``ceil((i + 1) * in / out) - 1``, so
    cells overlap when the input does not divide evenly and repeat inputs when it is smaller.
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil division
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """PyTorch's ``AdaptiveAvgPool2d(out_hw)`` on NHWC input.

    Args:
      x: ``[N, H, W, C]``.
      out_hw: output height and width.

    Returns:
      ``[N, out_h, out_w, C]``; ``x`` itself when it already has that size (the 224-pixel case).
    """
    height, width = x.shape[1:3]
    if (height, width) == tuple(out_hw):
        return x
    rows = jnp.asarray(adaptive_pool_matrix(height, out_hw[0]), x.dtype)
    cols = jnp.asarray(adaptive_pool_matrix(width, out_hw[1]), x.dtype)
    # HIGHEST keeps the averages in full float32 on accelerators whose default matmul rounds to bf16/tf32.
    return jnp.einsum("nhwc,ih,jw->nijc", x, rows, cols, precision=jax.lax.Precision.HIGHEST)


class VGG(nn.Module):
    """torchvision VGG without batch norm.

    Attributes:
      convs_per_block: number of 3x3 convolutions in each of the five blocks.
      num_classes: outputs of the last layer.
      hidden: width of fc6 and fc7 (4096 in torchvision; narrower only for tests).
    """

    convs_per_block: Sequence[int] = (2, 2, 3, 3, 3)
    num_classes: int = 1000
    hidden: int = 4096

    @nn.compact
    def __call__(self, x, train: bool = False):
        for block, (width, convs) in enumerate(zip(_BLOCK_WIDTHS, self.convs_per_block), start=1):
            for i in range(1, convs + 1):
                name = f"conv{block}_{i}"
                x = nn.Conv(width, (3, 3), 1, padding=_PAD1, name=name)(x)
                x = tap(self, name, nn.relu(x))
            x = tap(self, f"block{block}", nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID"))
        x = adaptive_avg_pool(x, (_POOLED, _POOLED))
        x = x.reshape(x.shape[0], -1)  # NHWC order; the converter permutes fc6 to match
        x = tap(self, "fc6", nn.relu(nn.Dense(self.hidden, name="fc6")(x)))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = tap(self, "fc7", nn.relu(nn.Dense(self.hidden, name="fc7")(x)))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return tap(self, "logits", nn.Dense(self.num_classes, name="fc8")(x))


def nchw_flatten_to_nhwc(weight: np.ndarray, channels: int, size: int) -> np.ndarray:
    """Permutes a PyTorch ``Linear`` weight that reads an NCHW-flattened map into a Flax NHWC kernel.

    Args:
      weight: ``[out, channels * size * size]``, inputs in ``(c, h, w)`` order.
      channels: channels of the flattened map.
      size: its height and width.

    Returns:
      ``[size * size * channels, out]``, inputs in ``(h, w, c)`` order.
    """
    out = weight.shape[0]
    per_output = np.ascontiguousarray(weight.reshape(out, channels, size * size).transpose(0, 2, 1))
    # A transposed view of the [out, (h, w, c)] copy: moving ``out`` last in the same copy scatters
    # writes and takes twice as long on VGG's 100M-element fc6; device_put and orbax take either order.
    return per_output.reshape(out, -1).T


def convert_vgg(convs_per_block: Sequence[int], what: str):
    """Returns a converter from a torchvision VGG state dict (no batch norm) to Flax variables.

    Args:
      convs_per_block: the configuration, e.g. ``(2, 2, 3, 3, 3)`` for VGG-16.
      what: how error messages name the checkpoint.
    """

    def convert(tensors: Mapping[str, np.ndarray]) -> dict:
        sd = StateDict(tensors, what)
        params = {}
        index = 0  # torchvision's features.N counts convolutions, ReLUs and pools alike
        for block, convs in enumerate(convs_per_block, start=1):
            for i in range(1, convs + 1):
                params[f"conv{block}_{i}"] = sd.conv(f"features.{index}", bias=True)
                index += 2  # conv, ReLU
            index += 1  # max pool
        fc6 = sd.linear("classifier.0")
        channels = _BLOCK_WIDTHS[-1]
        if fc6["kernel"].shape[0] != channels * _POOLED * _POOLED:
            raise XaiJaxError(f"{what}: classifier.0 takes {fc6['kernel'].shape[0]} inputs, expected "
                              f"{channels * _POOLED * _POOLED}; is it the right model?")
        fc6["kernel"] = nchw_flatten_to_nhwc(fc6["kernel"].T, channels, _POOLED)
        params["fc6"] = fc6
        params["fc7"] = sd.linear("classifier.3")
        params["fc8"] = sd.linear("classifier.6")
        sd.finish()
        return {"params": params}

    return convert


def layer_list(convs_per_block: Sequence[int]):
    """Returns ``ModelSpec.sequential`` for a VGG configuration: the network as a c-MWP layer list.

    conv-ReLU per convolution, a 2x2 max pool per block, the adaptive average pool to 7x7 as a
    ``pool_matrix`` (left out at 224x224, where it is the identity), flatten, fc6-ReLU, fc7-ReLU, fc8;
    dropout is the identity at inference. Every tap ends at the layer after which the model records it.
    """

    def sequential(variables, input_shape):
        params = variables["params"]
        layers, ends = [], {}
        height, width = input_shape[:2]
        for block, convs in enumerate(convs_per_block, start=1):
            for i in range(1, convs + 1):
                name = f"conv{block}_{i}"
                layers += [{"kind": "conv", "w": params[name]["kernel"], "b": params[name]["bias"],
                            "stride": (1, 1), "padding": _PAD1}, {"kind": "relu"}]
                ends[name] = len(layers)
            layers.append({"kind": "maxpool", "window": (2, 2), "stride": (2, 2)})
            ends[f"block{block}"] = len(layers)
            height, width = height // 2, width // 2
        if (height, width) != (_POOLED, _POOLED):
            layers.append({"kind": "pool_matrix", "rows": jnp.asarray(adaptive_pool_matrix(height, _POOLED)),
                           "cols": jnp.asarray(adaptive_pool_matrix(width, _POOLED))})
        layers.append({"kind": "flatten"})  # NHWC order, as the model (the converter permutes fc6)
        for name in ("fc6", "fc7", "fc8"):
            layers.append({"kind": "dense", "w": params[name]["kernel"], "b": params[name]["bias"]})
            if name != "fc8":
                layers.append({"kind": "relu"})
                ends[name] = len(layers)
        ends["logits"] = len(layers)
        return layers, ends

    return sequential


for _name, _convs in CONVS_PER_BLOCK.items():
    register(ModelSpec(
        name=_name,
        build=lambda num_classes, convs=_convs: VGG(convs, num_classes),
        input_shape=(224, 224, 3),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize=256,
        convert=convert_vgg(_convs, f"VGG-{_name[3:]} checkpoint"),
        description=f"ImageNet VGG-{_name[3:]} without batch norm (torchvision layout)",
        sequential=layer_list(_convs),
    ))
