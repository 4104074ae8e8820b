"""Flax backbones chosen by name, each with its preprocessing and named taps."""

from xai_jax.models.registry import (ModelSpec, apply_model, get, init_variables, make_forward, names,
                                     preprocess, register, tap_shapes)
from xai_jax.models import cifar_resnet  # noqa: F401  (registers the models)
from xai_jax.models import small_cnn  # noqa: F401

__all__ = ["ModelSpec", "apply_model", "get", "init_variables", "make_forward", "names", "preprocess",
           "register", "tap_shapes"]
from xai_jax.models import resnet, vgg  # noqa: F401  (registers resnet18/50 and vgg11/16/19)
from xai_jax.models import efficientnet, mobilenet_v2  # noqa: F401  (registers lite0, mobilenet_v2)
