"""WWW on the real ResNet-56 and CIFAR-10 JPEGs, concept discovery on planted embeddings, save/load, CLI, bad input."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from xai_jax import cli, debug, models, weights
from xai_jax.data import DigitsSource, JpegNpzSource, Subset
from xai_jax.errors import XaiJaxError
from xai_jax.methods.www import (CONTRIBUTION_MODES, WWW, WWWConfig, WWWExplanation, WWWResult, clip_dissect,
                                 concept_metrics, rejection_analysis)

MODEL = "cifar_resnet56"


@pytest.fixture(scope="module")
def resnet():
    path = shared_path("cifar10_resnet", "resnet56-4bfd9763.th")
    train = JpegNpzSource(shared_path("cifar10", "cifar10_train_jpeg.npz"))
    test = JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz"))
    rng = np.random.default_rng(0)
    # the files are sorted by class: random subsets cover every class
    chosen = rng.choice(len(train), 448, replace=False)
    train_sub = Subset(train, np.sort(chosen[:320]))
    test_sub = Subset(test, np.sort(rng.choice(len(test), 640, replace=False)))
    return weights.load(models.get(MODEL), path), train_sub, test_sub, Subset(train, np.sort(chosen[320:]))


@pytest.fixture(scope="module")
def fitted(resnet):
    """``(method, result)``: WWW at ResNet-56's ``pool`` with class contributions over 320 training images."""
    variables, train = resnet[:2]
    method = WWW(MODEL, variables, tap="pool")
    return method, method.fit_class_contributions(train, batch_size=64, progress=False)


def _pool_reference(variables, source, mode="signed"):
    forward = jax.jit(models.make_forward(MODEL, ("pool",)))
    images, labels = source.all()
    feats = np.asarray(forward(images, variables)["pool"], np.float64)
    kernel = np.asarray(variables["params"]["linear"]["kernel"], np.float64)     # [64, 10]
    w = kernel[:, labels].T * feats                                              # linear head: W_c * a exactly
    w = np.abs(w) if mode == "abs" else w
    means = np.stack([w[labels == c].mean(0) for c in range(10)])
    return means, np.bincount(labels, minlength=10)


@pytest.mark.slow
def test_class_contributions_at_pool_equal_linear_head(resnet, fitted):
    variables, train = resnet[:2]
    method, result = fitted
    assert method.map_tap == "layer3"
    expected, counts = _pool_reference(variables, train)
    np.testing.assert_array_equal(result.class_counts, counts)
    np.testing.assert_allclose(result.class_contributions, expected, rtol=1e-4, atol=1e-5)
    # the class's own output weights make its top neurons: each class's top-3 contributions are positive
    assert np.all(np.sort(result.class_contributions, axis=1)[:, -3:] > 0)
    assert result.class_names == list(train.class_names) and result.config == method.config
    # other training images in batches of the same shape reuse the fixture's programs
    with debug.assert_max_compiles(0, "fit_class_contributions on new data of the same shapes"):
        again = method.fit_class_contributions(resnet[3], batch_size=64, progress=False)
    assert again.class_counts.sum() == 128 and again is not result


@pytest.mark.slow
def test_layer3_contributions_equal_pool_and_abs_mode(resnet, fitted):
    """Summed over space, a * grad at layer3 equals W_c * mean(a) (mean pool and linear head are linear)."""
    variables, train = resnet[:2]
    images, labels = train.read(np.arange(24))
    at_pool = fitted[0].sample_contributions(images, labels)
    at_layer3 = WWW(MODEL, variables, tap="layer3").sample_contributions(images, labels)
    np.testing.assert_allclose(at_layer3, at_pool, rtol=1e-3, atol=1e-4)
    abs_method = WWW(MODEL, variables, tap="pool", config=WWWConfig(contribution="abs"))
    np.testing.assert_allclose(abs_method.sample_contributions(images, labels), np.abs(at_pool), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_explain_matches_numpy_and_trust_is_informative(resnet, fitted):
    variables, _, test = resnet[:3]
    method, result = fitted
    images, labels = test.read(np.arange(6))
    e = method.explain(images, result)
    forward = jax.jit(models.make_forward(MODEL, ("pool", "layer3")))
    out = forward(images, variables)
    predicted = np.asarray(out["logits"]).argmax(-1)
    np.testing.assert_array_equal(e.predicted, predicted)
    kernel = np.asarray(variables["params"]["linear"]["kernel"])
    w = kernel[:, predicted].T * np.asarray(out["pool"])
    np.testing.assert_array_equal(e.sample_neurons, np.argsort(-w, axis=1)[:, :3])
    np.testing.assert_array_equal(e.class_neurons,
                                  np.argsort(-result.class_contributions[predicted], axis=1)[:, :3])
    maps = np.asarray(out["layer3"])                                             # [B, 8, 8, 64]
    for i in range(len(images)):
        top = e.sample_neurons[i]
        share = w[i, top] / w[i, top].sum()
        low = np.einsum("k,hwk->hw", share, maps[i][..., top])
        up = np.asarray(jax.image.resize(low, (32, 32), "bilinear"))
        np.testing.assert_allclose(e.sample_heatmap[i], up, rtol=1e-4, atol=1e-5)
        c_top = e.class_neurons[i]
        c_w = result.class_contributions[predicted[i], c_top]
        c_up = np.asarray(jax.image.resize(np.einsum("k,hwk->hw", c_w / c_w.sum(), maps[i][..., c_top]), (32, 32),
                                           "bilinear"))
        cos = np.sum(up * c_up) / np.linalg.norm(up) / np.linalg.norm(c_up)
        assert e.trust[i] == pytest.approx(cos, rel=1e-4, abs=1e-5)
    assert e.sample_regions.shape == (6, 3, 32, 32)
    assert abs(e.sample_regions.mean() - 0.3) < 0.03                              # 70th percentile thresholds
    # trust over 640 test images: MSP must catch mispredictions well above chance (the pass is wired to labels),
    # and the heatmap similarity must carry signal too (random scores give 0.5)
    scores = method.trust_scores(test, result, batch_size=128, progress=False)
    wrong = scores["predicted"] != scores["labels"]
    assert 0.7 < 1 - wrong.mean() < 0.9                                          # ResNet-56 on these JPEGs
    analysis = rejection_analysis(scores["trust"], scores["msp"], wrong)
    assert analysis["auroc_msp"] > 0.75
    assert analysis["auroc_similarity"] > 0.55
    assert analysis["caught_msp"][-1] == wrong.sum()


def _planted(rng, probe=180, units=7, concepts=23, dim=16):
    """Embeddings where neuron u fires on images that show concept 3u+1 (plus noise and the template)."""
    words = [f"concept{j}" for j in range(concepts)]
    texts = rng.normal(size=(concepts, dim)).astype(np.float32)
    template = rng.normal(size=dim).astype(np.float32)
    shown = rng.integers(0, concepts, size=probe)
    images = texts[shown] + 0.4 * rng.normal(size=(probe, dim)) + 0.5 * template
    activations = rng.normal(size=(probe, units)).astype(np.float32) * 0.1
    for u in range(units):
        activations[shown == 3 * u + 1, u] += 5
    return words, texts, template, images.astype(np.float32), activations


def test_concepts_from_embeddings_find_planted_concepts():
    rng = np.random.default_rng(0)
    words, texts, template, images, acts = _planted(rng)
    config = WWWConfig(n_examples=5)
    result = WWW(config=config).fit_concepts_from_embeddings(words, texts, template, image_embeddings=images,
                                                             activations=acts)
    entries = result.concepts()
    assert len(entries) == 7 and "minor" not in entries[0]
    for u, entry in enumerate(entries):
        assert entry["major"][0]["concept"] == f"concept{3 * u + 1}"
        assert all(c["score"] >= 0.95 * entry["major"][0]["score"] for c in entry["major"])
    # minor concepts from crop embeddings: crops show concept 3u+2
    crops = np.stack([texts[3 * u + 2] + 0.3 * rng.normal(size=(5, 16)) for u in range(7)]).astype(np.float32)
    result = WWW(config=config).fit_concepts_from_embeddings(words, texts, template, image_embeddings=images,
                                                             activations=acts, crop_embeddings=crops)
    assert [e["minor"][0]["concept"] for e in result.concepts()] == [f"concept{3 * u + 2}" for u in range(7)]
    # the metric against the planted truth: every neuron hits
    selected = [[c["concept"] for c in e["major"]] for e in result.concepts()]
    metrics = concept_metrics(selected, [[f"concept{3 * u + 1}"] for u in range(7)],
                              text_encoder=lambda ws: texts[[words.index(w) for w in ws]])
    assert metrics["hit"] == 1.0 and metrics["recall"] == 1.0
    assert metrics["clip_cos"] > 0.9


def test_clip_dissect_baseline_finds_planted_concepts():
    rng = np.random.default_rng(1)
    words, texts, template, images, acts = _planted(rng, probe=400)
    scores = clip_dissect(acts, images, texts, top_k=20)
    assert scores.shape == (7, 23)
    np.testing.assert_array_equal(scores.argmax(1), 3 * np.arange(7) + 1)


@pytest.fixture(scope="module")
def tiny_clip():
    """The tiny random-weight CLIP, built once (building it is most of a test's time)."""
    from xai_jax.models import clip
    return clip.tiny(jax.random.key(0))


def test_fit_concepts_with_tiny_clip_on_digits(tiny_clip):
    """The image path end to end with the tiny (random-weight) CLIP: probe, embed, crops, minor concepts."""
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    probe = Subset(DigitsSource("test"), np.arange(60))
    method = WWW("small_cnn", variables, tap="pool", config=WWWConfig(n_examples=4, max_concepts=3))
    assert method.map_tap == "conv3"
    model = tiny_clip
    result = method.fit_concepts(probe, model, ["zero", "one", "two", "three", "seven"], batch_size=32,
                                 progress=False)
    assert result.topn_indices.shape == (4, 64)
    acts = np.asarray(models.make_forward("small_cnn", ("pool",))(probe.all()[0], variables)["pool"])
    np.testing.assert_array_equal(result.topn_indices[0], acts.argmax(0))
    assert result.major["indices"].shape == (64, 3) and result.minor["indices"].shape == (64, 3)
    assert all(len(e["major"]) >= 1 and len(e["minor"]) >= 1 for e in result.concepts())
    # the major scores are eq. 1 on the top-n images' CLIP embeddings
    u = 5
    images = np.repeat(probe.read(result.topn_indices[:, u])[0], 3, axis=-1)
    v = model.encode_images(images)
    t = model.encode_texts(["A photo of a " + w for w in ["zero", "one", "two", "three", "seven"]])
    tt = model.encode_texts(["A photo of a"])[0]
    n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    expected = (n(v) @ n(t).T - (n(v) @ n(tt))[:, None]).mean(0)
    np.testing.assert_allclose(result.major["scores"][u], np.sort(expected)[::-1][:3], atol=1e-4)


@pytest.mark.slow
def test_save_load_roundtrip(tmp_path, fitted):
    method, contributed = fitted
    rng = np.random.default_rng(2)
    words, texts, template, _, _ = _planted(rng, units=64, concepts=23)
    images = rng.normal(size=(90, 16)).astype(np.float32)
    acts = rng.normal(size=(90, 64)).astype(np.float32)
    result = method.fit_concepts_from_embeddings(words, texts, template, image_embeddings=images, activations=acts,
                                                 result=contributed)
    assert contributed.major is None and contributed.topn_indices is None        # a new result, the old one kept
    np.testing.assert_array_equal(result.class_contributions, contributed.class_contributions)
    assert result.topn_indices.shape == result.topn_values.shape == (40, 64)
    result.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["concepts.json", "www.json", "www.npz",
                                                                  "xai_jax_result.json"]
    loaded = WWWResult.load(tmp_path / "r")
    assert loaded.concepts() == result.concepts()
    for name in ("class_contributions", "class_counts", "topn_indices", "topn_values"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(result, name))
    for key in result.major:
        np.testing.assert_array_equal(loaded.major[key], result.major[key])
    assert loaded.minor is None and loaded.concept_names == words
    assert (loaded.model, loaded.tap, loaded.map_tap, loaded.config) == (MODEL, "pool", "layer3", method.config)
    assert json.loads((tmp_path / "r" / "concepts.json").read_text()) == result.concepts()
    e = method.explain(np.zeros((1, 32, 32, 3), np.uint8) + 100, loaded)
    assert e.sample_concepts[0][0] == result.concept_label(int(e.sample_neurons[0, 0]))
    e.save(tmp_path / "e.npz")
    back = WWWExplanation.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(back.sample_heatmap, e.sample_heatmap)
    assert back.class_concepts == e.class_concepts
    # a result whose parts disagree is refused in one line
    np.savez(tmp_path / "r" / "www.npz", **{"class_contributions": np.zeros((10, 63)), "class_counts": np.ones(10)})
    with pytest.raises(XaiJaxError, match="class contributions for 64 neurons"):
        WWWResult.load(tmp_path / "r")


def test_bad_input(resnet):
    variables = resnet[0]
    with pytest.raises(XaiJaxError, match="valid taps: .*layer3"):
        WWW(MODEL, variables, tap="layer9")
    with pytest.raises(XaiJaxError, match="must be a spatial tap with 64 channels"):
        WWW(MODEL, variables, tap="pool", map_tap="layer2")
    with pytest.raises(XaiJaxError, match="contribution must be one of"):
        WWW(MODEL, variables, tap="pool", config=WWWConfig(contribution="both"))
    method = WWW(MODEL, variables, tap="pool")
    with pytest.raises(XaiJaxError, match="no class contributions"):
        method.explain(np.zeros((1, 32, 32, 3), np.uint8), method.new_result())
    with pytest.raises(XaiJaxError, match=r"takes images of shape \[N, 32, 32, 3\]"):
        method.sample_contributions(np.zeros((2, 28, 28, 3), np.uint8))
    rng = np.random.default_rng(3)
    words, texts, template, images, acts = _planted(rng)
    with pytest.raises(XaiJaxError, match="concept embeddings must be"):
        WWW().fit_concepts_from_embeddings(words[:-1], texts, template, image_embeddings=images, activations=acts)
    with pytest.raises(XaiJaxError, match="NaN"):
        WWW().fit_concepts_from_embeddings(words, texts, template, image_embeddings=images * np.nan, activations=acts)
    with pytest.raises(XaiJaxError, match="one row per image embedding"):
        WWW().fit_concepts_from_embeddings(words, texts, template, image_embeddings=images, activations=acts[:-1])
    with pytest.raises(XaiJaxError, match="template embedding must have 16"):
        WWW().fit_concepts_from_embeddings(words, texts, template[:3], image_embeddings=images, activations=acts)
    with pytest.raises(XaiJaxError, match="at least n_examples = 40"):
        WWW().fit_concepts_from_embeddings(words, texts, template, image_embeddings=images[:30], activations=acts[:30])


def _write_embeddings(tmp_path):
    rng = np.random.default_rng(4)
    words, texts, template, images, acts = _planted(rng, probe=300)
    np.savez(tmp_path / "A.npz", activations=acts)
    np.savez(tmp_path / "V.npz", embeddings=images)
    np.savez(tmp_path / "T.npz", embeddings=texts)
    np.save(tmp_path / "TT.npy", template)
    (tmp_path / "WORDS.txt").write_text("\n".join(words) + "\n")
    return [str(tmp_path / n) for n in ("A.npz", "V.npz", "T.npz", "WORDS.txt", "TT.npy")]


def test_cli_concepts_from_embeddings(tmp_path, capsys):
    a, v, t, words, tt = _write_embeddings(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["--quiet", "www", "concepts", "--activations", a, "--image-embeddings", v,
                     "--concept-embeddings", t, "--concepts", words, "--template-embedding", tt,
                     "--n-examples", "10", "--out", str(out)]) == 0
    entries = json.loads((out / "concepts.json").read_text())
    assert len(entries) == 7
    assert [e["major"][0]["concept"] for e in entries] == [f"concept{3 * u + 1}" for u in range(7)]
    assert set(entries[0]["major"][0]) == {"concept", "score"} and "minor" not in entries[0]
    assert "wrote" in capsys.readouterr().out
    # bad input: one error line, exit 2, nothing written
    np.savez(tmp_path / "bad.npz", acts=np.zeros((3, 3)))
    assert cli.main(["www", "concepts", "--activations", str(tmp_path / "bad.npz"), "--image-embeddings", v,
                     "--concept-embeddings", t, "--concepts", words, "--template-embedding", tt,
                     "--out", str(tmp_path / "no")]) == 2
    assert "must hold `activations`" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    assert cli.main(["www", "concepts", "--model", MODEL, "--weights", "x.th", "--data", "digits", "--tap", "pool",
                     "--concepts", words, "--out", str(tmp_path / "no")]) == 2
    assert "No CLIP weights ship with xai_jax" in capsys.readouterr().err


@pytest.mark.xdist_group("demo")  # reads the demo's trained CNN, with the other readers of the demo folder
def test_cli_fit_is_concepts_then_contributions_in_one_command(tmp_path, capsys, demo_out):
    variables = weights.load(models.get("small_cnn"), str(demo_out / "model"))
    probe, _ = Subset(DigitsSource("test"), np.arange(60)).all()
    rng = np.random.default_rng(0)
    files = {"activations": ("a.npz", np.asarray(models.make_forward("small_cnn", ("pool",))(probe, variables)["pool"])),
             "image-embeddings": ("v.npz", rng.normal(size=(60, 16)).astype(np.float32)),
             "concept-embeddings": ("t.npz", rng.normal(size=(5, 16)).astype(np.float32))}
    embeddings = []
    for flag, (name, array) in files.items():
        np.savez(tmp_path / name, **{"activations" if flag == "activations" else "embeddings": array})
        embeddings += [f"--{flag}", str(tmp_path / name)]
    np.save(tmp_path / "tt.npy", rng.normal(size=16).astype(np.float32))
    (tmp_path / "words.txt").write_text("zero\none\ntwo\nthree\nseven\n")
    embeddings += ["--template-embedding", str(tmp_path / "tt.npy"), "--concepts", str(tmp_path / "words.txt"),
                   "--n-examples", "10"]
    model = ["--model", "small_cnn", "--weights", str(demo_out / "model"), "--tap", "pool"]
    assert cli.main(["--quiet", "www", "fit", *embeddings, *model, "--train-data", "digits", "--train-split",
                     "train", "--train-limit", "200", "--class-by", "prediction", "--out", str(tmp_path / "fit")]) == 0
    assert cli.main(["--quiet", "www", "concepts", *embeddings, "--out", str(tmp_path / "what")]) == 0
    assert cli.main(["--quiet", "www", "contributions", *model, "--data", "digits", "--split", "train", "--limit",
                     "200", "--class-by", "prediction", "--result", str(tmp_path / "what"),
                     "--out", str(tmp_path / "why")]) == 0
    one, two = WWWResult.load(tmp_path / "fit"), WWWResult.load(tmp_path / "why")
    for key in ("indices", "scores", "selected", "count"):
        np.testing.assert_array_equal(one.major[key], two.major[key])
    np.testing.assert_allclose(one.class_contributions, two.class_contributions, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one.class_counts, two.class_counts)
    assert one.class_counts.sum() == 200 and one.config.class_by == "prediction"
    assert one.meta["train_data"] == "digits" and one.meta["train_limit"] == 200
    capsys.readouterr()
    # the contributions' model is required before any stage runs; nothing is written
    assert cli.main(["www", "fit", *embeddings, "--train-data", "digits", "--out", str(tmp_path / "no")]) == 2
    assert "--model, --weights and --tap are required" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_cli_contributions_and_explain(tmp_path, capsys, resnet):
    path = str(shared_path("cifar10_resnet", "resnet56-4bfd9763.th"))
    data = "jpeg-npz:" + str(shared_path("cifar10", "cifar10_test_jpeg.npz"))
    out = tmp_path / "contrib"
    assert cli.main(["--quiet", "www", "contributions", "--model", MODEL, "--weights", path, "--data", data,
                     "--limit", "48", "--batch-size", "24", "--tap", "pool", "--out", str(out)]) == 0
    saved = WWWResult.load(out)
    assert saved.class_contributions.shape == (10, 64)
    assert saved.class_counts.sum() == 48 and saved.meta["weights"] == path
    images, _ = resnet[2].read(np.arange(1))
    Image.fromarray(images[0]).save(tmp_path / "img.png")
    assert cli.main(["www", "explain", "--result", str(out), "--image", str(tmp_path / "img.png"),
                     "--out", str(tmp_path / "exp")]) == 0
    record = json.loads((tmp_path / "exp" / "explanation.json").read_text())
    assert len(record["sample_neurons"]) == 3 and -1 <= record["trust"] <= 1
    assert (tmp_path / "exp" / "panel.png").stat().st_size > 1000
    assert "heatmap similarity" in capsys.readouterr().out
    assert cli.main(["www", "contributions", "--model", MODEL, "--weights", path, "--data", data, "--limit", "8",
                     "--tap", "layer9", "--out", str(tmp_path / "no")]) == 2
    assert "valid taps" in capsys.readouterr().err


def test_rejection_analysis_shapes():
    trust = np.array([0.9, 0.1, 0.8, 0.2])
    msp = np.array([0.99, 0.9, 0.5, 0.95])
    wrong = np.array([False, True, False, True])
    a = rejection_analysis(trust, msp, wrong)
    assert a["auroc_similarity"] == 1.0 and a["auroc_msp"] == 0.5
    np.testing.assert_array_equal(a["caught_similarity"], [0, 1, 2, 2, 2])
    with pytest.raises(XaiJaxError):
        rejection_analysis(trust, msp[:3], wrong)


def test_config_replace_validates():
    with pytest.raises(XaiJaxError, match="prompt must contain"):
        WWWConfig(prompt="a photo").validate()
    assert dataclasses.replace(WWWConfig(), top_k=5).top_k == 5
    for bad, message in [(dict(alpha_major=0.0), "alpha_major must be > 0"), (dict(alpha_minor=1.5), "<= 1"),
                         (dict(percentile=100.0), "percentile must be < 100"), (dict(crop_fraction=0.0), "> 0"),
                         (dict(n_examples=0), "n_examples must be >= 1"), (dict(neuron_chunk=0), ">= 1"),
                         (dict(class_by="guess"), "class_by must be one of label, prediction")]:
        with pytest.raises(XaiJaxError, match=message):
            WWWConfig(**bad).validate()
    WWWConfig(alpha_major=1.0, percentile=0.0, crop_fraction=1.0).validate()


def test_contribution_modes_are_the_kernels():
    from xai_jax.kernels import www as K
    ones = np.ones((1, 2), np.float32)
    for mode in CONTRIBUTION_MODES:
        K.contributions_from_gradients(ones, ones, mode)
    with pytest.raises(ValueError):
        K.contributions_from_gradients(ones, ones, "both")


@pytest.fixture(scope="module")
def digits_www():
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    return WWW("small_cnn", variables, tap="pool", config=WWWConfig(n_examples=4)), DigitsSource("train")


def test_probe_traces_once_per_shape(digits_www):
    method, train = digits_www
    first, _ = method.probe(Subset(train, np.arange(50)), batch_size=16, progress=False)
    with debug.assert_max_compiles(0, "the probe pass on new data of the same shapes"):
        indices, values = method.probe(Subset(train, np.arange(50, 100)), batch_size=16, progress=False)
    assert indices.shape == values.shape == (4, 64) and indices.max() < 50


def test_class_contributions_trace_once_per_shape(digits_www):
    method, train = digits_www
    first = method.fit_class_contributions(Subset(train, np.arange(50)), batch_size=16, progress=False)
    with debug.assert_max_compiles(0, "fit_class_contributions on new data of the same shapes"):
        second = method.fit_class_contributions(Subset(train, np.arange(50, 100)), first, batch_size=16,
                                                progress=False)
    assert first.class_counts.sum() == second.class_counts.sum() == 50
    assert not np.array_equal(first.class_contributions, second.class_contributions)


# --- final-layer neurons (tap="logits"), Table 5's switches, the paper's minor crops, metrics -------------------

@pytest.fixture(scope="module")
def resnet20():
    return weights.load(models.get("cifar_resnet20"), shared_path("cifar10_resnet", "resnet20-12fca82f.th"))


def test_logits_cam_is_exact_for_the_pooled_head_and_explains(resnet, resnet20):
    """ResNet-20's head is global-pooled: the spatial mean of each class's CAM plus the bias is its logit."""
    test, variables, MODEL = resnet[2], resnet20, "cifar_resnet20"
    method = WWW(MODEL, variables, tap="logits")
    assert (method.map_tap, method.maps_kind, method.head_tap) == ("layer3", "cam", "pool")
    images, _ = test.read(np.arange(6))
    cam = method.neuron_maps(images, np.tile(np.arange(10), (6, 1)))                   # [6, 10, 8, 8]
    out = models.make_forward(MODEL, ("layer3",))(images, variables)
    bias = np.asarray(variables["params"]["linear"]["bias"])
    logits = np.asarray(out["logits"])
    np.testing.assert_allclose(cam.mean((2, 3)) + bias, logits, atol=1e-4 * np.abs(logits).max())
    kernel = np.asarray(variables["params"]["linear"]["kernel"])
    np.testing.assert_allclose(cam[:, 3], np.asarray(out["layer3"]) @ kernel[:, 3], atol=1e-4)
    # the probe of final-layer neurons ranks images by their logits
    indices, values = WWW(MODEL, variables, tap="logits", config=WWWConfig(n_examples=3)).probe(
        Subset(test, np.arange(48)), batch_size=48, progress=False)
    all_logits = np.asarray(models.make_forward(MODEL, ("layer3",))(test.read(np.arange(48))[0],
                                                                    variables)["logits"])
    np.testing.assert_array_equal(indices, np.argsort(-all_logits, axis=0, kind="stable")[:3])
    # explanations run: the only contributing final-layer neuron of a prediction is the predicted class
    result = dataclasses.replace(method.new_result(), class_contributions=np.eye(10, dtype=np.float32),
                                 class_counts=np.ones(10, np.float32))
    e = method.explain(images, result)
    np.testing.assert_array_equal(e.sample_neurons[:, 0], e.predicted)
    own = cam[np.arange(6), e.predicted]
    up = np.asarray(jax.image.resize(own, (6, 32, 32), "bilinear"))
    np.testing.assert_allclose(e.sample_maps[:, 0], up, atol=1e-3)


def test_logits_gradcam_for_a_dense_head_matches_jax_grad():
    """small_cnn has dense layers after conv3: Grad-CAM at conv3, against a per-class jax.grad reference."""
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(1))
    method = WWW("small_cnn", variables, tap="logits")
    assert (method.map_tap, method.maps_kind) == ("conv3", "gradcam")
    images = DigitsSource("test").read(np.arange(4))[0]
    classes = np.array([[0, 7], [3, 3], [9, 1], [5, 2]])
    maps = method.neuron_maps(images, classes)
    forward = models.make_forward("small_cnn", ("conv3",))
    feats = np.asarray(forward(images, variables)["conv3"])
    logit_grad = jax.jit(jax.grad(lambda o, b, c: forward(images, variables, {"conv3": o})["logits"][b, c]))
    for b in range(4):
        for j, c in enumerate(classes[b]):
            alpha = np.asarray(logit_grad(np.zeros_like(feats), b, c))[b].mean((0, 1))
            np.testing.assert_allclose(maps[b, j], np.maximum(feats[b] @ alpha, 0), atol=1e-5)
    with pytest.raises(XaiJaxError, match="CAM needs a global-pooled"):
        WWW("small_cnn", variables, tap="logits", logit_maps="cam")
    with pytest.raises(XaiJaxError, match="logit_maps is for final-layer"):
        WWW("small_cnn", variables, tap="pool", logit_maps="gradcam")


class _Recording:
    """A CLIP model that remembers what it embedded (the references reuse its outputs: no second compile)."""

    def __init__(self, model):
        self.model, self.images, self.texts = model, [], []

    def encode_images(self, images):
        out = self.model.encode_images(images)
        self.images.append((np.asarray(images), out))
        return out

    def encode_texts(self, texts):
        out = self.model.encode_texts(texts)
        self.texts.append((list(texts), out))
        return out


def test_table5_switches_and_probe_crops_with_tiny_clip(tiny_clip):
    """tap="logits" end to end through CLIP: bare words (no template), plain cosine (no ACS), and the paper's
    minor crops (the probe set cut into crops, re-ranked by the neuron), each against a NumPy reference."""
    from xai_jax.methods.www.concepts import GridCrops
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    probe = Subset(DigitsSource("test"), np.arange(24))
    words = ["zero", "one", "two", "three", "seven"]
    config = WWWConfig(n_examples=3, max_concepts=5, use_template=False, acs=False, minor_crops="probe",
                       crop_grid=2)
    method = WWW("small_cnn", variables, tap="logits", config=config)
    model = _Recording(tiny_clip)
    result = method.fit_concepts(probe, model, words, batch_size=32, progress=False)
    assert [texts for texts, _ in model.texts] == [words]                      # bare words, no template embedded
    (texts_in, t), = model.texts
    (images_in, v), (crops_in, c) = model.images
    n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    u = 6
    unique = np.unique(result.topn_indices)
    np.testing.assert_array_equal(images_in, np.repeat(probe.read(unique)[0], 3, axis=-1))
    mine = n(v[np.searchsorted(unique, result.topn_indices[:, u])])
    np.testing.assert_allclose(result.major["scores"][u], np.sort((mine @ n(t).T).mean(0))[::-1], atol=1e-4)
    # the minor concepts: top-3 of the 24 x 4 crops by the logit, embedded, plain cosine
    crops = GridCrops(probe, config.crop_fraction, 2)
    crop_images = crops.read(np.arange(len(crops)))[0]
    assert crop_images.shape == (96, 8, 8, 1) and crop_images.dtype == probe.read(np.arange(1))[0].dtype
    np.testing.assert_array_equal(crop_images[5], np.asarray(jax.image.resize(
        probe.read([1])[0][0, :4, 4:].astype(np.float32), (8, 8, 1), "bilinear")).round().astype(np.uint8))
    logits = np.asarray(models.make_forward("small_cnn")(crop_images, variables)["logits"])
    top = np.argsort(-logits[:, u], kind="stable")[:3]
    rows = [next(i for i, img in enumerate(crops_in) if np.array_equal(img, np.repeat(crop_images[k], 3, -1)))
            for k in top]
    np.testing.assert_allclose(result.minor["scores"][u], np.sort((n(c[rows]) @ n(t).T).mean(0))[::-1],
                               atol=1e-4)
    assert result.config.use_template is False and result.config.minor_crops == "probe"


def _labelled_embeddings(rng, classes=6, probe=240, distractors=9, dim=24):
    """Final-layer activations and embeddings built so that neuron u's concept is class name u."""
    names = [f"class{c}" for c in range(classes)]
    words = names + [f"other{j}" for j in range(distractors)]
    texts = rng.normal(size=(len(words), dim)).astype(np.float32)
    labels = rng.integers(0, classes, size=probe)
    images = texts[labels] + 0.3 * rng.normal(size=(probe, dim))
    logits = 0.2 * rng.normal(size=(probe, classes)) + 3 * np.eye(classes)[labels]
    return names, words, texts, images.astype(np.float32), logits.astype(np.float32)


def test_cli_metrics_of_final_layer_neurons_from_embeddings(tmp_path, capsys):
    rng = np.random.default_rng(5)
    names, words, texts, images, logits = _labelled_embeddings(rng)
    np.savez(tmp_path / "A.npz", activations=logits)
    np.savez(tmp_path / "V.npz", embeddings=images)
    np.savez(tmp_path / "T.npz", embeddings=texts)
    synonyms = [f"{n}-synonym" for n in names]
    np.savez(tmp_path / "E.npz", words=np.array(words + synonyms), embeddings=np.concatenate([texts, texts[:6]]))
    (tmp_path / "WORDS.txt").write_text("\n".join(words) + "\n")
    out = tmp_path / "concepts"
    assert cli.main(["--quiet", "www", "concepts", "--activations", str(tmp_path / "A.npz"), "--image-embeddings",
                     str(tmp_path / "V.npz"), "--concept-embeddings", str(tmp_path / "T.npz"), "--concepts",
                     str(tmp_path / "WORDS.txt"), "--no-acs", "--n-examples", "10", "--out", str(out)]) == 0
    (tmp_path / "LABELS.txt").write_text("\n".join(f"{n}, {n}-synonym" for n in names) + "\n")
    assert cli.main(["www", "metrics", "--result", str(out), "--labels", str(tmp_path / "LABELS.txt"),
                     "--clip-text-embeddings", str(tmp_path / "E.npz"), "--out", str(tmp_path / "m")]) == 0
    assert "hit rate 1.0000" in capsys.readouterr().out
    got = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert got["hit"] == 1.0 and got["precision"] == 1.0 and got["neurons"] == 6
    assert got["recall"] == pytest.approx(0.5) and got["clip_cos"] == pytest.approx(1.0, abs=1e-5)
    # the labels permuted: a neuron hits only where the permutation keeps its class
    perm = rng.permutation(6)
    (tmp_path / "P.txt").write_text("\n".join(names[p] for p in perm) + "\n")
    result = WWWResult.load(str(out))
    from xai_jax.methods.www.metrics import lookup_encoder, result_metrics
    permuted = result_metrics(result, [[names[p]] for p in perm],
                              text_encoder=lookup_encoder(words, texts))
    assert permuted["hit"] == pytest.approx(np.mean(perm == np.arange(6)))
    assert cli.main(["www", "metrics", "--result", str(out), "--labels", str(tmp_path / "P.txt")]) == 0
    assert f"hit rate {np.mean(perm == np.arange(6)):.4f}" in capsys.readouterr().out
    # bad input: a word missing from the embeddings, too few labels, no template with ACS
    np.savez(tmp_path / "E2.npz", words=np.array(words[1:] + synonyms), embeddings=np.concatenate([texts[1:],
                                                                                                  texts[:6]]))
    assert cli.main(["www", "metrics", "--result", str(out), "--labels", str(tmp_path / "LABELS.txt"),
                     "--clip-text-embeddings", str(tmp_path / "E2.npz")]) == 2
    assert "no embedding for 'class0'" in capsys.readouterr().err
    (tmp_path / "FEW.txt").write_text("class0\n")
    assert cli.main(["www", "metrics", "--result", str(out), "--labels", str(tmp_path / "FEW.txt")]) == 2
    assert "1 label names for 6 neurons" in capsys.readouterr().err
    assert cli.main(["www", "concepts", "--activations", str(tmp_path / "A.npz"), "--image-embeddings",
                     str(tmp_path / "V.npz"), "--concept-embeddings", str(tmp_path / "T.npz"), "--concepts",
                     str(tmp_path / "WORDS.txt"), "--out", str(tmp_path / "no")]) == 2
    assert "--template-embedding FILE is required" in capsys.readouterr().err
