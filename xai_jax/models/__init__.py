"""Flax backbones chosen by name, each with its preprocessing and named taps."""

from xai_jax.models.registry import (ModelSpec, apply_model, get, init_variables, make_forward, names,
                                     preprocess, register, sequential_layers, tap_shapes)

# Importing a backbone's module registers it.
from xai_jax.models import cifar_resnet, cladec, efficientnet, mobilenet_v2, resnet, small_cnn, vgg  # noqa: F401,E402

__all__ = ["ModelSpec", "apply_model", "get", "init_variables", "make_forward", "names", "preprocess",
           "register", "sequential_layers", "tap_shapes"]
