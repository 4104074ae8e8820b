"""The activation clustering surrogate (xai_jax.methods.dec): DEC recovers a mixture, the surrogate is faithful on
CIFAR-10 with ResNet-56, bad input, the config's bounds and flags, save/load, one compile per shape of every pass,
the CLI."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from xai_jax import cli, debug, models
from xai_jax.cli import dec as dec_cli
from xai_jax.data import DigitsSource, Subset, subset
from xai_jax.errors import XaiJaxError
from xai_jax.methods.dec import Activations, ActivationClusteringSurrogate, DECConfig, DECResult, embed_rows

from conftest import shared_path

# the module's fixtures (a trained model, fitted results) are built once, on one worker
pytestmark = pytest.mark.xdist_group("dec")

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


def _fit_mixture(data_seed=0, **overrides):
    x, labels = _mixture(seed=data_seed)
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


def test_fit_on_new_data_of_the_same_shapes_compiles_nothing(mixture_fit):
    """The fixture's fit was the warm-up: pretraining, k-means, the T-step DEC scan (refreshed 10 times) and the
    blocked embeddings all reuse their programs on another mixture of the same sizes."""
    _, result, _ = mixture_fit
    assert len(result.history["fc"]["changed"]) > 1  # several refreshes of the target ...
    with debug.assert_max_compiles(0, "a second DEC fit of the same shapes"):  # ... no program compiled again
        method, again, _ = _fit_mixture(data_seed=1)
    assert again.history["fc"]["dec_steps"] == 200


@pytest.fixture(scope="module")
def digits_surrogate():
    """A quick surrogate of the (untrained) digits CNN on 200 training digits, and the source it was fitted on."""
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    config = DECConfig(taps=("conv3", "fc"), clusters=4, **{**SMALL, "max_dec_steps": 20}, pretrain_epochs=1)
    method = ActivationClusteringSurrogate("small_cnn", variables, config, batch_size=64, progress=False)
    train = subset(DigitsSource("train"), 200, seed=0)
    return method, method.fit(train), train


def test_activations_pass_compiles_once_per_shape(digits_surrogate):
    method, _, _ = digits_surrogate
    digits = DigitsSource("train")
    first = method.activations(Subset(digits, np.arange(0, 150)))  # 150 = 2 batches of 64 and a padded one
    with debug.assert_max_compiles(0, "the taps pass over new images of the same shapes"):
        second = method.activations(Subset(digits, np.arange(150, 300)))
    assert second.taps["conv3"].shape == first.taps["conv3"].shape == (150, 4 * 4 * 64)
    assert second.taps["fc"].dtype == np.float16 and not np.array_equal(first.taps["fc"], second.taps["fc"])


def test_embed_and_evaluate_compile_once_per_shape(digits_surrogate):
    method, result, _ = digits_surrogate
    digits = DigitsSource("test")
    warm = method.evaluate(result, Subset(digits, np.arange(0, 100)))  # embeds without the features
    assert "features" not in method.embed(result, Subset(digits, np.arange(0, 100)), features=False)
    method.embed(result, Subset(digits, np.arange(0, 100)))
    with debug.assert_max_compiles(0, "embed and evaluate on new images of the same shapes"):
        scores = method.evaluate(result, Subset(digits, np.arange(100, 200)))
        embedded = method.embed(result, Subset(digits, np.arange(200, 300)))
    assert warm["samples"] == scores["samples"] == 100 and set(scores["layers"]) == {"conv3", "fc"}
    assert embedded["embeddings"].shape == (2, 100, SMALL["embedding_size"])
    # the pass embeds as the training bank was embedded: the fitted images come back onto their own embeddings
    train = digits_surrogate[2]
    np.testing.assert_allclose(method.embed(result, train)["embeddings"], result.train_embeddings, atol=1e-4)


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


def test_cluster_posteriors_match_the_dense_formula_without_a_one_hot_matrix():
    """Paper eq. 3 on random layers of awkward sizes, classes without images among them, against the dense
    ``q.T @ one_hot`` reference; and host memory of a few ``[n, k]`` arrays, not an ``[n, C]`` one-hot (10 GB of
    float64 for ImageNet's 1.28M images and 1,000 classes)."""
    import tracemalloc
    from xai_jax.methods.dec import cluster_posteriors
    rng = np.random.default_rng(3)
    n, layers, k, e, num_classes, alpha = 20_000, 2, 7, 5, 1_000, 1.0
    z = rng.normal(size=(layers, n, e)).astype(np.float32)
    mu = rng.normal(size=(layers, k, e)).astype(np.float32)
    targets = rng.choice(np.arange(0, num_classes, 3), n)  # two classes in three have no image
    tracemalloc.start()
    got = cluster_posteriors(z, mu, targets, num_classes, alpha)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * num_classes * 8 // 8, f"{peak / 2**20:.0f} MiB traced"
    for layer in range(layers):
        d2 = ((z[layer].astype(np.float64)[:, None] - mu[layer][None]) ** 2).sum(-1)
        q = (1 + d2 / alpha) ** (-(alpha + 1) / 2)
        q /= q.sum(1, keepdims=True)
        one_hot = np.eye(num_classes)[targets]
        np.testing.assert_allclose(got[layer], (q.T @ one_hot) / q.sum(0)[:, None], rtol=1e-5, atol=1e-8)
    assert got.shape == (layers, k, num_classes) and np.allclose(got.sum(-1), 1)


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
    np.testing.assert_allclose(embed_rows(c.hidden, c.embedding_size, c.radius,
                                          jax.tree.map(np.asarray, loaded.layers["fc"]), x),
                               result.train_embeddings[0], atol=1e-4)
    assert {"dec.json", "dec.npz", "layers"} <= set(os.listdir(tmp_path / "dec"))
    with pytest.raises(XaiJaxError, match="not a DEC surrogate"):
        DECResult.load(tmp_path)
    # the shape checks of the old loader run on the generic one
    np.savez(tmp_path / "dec" / "dec.npz", **{**np.load(tmp_path / "dec" / "dec.npz"), "centroids": np.zeros((1, 3, 8))})
    with pytest.raises(XaiJaxError, match="do not fit 1 taps x 5 clusters"):
        DECResult.load(tmp_path / "dec")


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


@pytest.mark.parametrize("field, value, message", [
    ("clusters", 1, "clusters must be >= 2"),  # the library took 1 before; the command line never did
    ("embedding_size", 0, "embedding_size must be >= 1"), ("batch_size", 0, "batch_size must be >= 1"),
    ("update_interval", 0, "update_interval must be >= 1"), ("kmeans_inits", 0, "kmeans_inits must be >= 1"),
    ("pretrain_epochs", -1, "pretrain_epochs must be >= 0"), ("max_dec_steps", -1, "max_dec_steps must be >= 0"),
    ("alpha", 0.0, "alpha must be > 0"), ("radius", -1.0, "radius must be > 0"),
    ("tolerance", 1.5, "tolerance must be <= 1"), ("tolerance", -0.1, "tolerance must be >= 0"),
    ("layer_weights", (1.0, -1.0, 0.0, 0.0), "layer_weights must be >= 0"),
    ("layer_weights", (1.0, 2.0), "expected 4 layer weights, got 2"), ("hidden", (500, 0), "hidden must be >= 1"),
    ("posterior", "votes", "posterior must be one of labels, predictions"), ("taps", (), "at least one tap"),
    ("taps", ("fc", "fc"), "taps repeat: fc, fc"), ("seed", -1, "seed must be >= 0"),
])
def test_config_bounds_are_one_line_errors(field, value, message):
    with pytest.raises(XaiJaxError, match=message):
        DECConfig(**{field: value}).validate()


def test_fit_flags_come_from_the_config():
    parse = cli.build_parser().parse_args
    base = ["dec", "fit", "--model", "small_cnn", "--weights", "w", "--data", "digits", "--out", "o"]
    args = parse([*base, "--taps", "conv3,fc", "--batch-size", "32", "--train-batch-size", "16", "--clusters", "3",
                  "--layer-weights", "1,2", "--posterior", "predictions", "--kmeans-inits", "2"])
    config = dec_cli.fit_config(args)
    assert args.batch_size == 32  # the passes' batch: the command's own flag keeps its meaning
    assert config == DECConfig(taps=("conv3", "fc"), batch_size=16, clusters=3, layer_weights=(1.0, 2.0),
                               posterior="predictions", kmeans_inits=2)
    defaults = dec_cli.fit_config(parse([*base, "--taps", "fc"]))
    assert defaults == DECConfig(taps=("fc",))  # every other field keeps the library's default
    assert dec_cli.to_argv(config, args.config_fields) == [
        "--taps", "conv3,fc", "--clusters", "3", "--layer-weights", "1.0,2.0", "--train-batch-size", "16",
        "--kmeans-inits", "2", "--posterior", "predictions"]
    with pytest.raises(SystemExit):  # the taps stay required on the command line
        parse(base)
    assert parse(["dec", "explain", "--result", "r", "--image", "i"]).func is dec_cli.similar


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
    out, scratch = tmp_path / "fit", tmp_path / "scratch"
    scratch.mkdir()
    common = ["--model", "small_cnn", "--weights", str(weights)]
    # --scratch-dir: the taps go through DiskRows files, read back by minibatches (tests/test_rowstore.py)
    status = cli.main(["--quiet", "dec", "fit", *common, "--scratch-dir", str(scratch),
                       "--data", "digits", "--split", "train", "--limit", "300",
                       "--sample-seed", "2", "--eval-data", "digits", "--eval-split", "test", "--eval-limit", "100",
                       "--taps", "conv3,fc", "--clusters", "6", "--hidden", "32,32,64", "--pretrain-epochs", "3",
                       "--update-interval", "10", "--max-dec-steps", "30", "--out", str(out)])
    assert status == 0 and os.listdir(scratch) == []
    # the penultimate features went through the scratch folder too, and are saved, read back from dec.npz
    from xai_jax.rowstore import DiskRows
    features = DECResult.load(out).train_features
    assert isinstance(features, DiskRows) and features.shape == (300, 128) and features.dtype == np.float16
    assert np.abs(features[:]).max() > 0
    summary = json.load(open(out / "summary.json"))
    for key in ("baseline_accuracy", "surrogate_accuracy", "fidelity"):
        assert 0 <= summary[key] <= 1
    assert set(summary["layers"]) == {"conv3", "fc"} and summary["samples"] == 100
    assert {"dec.json", "dec.npz", "layers", "report.html", "concepts_fc.png",
            "convergence.png"} <= set(os.listdir(out))
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
    # Figure 2's baseline beside the surrogate's rows: the small CNN's fc features, 5 neighbours listed
    baseline = [line for line in printed.splitlines() if line.startswith("baseline, fc features: ")]
    assert len(baseline) == 1 and baseline[0].count("#") == 5
    assert (tmp_path / "similar.png").stat().st_size > 1000
    # the figure has a fourth row: as tall as four rows of the same images, taller than the surrogate's three
    from xai_jax.methods.dec.figures import similar_samples
    query = np.asarray(Image.open(image))
    row = ("equal", np.stack([query] * 5), ["3"] * 5)
    heights = [Image.open(__import__("io").BytesIO(similar_samples(query, "model: 3", [row] * n,
                                                                   title="most similar training images"))).height
               for n in (3, 4)]
    assert Image.open(tmp_path / "similar.png").height == heights[1] > heights[0]
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


@pytest.fixture(scope="module")
def resnet20_cifar_surrogate():
    """A small surrogate of ResNet-20 on 200 random CIFAR-10 training JPEGs (layer3, a small autoencoder, few
    steps): the bank of penultimate features is real, whatever the clusters' quality."""
    from xai_jax import weights
    from xai_jax.data import JpegNpzSource
    variables = weights.load(models.get("cifar_resnet20"), shared_path("cifar10_resnet", "resnet20-12fca82f.th"))
    train = subset(JpegNpzSource(shared_path("cifar10", "cifar10_train_jpeg.npz")), 200, seed=0)
    config = DECConfig(taps=("layer3",), clusters=5, pretrain_epochs=1, **{**SMALL, "max_dec_steps": 20,
                                                                            "kmeans_inits": 1})
    method = ActivationClusteringSurrogate("cifar_resnet20", variables, config, batch_size=100, progress=False)
    return method, method.fit(train), train, variables


def test_baseline_neighbours_are_the_penultimate_features_nearest_by_euclid(resnet20_cifar_surrogate):
    """Figure 2's baseline on real data: its bank is ResNet-20's ``pool`` features of the training images, and a
    query's neighbours are the m smallest Euclidean distances of a NumPy brute force on features computed apart."""
    from xai_jax.data import JpegNpzSource
    from xai_jax.methods.dec import feature_tap
    method, result, train, variables = resnet20_cifar_surrogate
    assert feature_tap("cifar_resnet20") == result.feature_tap == "pool" and feature_tap("small_cnn") == "fc"
    queries = subset(JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz")), 7, seed=1)
    images = np.concatenate([train.read(np.arange(len(train)))[0], queries.read(np.arange(7))[0]])
    computed = np.asarray(models.make_forward("cifar_resnet20", ("pool",))(images, variables)["pool"], np.float64)
    bank, features = computed[:200], computed[200:]  # one forward pass of its own, apart from the surrogate's
    assert result.train_features.shape == (200, 64)
    np.testing.assert_allclose(result.train_features, bank, rtol=2e-3, atol=2e-3)  # float16 storage
    out = method.embed(result, queries)
    np.testing.assert_allclose(out["features"], features, rtol=2e-3, atol=2e-3)
    m = 9
    rows, distances = result.similar_by_features(out["features"], m)
    reference = np.linalg.norm(features[:, None] - bank[None], axis=-1)  # [7, 200], float64, brute force
    nearest = np.sort(reference, axis=1)[:, :m]
    # the rows found are the m nearest (up to float16 rounding of the bank), nearest first
    np.testing.assert_allclose(np.take_along_axis(reference, rows, 1), nearest, rtol=5e-3)
    np.testing.assert_allclose(distances, nearest, rtol=5e-3)
    assert np.all(np.diff(distances, axis=1) >= 0) and len({tuple(r) for r in rows}) == 7
    # not the surrogate's neighbours: another metric, other rows for most queries
    surrogate_rows, _ = result.similar(out["embeddings"], m)
    assert np.mean(surrogate_rows != rows) > 0.3
    with pytest.raises(XaiJaxError, match=r"features must be \[q, 64\]"):
        result.similar_by_features(out["features"][:, :10], m)
    without = dataclasses.replace(result, train_features=None, feature_tap=None)
    with pytest.raises(XaiJaxError, match="no penultimate features"):
        without.similar_by_features(out["features"], m)


class _SlicedOnly:
    """Rows that may only be read by slices (as nearest_neighbours reads a bank chunk by chunk)."""

    def __init__(self, rows):
        self.rows, self.keys = rows, []
        self.shape, self.ndim, self.dtype = rows.shape, rows.ndim, rows.dtype

    def __getitem__(self, key):
        assert isinstance(key, slice), key
        self.keys.append(key)
        return self.rows[key]


def test_saved_baseline_features_stay_on_disk_and_give_the_same_neighbours(resnet20_cifar_surrogate, tmp_path):
    """The features bank is loaded as rows of dec.npz, not into memory, and searched a chunk at a time: at
    ImageNet size it is 5 GB (ResNet-50's pool, float16)."""
    from xai_jax.rowstore import DiskRows
    method, result, train, _ = resnet20_cifar_surrogate
    result.save(tmp_path / "dec")
    loaded = DECResult.load(tmp_path / "dec")
    assert isinstance(loaded.train_features, DiskRows) and loaded.train_features.member == "train_features.npy"
    np.testing.assert_array_equal(loaded.train_features[:], result.train_features)
    queries = method.embed(result, subset(train, 5, seed=3))["features"]
    sliced = dataclasses.replace(loaded, train_features=_SlicedOnly(loaded.train_features))
    rows, distances = sliced.similar_by_features(queries, 4)
    expected = result.similar_by_features(queries, 4)
    np.testing.assert_array_equal(rows, expected[0])
    np.testing.assert_array_equal(distances, expected[1])
    assert sliced.train_features.keys == [slice(0, 200)]  # one chunk of the 200 rows, never the array
    # saved again from its rows on disk, into another result: the same bytes of features
    loaded.save(tmp_path / "again")
    np.testing.assert_array_equal(DECResult.load(tmp_path / "again").train_features[:], result.train_features)
