"""ClaDec kernels against NumPy, the paper's models' shapes and taps, and the decoder's shapes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from xai_jax import models
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import cladec as K
from xai_jax.models.cladec import Conv3x3, Decoder, decoder_widths, layer_tap


@pytest.mark.parametrize("shape", [(1, 5, 5, 1), (3, 7, 11, 3), (7, 2, 13, 1)])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reconstruction_loss_and_d_rec_match_numpy(shape, reduction):
    rng = np.random.default_rng(shape[0])
    x, xe, xr = (rng.random(shape, np.float32) for _ in range(3))
    want = ((x - xe) ** 2).reshape(shape[0], -1)
    want = want.mean(1) if reduction == "mean" else want.sum(1)
    np.testing.assert_allclose(K.reconstruction_loss(x, xe, reduction), want, rtol=1e-5)
    dist = lambda a, b: np.sqrt(((a - b) ** 2).reshape(shape[0], -1).sum(1))
    np.testing.assert_allclose(K.d_rec(x, xe, xr), np.mean(dist(x, xe) - dist(x, xr)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.37, 1.0])
def test_cladec_loss_is_equation_1(alpha):
    rng = np.random.default_rng(3)
    n, k = 5, 7
    x, xe = rng.random((2, n, 3, 5, 1), np.float32)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    labels = rng.integers(0, k, n)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_p[np.arange(n), labels].mean()
    rec = ((x - xe) ** 2).reshape(n, -1).sum(1).mean()
    loss, parts = K.cladec_loss(x, xe, logits, labels, alpha)
    np.testing.assert_allclose(loss, (1 - alpha) * rec + alpha * ce, rtol=1e-5)
    np.testing.assert_allclose(parts["classification"], ce, rtol=1e-5)
    check_grads(lambda r, l: K.cladec_loss(x, r, l, labels, alpha)[0], (xe, logits), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)


def test_d_acc():
    labels = np.array([0, 1, 2, 1, 0])
    a = np.eye(3)[[0, 1, 2, 0, 0]]  # 4 right
    b = np.eye(3)[[1, 1, 0, 0, 0]]  # 2 right
    np.testing.assert_allclose(K.d_acc(a, b, labels), 0.4, rtol=1e-6)


def test_occlusion_masks_are_the_papers_16_squares():
    masks = K.occlusion_masks(32, 32)
    assert masks.shape == (16, 32, 32)
    assert (masks.sum((1, 2)) == 144).all()
    corners = [tuple(int(v.min()) for v in np.nonzero(m)) for m in masks]
    assert corners == [(y, x) for y in (0, 6, 12, 20) for x in (0, 6, 12, 20)]
    assert masks[-1, 31, 31] and not masks[0, 12, 12]


def _loop_relevances(xhat, xhat_occ, saliency, masks):
    n, m = xhat.shape[0], masks.shape[0]
    rc, rg = np.zeros((n, m)), np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            for (y, x) in zip(*np.nonzero(masks[j])):
                rc[i, j] += np.sum((xhat_occ[j, i, y, x] - xhat[i, y, x]) ** 2)
                rg[i, j] += saliency[i, y, x]
    return rc, rg


@pytest.mark.parametrize("n,c", [(1, 1), (3, 3)])
def test_occlude_and_relevances_match_loops(n, c):
    rng = np.random.default_rng(n)
    size = 17  # awkward: squares of 6 at corners {0, 5, 11} stay inside
    masks = K.occlusion_masks(size, size, 6, (0, 5, 11))
    images = rng.random((n, size, size, c), np.float32)
    fill = rng.random(c).astype(np.float32)
    occluded = np.asarray(K.occlude(images, jnp.asarray(masks), fill))
    for j in range(len(masks)):
        want = images.copy()
        want[:, masks[j]] = fill
        np.testing.assert_array_equal(occluded[j], want)
    xhat = rng.random((n, size, size, c), np.float32)
    xhat_occ = rng.random((len(masks), n, size, size, c), np.float32)
    saliency = rng.random((n, size, size), np.float32)
    rc, rg = _loop_relevances(xhat, xhat_occ, saliency, masks)
    np.testing.assert_allclose(K.cladec_relevance(xhat, xhat_occ, jnp.asarray(masks)), rc, rtol=1e-4)
    np.testing.assert_allclose(K.gradcam_relevance(saliency, jnp.asarray(masks)), rg, rtol=1e-4)


def test_select_min_max_breaks_ties_uniformly():
    rng = np.random.default_rng(0)
    rel = rng.random((5, 16))
    lo, hi = K.select_min_max(jnp.asarray(rel), jax.random.key(0))
    np.testing.assert_array_equal(lo, rel.argmin(1))
    np.testing.assert_array_equal(hi, rel.argmax(1))
    # Three-way ties at the minimum (columns 2, 5, 9) and a four-way tie at the maximum (0, 1, 7, 15).
    n = 6000
    rel = np.full((n, 16), 0.5)
    rel[:, [2, 5, 9]] = 0.0
    rel[:, [0, 1, 7, 15]] = 1.0
    lo, hi = (np.asarray(v) for v in K.select_min_max(jnp.asarray(rel), jax.random.key(1)))
    assert set(np.unique(lo)) == {2, 5, 9} and set(np.unique(hi)) == {0, 1, 7, 15}
    np.testing.assert_allclose(np.bincount(lo, minlength=16)[[2, 5, 9]] / n, 1 / 3, atol=0.03)
    np.testing.assert_allclose(np.bincount(hi, minlength=16)[[0, 1, 7, 15]] / n, 1 / 4, atol=0.03)


# --- models ----------------------------------------------------------------------------------------------------

def test_cladec_models_taps_and_layers():
    vgg = models.tap_shapes("cladec_vgg")
    assert list(vgg) == [f"block{i}" for i in range(1, 9)] + ["logits"]
    assert [vgg[layer_tap("cladec_vgg", l)] for l in (-1, -2, -3, -4, -5)] == [
        (10,), (1, 1, 512), (2, 2, 512), (2, 2, 256), (4, 4, 256)]
    res = models.tap_shapes("cladec_resnet10_rgb")
    assert [res[layer_tap("cladec_resnet10_rgb", l)] for l in (-1, -2, -3, -4, -5)] == [
        (10,), (4, 4, 512), (8, 8, 256), (16, 16, 128), (32, 32, 64)]
    assert models.get("cladec_vgg_rgb").input_shape == (32, 32, 3)
    with pytest.raises(XaiJaxError, match="-1 .. -5"):
        layer_tap("cladec_vgg", -6)
    with pytest.raises(XaiJaxError, match="not a ClaDec classifier"):
        layer_tap("resnet18", -1)
    logits = models.make_forward("cladec_resnet10")(np.zeros((3, 28, 28), np.uint8),
                                                    models.init_variables(models.get("cladec_resnet10"),
                                                                          jax.random.key(0)))["logits"]
    assert logits.shape == (3, 10)


@pytest.mark.parametrize("hw,stride", [(1, 1), (2, 1), (2, 2), (3, 2), (8, 2), (7, 1), (5, 2)])
def test_conv3x3_equals_lax_convolution(hw, stride):
    x = jax.random.normal(jax.random.key(hw), (3, hw, hw + 1, 5))
    variables = Conv3x3(7, stride, use_bias=True).init(jax.random.key(1), x)
    variables = {"params": {**variables["params"], "bias": jnp.linspace(-1, 1, 7)}}
    want = jax.lax.conv_general_dilated(x, variables["params"]["kernel"], (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + variables["params"]["bias"]
    for im2col in (True, False):
        conv = Conv3x3(7, stride, use_bias=True, im2col=im2col)
        np.testing.assert_allclose(conv.apply(variables, x), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jax.jit(conv.apply)(variables, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("code_shape,channels", [((10,), 1), ((1, 1, 512), 3), ((2, 2, 256), 1), ((4, 4, 512), 3),
                                                ((32, 32, 64), 1)])
def test_decoder_shapes(code_shape, channels):
    decoder = Decoder(channels, 32, base=8)
    code = jax.random.normal(jax.random.key(0), (2, *code_shape))
    variables = decoder.init(jax.random.key(1), code)
    out = decoder.apply(variables, code)
    assert out.shape == (2, 32, 32, channels)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    kernels = [v.shape for k, v in jax.tree_util.tree_flatten_with_path(variables)[0] if "deconv" in str(k[1])
               and "kernel" in str(k[-1])]
    size = 1 if len(code_shape) == 1 else code_shape[0]
    steps = int(np.log2(32 // size))
    assert len(kernels) == steps
    if steps == 0:  # a code at image size gets a 3x3 convolution to the image's channels
        return
    # widths halve towards the image: ..., 4 base, 2 base, base, then the image's channels
    assert [k[-1] for k in kernels] == [8 * 2 ** (steps - 2 - i) for i in range(steps - 1)] + [channels]


def test_decoder_widths_errors():
    assert decoder_widths(1, 32, 64) == [512, 256, 128, 64, -1]
    assert decoder_widths(4, 32, 64, (30, 20)) == [30, 20, -1]
    with pytest.raises(XaiJaxError, match="power of two"):
        decoder_widths(3, 32)
    with pytest.raises(XaiJaxError, match="needs 2 hidden widths"):
        decoder_widths(4, 32, 64, (5,))
    assert isinstance(Decoder(1), nn.Module)


@pytest.mark.parametrize("windows_first", [None, True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 1, 1, 7), (2, 4, 6, 3)])
def test_conv_transpose_equals_pytorch(shape, windows_first):
    from conftest import require_module
    torch = require_module("torch")
    from xai_jax.models.cladec import ConvTranspose4x4
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    module = ConvTranspose4x4(6, windows_first=windows_first)
    variables = module.init(jax.random.key(0), x)
    variables = {"params": {"kernel": variables["params"]["kernel"], "bias": jnp.full((6,), 0.25)}}
    ref = torch.nn.ConvTranspose2d(shape[-1], 6, 4, stride=2, padding=1)
    ref.weight.data = torch.tensor(np.asarray(variables["params"]["kernel"]).transpose(2, 3, 0, 1))
    ref.bias.data = torch.full((6,), 0.25)
    want = ref(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(module.apply(variables, x), want, rtol=1e-5, atol=1e-5)
    # the gradients too: the backward pass of the phase interleave is written by XLA, not by hand
    cotangent = np.random.default_rng(1).normal(size=want.shape).astype(np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    (ref(xt) * torch.tensor(cotangent.transpose(0, 3, 1, 2))).sum().backward()
    grad_kernel, grad_x = jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * cotangent), argnums=(0, 1))(variables, x)
    np.testing.assert_allclose(grad_x, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad_kernel["params"]["kernel"], ref.weight.grad.numpy().transpose(2, 3, 0, 1),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad_kernel["params"]["bias"], ref.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("code_shape", [(10,), (32, 32, 4), (4, 4, 8)])
def test_decoder_output_mean_sets_the_starting_image(code_shape):
    mean = (0.13, 0.5, 0.9)
    decoder = Decoder(3, 32, base=8, output_mean=mean)
    code = jnp.zeros((2, *code_shape))
    variables = decoder.init(jax.random.key(0), code)
    # a zero code reaches the output layer as zeros (every hidden layer has zero bias), so only its bias shows
    np.testing.assert_allclose(decoder.apply(variables, code)[0, 0, 0], mean, rtol=1e-5)
    plain = Decoder(3, 32, base=8).init(jax.random.key(0), code)
    np.testing.assert_allclose(Decoder(3, 32, base=8).apply(plain, code), 0.5, rtol=1e-6)
