"""The activation clustering surrogate (xai_jax.methods.dec): DEC recovers a mixture, the surrogate is faithful on
CIFAR-10 with ResNet-56, bad input, save/load, one compile of the DEC loop, the CLI."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from xai_jax import cli, models
from xai_jax.cli import dec as dec_cli
from xai_jax.data import DigitsSource, subset
from xai_jax.errors import XaiJaxError
from xai_jax.methods import dec
from xai_jax.methods.dec import Activations, ActivationClusteringSurrogate, DECConfig, DECResult

from conftest import shared_path

SMALL = dict(hidden=(64, 64, 128), embedding_size=8, batch_size=64, update_interval=20, max_dec_steps=200,
             kmeans_inits=5)


def _mixture(n_per=(97, 61, 131, 83, 45), dim=128, seed=0):
    """A mixture of 5 Gaussian blobs in 128 dimensions with unequal sizes, non-negative like ReLU outputs, and
    a random orthogonal mixing so that no single coordinate separates the components."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (len(n_per), dim))
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)]).astype(np.int32)
    x = means[labels] + rng.normal(0, 0.45, (len(labels), dim))
    x = np.maximum(x @ np.linalg.qr(rng.normal(size=(dim, dim)))[0] + 1.0, 0)
    order = rng.permutation(len(labels))
    return x[order].astype(np.float16), labels[order]


def _fit_mixture(**overrides):
    x, labels = _mixture()
    # tolerance 0: DEC runs all its 200 steps (10 target refreshes), which must keep the components apart
    config = DECConfig(taps=("fc",), clusters=5, pretrain_epochs=30, tolerance=0.0, **{**SMALL, **overrides})
    method = ActivationClusteringSurrogate("small_cnn", None, config, progress=False)
    activations = Activations({"fc": x}, labels, labels.copy(), np.arange(len(labels)))
    return method, method.fit(activations=activations, class_names=[f"c{i}" for i in range(5)]), labels


@pytest.fixture(scope="module")
def mixture_fit():
    return _fit_mixture()


def test_dec_recovers_a_gaussian_mixture(mixture_fit):
    _, result, labels = mixture_fit
    assigned = result.soft_assignments(result.train_embeddings)[0].argmax(-1)
    # k-means on a random projection of these blobs is far from perfect; DEC after pretraining separates them.
    assert adjusted_rand_score(labels, assigned) > 0.95
    assert result.metrics["train"]["surrogate_accuracy"] > 0.97
    history = result.history["fc"]
    assert history["dec_steps"] == 200 and len(history["changed"]) == 10
    assert history["dec_kl"][-1] < history["dec_kl"][0]  # the KL(P || Q) falls as the targets sharpen
    # embeddings live on the radius-8 sphere, posteriors are distributions
    np.testing.assert_allclose(np.linalg.norm(result.train_embeddings, axis=-1), 8.0, rtol=1e-5)
    np.testing.assert_allclose(result.posteriors.sum(-1), 1.0, rtol=1e-6)


def test_dec_refinement_compiles_once(mixture_fit):
    method, result, _ = mixture_fit
    c = result.config
    _, run = dec._dec_steps(tuple(c.hidden), c.embedding_size, float(c.radius), float(c.alpha),
                            float(c.dec_learning_rate))
    assert len(result.history["fc"]["changed"]) > 1  # several refreshes of the target ...
    assert run._cache_size() == 1  # ... one compiled T-step program


def test_posteriors_match_a_numpy_reference(mixture_fit):
    _, result, labels = mixture_fit
    z, mu, alpha = result.train_embeddings[0].astype(np.float64), result.centroids[0].astype(np.float64), 100.0
    d2 = ((z[:, None] - mu[None]) ** 2).sum(-1)
    log_kernel = -(alpha + 1) / 2 * np.log1p(d2 / alpha)
    q = np.exp(log_kernel - log_kernel.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    expected = (q.T @ np.eye(5)[labels]) / q.sum(0)[:, None]
    np.testing.assert_allclose(result.posteriors[0], expected, atol=1e-4)
    # combined surrogate: the weighted sum of layer surrogates (one layer here)
    np.testing.assert_allclose(result.predict_proba(result.train_embeddings), q @ expected, atol=1e-4)


def test_similar_and_concepts_against_numpy(mixture_fit):
    _, result, _ = mixture_fit
    queries = result.train_embeddings[:, 10:13]
    rows, distances = result.similar(queries, 7)
    reference = np.linalg.norm(queries[0][:, None] - result.train_embeddings[0][None], axis=-1)
    np.testing.assert_allclose(distances, np.sort(reference, axis=1)[:, :7], atol=1e-4)
    assert np.all(rows[:, 0] == np.arange(10, 13))  # a training sample is its own nearest neighbour
    concept_rows, concept_distances = result.concepts("fc", 4)
    to_centroids = np.linalg.norm(result.centroids[0][:, None] - result.train_embeddings[0][None], axis=-1)
    assigned = to_centroids.argmin(0)  # alpha-100 Student-t: the nearest centroid has the largest q
    for k in range(5):  # reference only: the method itself has no loop over clusters
        members = np.flatnonzero(assigned == k)
        nearest = members[np.argsort(to_centroids[k, members])[:4]]
        np.testing.assert_array_equal(concept_rows[k], nearest)
        np.testing.assert_allclose(concept_distances[k], to_centroids[k, nearest], atol=1e-4)


def test_concepts_of_every_layer_use_that_layers_clusters():
    """A hand-made two-layer result: concepts of the second layer against NumPy (members nearest the centroid)."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 53, 4))
    z *= 8 / np.linalg.norm(z, axis=-1, keepdims=True)
    centroids = rng.normal(size=(2, 3, 4)) * 4
    result = DECResult(model="small_cnn", class_names=["a", "b"], config=DECConfig(taps=("conv3", "fc"), clusters=3),
                       layers={}, centroids=centroids, posteriors=np.full((2, 3, 2), 0.5), train_embeddings=z,
                       train_labels=np.zeros(53, np.int32), train_predictions=np.zeros(53, np.int32),
                       train_indices=np.arange(53))
    for j, tap in enumerate(("conv3", "fc")):
        rows, distances = result.concepts(tap, 2)
        d = np.linalg.norm(centroids[j][:, None] - z[j][None], axis=-1)
        assigned = d.argmin(0)
        np.testing.assert_array_equal(assigned, result.soft_assignments(z)[j].argmax(-1))
        for k in range(3):
            members = np.flatnonzero(assigned == k)
            order = list(members[np.argsort(d[k, members])])
            outsiders = np.setdiff1d(np.arange(53), members)
            order += list(outsiders[np.argsort(d[k, outsiders])])  # fill when a cluster has < 2 members
            np.testing.assert_array_equal(rows[k], order[:2])
            np.testing.assert_allclose(distances[k], d[k, order[:2]], atol=1e-6)


def test_save_load_round_trip(mixture_fit, tmp_path):
    _, result, _ = mixture_fit
    result.save(tmp_path / "dec")
    loaded = DECResult.load(tmp_path / "dec")
    assert loaded.config == result.config and loaded.class_names == result.class_names
    np.testing.assert_array_equal(loaded.centroids, result.centroids)
    np.testing.assert_array_equal(loaded.predict_proba(loaded.train_embeddings),
                                  result.predict_proba(result.train_embeddings))
    # the encoders come back: embedding raw activations with the loaded ones gives the stored bank
    x, _ = _mixture()
    c = loaded.config
    embedded = dec._embed_rows(tuple(c.hidden), c.embedding_size, float(c.radius),
                               jax.tree.map(np.asarray, loaded.layers["fc"]), x)
    np.testing.assert_allclose(embedded, result.train_embeddings[0], atol=1e-4)
    with pytest.raises(XaiJaxError, match="not a DEC surrogate"):
        DECResult.load(tmp_path)


def test_bad_input(mixture_fit):
    _, result, _ = mixture_fit
    with pytest.raises(XaiJaxError, match="valid taps: conv1, conv2"):
        ActivationClusteringSurrogate("small_cnn", None, DECConfig(taps=("layer9",)))
    x, labels = _mixture()
    few = Activations({"fc": x[:4]}, labels[:4], labels[:4], np.arange(4))
    with pytest.raises(XaiJaxError, match="5 clusters need at least as many training samples; got 4"):
        ActivationClusteringSurrogate("small_cnn", None, DECConfig(taps=("fc",), clusters=5)).fit(activations=few)
    with pytest.raises(XaiJaxError, match="all zero"):
        DECConfig(taps=("fc", "pool"), layer_weights=(0, 0)).validate()
    with pytest.raises(XaiJaxError, match="all zero"):
        result.similar(result.train_embeddings[:, :1], 3, layer_weights=[0.0])
    with pytest.raises(XaiJaxError, match="no layer 'conv1'; layers: fc"):
        result.concepts("conv1")
    with pytest.raises(XaiJaxError, match="m must be in"):
        result.similar(result.train_embeddings[:, :1], 10_000)


@pytest.mark.slow
def test_surrogate_of_resnet56_on_cifar10_is_faithful():
    """The paper's CIFAR-10 setting scoped to the test budget: its deepest tap (layer3, 8x8x64 = the paper's
    activation_54), 4,000 random training images, 8 autoencoder epochs, at most 300 DEC steps, evaluated on 1,000
    random test images."""
    from xai_jax import weights
    from xai_jax.data import JpegNpzSource, Subset
    train = JpegNpzSource(shared_path("cifar10", "cifar10_train_jpeg.npz"))
    test = JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz"))
    variables = weights.load(models.get("cifar_resnet56"), shared_path("cifar10_resnet", "resnet56-4bfd9763.th"))
    rng = np.random.default_rng(0)  # the files are sorted by class: take random subsets
    train_rows = np.sort(rng.permutation(len(train))[:4000])
    test_rows = np.sort(rng.permutation(len(test))[:1000])
    # DEC steps cost an encoder pass each: T = 50 and at most 300 steps keep the refinement to ~19 epochs' worth.
    config = DECConfig(taps=("layer3",), pretrain_epochs=8, update_interval=50, max_dec_steps=300)
    method = ActivationClusteringSurrogate("cifar_resnet56", variables, config, batch_size=250, progress=False)
    result = method.fit(Subset(train, train_rows))
    scores = method.evaluate(result, Subset(test, test_rows))
    print(scores, result.history["layer3"]["dec_steps"], result.history["layer3"]["changed"])
    assert scores["baseline_accuracy"] > 0.8
    assert scores["fidelity"] >= 0.85
    assert scores["surrogate_accuracy"] > 0.75
    # the clusters are not one class: at least 8 of the 10 classes lead some cluster
    assert len(set(result.posteriors[0].argmax(-1))) >= 8


def _write_digit(path):
    from xai_jax.data import DigitsSource
    image, _ = DigitsSource("test").read(np.array([3]))
    Image.fromarray(image[0, :, :, 0]).save(path)


def test_cli_fit_similar_concepts(tmp_path, capsys):
    from xai_jax.weights import save_variables
    weights = tmp_path / "cnn"
    save_variables(weights, models.init_variables(models.get("small_cnn"), jax.random.key(0)))
    out = tmp_path / "fit"
    common = ["--model", "small_cnn", "--weights", str(weights)]
    status = cli.main(["--quiet", "dec", "fit", *common, "--data", "digits", "--split", "train", "--limit", "300",
                       "--sample-seed", "2", "--eval-data", "digits", "--eval-split", "test", "--eval-limit", "100",
                       "--taps", "conv3,fc", "--clusters", "6", "--hidden", "32,32,64", "--pretrain-epochs", "3",
                       "--update-interval", "10", "--max-dec-steps", "30", "--out", str(out)])
    assert status == 0
    summary = json.load(open(out / "summary.json"))
    for key in ("baseline_accuracy", "surrogate_accuracy", "fidelity"):
        assert 0 <= summary[key] <= 1
    assert set(summary["layers"]) == {"conv3", "fc"} and summary["samples"] == 100
    assert {"dec.json", "dec.npz", "encoders", "report.html", "concepts_fc.png"} <= set(os.listdir(out))
    # The later commands reopen the same random 300 training images.
    reopened = dec_cli._open_result(cli.build_parser().parse_args(["dec", "similar", "--result", str(out),
                                                                   "--image", "x.png"]))[2]
    drawn = subset(DigitsSource(split="train"), 300, seed=2)
    np.testing.assert_array_equal(reopened.indices, drawn.indices)
    assert not np.array_equal(drawn.indices, np.arange(300))

    image = tmp_path / "digit.png"
    _write_digit(image)
    capsys.readouterr()
    assert cli.main(["--quiet", "dec", "similar", "--result", str(out), "--image", str(image), "--m", "5",
                     "--out", str(tmp_path / "similar.png")]) == 0
    printed = capsys.readouterr().out
    assert "equal:" in printed and "low layers:" in printed and "high layers:" in printed
    assert (tmp_path / "similar.png").stat().st_size > 1000
    assert cli.main(["--quiet", "dec", "concepts", "--result", str(out), "--tap", "conv3", "--per-cluster", "3",
                     "--out", str(tmp_path / "concepts.png")]) == 0
    assert (tmp_path / "concepts.png").stat().st_size > 1000

    assert cli.main(["--quiet", "dec", "fit", *common, "--data", "digits", "--taps", "conv9", "--out",
                     str(tmp_path / "bad")]) == 2
    assert "valid taps: conv1, conv2, pool2" in capsys.readouterr().err
    assert cli.main(["--quiet", "dec", "fit", *common, "--data", "digits", "--limit", "5", "--taps", "fc",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "15 clusters need at least as many training samples; got 5" in capsys.readouterr().err
    assert cli.main(["--quiet", "dec", "similar", "--result", str(out), "--image", str(image),
                     "--layer-weights", "0,0"]) == 2
    assert "all zero" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
