"""The model registry: preprocessing, taps, forward factory and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import XaiJaxError, models


def test_every_registered_model_lists_taps_ending_in_logits():
    for name in models.names():
        spec = models.get(name)
        shapes = models.tap_shapes(name)
        assert list(shapes)[-1] == "logits" and shapes["logits"] == (spec.num_classes,), name


def test_unknown_model_and_tap_name_the_valid_ones():
    with pytest.raises(XaiJaxError, match="known models: .*cifar_resnet20"):
        models.get("resnet1000")
    spec = models.get("small_cnn")
    variables = models.init_variables(spec, jax.random.key(0))
    with pytest.raises(XaiJaxError, match="valid taps: conv1, conv2"):
        models.apply_model(spec.module(), variables, jnp.zeros((1, 8, 8, 1)), taps=("conv9",))


def test_preprocess_scales_converts_channels_and_resizes():
    spec = models.get("cifar_resnet20")
    grey = np.full((2, 16, 16), 255, np.uint8)
    x = models.preprocess(spec, grey)
    assert x.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(x[0, 0, 0], (1.0 - np.array(spec.mean)) / np.array(spec.std), rtol=1e-6)
    floats = np.full((1, 32, 32, 3), 0.5, np.float32)  # floats are taken to be in [0, 1] already
    np.testing.assert_allclose(models.preprocess(spec, floats)[0, 3, 3], (0.5 - np.array(spec.mean)) / np.array(spec.std),
                               rtol=1e-6)
    rgb_to_grey = models.preprocess(models.get("small_cnn"), np.zeros((1, 8, 8, 3), np.uint8))
    assert rgb_to_grey.shape == (1, 8, 8, 1)


def test_forward_returns_taps_equal_to_a_direct_apply_and_is_cached():
    spec = models.get("cifar_resnet20")
    variables = models.init_variables(spec, jax.random.key(1))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    forward = models.make_forward("cifar_resnet20", ("layer2", "pool"))
    assert forward is models.make_forward("cifar_resnet20", ("layer2", "pool"))
    out = jax.jit(forward)(images, variables)
    logits, taps = models.apply_model(spec.module(), variables, models.preprocess(spec, images), ("layer2", "pool"))
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["layer2"], taps["layer2"], rtol=1e-5, atol=1e-5)
    assert out["layer2"].shape == (3, 16, 16, 32) and out["pool"].shape == (3, 64)
    # The pool tap is the spatial mean of the last stage, whatever the layer order inside the model.
    last = models.apply_model(spec.module(), variables, models.preprocess(spec, images), ("layer3",))[1]["layer3"]
    np.testing.assert_allclose(out["pool"], last.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_bf16_forward_is_close_to_float32():
    spec = models.get("cifar_resnet20")
    variables = models.init_variables(spec, jax.random.key(2))
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    f32 = models.make_forward("cifar_resnet20")(images, variables)["logits"]
    bf16 = models.make_forward("cifar_resnet20", compute_dtype="bfloat16")(images, variables)["logits"]
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, atol=0.1 * float(jnp.abs(f32).max()) + 1e-2)


def test_apply_model_in_training_mode_with_and_without_batch_norm():
    key = jax.random.key(0)
    from xai_jax.models.vgg import VGG
    module = VGG(convs_per_block=(1, 1, 2, 2, 2), num_classes=10, hidden=64)  # VGG-11, narrow head
    x = jnp.ones((2, 32, 32, 3))
    variables = module.init(key, x)
    logits, out = models.apply_model(module, variables, x, taps=("fc6",), train=True, rngs={"dropout": key})
    assert logits.shape == (2, 10) and "batch_stats" not in out
    # Dropout is active in training mode: two keys give two different outputs.
    other, _ = models.apply_model(module, variables, x, taps=("fc6",), train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(logits, other)
    resnet = models.get("cifar_resnet20")
    variables = models.init_variables(resnet, key)
    _, out = models.apply_model(resnet.module(), variables, jnp.ones((2, 32, 32, 3)), train=True)
    assert set(out) == {"batch_stats"}


@pytest.mark.parametrize("name,at", [("cifar_resnet20", "layer2"), ("small_cnn", "conv2"), ("vgg11", "block3")])
def test_offset_gradient_at_a_tap_matches_finite_differences(name, at):
    """d logit_c / d activation through a zero offset equals a central difference of the forward pass."""
    spec = models.get(name)
    variables = models.init_variables(spec, jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (3, *spec.input_shape[:2], 3 if spec.input_shape[2] == 3 else 1))
    forward = models.make_forward(name, taps=(at,))
    out = forward(images, variables)
    zero = {at: jnp.zeros_like(out[at])}
    classes = jnp.array([0, 3, 1])
    logits, pullback = jax.vjp(lambda o: forward(images, variables, o)["logits"], zero)
    np.testing.assert_allclose(logits, out["logits"], rtol=1e-6)
    (grads,) = pullback(jax.nn.one_hot(classes, logits.shape[-1]))
    direction = jax.random.normal(jax.random.key(3), out[at].shape)
    eps = 1e-3  # small enough to cross few ReLU kinks, large enough for float32

    def picked(offset):
        return jnp.take_along_axis(forward(images, variables, {at: offset})["logits"], classes[:, None], 1).sum()

    numeric = (picked(eps * direction) - picked(-eps * direction)) / (2 * eps)
    analytic = jnp.sum(grads[at] * direction)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-3)


def test_offset_for_an_unknown_tap_is_reported():
    spec = models.get("small_cnn")
    variables = models.init_variables(spec, jax.random.key(0))
    forward = models.make_forward("small_cnn")
    with pytest.raises(XaiJaxError, match="no tap 'nope'; valid taps: conv1"):
        forward(jnp.zeros((1, 8, 8, 1)), variables, {"nope": jnp.zeros((1, 3))})
