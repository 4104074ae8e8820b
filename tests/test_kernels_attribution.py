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

import jax.numpy as jnp  # noqa: E402

from xai_jax import models  # noqa: E402
from xai_jax.errors import XaiJaxError  # noqa: E402
from xai_jax.kernels.attribution import (contrastive_mwp, excitation_backprop, explainer_layers,  # noqa: E402
                                         layer_inputs)
from xai_jax.models.vgg import adaptive_avg_pool, adaptive_pool_matrix  # noqa: E402
from tests.conftest import random_variables  # noqa: E402


def conv_matrix(w, height, width, pad, stride=1):
    """The dense matrix ``[H*W*I, H'*W'*O]`` of an NHWC convolution (cross-correlation)."""
    kh, kw, cin, cout = w.shape
    out_h, out_w = (height + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
    m = np.zeros((height, width, cin, out_h, out_w, cout))
    for oy in range(out_h):
        for ox in range(out_w):
            for dy in range(kh):
                for dx in range(kw):
                    y, x = oy * stride + dy - pad, ox * stride + dx - pad
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
                matrix, out_shape = conv_matrix(w, shape[0], shape[1], pad, layer["stride"][0])
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
        elif kind == "pool_matrix":
            rows, cols = np.asarray(layer["rows"], np.float64), np.asarray(layer["cols"], np.float64)
            c = shape[2]
            matrix = np.einsum("iy,jx,cd->yxcijd", rows, cols, np.eye(c)).reshape(np.prod(shape), -1)
            steps.append(("linear", matrix, np.zeros(matrix.shape[1])))
            shape = (rows.shape[0], cols.shape[0], c)
        elif kind == "flatten":
            steps.append(("identity", None, None))
            shape = (int(np.prod(shape)),)
        else:
            raise ValueError(kind)
    return steps


def numpy_forward(steps, x):
    acts = [x]
    for kind, a, b in steps:
        v = acts[-1]
        if kind == "linear":
            acts.append(v @ a + b)
        elif kind == "relu":
            acts.append(np.maximum(v, 0))
        elif kind == "identity":
            acts.append(v)
        else:
            acts.append(v[a].max(1))
    return acts


def numpy_excite(step, a, p_out):
    kind, m, _ = step
    if kind in ("relu", "identity"):
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


def test_pool_matrix_is_pytorchs_adaptive_pool_and_its_excitation_matches_numpy():
    rng = np.random.default_rng(7)
    # The layer runs VGG's adaptive average pool (overlapping cells, repeated inputs, 1x1 -> 7x7).
    for h, w in [(13, 5), (1, 1), (2, 3), (7, 7)]:
        x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        layer = {"kind": "pool_matrix", "rows": adaptive_pool_matrix(h, 7), "cols": adaptive_pool_matrix(w, 7)}
        np.testing.assert_allclose(layer_inputs([layer], x)[-1], adaptive_avg_pool(x, (7, 7)), rtol=1e-6, atol=1e-6)

    def normal(*s):
        return rng.normal(size=s).astype(np.float32) * 0.7
    # 5x7 -> strided conv -> 3x4 -> pool_matrix (3 -> 2 rows overlapping, 4 -> 5 columns repeating) -> dense.
    layers = [
        {"kind": "conv", "w": normal(3, 3, 2, 3), "b": normal(3) * 0.1, "stride": (2, 2), "padding": ((1, 1), (1, 1))},
        {"kind": "relu"},
        {"kind": "pool_matrix", "rows": adaptive_pool_matrix(3, 2), "cols": adaptive_pool_matrix(4, 5)},
        {"kind": "flatten"},
        {"kind": "dense", "w": normal(30, 7), "b": normal(7) * 0.1},
        {"kind": "relu"},
        {"kind": "dense", "w": normal(7, 4), "b": normal(4) * 0.1},
    ]
    x = rng.uniform(0.05, 1, size=(3, 5, 7, 2)).astype(np.float32)
    steps = numpy_network(layers, x.shape[1:])
    assert [s[0] for s in steps] == ["linear", "relu", "linear", "identity", "linear", "relu", "linear"]
    conserved = 0
    for unit in (0, 3):
        p_top = np.tile(np.eye(4, dtype=np.float32)[unit], (3, 1))
        levels = excitation_backprop(layers, x, p_top, stop=0)
        maps = contrastive_mwp(layers, x, unit, stop=2)
        for image in range(3):
            acts = numpy_forward(steps, x[image].reshape(-1).astype(np.float64))
            np.testing.assert_allclose(np.asarray(layer_inputs(layers, x)[-1][image]), acts[-1], rtol=1e-5, atol=1e-5)
            expected = [p_top[image].astype(np.float64)]
            for i in range(len(steps) - 1, -1, -1):
                expected.append(numpy_excite(steps[i], acts[i], expected[-1]))
            # All of the top's mass goes down, unless every positive weight into it reads a dead (0) unit:
            # then none does (unit 3 on image 1 here, the documented "J+ a = 0 passes nothing").
            mass = expected[1].sum()
            assert mass == pytest.approx(1.0) or mass == 0
            conserved += mass == pytest.approx(1.0)
            for got, want in zip(levels, expected[::-1]):
                np.testing.assert_allclose(np.asarray(got[image]).reshape(-1), want, atol=1e-5)
                assert want.sum() == pytest.approx(mass if want is not expected[0] else 1.0, abs=1e-6)
            want = numpy_cmwp(steps, x[image].reshape(-1).astype(np.float64), unit, stop_step=2)
            np.testing.assert_allclose(np.asarray(maps[image]).reshape(-1), want, atol=1e-5)
    assert conserved >= 5


# --- the backbones' own layer lists (ModelSpec.sequential) against the Flax models ---

# (model, input side): VGG at 32 (1x1 -> 7x7 adaptive pool), 64 (2x2 -> 7x7) and 224 (identity, through
# make_forward); the rest at their own size through make_forward.
SEQUENTIAL = [("small_cnn", 8), ("cladec_vgg", 32), ("cladec_vgg_rgb", 32), ("vgg19", 32), ("vgg16", 64),
              ("vgg11", 224)]


@pytest.mark.slow
@pytest.mark.parametrize("name,side", SEQUENTIAL)
def test_layer_list_reproduces_every_tap_and_excitation_backprop_conserves_mass(name, side):
    spec = models.get(name)
    classes = 5
    shape = (side, side, spec.input_shape[2])
    variables = random_variables(spec.module(classes), shape, seed=len(name) + side)
    taps = tuple(models.tap_shapes(name, classes))
    images = np.random.default_rng(side).random((1 if side == 224 else 2, *shape)).astype(np.float32)
    x = models.preprocess(spec, images) if shape == spec.input_shape else (images - 0.45) / 0.25
    if shape == spec.input_shape:  # the path XNN takes: preprocessing included
        reference = models.make_forward(name, taps, classes)(images, variables)
    else:
        module = spec.module(classes)
        logits, reference = jax.jit(lambda v, x: models.apply_model(module, v, x, taps))(variables, x)
        reference["logits"] = logits
    layers, ends = spec.sequential(variables, shape)
    assert set(ends) == set(taps)
    assert models.sequential_layers(name, variables, None, shape)[1] == len(layers) == ends["logits"]

    # c-MWP of the class the random network scores highest: for a low-scoring class the contrast with its dual
    # can cancel to exactly zero through 19 random layers (vgg19's class 3 did on an AMD EPYC: every pixel 0,
    # the other classes about 1e-10 on a quarter of the pixels), which says nothing about the kernel.
    top = int(np.argmax(np.asarray(reference["logits"]).sum(0)))

    @jax.jit
    def run(variables, x):
        layers, ends = spec.sequential(variables, shape)
        at_taps = {tap: layer_inputs(layers[:ends[tap]], x)[-1] for tap in taps}
        p_top = jax.nn.one_hot(jnp.full(x.shape[0], 3), classes)
        levels = excitation_backprop(layers, x, p_top, stop=2)
        return at_taps, levels, contrastive_mwp(layers, x, top)

    at_taps, levels, maps = run(variables, x)
    for tap in taps:
        want = np.asarray(reference[tap])
        assert at_taps[tap].shape == want.shape, tap
        np.testing.assert_allclose(at_taps[tap], want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=tap)
    # One level per layer boundary from the first ReLU's output up (batch norm folded away), each a
    # distribution over its units: non-negative, summing to 1 (mass conserved layer by layer).
    folded = [layer for layer in layers if layer["kind"] != "batchnorm"]
    assert len(levels) == len(folded) - 1
    for level in levels:
        level = np.asarray(level).reshape(len(x), -1)
        assert level.min() >= 0
        np.testing.assert_allclose(level.sum(1), 1.0, atol=1e-4)
    first = reference[taps[0]]  # the first tap is the first conv's ReLU (block1 for cladec_vgg)
    assert maps.shape == first.shape and np.all(np.asarray(maps) >= 0) and np.asarray(maps).max() > 0


def test_sequential_layers_errors_name_grad_cam_and_the_valid_taps():
    variables = random_variables(models.get("small_cnn").module(10), (8, 8, 1), seed=0)
    with pytest.raises(XaiJaxError, match="use Grad-CAM") as error:
        models.sequential_layers("cifar_resnet20", variables)
    assert "vgg11" in str(error.value) and "cladec_vgg" in str(error.value)
    with pytest.raises(XaiJaxError, match="valid taps: conv1, conv2, pool2, conv3, pool, fc, logits"):
        models.sequential_layers("small_cnn", variables, "conv9")


def test_explainer_layers_fold_the_standardisation():
    variables = random_variables(models.get("small_cnn").module(10), (8, 8, 1), seed=5)
    images = np.random.default_rng(5).random((4, 8, 8, 1)).astype(np.float32)
    z = np.asarray(models.make_forward("small_cnn", ("pool",))(images, variables)["pool"])
    rng = np.random.default_rng(6)

    def dense(i, o):
        return {"w": rng.normal(size=(i, o)).astype(np.float32), "b": rng.normal(size=o).astype(np.float32)}
    params = {"encoder": {"layer0": dense(64, 9), "layer1": dense(9, 3)}}
    mean, scale = rng.normal(size=64).astype(np.float32), 1.7
    hidden = np.maximum(((z - mean) / scale) @ params["encoder"]["layer0"]["w"] + params["encoder"]["layer0"]["b"], 0)
    expected = hidden @ params["encoder"]["layer1"]["w"] + params["encoder"]["layer1"]["b"]
    folded = layer_inputs(explainer_layers(params, mean, scale), z)[-1]
    np.testing.assert_allclose(folded, expected, rtol=1e-4, atol=1e-4)
