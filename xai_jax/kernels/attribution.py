"""Attribution maps from activations and gradients at a tap (shared by XNN, ClaDec and WWW).

The gradients come from one ``jax.vjp`` through the backbone with a zero offset at the tap
(:func:`xai_jax.models.make_forward`), so every function here is a pure map over whole batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def grad_cam(activations: jax.Array, gradients: jax.Array) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017): ``L = ReLU(sum_k alpha_k A_k)`` with ``alpha_k = mean_ij dy/dA_kij``.

    Args:
      activations: ``[N, H, W, K]`` activations ``A`` of a convolutional tap.
      gradients: ``[N, H, W, K]`` gradients ``dy / dA`` of the explained score ``y`` (one per image).

    Returns:
      ``[N, H, W]`` non-negative maps at the tap's resolution.
    """
    alpha = jnp.mean(gradients, axis=(1, 2), keepdims=True)
    return jax.nn.relu(jnp.sum(alpha * activations, axis=-1))


@jax.jit
def normalise_maps(maps: jax.Array) -> jax.Array:
    """Scales each ``[..., H, W]`` map to [0, 1] by its min and max; a constant map becomes all zeros."""
    low = jnp.min(maps, axis=(-2, -1), keepdims=True)
    span = jnp.max(maps, axis=(-2, -1), keepdims=True) - low
    return jnp.where(span > 0, (maps - low) / jnp.where(span > 0, span, 1), 0)


def upsample_maps(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``[N, H, W]`` (or ``[N, n, H, W]``) maps to ``size = (H', W')``."""
    return jax.image.resize(maps, maps.shape[:-2] + tuple(size), method="bilinear")


# --------------------------------------------------------------------------------------------------------
# Contrastive marginal winning probability (excitation backprop; Zhang et al. 2016, "Top-down neural
# attention by excitation backprop"), the heatmaps of the XNN paper.
#
# How c-MWP reads a network: as a *sequential layer list*, each layer a dict with a "kind":
#   {"kind": "dense", "w": [I, O], "b": [O]}          {"kind": "conv", "w": [kh, kw, I, O], "b": [O],
#   {"kind": "relu"}                                   "stride": (s, s), "padding": ((p, p), (p, p))}
#   {"kind": "maxpool", "window": (k, k), "stride": (s, s)}   {"kind": "avgpool", "window": ..., "stride": ...}
#   {"kind": "mean"}  (global average pool NHWC -> NC)  {"kind": "flatten"}
#   {"kind": "pool_matrix", "rows": [h, H], "cols": [w, W]}  ([N, H, W, C] -> [N, h, w, C], out[i, j] =
#     sum_yx rows[i, y] cols[j, x] in[y, x]; non-negative matrices, e.g. PyTorch's adaptive average pool)
#   {"kind": "batchnorm", "scale", "bias", "mean", "var", "eps"}  (folded into the linear layer before it)
# Backbones declare their list next to their definition (``ModelSpec.sequential``, read with
# :func:`xai_jax.models.sequential_layers`); this module knows no model. Residual networks are not
# sequential: for them use Grad-CAM (:func:`grad_cam`). The explainer's own dense layers are appended to a
# backbone's list, so an x-feature's map runs through both.
#
# Rules (P_out: probabilities of a layer's outputs, a: its non-negative inputs):
#   linear (dense, conv, average pools, pool matrices): P_in = a * J+^T (P_out / (J+ a)), J+ the layer
#     with its weights clipped at 0 and no bias, i.e. P(a_i | a_j) = a_i w+_ij / sum_i' a_i' w+_i'j. J+^T is one jax.vjp
#     of the positive layer, so dense, conv and pools share one rule. A unit with J+ a = 0 passes nothing.
#   ReLU and batch norm: one-to-one, P passes through (batch norm first folded into the weights before it).
#   max pool: winner takes all (the vjp of the max pool routes P to the maximum).
# Each linear step conserves the total mass whenever every unit holding mass has J+ a > 0.

def _fold_batch_norm(layers):
    """Folds every batch-norm layer into the linear layer before it (``w * gamma / sigma``, bias adjusted)."""
    folded = []
    for layer in layers:
        if layer["kind"] != "batchnorm":
            folded.append(layer)
            continue
        previous = folded[-1] if folded else None
        if previous is None or previous["kind"] not in ("dense", "conv"):
            raise ValueError("c-MWP folds batch norm into the dense/conv layer right before it; none found")
        factor = layer["scale"] * jax.lax.rsqrt(layer["var"] + layer.get("eps", 1e-5))
        folded[-1] = {**previous, "w": previous["w"] * factor,
                      "b": (previous["b"] - layer["mean"]) * factor + layer["bias"]}
    return folded


def _linear(layer, x, positive: bool = False, bias: bool = True):
    w = jnp.maximum(layer["w"], 0) if positive else layer["w"]
    if layer["kind"] == "dense":
        y = x @ w
    else:
        y = jax.lax.conv_general_dilated(x, w, tuple(layer.get("stride", (1, 1))),
                                         tuple(tuple(p) for p in layer.get("padding", ((0, 0), (0, 0)))),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + layer["b"] if bias else y


def _pool(layer, x, op):
    window = (1, *layer["window"], 1)
    stride = (1, *layer.get("stride", layer["window"]), 1)
    if op == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, stride, "VALID")
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, stride, "VALID") / (window[1] * window[2])


def _pool_matrix(layer, x):
    # HIGHEST keeps the averages in full float32 where the default matmul rounds to bf16/tf32 (as the model).
    return jnp.einsum("nhwc,ih,jw->nijc", x, layer["rows"], layer["cols"], precision=jax.lax.Precision.HIGHEST)


def apply_layer(layer, x):
    """The forward pass of one layer of a sequential layer list (see the module notes)."""
    kind = layer["kind"]
    if kind in ("dense", "conv"):
        return _linear(layer, x)
    if kind == "relu":
        return jax.nn.relu(x)
    if kind == "maxpool":
        return _pool(layer, x, "max")
    if kind == "avgpool":
        return _pool(layer, x, "avg")
    if kind == "mean":
        return jnp.mean(x, axis=(1, 2))
    if kind == "pool_matrix":
        return _pool_matrix(layer, x)
    if kind == "flatten":
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"unknown layer kind {kind!r}")


def _excite(layer, a, p_out):
    """One layer of excitation backprop: the input probabilities from the output ones (rules above)."""
    kind = layer["kind"]
    if kind == "relu":
        return p_out
    if kind == "flatten":
        return p_out.reshape(a.shape)
    if kind == "maxpool":
        _, pullback = jax.vjp(lambda t: _pool(layer, t, "max"), a)
        return pullback(p_out)[0]
    if kind in ("dense", "conv"):
        forward = lambda t: _linear(layer, t, positive=True, bias=False)  # noqa: E731
    elif kind == "avgpool":
        forward = lambda t: _pool(layer, t, "avg")  # noqa: E731
    elif kind == "mean":
        forward = lambda t: jnp.mean(t, axis=(1, 2))  # noqa: E731
    elif kind == "pool_matrix":
        forward = lambda t: _pool_matrix(layer, t)  # noqa: E731
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    out, pullback = jax.vjp(forward, a)
    ratio = jnp.where(out > 0, p_out / jnp.where(out > 0, out, 1), 0)
    return a * pullback(ratio)[0]


def layer_inputs(layers, x):
    """``[x, layer_0(x), layer_1(layer_0(x)), ...]``: the input of every layer and the final output.

    Batch norm is folded first, so the list indexes the folded layers; ``layer_inputs(layers[:k], x)[-1]``
    is the output of ``layers[:k]`` whatever ``k`` counts.
    """
    outs = [x]
    for layer in _fold_batch_norm(layers):
        outs.append(apply_layer(layer, outs[-1]))
    return outs


def excitation_backprop(layers, x, p_top, stop: int = 0):
    """Marginal winning probabilities at every layer boundary from ``stop`` up (Zhang et al., eq. 6).

    Args:
      layers: a sequential layer list (module notes); batch norm is folded first.
      x: ``[N, ...]`` the first layer's input.
      p_top: ``[N, K]`` probabilities of the last layer's outputs (e.g. a one-hot of the explained unit).
      stop: the boundary to stop at: the input of ``layers[stop]``, counted after batch-norm folding (inputs
        there must be non-negative, e.g. the output of a ReLU; the preprocessed image is not).

    Returns:
      The list ``[P at input of layers[stop], ..., P at input of the last layer, p_top]``.
    """
    layers = _fold_batch_norm(layers)
    inputs = layer_inputs(layers, x)
    probabilities = [p_top]
    for index in range(len(layers) - 1, stop - 1, -1):
        probabilities.append(_excite(layers[index], inputs[index], probabilities[-1]))
    return probabilities[::-1]


def contrastive_mwp(layers, x, unit: int | jax.Array, stop: int = 2) -> jax.Array:
    """Contrastive marginal winning probability of output ``unit`` at the input of ``layers[stop]``.

    MWP of the target (one-hot at ``unit`` of the last, dense layer) minus MWP of its dual unit (the same
    layer with negated weights, i.e. ``(-w)+``), propagated down to ``stop``, truncated at 0 (Zhang et al.
    section 3.2). Both MWPs are linear in the probabilities below the top layer, so the difference is
    propagated once.

    Args:
      layers: a sequential layer list whose last layer is ``"dense"``.
      x: ``[N, ...]`` input of ``layers[0]`` (e.g. the preprocessed image).
      unit: the explained output (traced: ``vmap`` over units).
      stop: where the map is read, counted after batch-norm folding (default 2: after the first
        conv (+ batch norm) + ReLU).

    Returns:
      ``[N, ...]`` non-negative map, shaped like the input of ``layers[stop]`` (sum channels for a
      spatial heatmap).
    """
    layers = _fold_batch_norm(layers)
    if layers[-1]["kind"] != "dense":
        raise ValueError("contrastive MWP needs a dense last layer")
    inputs = layer_inputs(layers, x)
    top = layers[-1]
    p_top = jax.nn.one_hot(unit, top["w"].shape[1], dtype=inputs[-2].dtype)
    p_top = jnp.broadcast_to(p_top, inputs[-1].shape)
    target = _excite(top, inputs[-2], p_top)
    dual = _excite({**top, "w": -top["w"]}, inputs[-2], p_top)
    probability = target - dual
    for index in range(len(layers) - 2, stop - 1, -1):
        probability = _excite(layers[index], inputs[index], probability)
    return jax.nn.relu(probability)


def explainer_layers(params, input_mean: jax.Array, input_scale: float):
    """An XNN explainer's encoder as dense/ReLU layers on the raw (non-negative) tap activations.

    The standardisation ``(z - mean) / scale`` is folded into the first dense layer, so excitation
    backprop sees the backbone's own non-negative activations; the x-layer's ReLU is left out (one-to-one,
    and the top must be linear). The Lasso baseline's explainer (``{"select": [n], ...}``, x-feature
    ``E_j = z[select_j]``) is one dense layer of one-hot columns, ``w[i, j] = [i == select_j]``: its
    contrastive MWP is then the MWP of the selected unit (the dual unit's weights ``(-w)+`` are all 0).
    """
    if "select" in params:
        w = jax.nn.one_hot(params["select"], input_mean.shape[-1], dtype=jnp.float32).T  # [S, n]
        return [{"kind": "dense", "w": w / input_scale, "b": -(input_mean / input_scale) @ w}]
    names = sorted(params["encoder"], key=lambda k: int(k.removeprefix("layer")))
    layers = []
    for i, name in enumerate(names):
        w, b = params["encoder"][name]["w"], params["encoder"][name]["b"]
        if i == 0:
            w, b = w / input_scale, b - (input_mean / input_scale) @ w
        layers.append({"kind": "dense", "w": w, "b": b})
        if i < len(names) - 1:
            layers.append({"kind": "relu"})
    return layers
