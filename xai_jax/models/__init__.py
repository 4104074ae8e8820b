"""Flax backbones chosen by name, each with its preprocessing and named taps."""

from xai_jax.models.registry import (ModelSpec, apply_model, get, init_variables, names, preprocess,
                                     register, tap_shapes)
from xai_jax.models import cifar_resnet  # noqa: F401  (registers the models)

__all__ = ["ModelSpec", "apply_model", "get", "init_variables", "names", "preprocess", "register",
           "tap_shapes"]
