"""Near-miss analysis (NMA): the concept hierarchy a classifier's confusions reveal.

The paper (``../shared/papers/nma_near_miss_analysis.txt``), as specified in DESIGN.md:

1. One streamed pass over labelled images accumulates, for every correctly classified image of class ``i``,
   the probabilities of its near misses (labels ``j != i`` among its top ``K`` with ``P[j] >= t``):
   ``p[i, j] = (1 / N_i) sum_x P(j | x) [j is a near miss of x]`` (section 3.1).
2. The undirected connection graph has edge weights ``1 - s[i, j]`` with ``s = (p + p.T) / 2`` where
   ``s >= t`` and no edge otherwise; Floyd–Warshall gives the shortest-path metric, disconnected pairs get
   twice the largest finite distance, and SciPy's ``linkage`` clusters it (``average`` by default) (3.2).
3. Each cluster is named by the lowest common WordNet hypernym of its labels; a human may override any name
   (3.3). A query is explained by walking its label's leaf to the root (3.4), and the explanatory score phi
   compares the concepts on that walk with a human hierarchy (eq. 1, 2).

Steps 1 and 2 run as jitted kernels (:mod:`xai_jax.kernels.near_miss`, :mod:`xai_jax.kernels.floyd_warshall`);
the linkage and the naming run once on the host on a C x C matrix.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.cluster.hierarchy as sch
from scipy.spatial.distance import pdist, squareform

from xai_jax import engine
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels.floyd_warshall import floyd_warshall, floyd_warshall_auto
from xai_jax.kernels.near_miss import (MODES, SYMMETRIZE, NearMissState, connection_weights, fill_disconnected,
                                       near_miss_init, near_miss_matrix, near_miss_update)
from xai_jax.outputs import atomic_dir, save_npz, write_files
from xai_jax.readers import read_json, read_npz, reading

LINKAGE_METHODS = ("average", "single", "complete", "weighted", "ward")
EDGE_WEIGHTS = MODES  # the kernel's edge-weight modes, under the name of the config field
LINKAGE_INPUTS = ("condensed", "rows")
#: the kind of output folder a near-miss result is (see :mod:`xai_jax.outputs`)
KIND = "nma"


@dataclasses.dataclass(frozen=True)
class NMAConfig:
    """Hyper-parameters of near-miss analysis; the defaults are the paper's (K = 3, t = 1e-6).

    Attributes:
      k: near misses are among the top ``k`` labels (the true label included), so ``k - 1`` at most.
      t: probability cutoff of a near miss, and of an edge of the connection graph.
      min_confidence: count only images whose top-1 probability is at least this (0: all correct ones).
      symmetrize: ``"mean"`` ``(p + p.T) / 2`` or ``"max"``.
      edge_weight: ``"probability"`` ``1 - s`` (the paper), ``"summed"`` ``(1 - p) + (1 - p.T)``, or
        ``"count"`` ``1 / (near-miss events between i and j)``.
      linkage: SciPy linkage method.
      linkage_input: ``"condensed"`` clusters the shortest-path metric itself; ``"rows"`` clusters the rows of
        the square distance matrix as feature vectors (Euclidean), which reproduces the large merge heights
        of the paper's figures.
      block_size: tile size of a blocked Floyd–Warshall (``None``: the measured policy of
        :func:`~xai_jax.kernels.floyd_warshall.floyd_warshall_auto`, blocked by 32 from 256 labels on).
    """

    k: int = 3
    t: float = 1e-6
    min_confidence: float = 0.0
    symmetrize: str = "mean"
    edge_weight: str = "probability"
    linkage: str = "average"
    linkage_input: str = "condensed"
    block_size: int | None = None

    def validate(self, num_classes: int) -> None:
        for field, value, valid in (("symmetrize", self.symmetrize, SYMMETRIZE),
                                    ("edge_weight", self.edge_weight, EDGE_WEIGHTS),
                                    ("linkage", self.linkage, LINKAGE_METHODS),
                                    ("linkage_input", self.linkage_input, LINKAGE_INPUTS)):
            if value not in valid:
                raise XaiJaxError(f"{field} must be one of {', '.join(valid)}; got {value!r}")
        if not 1 <= self.k < num_classes:
            raise XaiJaxError(f"K must satisfy 1 <= K < C = {num_classes} (the number of classes); got K = {self.k}")
        if not 0 <= self.t < 1:
            raise XaiJaxError(f"t must lie in [0, 1); got {self.t}")
        if num_classes < 2:
            raise XaiJaxError(f"near-miss analysis needs at least 2 classes; got {num_classes}")


# --- the streamed pass -------------------------------------------------------------------------------------

# The thresholds travel in the step's params (traced), not in its closure: a new t or min_confidence reuses the
# compiled pass, backbone included. Only K (a shape) and the model select the program.

@functools.lru_cache(maxsize=None)
def _probability_step(k: int, from_logits: bool):
    def step(state, batch, thresholds):
        scores = batch["images"].astype(jnp.float32)
        probs = jax.nn.softmax(scores, axis=-1) if from_logits else scores
        return near_miss_update(state, probs, batch["labels"], batch["mask"], k=k, **thresholds)

    return step


@functools.lru_cache(maxsize=None)
def _model_step(name: str, num_classes: int, k: int, compute_dtype: str | None):
    from xai_jax.models import make_forward
    forward = make_forward(name, (), num_classes, compute_dtype)

    def step(state, batch, params):
        variables, thresholds = params
        probs = jax.nn.softmax(forward(batch["images"], variables)["logits"], axis=-1)
        return near_miss_update(state, probs, batch["labels"], batch["mask"], k=k, **thresholds)

    return step


def _thresholds(config: "NMAConfig") -> dict:
    return {"t": jnp.float32(config.t), "min_confidence": jnp.float32(config.min_confidence)}


class _Rows(Source):
    """Rows of precomputed probabilities (or logits) served to the engine as if they were images."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str]):
        self.scores, self.labels, self.class_names = scores, labels.astype(np.int32), tuple(class_names)
        self.description = "probabilities"

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices):
        return self.scores[indices], self.labels[indices]


def check_scores(scores: np.ndarray, labels: np.ndarray, from_logits: bool) -> None:
    """One clear error for probabilities/logits and labels that near-miss analysis cannot use."""
    if scores.ndim != 2:
        raise XaiJaxError(f"{'logits' if from_logits else 'probs'} must be [N, C]; got shape {scores.shape}")
    if labels.shape != (scores.shape[0],):
        raise XaiJaxError(f"{scores.shape[0]} rows of scores but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise XaiJaxError(f"labels must be integers; got {labels.dtype}")
    num_classes = scores.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise XaiJaxError(f"labels must lie in [0, {num_classes}); found {bad}")
    finite = np.isfinite(scores)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise XaiJaxError(f"{'logits' if from_logits else 'probabilities'} contain NaN or infinity (row {row})")
    if not from_logits:
        sums = scores.sum(axis=1)
        bad = np.flatnonzero((np.abs(sums - 1) > 1e-3) | (scores.min(axis=1) < 0))
        if bad.size:
            raise XaiJaxError(f"probabilities must be non-negative rows summing to 1; row {bad[0]} sums to "
                              f"{sums[bad[0]]:.6g} (pass logits instead if these are scores)")


# --- the result ----------------------------------------------------------------------------------------------

def cluster_id(members) -> str:
    """A cluster's stable id: its sorted member label indices, comma-separated."""
    return ",".join(str(m) for m in sorted(members))


@dataclasses.dataclass
class NMAResult:
    """Everything near-miss analysis found, with ``save``/``load``.

    Attributes:
      class_names: one per label.
      synsets: WordNet synset name per label (``None`` when the analysis ran without names).
      p: ``[C, C]`` near-miss matrix (row i: mean near-miss probability of images of class i).
      events: ``[C, C]`` number of near-miss events.
      counts: ``[C]`` counted (correctly classified) images per class.
      distances: ``[C, C]`` shortest-path distances, disconnected pairs filled.
      linkage: SciPy linkage matrix ``[C - 1, 4]``.
      names: cluster id -> automatic WordNet name (every internal node).
      overrides: cluster id -> human name, applied over ``names``.
      config: the :class:`NMAConfig` used.
      meta: free-form provenance (model, weights, data).
    """

    class_names: list[str]
    synsets: list[str] | None
    p: np.ndarray
    events: np.ndarray
    counts: np.ndarray
    distances: np.ndarray
    linkage: np.ndarray
    names: dict[str, str]
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    config: NMAConfig = dataclasses.field(default_factory=NMAConfig)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def members(self) -> list[frozenset[int]]:
        """Members of every node of the dendrogram: leaves ``0..C-1``, then internal node ``C + i``."""
        nodes = [frozenset([i]) for i in range(self.num_classes)]
        for a, b in self.linkage[:, :2].astype(int):
            nodes.append(nodes[a] | nodes[b])
        return nodes

    def name_of(self, members) -> str | None:
        key = cluster_id(members)
        return self.overrides.get(key, self.names.get(key))

    def concepts(self):
        """The machine hierarchy: every internal node as a :class:`~xai_jax.naming.hierarchy.Concept`."""
        from xai_jax.naming.hierarchy import Concept
        return [Concept(self.name_of(m) or "", m) for m in self.members()[self.num_classes:]]

    def label_index(self, label: int | str) -> int:
        if isinstance(label, (int, np.integer)):
            if not 0 <= label < self.num_classes:
                raise XaiJaxError(f"label index {label} outside [0, {self.num_classes})")
            return int(label)
        lookup = {n.lower(): i for i, n in enumerate(self.class_names)}
        if str(label).lower() not in lookup:
            raise XaiJaxError(f"unknown label {label!r}; labels: {', '.join(self.class_names[:20])}"
                              + (" ..." if self.num_classes > 20 else ""))
        return lookup[str(label).lower()]

    def explain(self, label: int | str, max_listed: int = 12) -> "Explanation":
        """The verbal explanation of a prediction of ``label``: its leaf-to-root walk through named clusters.

        Unnamed nodes and names already said are skipped (section 3.3): "A chair is part of the concept furniture
        (bed, armchair, chair), which is part of the concept entity (...)".
        """
        index = self.label_index(label)
        path, said = [], set()
        for members in self.members()[self.num_classes:]:
            if index not in members:
                continue
            name = self.name_of(members)
            if not name or name in said or name.lower() == self.class_names[index].lower():
                continue
            said.add(name)
            path.append((name, sorted(members)))
        return Explanation(self.class_names[index], [(n, [self.class_names[m] for m in ms]) for n, ms in path],
                           max_listed)

    def score(self, human=None, match: str | None = None) -> tuple[np.ndarray, float]:
        """The explanatory score (eq. 1, 2): phi per label and phi(M) against a human hierarchy.

        Args:
          human: a list of :class:`Concept` (e.g. ``grouping_hierarchy(cifar100_superclasses(...))``), or
            ``None`` for the WordNet tree induced on the label set.
          match: ``"name"`` (the paper: shared concept names) or ``"members"`` (identical label sets); default
            name for the WordNet reference, members for a user grouping.
        """
        from xai_jax.naming import hierarchy
        if human is None:
            if self.synsets is None:
                raise XaiJaxError("scoring against WordNet needs label synsets; run the analysis with names")
            human = hierarchy.wordnet_hierarchy(_synsets(self.synsets))
            match = match or "name"
        return hierarchy.explanatory_score(human, self.concepts(), self.num_classes, match=match or "members")

    def merge_order(self, top: int = 3) -> list[tuple[str, str, float]]:
        """The first ``top`` merges: (left cluster's labels, right cluster's labels, height)."""
        nodes = self.members()
        out = []
        for a, b, height, _ in self.linkage[:top]:
            names = [" + ".join(self.class_names[m] for m in sorted(nodes[int(n)])) for n in (a, b)]
            out.append((names[0], names[1], float(height)))
        return out

    def with_overrides(self, overrides: Mapping[str, str]) -> "NMAResult":
        """A copy with human names applied; keys are cluster ids or comma-separated class names."""
        parsed = dict(self.overrides)
        valid = {cluster_id(m) for m in self.members()[self.num_classes:]}
        for key, name in overrides.items():
            parts = [s.strip() for s in str(key).split(",") if s.strip()]
            try:
                indices = [self.label_index(int(s) if s.isdigit() else s) for s in parts]
            except XaiJaxError as err:
                raise XaiJaxError(f"override {key!r}: {err}") from None
            if not isinstance(name, str) or not name.strip():
                raise XaiJaxError(f"override {key!r}: the name must be a non-empty string, not {name!r}")
            cid = cluster_id(indices)
            if cid not in valid:
                listed = ", ".join(self.class_names[i] for i in sorted(set(indices)))
                raise XaiJaxError(f"override {key!r}: no cluster has exactly the labels {listed}")
            parsed[cid] = str(name)
        return dataclasses.replace(self, overrides=parsed)

    # --- save / load ---

    def summary(self) -> dict:
        return {
            "labels": list(self.class_names),
            "synsets": self.synsets,
            "counted_images": [int(c) for c in self.counts],
            "config": dataclasses.asdict(self.config),
            "names": self.names,
            "overrides": self.overrides,
            "linkage": self.linkage.tolist(),
            "meta": self.meta,
        }

    def save(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None,
             score: dict | None = None) -> None:
        """Writes ``nma.json`` and ``nma.npz`` (plus ``extra_files``) to ``directory``, atomically
        (:func:`xai_jax.outputs.atomic_dir`: a new folder, or an earlier near-miss result)."""
        summary = self.summary()
        if score is not None:
            summary["score"] = score
        with atomic_dir(directory, KIND) as tmp:
            with open(os.path.join(tmp, "nma.json"), "w") as f:
                json.dump(summary, f, indent=2)
            save_npz(os.path.join(tmp, "nma.npz"), {"p": self.p, "distances": self.distances,
                                                     "linkage": self.linkage, "events": self.events,
                                                     "counts": self.counts})
            write_files(tmp, extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "NMAResult":
        path_json, path_npz = os.path.join(directory, "nma.json"), os.path.join(directory, "nma.npz")
        for path in (path_json, path_npz):
            if not os.path.isfile(path):
                raise XaiJaxError(f"{directory} is not a near-miss analysis result (missing {os.path.basename(path)})")
        summary = read_json(path_json, "near-miss result file")
        arrays = read_npz(path_npz, "near-miss result file", ("p", "events", "counts", "distances", "linkage"))
        with reading(directory, "near-miss analysis result"):
            result = cls(class_names=[str(n) for n in summary["labels"]], synsets=summary["synsets"],
                         p=arrays["p"], events=arrays["events"], counts=arrays["counts"],
                         distances=arrays["distances"], linkage=arrays["linkage"], names=dict(summary["names"]),
                         overrides=dict(summary["overrides"]), config=NMAConfig(**summary["config"]),
                         meta=dict(summary.get("meta", {})))
            c = result.num_classes
            shapes = {"p": (c, c), "events": (c, c), "counts": (c,), "distances": (c, c), "linkage": (c - 1, 4)}
            for key, shape in shapes.items():
                if getattr(result, key).shape != shape:
                    raise ValueError(f"nma.npz `{key}` has shape {getattr(result, key).shape}, expected {shape} "
                                     f"for {c} labels")
            result.members()  # a linkage that does not describe a tree of the C labels fails here
        return result


@dataclasses.dataclass
class Explanation:
    """A label's walk to the root: (concept name, member labels) from the smallest cluster up."""

    label: str
    path: list[tuple[str, list[str]]]
    max_listed: int = 12

    def sentences(self) -> list[str]:
        out, subject = [], f"{_article(self.label)} {self.label}"
        for name, members in self.path:
            listed = ", ".join(members[: self.max_listed])
            if len(members) > self.max_listed:
                listed += f", and {len(members) - self.max_listed} more"
            out.append(f"{subject} is part of the concept {name} ({listed})")
            subject = f"{_article(name).capitalize()} {name}"
        return out

    def text(self) -> str:
        if not self.path:
            return f"{_article(self.label).capitalize()} {self.label} is not part of any named concept."
        sentences = self.sentences()
        first = sentences[0][0].upper() + sentences[0][1:]
        rest = [", which" + s[s.index(" is part of"):] for s in sentences[1:]]
        return first + "".join(rest) + "."


def _article(word: str) -> str:
    """'a' or 'an' as the word is spoken: vowels, and numerals said eight, eleven, eighteen (an 8, an 11)."""
    if word[:1].isdigit():
        digits = word.split()[0].split(".")[0]
        spoken_an = digits.startswith("8") or (digits[:2] in ("11", "18") and len(digits) % 3 == 2)
        return "an" if spoken_an else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"


def _synsets(names: Sequence[str]):
    from xai_jax.naming.wordnet import synset
    return [synset(n) for n in names]


# --- the method ----------------------------------------------------------------------------------------------

class NearMissAnalysis:
    """Near-miss analysis with a fixed :class:`NMAConfig`.

    ``fit`` streams a model over a dataset; ``fit_scores`` takes probabilities or logits a user already has.
    Both return an :class:`NMAResult`.
    """

    def __init__(self, config: NMAConfig | None = None):
        self.config = config or NMAConfig()

    def accumulate(self, model: str, variables: Any, source: Source, *, num_classes: int | None = None,
                   batch_size: int = 256, compute_dtype: str | None = None,
                   progress: bool | None = None) -> NearMissState:
        """The streamed pass of a backbone over ``source``: near-miss sums, events and counts, fetched to the host."""
        from xai_jax.models import get
        classes = num_classes or get(model).num_classes
        self.config.validate(classes)
        c = self.config
        step = _model_step(model, classes, c.k, compute_dtype)
        state = engine.run(step, near_miss_init(classes), source, (variables, _thresholds(c)),
                           batch_size=batch_size,
                           desc="near misses", progress=progress)
        return jax.device_get(state)

    def accumulate_scores(self, scores: np.ndarray, labels: np.ndarray, *, from_logits: bool = False,
                          batch_size: int = 8192, progress: bool | None = None) -> NearMissState:
        """The same pass over precomputed probabilities (or logits) ``[N, C]``."""
        scores, labels = np.asarray(scores, np.float32), np.asarray(labels)
        check_scores(scores, labels, from_logits)
        self.config.validate(scores.shape[1])
        c = self.config
        step = _probability_step(c.k, from_logits)
        rows = _Rows(scores, labels, [str(i) for i in range(scores.shape[1])])
        state = engine.run(step, near_miss_init(scores.shape[1]), rows, _thresholds(c),
                           batch_size=min(batch_size, max(len(labels), 1)), desc="near misses", progress=progress)
        return jax.device_get(state)

    def fit(self, model: str, variables: Any, source: Source, *, synsets=None, dataset: str | None = None,
            names: bool = True, meta: dict | None = None, **kwargs) -> NMAResult:
        """Runs ``model`` over ``source`` and builds the hierarchy; see :meth:`from_state` for naming."""
        state = self.accumulate(model, variables, source, **kwargs)
        return self.from_state(state, source.class_names, synsets=synsets, dataset=dataset, names=names,
                               meta={"model": model, **(meta or {})})

    def fit_scores(self, scores, labels, class_names: Sequence[str], *, from_logits: bool = False, synsets=None,
                   dataset: str | None = None, names: bool = True, meta: dict | None = None,
                   progress: bool | None = None) -> NMAResult:
        if len(class_names) != np.shape(scores)[1]:
            raise XaiJaxError(f"{len(class_names)} class names for {np.shape(scores)[1]} columns of scores")
        state = self.accumulate_scores(scores, labels, from_logits=from_logits, progress=progress)
        return self.from_state(state, class_names, synsets=synsets, dataset=dataset, names=names, meta=meta)

    def from_state(self, state: NearMissState | Mapping[str, np.ndarray], class_names: Sequence[str], *,
                   synsets=None, dataset: str | None = None, names: bool = True,
                   meta: dict | None = None) -> NMAResult:
        """The connection graph, shortest paths, linkage and names from accumulated near-miss statistics.

        Args:
          state: from :meth:`accumulate` / :meth:`accumulate_scores`, or a mapping with its fields (``sums``,
            ``events``, ``counts``), e.g. the arrays of a file saved from ``state._asdict()``.
          class_names: one per label.
          synsets: a label -> synset table (JSON path or mapping), as :func:`naming.hierarchy.label_synsets` takes.
          dataset: name of a packaged table (cifar10, cifar100, mnist, fashion_mnist, imagenet).
          names: ``False`` skips WordNet naming (no synsets needed).
        """
        if isinstance(state, Mapping):
            missing = [f for f in NearMissState._fields if f not in state]
            if missing:
                raise XaiJaxError(f"near-miss statistics without {', '.join(missing)}")
            state = NearMissState(**{f: state[f] for f in NearMissState._fields})
        c = self.config
        num_classes = len(class_names)
        c.validate(num_classes)
        p = np.asarray(near_miss_matrix(state))
        weights = connection_weights(jnp.asarray(p), jnp.asarray(state.events), t=c.t, symmetrize=c.symmetrize,
                                     mode=c.edge_weight)
        shortest = floyd_warshall_auto(weights) if c.block_size is None else floyd_warshall(weights, block_size=c.block_size)
        distances = np.asarray(fill_disconnected(shortest), np.float64)
        distances = (distances + distances.T) / 2  # exact in theory; removes float rounding asymmetry
        np.fill_diagonal(distances, 0.0)
        if c.linkage_input == "condensed":
            linkage = sch.linkage(squareform(distances, checks=False), method=c.linkage)
        else:
            # The paper's figures: each label's row of distances is a feature vector, compared by Euclid.
            linkage = sch.linkage(pdist(distances, "euclidean"), method=c.linkage)
        synset_names, auto_names = None, {}
        if names:
            from xai_jax.naming import hierarchy
            resolved = hierarchy.label_synsets(class_names, dataset=dataset, table=synsets)
            synset_names = [s.name() for s in resolved]
            nodes = [frozenset([i]) for i in range(num_classes)]
            for a, b in linkage[:, :2].astype(int):
                nodes.append(nodes[a] | nodes[b])
            for members in nodes[num_classes:]:
                auto_names[cluster_id(members)] = hierarchy.cluster_name([resolved[m] for m in sorted(members)])
        return NMAResult(class_names=list(class_names), synsets=synset_names, p=p,
                         events=np.asarray(state.events), counts=np.asarray(state.counts),
                         distances=distances, linkage=linkage, names=auto_names, config=c, meta=dict(meta or {}))


def classes_without_images(result: NMAResult) -> list[str]:
    """Labels with no counted image: they stay singleton leaves joined at the top of the dendrogram."""
    return [result.class_names[i] for i in np.flatnonzero(result.counts == 0)]
