"""Near-miss analysis: exact numbers on a hand-checked hierarchy, the reference computations, real CIFAR-10."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
from scipy.sparse.csgraph import floyd_warshall as scipy_floyd_warshall
from scipy.spatial.distance import pdist, squareform

from conftest import shared_path
from xai_jax import XaiJaxError, cli, debug
from xai_jax.methods.nma import (EDGE_WEIGHTS, STATISTICS, SYMMETRIZE, NearMissAnalysis, NMAConfig, NMAResult,
                                 classes_without_images)

NAMES = ["cat", "dog", "horse", "car", "truck", "airplane"]
TABLE = {"cat": "cat.n.01", "dog": "dog.n.01", "horse": "horse.n.01", "car": "car.n.01", "truck": "truck.n.01",
         "airplane": "airplane.n.01"}
# class -> {near miss: probability}: cat and dog, car and truck confused most; horse and airplane less.
NEAR = {0: {1: 0.2, 2: 0.05}, 1: {0: 0.2, 2: 0.04}, 2: {0: 0.03}, 3: {4: 0.2, 5: 0.05}, 4: {3: 0.2}, 5: {3: 0.04}}


@pytest.fixture(autouse=True)
def wordnet_data(monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(shared_path("nltk_data")))


def synthetic(per_class: int = 5):
    rows, labels = [], []
    for i, near in NEAR.items():
        p = np.full(len(NAMES), 1e-9)
        for j, v in near.items():
            p[j] = v
        p[i] = 0.0
        p[i] = 1 - p.sum()
        rows += [p] * per_class
        labels += [i] * per_class
    return np.asarray(rows), np.asarray(labels)


def test_hand_checked_hierarchy_names_sentences_and_score():
    probs, labels = synthetic()
    result = NearMissAnalysis().fit_scores(probs, labels, NAMES, synsets=TABLE, progress=False)
    # s(cat, dog) = 0.2 -> 0.8; horse: mean of 1 - 0.04 and 1 - 0.02; airplane: mean of 0.955 and the path
    # airplane-car-truck 0.955 + 0.8; animals and vehicles are disconnected: 2 x the largest distance, 1.755.
    heights = sorted(result.linkage[:, 2])
    np.testing.assert_allclose(heights, [0.8, 0.8, 0.97, 1.355, 3.51], atol=1e-6)
    named = {tuple(sorted(NAMES[i] for i in m)): result.name_of(m) for m in result.members()[6:]}
    assert named == {("cat", "dog"): "carnivore", ("car", "truck"): "motor vehicle",
                     ("cat", "dog", "horse"): "placental", ("airplane", "car", "truck"): "vehicle",
                     tuple(sorted(NAMES)): "whole"}
    assert result.explain("cat").text() == (
        "A cat is part of the concept carnivore (cat, dog), which is part of the concept placental "
        "(cat, dog, horse), which is part of the concept whole (cat, dog, horse, car, truck, airplane).")
    assert result.explain("airplane").text().startswith("An airplane is part of the concept vehicle (car, truck, ")
    phi, phi_m = result.score()
    assert phi_m == 1.0 and np.all(phi == 1.0)  # the machine found WordNet's own tree on these labels


def test_near_miss_matrix_distances_and_linkage_match_numpy_scipy():
    rng = np.random.default_rng(0)
    num, classes = 700, 9
    logits = rng.normal(size=(num, classes)) * 3 + np.eye(classes)[rng.integers(0, classes, num)] * 4
    labels = rng.integers(0, classes, num)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    config = NMAConfig(k=3, t=1e-3, min_confidence=0.3)
    result = NearMissAnalysis(config).fit_scores(probs, labels, [f"c{i}" for i in range(classes)], names=False,
                                                 progress=False)
    # Reference: the definition, image by image.
    sums, counts = np.zeros((classes, classes)), np.zeros(classes)
    for x, y in zip(probs, labels):
        if x.argmax() != y or x.max() < config.min_confidence:
            continue
        counts[y] += 1
        for j in np.argsort(-x, kind="stable")[:config.k]:
            if j != y and x[j] >= config.t:
                sums[y, j] += x[j]
    p = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    np.testing.assert_allclose(result.p, p, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.counts, counts)
    s = (p + p.T) / 2
    w = np.where(s >= config.t, 1 - s, np.inf)
    np.fill_diagonal(w, 0)
    d = scipy_floyd_warshall(w)
    finite = d[np.isfinite(d) & ~np.eye(classes, dtype=bool)]
    d[np.isinf(d)] = 2 * finite.max() if finite.size else 1.0
    np.testing.assert_allclose(result.distances, d, rtol=1e-5)
    expected = sch.linkage(squareform(d, checks=False), "average")
    np.testing.assert_allclose(result.linkage, expected, rtol=1e-5)


def test_rows_linkage_input_gives_the_papers_large_merge_heights():
    probs, labels = synthetic()
    condensed = NearMissAnalysis().fit_scores(probs, labels, NAMES, names=False, progress=False)
    rows = NearMissAnalysis(NMAConfig(linkage_input="rows")).fit_scores(probs, labels, NAMES, names=False,
                                                                        progress=False)
    expected = sch.linkage(pdist(condensed.distances), "average")  # rows as Euclidean feature vectors
    np.testing.assert_allclose(rows.linkage, expected, rtol=1e-6)
    assert rows.linkage[-1, 2] > condensed.linkage[-1, 2]


def test_from_state_takes_the_state_or_its_saved_arrays(tmp_path):
    from xai_jax.kernels.near_miss import NearMissState
    probs, labels = synthetic()
    nma = NearMissAnalysis()
    state = nma.accumulate_scores(probs, labels, progress=False)
    assert isinstance(state, NearMissState) and all(isinstance(v, np.ndarray) for v in state)
    np.savez(tmp_path / "state.npz", **state._asdict())
    direct = nma.from_state(state, NAMES, names=False)
    with np.load(tmp_path / "state.npz") as saved:
        loaded = nma.from_state(saved, NAMES, names=False)
    np.testing.assert_array_equal(loaded.p, direct.p)
    np.testing.assert_array_equal(loaded.linkage, direct.linkage)
    with pytest.raises(XaiJaxError, match="without events"):
        nma.from_state({"sums": state.sums, "counts": state.counts}, NAMES, names=False)


def test_save_load_overrides_and_the_class_without_images(tmp_path):
    probs, labels = synthetic()
    keep = labels != 2  # no image of horse is counted, but cat and dog images still near-miss it
    result = NearMissAnalysis().fit_scores(probs[keep], labels[keep], NAMES, synsets=TABLE, progress=False)
    assert classes_without_images(result) == ["horse"]
    np.testing.assert_array_equal(result.p[2], 0.0)
    assert {0, 1, 2} in [set(m) for m in result.members()]  # still joined to cat and dog by their near misses
    isolated = probs.copy()
    isolated[:, 2] = 1e-12  # and now nobody near-misses horse either: disconnected, it joins at the very top
    isolated /= isolated.sum(1, keepdims=True)
    alone = NearMissAnalysis().fit_scores(isolated[keep], labels[keep], NAMES, names=False, progress=False)
    first_merge_of_horse = next(row for row in alone.linkage if 2 in {int(row[0]), int(row[1])})
    assert first_merge_of_horse[2] == pytest.approx(2 * 1.755)  # 2 x the largest finite distance (airplane-truck)
    result = result.with_overrides({"car,truck": "road vehicle", "0,1": "pets"})
    assert result.explain("car").text().startswith("A car is part of the concept road vehicle (car, truck)")
    with pytest.raises(XaiJaxError, match="no cluster has exactly the labels cat, car"):
        result.with_overrides({"cat,car": "x"})
    result.save(tmp_path / "r")
    loaded = NMAResult.load(tmp_path / "r")
    assert loaded.explain("cat").text() == result.explain("cat").text()
    for field in ("p", "distances", "linkage", "counts", "events"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(result, field))
    assert loaded.config == result.config and loaded.overrides == result.overrides


@pytest.mark.parametrize("change, message", [
    (lambda p, y: (p * 2, y), "summing to 1"),
    (lambda p, y: (np.where(np.arange(p.shape[1]) == 0, np.nan, p), y), "NaN"),
    (lambda p, y: (p, y + 6), "labels must lie in \\[0, 6\\)"),
    (lambda p, y: (p[:, :5], y % 5), "6 class names for 5 columns"),
])
def test_bad_scores_are_one_clear_error(change, message):
    probs, labels = synthetic()
    probs, labels = change(probs, labels)
    names = NAMES[: probs.shape[1]] if "class names" not in message else NAMES  # the last case: 6 names, 5 columns
    with pytest.raises(XaiJaxError, match=message):
        NearMissAnalysis().fit_scores(probs, labels, names, names=False, progress=False)


def test_the_option_sets_are_the_kernels():
    # config.py may not import the kernel (JAX): its tuples are literal copies, kept equal here.
    from xai_jax.kernels import near_miss
    assert SYMMETRIZE == near_miss.SYMMETRIZE and EDGE_WEIGHTS == near_miss.MODES


@pytest.mark.parametrize("change, message", [
    ({"k": 0}, "k must be >= 1; got 0"), ({"t": 1.0}, "t must be < 1; got 1.0"), ({"t": -0.1}, "t must be >= 0"),
    ({"min_confidence": 1.5}, "min_confidence must be <= 1"), ({"symmetrize": "min"}, "symmetrize must be one of"),
    ({"edge_weight": "x"}, "edge_weight must be one of probability, summed, count"),
    ({"linkage_input": "cols"}, "linkage_input must be one of"), ({"block_size": 0}, "block_size must be >= 1"),
])
def test_config_bounds_and_choices_are_declared_once(change, message):
    config = NMAConfig(**change)
    with pytest.raises(XaiJaxError, match=message):
        config.validate()
    with pytest.raises(XaiJaxError, match=message):  # the same check on the way into a pass
        NearMissAnalysis(config).fit_scores(*synthetic(), NAMES, names=False, progress=False)
    NMAConfig(k=1).validate(2)  # the smallest label set


def test_bad_configuration_and_missing_synset_are_clear():
    probs, labels = synthetic()
    with pytest.raises(XaiJaxError, match="K < C = 6"):
        NearMissAnalysis(NMAConfig(k=6)).fit_scores(probs, labels, NAMES, names=False, progress=False)
    with pytest.raises(XaiJaxError, match="linkage must be one of"):
        NearMissAnalysis(NMAConfig(linkage="centroid")).fit_scores(probs, labels, NAMES, names=False)
    with pytest.raises(XaiJaxError, match="horse"):
        NearMissAnalysis().fit_scores(probs, labels, NAMES, synsets={k: v for k, v in TABLE.items() if k != "horse"},
                                      progress=False)


def test_from_state_takes_saved_statistics(tmp_path):
    probs, labels = synthetic()
    method = NearMissAnalysis()
    state = method.accumulate_scores(probs, labels, progress=False)
    np.savez(tmp_path / "state.npz", **{name: np.asarray(getattr(state, name)) for name in STATISTICS})
    with np.load(tmp_path / "state.npz") as saved:
        again = method.from_state(saved, NAMES, synsets=TABLE)
    direct = method.fit_scores(probs, labels, NAMES, synsets=TABLE, progress=False)
    for field in ("p", "events", "counts", "distances", "linkage"):
        np.testing.assert_array_equal(getattr(again, field), getattr(direct, field))
    assert again.names == direct.names and again.synsets == direct.synsets
    with pytest.raises(XaiJaxError, match="without events"):
        method.from_state({"sums": state.sums, "counts": state.counts}, NAMES, names=False)
    with pytest.raises(XaiJaxError, match=r"`counts` has shape \(6,\), expected \(5,\)"):
        method.from_state({**state._asdict(), "sums": state.sums[:5, :5], "events": state.events[:5, :5]},
                          NAMES[:5], names=False)


def test_saved_result_is_the_generic_layout(tmp_path):
    result = NearMissAnalysis().fit_scores(*synthetic(), NAMES, synsets=TABLE, progress=False)
    result.save(tmp_path / "r", notes={"score": {"phi_M": 1.0}})
    summary = json.loads((tmp_path / "r" / "nma.json").read_text())
    assert summary["kind"] == "nma" and summary["class_names"] == NAMES and summary["notes"]["score"]["phi_M"] == 1
    assert summary["config"] == {"k": 3, "t": 1e-6, "min_confidence": 0.0, "symmetrize": "mean",
                                 "edge_weight": "probability", "linkage": "average", "linkage_input": "condensed",
                                 "block_size": None, "graph": "near_misses", "labels": None, "human_root": "labels"}
    with np.load(tmp_path / "r" / "nma.npz") as arrays:
        assert {"p", "events", "counts", "distances", "linkage"} <= set(arrays.files)
    # A linkage that is no tree of the labels is refused on loading, in one line naming the folder.
    np.savez(tmp_path / "r" / "nma.npz", p=result.p, events=result.events, counts=result.counts,
             distances=result.distances, linkage=result.linkage[:3])
    with pytest.raises(XaiJaxError, match="near-miss analysis result"):
        NMAResult.load(tmp_path / "r")


def test_each_pass_compiles_once_per_shape():
    # A second source of the same shapes, with other thresholds, reuses the compiled passes (t and
    # min_confidence are traced), for the backbone pass and the pass over saved scores.
    import jax

    from xai_jax import models
    from xai_jax.data import DigitsSource
    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    first, second = DigitsSource("test"), DigitsSource("test", seed=1)
    assert len(first) == len(second) and not np.array_equal(first.labels, second.labels)
    NearMissAnalysis().accumulate("small_cnn", variables, first, batch_size=64, progress=False)
    probs, labels = synthetic()
    NearMissAnalysis().accumulate_scores(probs, labels, progress=False)
    other = NearMissAnalysis(NMAConfig(t=0.01, min_confidence=0.2))
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(len(labels))
    with debug.assert_max_compiles(0, "a second near-miss pass of the same shapes"):
        state = other.accumulate("small_cnn", variables, second, batch_size=64, progress=False)
        scores = other.accumulate_scores(probs[shuffled], labels[shuffled], progress=False)
    assert np.asarray(state.counts).shape == (10,)
    assert np.asarray(scores.counts).sum() == len(labels)  # every synthetic image is confidently correct


@pytest.fixture(scope="module")
def resnet20_logits(tmp_path_factory):
    """ResNet-20's logits on the CIFAR-10 test JPEGs, through `xai-jax predict`."""
    out = tmp_path_factory.mktemp("nma") / "r20.npz"
    code = cli.main(["--quiet", "predict", "--model", "cifar_resnet20", "--weights",
                     str(shared_path("cifar10_resnet", "resnet20-12fca82f.th")), "--data",
                     f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}", "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_resnet20_on_cifar10_separates_animals_from_vehicles(resnet20_logits, tmp_path, capsys):
    code = cli.main(["--quiet", "nma", "fit", "--from-probs", str(resnet20_logits), "--out", str(tmp_path / "nma")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "nma" / "nma.json").read_text())
    arrays = np.load(tmp_path / "nma" / "nma.npz")
    assert arrays["p"].shape == (10, 10) and arrays["distances"].shape == (10, 10)
    assert arrays["linkage"].shape == (9, 4) and (tmp_path / "nma" / "dendrogram.png").stat().st_size > 10_000
    assert arrays["counts"].sum() == 8103  # ResNet-20 classifies 81.03 % of these JPEGs correctly
    result = NMAResult.load(tmp_path / "nma")
    top = [sorted(result.class_names[i] for i in result.members()[int(n)]) for n in result.linkage[-1, :2]]
    assert sorted(top) == [["airplane", "automobile", "ship", "truck"],
                           ["bird", "cat", "deer", "dog", "frog", "horse"]]
    assert ("cat", "dog") in [tuple(sorted((a, b))) for a, b, _ in result.merge_order(1)]
    assert summary["notes"]["score"]["phi_M"] > 0.8  # measured 0.867 against WordNet's tree of the 10 labels
    capsys.readouterr()
    assert cli.main(["nma", "explain", "--result", str(tmp_path / "nma"), "--label", "truck"]) == 0
    assert "A truck is part of the concept motor vehicle (automobile, truck)" in capsys.readouterr().out


@pytest.mark.slow
def test_streamed_fit_from_the_model_equals_fit_from_its_logits(resnet20_logits):
    from xai_jax import models, weights
    from xai_jax.data import JpegNpzSource
    variables = weights.load(models.get("cifar_resnet20"), shared_path("cifar10_resnet", "resnet20-12fca82f.th"))
    streamed = NearMissAnalysis().fit("cifar_resnet20", variables,
                                      JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz")),
                                      dataset="cifar10", progress=False)
    saved = np.load(resnet20_logits)
    from_logits = NearMissAnalysis().fit_scores(saved["logits"], saved["labels"], streamed.class_names,
                                                from_logits=True, dataset="cifar10", progress=False)
    np.testing.assert_array_equal(streamed.counts, from_logits.counts)
    np.testing.assert_allclose(streamed.p, from_logits.p, rtol=1e-4, atol=1e-6)
    assert streamed.names == from_logits.names


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    probs, labels = synthetic()
    np.savez(tmp_path / "s.npz", probs=probs, labels=labels + 3)
    out = tmp_path / "out"
    for argv, message in [
        (["nma", "--from-probs", str(tmp_path / "s.npz"), "--dataset", "cifar10", "--out", str(out)],
         "10 class names for 6 columns"),
        (["nma", "--from-probs", str(tmp_path / "s.npz"), "--out", str(out)], "name the classes"),
        (["nma", "--from-probs", str(tmp_path / "missing.npz"), "--out", str(out)], "scores file not found"),
        (["nma", "explain", "--result", str(tmp_path), "--label", "cat"], "not a near-miss analysis result"),
        (["nma", "--out", str(out)], "--from-probs"),
    ]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("xai-jax: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["s.npz"]


def test_fit_verb_the_bare_form_and_flags_before_the_verb_are_one_command(tmp_path, capsys):
    probs, labels = synthetic()
    scores = str(tmp_path / "s.npz")
    np.savez(scores, probs=probs, labels=labels, class_names=np.array(NAMES))
    given = ["--from-probs", scores, "--no-names", "--t", "0.03", "--linkage", "single"]
    forms = {"verb": ["nma", "fit", "--k", "2", *given], "bare": ["nma", "--k", "2", *given],
             "before": ["nma", "--k", "2", "fit", *given]}  # argparse would reset --k to the verb's default
    linkages = []
    for name, argv in forms.items():
        assert cli.main(["--quiet", *argv, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
        loaded = NMAResult.load(tmp_path / name)
        assert loaded.config == NMAConfig(k=2, t=0.03, linkage="single"), name
        linkages.append(loaded.linkage)
    np.testing.assert_array_equal(linkages[0], linkages[1])
    np.testing.assert_array_equal(linkages[0], linkages[2])
    capsys.readouterr()
    assert cli.main(["nma", "--names", str(tmp_path / "missing.json"), "explain", "--result",
                     str(tmp_path / "verb"), "--label", "cat"]) == 2  # the flag before the verb is kept, and read
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_fit_from_the_model_with_overrides_and_a_user_grouping(tmp_path, capsys):
    (tmp_path / "names.json").write_text(json.dumps({"cat,dog": "pets", "automobile,truck": "road vehicle"}))
    (tmp_path / "groups.json").write_text(json.dumps({"animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
                                                      "machines": ["airplane", "automobile", "ship", "truck"]}))
    out = tmp_path / "nma56"
    code = cli.main(["--quiet", "nma", "--model", "cifar_resnet56", "--weights",
                     str(shared_path("cifar10_resnet", "resnet56-4bfd9763.th")), "--data",
                     f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}", "--names",
                     str(tmp_path / "names.json"), "--human", str(tmp_path / "groups.json"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "nma.json").read_text())
    assert summary["notes"]["score"] == {  # the root split is exactly the grouping
        "reference": str(tmp_path / "groups.json"), "match": "members", "phi_M": 1.0,
        "phi": {n: 1.0 for n in summary["class_names"]}}
    assert summary["overrides"] == {"3,5": "pets", "1,9": "road vehicle"}
    assert summary["meta"]["model"] == "cifar_resnet56" and np.load(out / "nma.npz")["counts"].sum() == 8320
    capsys.readouterr()
    image = os.path.join(os.path.dirname(__import__("foolbox").__file__), "data", "cifar10_00_3.png")  # a cat
    assert cli.main(["nma", "explain", "--result", str(out), "--image", image]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("classified as cat") and "A cat is part of the concept pets (cat, dog)" in printed


@pytest.mark.slow
def test_resnet20_under_the_papers_graph_and_root(resnet20_logits, tmp_path, capsys):
    """ResNet-20's CIFAR-10 logits: the paper's graph is the mean softmax over all images of each label, and the
    scores of experiments/nma_protocols.py (README, "Near-miss analysis": the paper's protocols)."""
    import jax
    (tmp_path / "groups.json").write_text(json.dumps({"animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
                                                      "vehicles": ["airplane", "automobile", "ship", "truck"]}))
    runs = {"paper": ["--graph", "paper", "--symmetrize", "max"], "default": []}
    for name, flags in runs.items():
        code = cli.main(["--quiet", "nma", "fit", "--from-probs", str(resnet20_logits), "--human-root", "entity",
                         "--score-groups", str(tmp_path / "groups.json"), *flags, "--out", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
    saved = np.load(resnet20_logits)
    probs = np.asarray(jax.nn.softmax(saved["logits"], -1), np.float64)
    labels = saved["labels"]
    p = np.stack([probs[labels == i].mean(0) for i in range(10)])
    np.fill_diagonal(p, 0)
    paper = NMAResult.load(tmp_path / "paper")
    np.testing.assert_allclose(paper.p, p, rtol=1e-4, atol=1e-7)
    assert paper.counts.sum() == 10000
    scores = {name: json.loads((tmp_path / name / "nma.json").read_text())["notes"]["score"] for name in runs}
    # rooted at entity, "whole" (the ten labels' common hypernym) counts on both sides: 0.867 -> 0.900
    assert scores["default"]["groups"] == pytest.approx({"total": 0.9, "animals": 5 / 6, "vehicles": 1.0})
    assert NMAResult.load(tmp_path / "default").score(root="labels")[1] == pytest.approx(13 / 15)
    # the literal graph joins bird with deer before the placentals: "placental" is lost for the animals
    assert scores["paper"]["groups"] == pytest.approx({"total": 0.85, "animals": 0.75, "vehicles": 1.0})
    assert ("bird", "deer") in [tuple(sorted((a, b))) for a, b, _ in paper.merge_order(3)]
