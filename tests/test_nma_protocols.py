"""Near-miss analysis under the paper's protocols (issue 18): its graph taken literally, a label subset, the
human hierarchy rooted at WordNet's "entity", per-group scores; against NumPy/SciPy and hand-checked numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.cluster.hierarchy as sch
from scipy.sparse.csgraph import floyd_warshall as scipy_floyd_warshall
from scipy.spatial.distance import squareform

from conftest import shared_path
from test_nma import NAMES, TABLE, synthetic
from xai_jax import XaiJaxError, cli
from xai_jax.methods.nma import NearMissAnalysis, NMAConfig
from xai_jax.methods.nma.graph import NEAR_MISS_STATISTICS
from xai_jax.naming.hierarchy import Concept, explanatory_score, group_scores


@pytest.fixture(autouse=True)
def wordnet_data(monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(shared_path("nltk_data")))


def random_scores(num=301, classes=9, seed=0, sharp=6.0):
    """Softmax rows, right about 70 % of the time; sharp logits leave some labels' mean probabilities below 1e-3."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, num)
    logits = rng.normal(size=(num, classes)) * sharp
    logits[np.arange(num), labels] += np.where(rng.random(num) < 0.7, 12.0, 0.0)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), labels


def reference_hierarchy(w):
    """Floyd-Warshall, disconnected pairs at twice the largest finite distance, average linkage (SciPy)."""
    d = scipy_floyd_warshall(np.where(np.isinf(w), 0, w), directed=False)  # zeros are non-edges for SciPy
    finite = np.isfinite(d) & ~np.eye(len(w), dtype=bool)
    d[np.isinf(d)] = 2 * d[finite].max()
    return d, sch.linkage(squareform(d, checks=False), "average")


def test_the_papers_graph_literally_matches_numpy_and_scipy():
    probs, labels = random_scores()
    classes = probs.shape[1]
    # p_ij = (1 / N_i) sum over ALL images x of label i of P(j | x), N_i all images of label i
    n_i = np.bincount(labels, minlength=classes).astype(float)
    p = np.stack([probs[labels == i].mean(0) for i in range(classes)])
    np.fill_diagonal(p, 0)
    # misclassified images make every mean probability large: a cut-off between two of the pairs' values
    # (not on one, so that float rounding cannot tip it) leaves 60 % of the pairs without an edge
    values = np.unique(np.maximum(p, p.T)[np.triu_indices(classes, 1)])
    k = int(0.6 * len(values))
    config = NMAConfig(graph="paper", symmetrize="max", t=float(values[k - 1] + values[k]) / 2)
    result = NearMissAnalysis(config).fit_scores(probs, labels, [f"c{i}" for i in range(classes)], names=False,
                                                 progress=False)
    np.testing.assert_array_equal(result.counts, n_i)
    np.testing.assert_allclose(result.p, p, rtol=1e-5, atol=1e-8)
    # an undirected edge for every ordered pair with p_ij >= t: of two parallel edges the lighter one counts
    w = np.full_like(p, np.inf)
    for i in range(classes):
        for j in range(classes):
            if i != j and p[i, j] >= config.t:
                w[i, j] = w[j, i] = min(w[i, j], 1 - p[i, j])
    np.fill_diagonal(w, 0)
    off = ~np.eye(classes, dtype=bool)
    assert np.isinf(w[off]).any() and np.isfinite(w[off]).sum() > classes  # the case has edges and gaps
    distances, linkage = reference_hierarchy(w)
    np.testing.assert_allclose(result.distances, distances, rtol=1e-5)
    np.testing.assert_allclose(result.linkage, linkage, rtol=1e-5)
    # the default reading differs: it counts the correct images' top-3 near misses only
    default = NearMissAnalysis(NMAConfig(t=config.t)).fit_scores(probs, labels, result.class_names, names=False,
                                                             progress=False)
    assert default.counts.sum() < n_i.sum() and np.abs(default.p - result.p).max() > 0.05


def test_one_pass_holds_both_graphs_and_older_statistics_the_default_one():
    probs, labels = random_scores(seed=1)
    names = [f"c{i}" for i in range(probs.shape[1])]
    state = NearMissAnalysis().accumulate_scores(probs, labels, progress=False)
    for config in (NMAConfig(), NMAConfig(graph="paper"), NMAConfig(graph="paper", symmetrize="max")):
        direct = NearMissAnalysis(config).fit_scores(probs, labels, names, names=False, progress=False)
        again = NearMissAnalysis(config).from_state(state, names, names=False)
        np.testing.assert_array_equal(again.p, direct.p)
        np.testing.assert_array_equal(again.linkage, direct.linkage)
    older = {name: getattr(state, name) for name in NEAR_MISS_STATISTICS}  # saved before the paper's graph
    np.testing.assert_array_equal(NearMissAnalysis().from_state(older, names, names=False).p,
                                  NearMissAnalysis().from_state(state, names, names=False).p)
    with pytest.raises(XaiJaxError, match="without label_sums, label_counts"):
        NearMissAnalysis(NMAConfig(graph="paper")).from_state(older, names, names=False)


def test_a_label_subset_is_the_graph_induced_on_it():
    probs, labels = random_scores(seed=2)
    names = [f"c{i}" for i in range(probs.shape[1])]
    full = NearMissAnalysis().fit_scores(probs, labels, names, names=False, progress=False)
    keep = [4, 1, 7, 2]
    subset = NearMissAnalysis(NMAConfig(labels=("c4", "C1", "7", "c2"))).fit_scores(probs, labels, names,
                                                                                   names=False, progress=False)
    assert subset.class_names == ["c4", "c1", "c7", "c2"]
    np.testing.assert_array_equal(subset.p, full.p[np.ix_(keep, keep)])
    np.testing.assert_array_equal(subset.counts, full.counts[keep])
    s = (subset.p + subset.p.T) / 2  # the default edges, on the kept labels only
    w = np.where(s >= 1e-6, 1 - s, np.inf)
    np.fill_diagonal(w, 0)
    distances, linkage = reference_hierarchy(w)
    np.testing.assert_allclose(subset.distances, distances, rtol=1e-6)
    np.testing.assert_allclose(subset.linkage, linkage, rtol=1e-6)
    assert subset.config.labels == ("c4", "C1", "7", "c2")
    for labels_, message in [(("c4", "x"), "'x' is not a class"), (("c4", "c4"), "'c4' is given twice"),
                             (("c4",), "at least 2 labels; got 1")]:
        with pytest.raises(XaiJaxError, match=message):
            NearMissAnalysis(NMAConfig(labels=labels_)).fit_scores(probs, labels, names, names=False,
                                                                  progress=False)


def test_a_subset_is_named_and_scored_on_its_own_wordnet_tree():
    probs, labels = synthetic()
    result = NearMissAnalysis(NMAConfig(labels=("cat", "dog", "car", "truck"))).fit_scores(
        probs, labels, NAMES, synsets=TABLE, progress=False)
    named = {tuple(sorted(result.class_names[i] for i in m)): result.name_of(m) for m in result.members()[4:]}
    assert named == {("cat", "dog"): "carnivore", ("car", "truck"): "motor vehicle",
                     ("car", "cat", "dog", "truck"): "whole"}
    assert result.group_scores({"animals": ["cat", "dog"], "vehicles": ["car", "truck"]}) == {
        "total": 1.0, "animals": 1.0, "vehicles": 1.0}
    with pytest.raises(XaiJaxError, match="group 'animals': unknown label 'horse'"):
        result.group_scores({"animals": ["cat", "horse"]})


HUMAN = [Concept("whole", frozenset({0, 1, 2, 3})), Concept("carnivore", frozenset({0, 1})),
         Concept("motor vehicle", frozenset({2, 3}))]
# cat and dog found; car joined to them (named "whole" there) before truck, so "motor vehicle" is missed
MACHINE = [Concept("carnivore", frozenset({0, 1})), Concept("whole", frozenset({0, 1, 2})),
           Concept("whole", frozenset({0, 1, 2, 3}))]


def test_the_entity_root_counts_the_label_sets_common_hypernym_on_both_sides():
    # Root at the labels' common hypernym: S = {carnivore} for cat and dog, {motor vehicle} for car and truck;
    # U(car) = {whole} (the inner node), U(truck) = {}: phi = 1, 1, 0, 0.
    phi, phi_m = explanatory_score(HUMAN, MACHINE, 4)
    np.testing.assert_array_equal(phi, [1, 1, 0, 0])
    assert phi_m == 0.5
    # Root at entity (the paper's paths): "whole" is in every S_i, and in every U_i through the machine's root:
    # phi = 2/2, 2/2, 1/2, 1/2.
    phi, phi_m = explanatory_score(HUMAN + [Concept("entity", frozenset({0, 1, 2, 3}))], MACHINE, 4, root="entity")
    np.testing.assert_array_equal(phi, [1, 1, 0.5, 0.5])
    assert phi_m == 0.75
    assert group_scores(phi, {"animals": [0, 1], "vehicles": [2, 3]}) == {"total": 0.75, "animals": 1.0,
                                                                          "vehicles": 0.5}
    with_nan = group_scores(np.array([1.0, np.nan, 0.25, np.nan]), {"a": [0, 1], "b": [1, 3]})
    assert with_nan["total"] == 0.625 and with_nan["a"] == 1.0 and np.isnan(with_nan["b"])
    with pytest.raises(XaiJaxError, match="kept for the score of all labels"):
        group_scores(phi, {"total": [0]})
    with pytest.raises(XaiJaxError, match="group 'b': label 4 is not an index"):
        group_scores(phi, {"b": [4]})


def test_result_score_takes_the_root_from_the_config(monkeypatch):
    probs, labels = synthetic()
    result = NearMissAnalysis().fit_scores(probs, labels, NAMES, synsets=TABLE, progress=False)
    # A human override renames the root: rooted at the labels it is not counted, rooted at entity it misses
    # WordNet's "whole" in every S_i.
    renamed = result.with_overrides({",".join(NAMES): "things"})
    assert renamed.score()[1] == 1.0
    phi, phi_m = renamed.score(root="entity")
    # S(cat) = {carnivore, placental, whole}: 2/3; S(horse) = {placental, whole}: 1/2; vehicles: 2/3, 1/2
    np.testing.assert_allclose(phi, [2 / 3, 2 / 3, 1 / 2, 2 / 3, 2 / 3, 1 / 2])
    import dataclasses
    entity = dataclasses.replace(renamed, config=NMAConfig(human_root="entity"))
    np.testing.assert_allclose(entity.score()[0], phi)
    with pytest.raises(XaiJaxError, match="unknown root 'top'"):
        result.score(root="top")


def test_cli_subset_groups_and_root_are_flags_recorded_in_the_result(tmp_path, capsys):
    probs, labels = synthetic()
    scores = tmp_path / "s.npz"
    np.savez(scores, probs=probs, labels=labels, class_names=np.array(NAMES))
    (tmp_path / "table.json").write_text(json.dumps({k: TABLE[k] for k in ("cat", "dog", "car", "truck")}))
    (tmp_path / "groups.json").write_text(json.dumps({"animals": ["cat", "dog"], "vehicles": ["car", "truck"]}))
    out = tmp_path / "out"
    argv = ["--quiet", "nma", "fit", "--from-probs", str(scores), "--synset-table", str(tmp_path / "table.json"),
            "--labels", "cat,dog,car,truck", "--score-groups", str(tmp_path / "groups.json"),
            "--human-root", "entity", "--graph", "paper", "--symmetrize", "max"]
    assert cli.main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "phi per group: total 1.000, animals 1.000, vehicles 1.000" in printed
    summary = json.loads((out / "nma.json").read_text())
    assert summary["class_names"] == ["cat", "dog", "car", "truck"]  # the table names only these: enough
    assert {k: summary["config"][k] for k in ("graph", "symmetrize", "labels", "human_root")} == {
        "graph": "paper", "symmetrize": "max", "labels": ["cat", "dog", "car", "truck"], "human_root": "entity"}
    assert summary["notes"]["score"]["groups"] == {"total": 1.0, "animals": 1.0, "vehicles": 1.0}
    assert summary["notes"]["score"]["human_root"] == "entity"
    assert np.load(out / "nma.npz")["counts"].tolist() == [5, 5, 5, 5]  # all images of each kept label
    # a group naming a label outside the subset: one line, before any work, nothing written
    (tmp_path / "bad.json").write_text(json.dumps({"animals": ["cat", "horse"]}))
    bad = [a if a != str(tmp_path / "groups.json") else str(tmp_path / "bad.json") for a in argv]
    assert cli.main([*bad, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "group 'animals' names 'horse', not one of the analysed labels" in err and err.count("\n") == 1
    assert cli.main([*argv[:-8], "--labels", "cat,lion", "--out", str(tmp_path / "bad")]) == 2
    assert "labels: 'lion' is not a class" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
