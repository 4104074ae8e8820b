"""A small CNN for the demo and for fast tests: scikit-learn's 8x8 digits, trained in seconds on a CPU.

conv3x3(32) - conv3x3(64) - maxpool2 - conv3x3(64) - global average pool - dense(128) - dense(classes),
ReLU throughout, no batch norm. Inputs are 8x8 greyscale scaled to [0, 1] and centred at 0.5.

Taps: ``conv1`` (8x8x32), ``conv2`` (8x8x64), ``pool2`` (4x4x64), ``conv3`` (4x4x64), ``pool`` (64),
``fc`` (128), ``logits``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xai_jax.models.common import tap
from xai_jax.models.registry import ModelSpec, register


class SmallCNN(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = tap(self, "conv1", nn.relu(nn.Conv(32, (3, 3), padding=1, name="conv1")(x)))
        x = tap(self, "conv2", nn.relu(nn.Conv(64, (3, 3), padding=1, name="conv2")(x)))
        x = tap(self, "pool2", nn.max_pool(x, (2, 2), (2, 2)))
        x = tap(self, "conv3", nn.relu(nn.Conv(64, (3, 3), padding=1, name="conv3")(x)))
        x = tap(self, "pool", jnp.mean(x, axis=(1, 2)))
        x = tap(self, "fc", nn.relu(nn.Dense(128, name="fc")(x)))
        return tap(self, "logits", nn.Dense(self.num_classes, name="head")(x))


def layer_list(variables, input_shape=None):
    """SmallCNN as a sequential layer list for c-MWP (``ModelSpec.sequential``): conv-relu-conv-relu-maxpool-
    conv-relu-mean-dense-relu-dense, and the index after each tap. Any input size (the layers are local)."""
    params = variables["params"]

    def conv(name):
        return {"kind": "conv", "w": params[name]["kernel"], "b": params[name]["bias"], "stride": (1, 1),
                "padding": ((1, 1), (1, 1))}

    def dense(name):
        return {"kind": "dense", "w": params[name]["kernel"], "b": params[name]["bias"]}

    relu = {"kind": "relu"}
    layers = [conv("conv1"), relu, conv("conv2"), relu, {"kind": "maxpool", "window": (2, 2), "stride": (2, 2)},
              conv("conv3"), relu, {"kind": "mean"}, dense("fc"), relu, dense("head")]
    ends = {"conv1": 2, "conv2": 4, "pool2": 5, "conv3": 7, "pool": 8, "fc": 10, "logits": 11}
    return layers, ends


register(ModelSpec(
    name="small_cnn",
    build=lambda num_classes: SmallCNN(num_classes=num_classes),
    input_shape=(8, 8, 1),
    num_classes=10,
    mean=(0.5,),
    std=(0.5,),
    description="small CNN for 8x8 greyscale digits (the demo model), trained with xai_jax.train",
    sequential=layer_list,
))
