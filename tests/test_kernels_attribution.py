"""Attribution kernels against NumPy loops over their definitions."""

from __future__ import annotations

import numpy as np

from xai_jax.kernels.attribution import grad_cam, normalise_maps


def numpy_grad_cam(activations, gradients):
    n, h, w, k = activations.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for c in range(k):
            out[i] += gradients[i, :, :, c].mean() * activations[i, :, :, c]
    return np.maximum(out, 0)


def test_grad_cam_matches_a_loop_on_awkward_sizes():
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 1, 1), (3, 7, 5, 13), (2, 4, 4, 1)]:
        activations = rng.random(shape).astype(np.float32)
        gradients = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(grad_cam(activations, gradients), numpy_grad_cam(activations, gradients),
                                   rtol=1e-5, atol=1e-6)


def test_normalise_maps_spans_zero_to_one_and_zeroes_constant_maps():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 5, 7)).astype(np.float32)
    maps[1] = 2.5
    out = np.asarray(normalise_maps(maps))
    for i in (0, 2):
        expected = (maps[i] - maps[i].min()) / (maps[i].max() - maps[i].min())
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)
    assert np.all(out[1] == 0)


# --- contrastive marginal winning probability (excitation backprop) against NumPy matrices ---

import jax  # noqa: E402
import pytest  # noqa: E402

from xai_jax.kernels.attribution import (contrastive_mwp, excitation_backprop, explainer_layers,  # noqa: E402
                                         layer_inputs, sequential_layers)


def conv_matrix(w, height, width, pad):
    """The dense matrix ``[H*W*I, H'*W'*O]`` of a stride-1 NHWC convolution (cross-correlation)."""
    kh, kw, cin, cout = w.shape
    out_h, out_w = height + 2 * pad - kh + 1, width + 2 * pad - kw + 1
    m = np.zeros((height, width, cin, out_h, out_w, cout))
    for oy in range(out_h):
        for ox in range(out_w):
            for dy in range(kh):
                for dx in range(kw):
                    y, x = oy + dy - pad, ox + dx - pad
                    if 0 <= y < height and 0 <= x < width:
                        m[y, x, :, oy, ox, :] += w[dy, dx]
    return m.reshape(height * width * cin, out_h * out_w * cout), (out_h, out_w, cout)


def numpy_network(layers, shape):
    """The layer list as NumPy steps on flattened vectors: (forward, excitation rule) per layer."""
    steps = []
    shape = tuple(shape)
    for i, layer in enumerate(layers):
        if layer["kind"] == "batchnorm":
            continue
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        kind = layer["kind"]
        if kind in ("dense", "conv"):
            w = np.asarray(layer["w"], np.float64)
            b = np.asarray(layer["b"], np.float64)
            if kind == "conv":
                pad = layer["padding"][0][0]
                matrix, out_shape = conv_matrix(w, shape[0], shape[1], pad)
                bias = np.tile(b, out_shape[0] * out_shape[1])
            else:
                matrix, out_shape, bias = w, (w.shape[1],), b
            if nxt is not None and nxt["kind"] == "batchnorm":
                factor = np.asarray(nxt["scale"]) / np.sqrt(np.asarray(nxt["var"]) + nxt["eps"])
                channel_factor = np.tile(factor, matrix.shape[1] // len(factor))
                channel_shift = np.tile(np.asarray(nxt["bias"]) - np.asarray(nxt["mean"]) * factor,
                                        matrix.shape[1] // len(factor))
                matrix, bias = matrix * channel_factor, bias * channel_factor + channel_shift
            steps.append(("linear", matrix, bias))
            shape = out_shape
        elif kind == "relu":
            steps.append(("relu", None, None))
        elif kind == "maxpool":
            k = layer["window"][0]
            h, w_, c = shape
            oh, ow = h // k, w_ // k
            groups = np.zeros((oh * ow * c, k * k), int)
            for oy in range(oh):
                for ox in range(ow):
                    for ch in range(c):
                        groups[(oy * ow + ox) * c + ch] = [((oy * k + dy) * w_ + ox * k + dx) * c + ch
                                                           for dy in range(k) for dx in range(k)]
            steps.append(("maxpool", groups, h * w_ * c))
            shape = (oh, ow, c)
        elif kind == "mean":
            h, w_, c = shape
            steps.append(("linear", np.tile(np.eye(c), (h * w_, 1)) / (h * w_), np.zeros(c)))
            shape = (c,)
    return steps


def numpy_forward(steps, x):
    acts = [x]
    for kind, a, b in steps:
        v = acts[-1]
        if kind == "linear":
            acts.append(v @ a + b)
        elif kind == "relu":
            acts.append(np.maximum(v, 0))
        else:
            acts.append(v[a].max(1))
    return acts


def numpy_excite(step, a, p_out):
    kind, m, _ = step
    if kind == "relu":
        return p_out
    if kind == "maxpool":
        p_in = np.zeros(step[2])
        for j, group in enumerate(m):
            p_in[group[np.argmax(a[group])]] += p_out[j]
        return p_in
    positive = np.maximum(m, 0)
    p_in = np.zeros_like(a)
    for j in range(m.shape[1]):
        total = a @ positive[:, j]
        if total > 0:
            p_in += a * positive[:, j] / total * p_out[j]
    return p_in


def numpy_cmwp(steps, x, unit, stop_step):
    acts = numpy_forward(steps, x)
    kind, top, bias = steps[-1]
    p_top = np.eye(top.shape[1])[unit]
    target = numpy_excite(steps[-1], acts[-2], p_top)
    dual = numpy_excite(("linear", -top, bias), acts[-2], p_top)
    p = target - dual
    for i in range(len(steps) - 2, stop_step - 1, -1):
        p = numpy_excite(steps[i], acts[i], p)
    return np.maximum(p, 0)


def random_network(rng):
    def normal(*s):
        return rng.normal(size=s).astype(np.float32) * 0.7
    return [
        {"kind": "conv", "w": normal(3, 3, 2, 3), "b": normal(3) * 0.1, "stride": (1, 1), "padding": ((1, 1), (1, 1))},
        {"kind": "batchnorm", "scale": rng.uniform(0.5, 1.5, 3).astype(np.float32), "bias": normal(3) * 0.1,
         "mean": normal(3) * 0.1, "var": rng.uniform(0.5, 2, 3).astype(np.float32), "eps": 1e-5},
        {"kind": "relu"},
        {"kind": "maxpool", "window": (2, 2), "stride": (2, 2)},
        {"kind": "conv", "w": normal(3, 3, 3, 5), "b": normal(5) * 0.1, "stride": (1, 1), "padding": ((1, 1), (1, 1))},
        {"kind": "relu"},
        {"kind": "mean"},
        {"kind": "dense", "w": normal(5, 7), "b": normal(7) * 0.1},
        {"kind": "relu"},
        {"kind": "dense", "w": normal(7, 3), "b": normal(3) * 0.1},
    ]


def test_excitation_backprop_conserves_mass_and_matches_numpy_layer_by_layer():
    rng = np.random.default_rng(3)
    layers = random_network(rng)
    x = rng.uniform(0.05, 1, size=(3, 6, 6, 2)).astype(np.float32)  # 6 -> maxpool -> 3 (odd sizes downstream)
    steps = numpy_network(layers, x.shape[1:])
    for unit in range(3):
        p_top = np.tile(np.eye(3, dtype=np.float32)[unit], (3, 1))
        levels = excitation_backprop(layers, x, p_top, stop=0)
        for image in range(3):
            acts = numpy_forward(steps, x[image].reshape(-1).astype(np.float64))
            expected = [p_top[image].astype(np.float64)]
            for i in range(len(steps) - 1, -1, -1):
                expected.append(numpy_excite(steps[i], acts[i], expected[-1]))
            expected = expected[::-1]
            assert len(levels) == len(expected)
            for got, want in zip(levels, expected):
                got = np.asarray(got[image]).reshape(-1)
                np.testing.assert_allclose(got, want, atol=1e-5)
                np.testing.assert_allclose(got.sum(), 1.0, atol=1e-5)  # mass conserved at every layer


def test_contrastive_mwp_matches_numpy_and_is_non_negative():
    rng = np.random.default_rng(4)
    layers = random_network(rng)
    x = rng.uniform(0.05, 1, size=(2, 6, 6, 2)).astype(np.float32)
    steps = numpy_network(layers, x.shape[1:])
    maps = jax.vmap(lambda u: contrastive_mwp(layers, x, u, stop=2))(np.arange(3))  # [units, N, 6, 6, 3]
    assert maps.shape == (3, 2, 6, 6, 3)
    assert np.all(np.asarray(maps) >= 0)
    for unit in range(3):
        for image in range(2):
            # NumPy step 2 is the maxpool (batch norm is folded away): the map at its input.
            want = numpy_cmwp(steps, x[image].reshape(-1).astype(np.float64), unit, stop_step=2)
            np.testing.assert_allclose(np.asarray(maps[unit, image]).reshape(-1), want, atol=1e-5)
    assert np.asarray(maps).max() > 0


def test_small_cnn_layer_list_reproduces_the_flax_model_and_explainer_layers_fold_the_standardisation():
    from xai_jax import models
    spec = models.get("small_cnn")
    variables = models.init_variables(spec, jax.random.key(0))
    images = np.random.default_rng(5).random((4, 8, 8, 1)).astype(np.float32)
    out = models.make_forward("small_cnn", ("pool",))(images, variables)
    layers, tap_index = sequential_layers("small_cnn", variables, "pool")
    inputs = layer_inputs(layers, models.preprocess(spec, images))
    np.testing.assert_allclose(inputs[-1], out["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inputs[tap_index], out["pool"], rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(6)
    def dense(i, o):
        return {"w": rng.normal(size=(i, o)).astype(np.float32), "b": rng.normal(size=o).astype(np.float32)}
    params = {"encoder": {"layer0": dense(64, 9), "layer1": dense(9, 3)}}
    mean, scale = rng.normal(size=64).astype(np.float32), 1.7
    z = np.asarray(out["pool"])
    hidden = np.maximum(((z - mean) / scale) @ params["encoder"]["layer0"]["w"] + params["encoder"]["layer0"]["b"], 0)
    expected = hidden @ params["encoder"]["layer1"]["w"] + params["encoder"]["layer1"]["b"]
    folded = layer_inputs(explainer_layers(params, mean, scale), z)[-1]
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Grad-CAM"):
        sequential_layers("cifar_resnet20", variables)
