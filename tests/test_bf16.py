"""bfloat16 backbones (``--bf16``, ``compute_dtype="bfloat16"``) against float32 on real data: CIFAR-10 ResNet-56
on the CIFAR-10 test JPEGs, through each method's own pass.

The thresholds come from a measurement on this project's CPU (x86_64, XLA:CPU, jax 0.10), with margin for
another processor's bf16 rounding: on 1,000 random test images the top-1 agreement was 99.2 %, the accuracies
0.842 (float32) and 0.845 (bf16), the largest logit difference 0.77; the pooled features differed by 1.2 %
(relative Frobenius norm); NMA's near-miss probabilities (largest 0.025) by at most 0.011, and the counts of
correctly classified images per label by 6 of 842 in all; WWW's class contributions at ``pool`` over 640 of the
images by 0.7 % relative, correlation 0.99998, every class's top neuron the same. (On 2,000 images: 99.35 %
agreement, probabilities within 0.0034.)
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from xai_jax import cli, models, weights
from xai_jax.data import JpegNpzSource, Subset
from xai_jax.methods.nma import NearMissAnalysis, NMAConfig
from xai_jax.methods.www import WWW, WWWResult
from xai_jax.methods.xnn import extract_features

# the module's fixtures (a trained model, fitted results) are built once, on one worker
pytestmark = pytest.mark.xdist_group("bf16")

MODEL = "cifar_resnet56"
BF16 = "bfloat16"


@pytest.fixture(scope="module")
def resnet56():
    variables = weights.load(models.get(MODEL), shared_path("cifar10_resnet", "resnet56-4bfd9763.th"))
    test = JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz"))
    # the file is sorted by class: a random subset covers every class
    chosen = np.sort(np.random.default_rng(1).choice(len(test), 1000, replace=False))
    return variables, Subset(test, chosen)


@pytest.fixture(scope="module")
def features(resnet56):
    """XNN's feature pass (``predict`` underneath) in both dtypes: ``{dtype: {"features", "logits", "labels"}}``."""
    variables, source = resnet56
    return {dtype: extract_features(MODEL, variables, source, "pool", batch_size=500, compute_dtype=dtype,
                                    progress=False) for dtype in (None, BF16)}


def test_bf16_predictions_agree_with_float32(features):
    f32, bf16 = features[None], features[BF16]
    predicted32, predicted16 = f32["logits"].argmax(1), bf16["logits"].argmax(1)
    assert np.mean(predicted32 == predicted16) >= 0.98
    accuracy32, accuracy16 = np.mean(predicted32 == f32["labels"]), np.mean(predicted16 == f32["labels"])
    assert accuracy32 > 0.8 and abs(accuracy16 - accuracy32) <= 0.01
    # the pass really ran in bf16: the logits are not float32's to the last bits
    assert np.abs(bf16["logits"] - f32["logits"]).max() > 1e-3


def test_bf16_features_close_to_float32(features):
    f32, bf16 = features[None]["features"], features[BF16]["features"]
    assert bf16.dtype == np.float32 and f32.shape == bf16.shape == (1000, 64)
    assert np.linalg.norm(bf16 - f32) / np.linalg.norm(f32) < 0.05


def test_bf16_near_miss_probabilities_close_to_float32(resnet56, features):
    variables, source = resnet56
    method = NearMissAnalysis(NMAConfig())
    bf16 = method.accumulate(MODEL, variables, source, batch_size=500, compute_dtype=BF16, progress=False)
    f32 = method.accumulate_scores(features[None]["logits"], features[None]["labels"], from_logits=True)
    p32, p16 = (np.asarray(s.sums) / np.maximum(np.asarray(s.counts), 1)[:, None] for s in (f32, bf16))
    assert p32.max() > 0.01  # the statistics are not empty
    assert np.abs(p16 - p32).max() < 0.03
    # counts of correctly classified images per label differ by the few flipped predictions only
    assert np.abs(np.asarray(bf16.counts) - np.asarray(f32.counts)).sum() <= 0.03 * np.asarray(f32.counts).sum()


def test_bf16_www_class_contributions_close_to_float32(resnet56):
    variables, source = resnet56
    subset = Subset(source, np.arange(640))
    w32, w16 = (WWW(MODEL, variables, tap="pool", compute_dtype=dtype).fit_class_contributions(
        subset, batch_size=320, progress=False).class_contributions for dtype in (None, BF16))
    assert np.linalg.norm(w16 - w32) / np.linalg.norm(w32) < 0.05
    assert np.corrcoef(w16.ravel(), w32.ravel())[0, 1] > 0.999
    # each class's top neuron by contribution (what WWW explains with) is kept
    assert np.mean(w16.argmax(1) == w32.argmax(1)) >= 0.9


@pytest.mark.parametrize("command", [["predict"], ["nma", "fit"], ["dec", "fit"], ["xnn", "fit"],
                                     ["www", "concepts"], ["www", "contributions"], ["www", "fit"],
                                     ["www", "explain"]])
def test_every_backbone_pass_command_has_bf16(command, capsys):
    assert cli.main([*command, "--help"]) == 0
    assert "--bf16" in capsys.readouterr().out


def test_cli_www_contributions_bf16_reaches_the_pass(tmp_path):
    path = str(shared_path("cifar10_resnet", "resnet56-4bfd9763.th"))
    data = "jpeg-npz:" + str(shared_path("cifar10", "cifar10_test_jpeg.npz"))
    results = {}
    for flag in ([], ["--bf16"]):
        out = tmp_path / ("bf16" if flag else "f32")
        assert cli.main(["--quiet", "www", "contributions", "--model", MODEL, "--weights", path, "--data", data,
                         "--limit", "32", "--batch-size", "32", "--tap", "pool", "--out", str(out), *flag]) == 0
        results[bool(flag)] = WWWResult.load(out).class_contributions
    difference = np.abs(results[True] - results[False]).max()
    assert 0 < difference < 0.1 * np.abs(results[False]).max()
