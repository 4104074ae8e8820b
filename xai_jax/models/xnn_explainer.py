"""The XNN's explainer network: pure functions of a params dict (one class; ``vmap`` over a stacked class axis).

An explainer of ``S`` standardised tap features is an encoder ``S -> hidden... -> n`` (ReLU after the hidden
layers) giving the x-features ``E``, a linear head ``ybar = v.E + b``, and a mirrored decoder
``n -> ...hidden -> S`` (absent for the ``"nn"`` baseline, which has no reconstruction term). The Lasso
baseline's "explainer" is ``{"select": [n] unit indices, "head": ...}``: its x-features are the selected units.

Params are nested dicts ``{"encoder": {"layer0": {"w", "b"}, ...}, "head": {"w", "b"}, "decoder": ...}`` so
that :func:`xai_jax.kernels.attribution.explainer_layers` can read the encoder as a layer list.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp


def layer_names(block: Mapping[str, Any]) -> list[str]:
    """``layer0, layer1, ...`` of an encoder or decoder, in order (``layer10`` after ``layer9``)."""
    return sorted(block, key=lambda k: int(k.removeprefix("layer")))


def _dense_init(key, fan_in: int, fan_out: int) -> dict:
    # He-normal for ReLU layers; biases start at 0.
    return {"w": jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in),
            "b": jnp.zeros((fan_out,), jnp.float32)}


def init_explainer(key: jax.Array, num_inputs: int, hidden: Sequence[int], num_x_features: int,
                   decoder: bool = True) -> dict:
    """Parameters of one explainer.

    Args:
      key: a PRNG key.
      num_inputs: ``S``, the flattened tap's width.
      hidden: encoder widths before the x-layer (the decoder mirrors them).
      num_x_features: ``n``.
      decoder: also initialise the mirrored decoder (every variant but ``"nn"``).

    Returns:
      ``{"encoder", "head", ["decoder"]}``; the head's weights are ``N(0, 1/n)``, its bias 0.
    """
    widths = (num_inputs, *hidden, num_x_features)
    keys = jax.random.split(key, 2 * len(widths))
    params = {"encoder": {f"layer{i}": _dense_init(keys[i], a, b) for i, (a, b) in enumerate(zip(widths, widths[1:]))},
              "head": {"w": jax.random.normal(keys[-1], (num_x_features,), jnp.float32)
                       / jnp.sqrt(num_x_features), "b": jnp.zeros((), jnp.float32)}}
    if decoder:
        back = widths[::-1]
        params["decoder"] = {f"layer{i}": _dense_init(keys[len(widths) + i], a, b)
                             for i, (a, b) in enumerate(zip(back, back[1:]))}
    return params


def encode(params: Mapping[str, Any], z: jax.Array, x_activation: str = "linear") -> jax.Array:
    """x-features ``E = E_theta(z)``, ``[M, n]`` from standardised ``z[M, S]`` (ReLU after the hidden
    layers; after the x-layer too unless ``x_activation == "linear"``)."""
    x = z
    names = layer_names(params["encoder"])
    for i, name in enumerate(names):
        layer = params["encoder"][name]
        x = x @ layer["w"] + layer["b"]
        if i < len(names) - 1 or x_activation == "relu":
            x = jax.nn.relu(x)
    return x


def decode(params: Mapping[str, Any], x_features: jax.Array) -> jax.Array:
    """The reconstruction ``E^-1(E)``: ReLU hidden layers, linear output."""
    names = layer_names(params["decoder"])
    x = x_features
    for i, name in enumerate(names):
        layer = params["decoder"][name]
        x = x @ layer["w"] + layer["b"]
        if i < len(names) - 1:
            x = jax.nn.relu(x)
    return x


def select_units(params: Mapping[str, Any], z: jax.Array) -> jax.Array:
    """The Lasso baseline's x-features: the units ``params["select"]`` of ``z``, ``[M, n]``."""
    return jnp.take(z, params["select"], axis=1)


def x_features(variant: str, x_activation: str, params, z: jax.Array) -> jax.Array:
    """``E`` of one explainer (``params`` without class axis), ``[M, n]``: the selected units for the Lasso
    baseline, :func:`encode` for the network explainers."""
    return select_units(params, z) if variant == "lasso" else encode(params, z, x_activation)


@functools.partial(jax.jit, static_argnames=("variant", "x_activation"))
def stacked_x_features(variant: str, x_activation: str, params, z: jax.Array) -> jax.Array:
    """``E`` of every explainer of ``params`` (stacked on a leading class axis ``C``): ``[M, C, n]``."""
    return jax.vmap(functools.partial(x_features, variant, x_activation), in_axes=(0, None), out_axes=1)(params, z)
