"""Parity of the Flax CIFAR ResNet, torchvision ResNet-18/50 and VGG-11/16 with PyTorch references.

Each test builds the reference model with seeded random weights (batch-norm affine parameters and
running statistics randomised too, so batch norm is a real affine map), converts its state dict
through the registered converter, and compares the logits and every tap on awkward random inputs.
The last batch norm of every residual branch is scaled by ``RESIDUAL_SCALE`` so deep ResNets keep
activations O(1)-O(10) instead of growing block by block (unscaled, CIFAR ResNet-56 reaches 7e4 and a
fixed absolute tolerance would be meaningless); VGG keeps torchvision's own initialisation, whose
activations stay O(1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torch_ref_resnet_vgg as ref
from xai_jax import models
from xai_jax.models.registry import apply_model
from xai_jax.models.resnet import max_pool_3x3_s2
from xai_jax.models.vgg import VGG, CONVS_PER_BLOCK, adaptive_avg_pool, convert_vgg
from xai_jax.weights import strip_prefix

TOL = 1e-4
RESIDUAL_SCALE = 0.3

torch.set_num_threads(2)


def _awkward_input(generator: torch.Generator, batch: int, size: int | tuple[int, int]) -> torch.Tensor:
    """Normalised-image-like NCHW input with an offset, a wide spread and a few saturated pixels."""
    height, width = (size, size) if isinstance(size, int) else size
    x = torch.randn(batch, 3, height, width, generator=generator) * 1.7 + 0.3
    x[:, :, :3, :3] = -4.0  # a corner of large negative values where padded windows overlap the border
    x[0, 1, -1, -1] = 5.0
    return x


def _compare(name: str, torch_model, taps: dict, x: torch.Tensor) -> dict[str, float]:
    """Converts ``torch_model`` through ``name``'s spec, runs both and returns the max error per tap."""
    torch_model.eval()
    want_logits, want_taps = ref.capture_taps(torch_model, x, taps)
    spec = models.get(name)
    assert set(models.tap_shapes(name)) == set(taps), "the reference must check every tap of the model"
    variables = spec.convert(strip_prefix(ref.state_dict_numpy(torch_model, prefix="module.")))
    forward = jax.jit(lambda v, x: apply_model(spec.module(), v, x, tuple(taps)))
    logits, got = forward(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    errors = {"logits (returned)": float(np.abs(np.asarray(logits) - want_logits).max())}
    for tap_name, want in want_taps.items():
        have = np.asarray(got[tap_name])
        assert have.shape == want.shape, (tap_name, have.shape, want.shape)
        errors[tap_name] = float(np.abs(have - want).max())
    return errors


def _assert_close(errors: dict[str, float]) -> None:
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOL, f"tap {worst!r} differs by {errors[worst]:.3g} (all: {errors})"


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnet_matches_akamaster(depth):
    generator = torch.Generator().manual_seed(depth)
    torch.manual_seed(depth)
    model = ref.cifar_resnet(depth)
    ref.randomize_batch_norm(model, generator, RESIDUAL_SCALE)
    _assert_close(_compare(f"cifar_resnet{depth}", model, ref.cifar_resnet_taps(depth),
                           _awkward_input(generator, 3, 32)))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_matches_torchvision(name):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = getattr(ref, name)()
    ref.randomize_batch_norm(model, generator, RESIDUAL_SCALE)
    _assert_close(_compare(name, model, ref.resnet_taps(ref.RESNET_LAYERS[name]),
                           _awkward_input(generator, 2, 224)))


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_vgg_matches_torchvision(name):
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = ref.vgg(name)
    with torch.no_grad():  # non-zero biases, so a converter that drops or misplaces them fails
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.bias.normal_(0.0, 0.05, generator=generator)
    _assert_close(_compare(name, model, ref.vgg_taps(name), _awkward_input(generator, 2, 224)))


@pytest.mark.parametrize("size", [(80, 80), (300, 300), (96, 160)])
def test_vgg_adaptive_pool_at_other_input_sizes(size):
    """Feature maps of 2x2 (cells repeat inputs), 9x9 (cells overlap) and 3x5 pooled to 7x7; a narrow
    classifier keeps the test small, the layout of fc6 is the real one."""
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = ref.vgg("vgg11", num_classes=10, hidden=32).eval()
    x = _awkward_input(generator, 2, size)
    want_logits, want_taps = ref.capture_taps(model, x, ref.vgg_taps("vgg11"))
    variables = convert_vgg(CONVS_PER_BLOCK["vgg11"], "test VGG-11")(ref.state_dict_numpy(model))
    module = VGG(CONVS_PER_BLOCK["vgg11"], num_classes=10, hidden=32)
    logits, got = apply_model(module, variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), ("fc6",))
    np.testing.assert_allclose(np.asarray(got["fc6"]), want_taps["fc6"], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), want_logits, atol=TOL, rtol=0)


@pytest.mark.parametrize("in_hw", [(7, 7), (1, 1), (2, 3), (9, 9), (10, 13), (14, 14), (23, 8)])
def test_adaptive_avg_pool_matches_pytorch(in_hw):
    rng = np.random.default_rng(sum(in_hw))
    x = rng.normal(size=(2, 4, *in_hw)).astype(np.float32)
    want = F.adaptive_avg_pool2d(torch.from_numpy(x), (7, 7)).numpy().transpose(0, 2, 3, 1)
    got = adaptive_avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), (7, 7))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (1, 2), (112, 112)])
def test_stem_max_pool_matches_pytorch_on_negative_values(hw):
    """All-negative inputs: zero padding would leak 0 into border windows, -inf padding must not."""
    rng = np.random.default_rng(hw[0])
    x = (-1.0 - rng.random(size=(2, 3, *hw))).astype(np.float32)
    want = F.max_pool2d(torch.from_numpy(x), 3, stride=2, padding=1).numpy().transpose(0, 2, 3, 1)
    got = max_pool_3x3_s2(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(got), want)


def test_vgg_dropout_train_path():
    """Inference ignores dropout; training needs a 'dropout' rng and is reproducible from it. One 64-channel
    convolution (blocks 2-5 left empty) keeps the initialisation cheap; the classifier is the real one."""
    module = VGG((1, 0, 0, 0, 0), num_classes=5, hidden=16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    apply = jax.jit(module.apply, static_argnames="train")
    eval_logits = apply(variables, x)
    np.testing.assert_array_equal(np.asarray(apply(variables, x, train=False)), np.asarray(eval_logits))
    with pytest.raises(Exception, match="dropout"):
        apply(variables, x, train=True)
    first = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    again = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    other = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(other))
    assert not np.allclose(np.asarray(first), np.asarray(eval_logits))


def test_registered_specs():
    for name, classes in [("resnet18", 1000), ("resnet50", 1000), ("vgg11", 1000), ("vgg16", 1000),
                          ("vgg19", 1000)]:
        spec = models.get(name)
        assert spec.input_shape == (224, 224, 3) and spec.num_classes == classes and spec.resize == 256
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    shapes = models.tap_shapes("resnet50")
    assert shapes["stem"] == (56, 56, 64) and shapes["layer1"] == (56, 56, 256)
    assert shapes["layer4.2"] == (7, 7, 2048) and shapes["pool"] == (2048,) and shapes["logits"] == (1000,)
    assert models.tap_shapes("resnet18")["layer4"] == (7, 7, 512)
    vgg19 = models.tap_shapes("vgg19")
    assert vgg19["conv5_4"] == (14, 14, 512) and vgg19["block5"] == (7, 7, 512) and vgg19["fc7"] == (4096,)
    assert set(vgg19) == set(ref.vgg_taps("vgg19"))
    assert list(models.tap_shapes("vgg16"))[:3] == ["conv1_1", "conv1_2", "block1"]


def test_vgg19_converter_consumes_the_real_layout():
    """VGG-19's state dict (shapes only matter) converts with every tensor used, and the wrong depth fails."""
    from xai_jax.errors import XaiJaxError

    model = ref.vgg("vgg19", num_classes=10, hidden=8)
    tensors = ref.state_dict_numpy(model)
    model_shapes = {k: v.shape for k, v in tensors.items()}
    assert model_shapes["features.34.weight"] == (512, 512, 3, 3)  # conv5_4 in torchvision's numbering
    variables = models.get("vgg19").convert(tensors)
    assert variables["params"]["conv5_4"]["kernel"].shape == (3, 3, 512, 512)
    assert variables["params"]["fc6"]["kernel"].shape == (25088, 8)
    with pytest.raises(XaiJaxError, match="right model"):
        models.get("vgg16").convert(tensors)
