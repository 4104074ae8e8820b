"""The xai-jax command on real data: info, predict, convert, demo, and one-line errors that write nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path
from xai_jax import cli, evaluation, models, weights
from xai_jax.data import DigitsSource, JpegNpzSource, Subset, subset


@pytest.fixture(scope="module")
def cifar():
    return {"test": str(shared_path("cifar10", "cifar10_test_jpeg.npz")),
            "resnet20": str(next(shared_path("cifar10_resnet").glob("resnet20-*.th")))}


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_lists_versions_devices_models_and_taps(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0 and "jax " in out and "devices" in out and "cifar_resnet56" in out
    code, out, _ = run(capsys, "info", "--model", "cifar_resnet56")
    assert code == 0
    assert "layer3.8  8 x 8 x 64" in out and "pool      64" in out and "stem      32 x 32 x 16" in out


def test_predict_writes_logits_labels_and_taps_in_dataset_order(capsys, tmp_path, cifar):
    out_file = tmp_path / "pred.npz"
    code, out, _ = run(capsys, "--quiet", "predict", "--model", "cifar_resnet20", "--weights", cifar["resnet20"],
                       "--data", f"jpeg-npz:{cifar['test']}", "--limit", "300", "--batch-size", "64",
                       "--taps", "layer3,pool", "--out", str(out_file))
    assert code == 0 and "300 images" in out
    saved = np.load(out_file)
    source = Subset(JpegNpzSource(cifar["test"]), np.arange(300))
    images, labels = source.all()
    np.testing.assert_array_equal(saved["labels"], labels)
    assert saved["logits"].shape == (300, 10) and saved["layer3"].shape == (300, 8, 8, 64)
    np.testing.assert_allclose(saved["pool"], saved["layer3"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert list(saved["class_names"])[:2] == ["airplane", "automobile"]
    assert np.mean(saved["logits"].argmax(-1) == labels) > 0.7  # ResNet-20 scores about 80 % on these JPEGs
    # Same numbers as an unbatched library call on the same images.
    variables = weights.load(models.get("cifar_resnet20"), cifar["resnet20"])
    direct = models.make_forward("cifar_resnet20")(images[:7], variables)["logits"]
    np.testing.assert_allclose(saved["logits"][:7], direct, rtol=1e-4, atol=1e-4)


def test_predict_with_a_sample_seed_draws_a_random_subset_in_dataset_order(capsys, tmp_path, cifar):
    out_file = tmp_path / "pred.npz"
    code, out, _ = run(capsys, "--quiet", "predict", "--model", "cifar_resnet20", "--weights", cifar["resnet20"],
                       "--data", f"jpeg-npz:{cifar['test']}", "--limit", "40", "--sample-seed", "5",
                       "--out", str(out_file))
    assert code == 0 and "40 images" in out
    saved = np.load(out_file)
    expected = subset(JpegNpzSource(cifar["test"]), 40, seed=5)
    np.testing.assert_array_equal(saved["labels"], expected.all()[1])
    assert len(set(saved["labels"])) >= 8  # the first 40 images are all airplanes


def test_convert_then_predict_from_the_orbax_directory(capsys, tmp_path, cifar):
    code, out, _ = run(capsys, "convert", "--model", "cifar_resnet20", "--weights", cifar["resnet20"],
                       "--out", str(tmp_path / "r20"))
    # ResNet-20: 269,722 trainable parameters + running mean and variance of its 688 batch-norm channels.
    assert code == 0 and f"{269_722 + 2 * 688:,} values" in out
    results = []
    for w in (cifar["resnet20"], str(tmp_path / "r20")):
        run(capsys, "--quiet", "predict", "--model", "cifar_resnet20", "--weights", w, "--data",
            f"jpeg-npz:{cifar['test']}", "--limit", "64", "--out", str(tmp_path / "p.npz"))
        results.append(np.load(tmp_path / "p.npz")["logits"])
    np.testing.assert_array_equal(results[0], results[1])
    code, _, err = run(capsys, "predict", "--model", "cifar_resnet56", "--weights", str(tmp_path / "r20"),
                       "--data", f"jpeg-npz:{cifar['test']}", "--out", str(tmp_path / "x.npz"))
    assert code == 2 and "cifar_resnet20" in err


@pytest.mark.parametrize("change, message", [
    ({"--taps": "layer9"}, "valid taps: stem"),
    ({"--weights": "/nonexistent/w.th"}, "weights file not found: /nonexistent/w.th"),
    ({"--data": "jpeg-npz:/nonexistent.npz"}, "/nonexistent.npz"),
    ({"--data": "csv:foo"}, "idx:DIR"),
    ({"--out": "pred.txt"}, "must name a .npz file"),
    ({"--model": "cifar_resnet56"}, "CIFAR ResNet-56 checkpoint has no tensor"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, cifar, change, message):
    args = {"--model": "cifar_resnet20", "--weights": cifar["resnet20"], "--data": f"jpeg-npz:{cifar['test']}",
            "--limit": "8", "--out": str(tmp_path / "pred.npz")} | change
    code, out, err = run(capsys, "predict", *[x for kv in args.items() for x in kv])
    assert code == 2
    assert err.startswith("xai-jax: error: ") and message in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


@pytest.mark.xdist_group("demo")  # with the contract tests that read the same demo folder (tests/test_methods.py)
def test_demo_trains_explains_and_writes_report_summary_model_and_results(demo_out):
    out_dir = demo_out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.95
    assert summary["model"]["taps"]["conv2"] == [8, 8, 64]
    html = (out_dir / "report.html").read_text()
    assert html.count("<img src=\"data:image/png;base64,") >= 4
    nma = summary["methods"]["nma"]
    assert nma["counted_images"] == round(summary["test_accuracy"] * 360)  # every correct test digit counted
    assert nma["explanation_of_8"].startswith("An 8 is part of the concept digit (")
    assert "Near-miss analysis" in html
    variables = weights.load(models.get("small_cnn"), str(out_dir / "model"))
    counts = evaluation.confusion_counts("small_cnn", variables, DigitsSource("test"), progress=False)
    assert np.trace(counts) / counts.sum() == pytest.approx(summary["test_accuracy"])
    from xai_jax.methods import METHODS
    assert sorted(summary["methods"]) == sorted(METHODS)
    for name, method in METHODS.items():
        method.result_type.load(out_dir / name)  # every method's fitted result, ready for its other commands


def test_console_script_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "xai_jax.cli", "info", "--model", "small_cnn"],
                            capture_output=True, text=True, check=True)
    assert re.search(r"conv1 +8 x 8 x 32\n", result.stdout)


DEBIAN_WORDNET = all(os.path.isfile(f"/usr/share/wordnet/{f}") for f in ("data.noun", "index.noun", "index.sense"))


@pytest.mark.skipif(not DEBIAN_WORDNET, reason="Debian's wordnet-base/wordnet-sense-index are not installed")
def test_setup_wordnet_installs_an_nltk_readable_copy_offline(capsys, tmp_path, monkeypatch):
    import nltk

    from xai_jax.naming import wordnet
    monkeypatch.setattr(wordnet, "host_reachable", lambda *a, **k: False)  # as on an offline machine
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    code, out, err = run(capsys, "--quiet", "setup", "wordnet", "--target", str(tmp_path / "nltk_data"))
    assert code == 0, err
    assert str(tmp_path / "nltk_data") in out
    reader = wordnet.load_wordnet(tmp_path / "nltk_data")
    assert wordnet.synset_from_wnid("n01440764", reader).name() == "tench.n.01"


def test_setup_wordnet_into_an_unwritable_place_is_one_line(capsys, tmp_path, monkeypatch):
    from xai_jax.naming import wordnet
    monkeypatch.setattr(wordnet, "host_reachable", lambda *a, **k: False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "setup", "wordnet", "--target", str(blocker / "nltk_data"))
    assert code == 2 and err.startswith("xai-jax: error: ") and err.count("\n") == 1, err
