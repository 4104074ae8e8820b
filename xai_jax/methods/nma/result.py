"""What near-miss analysis finds (:class:`NMAResult`): the near-miss matrix, the shortest-path metric, the
dendrogram and its concept names, with the queries of the paper's sections 3.3 and 3.4 (a label's walk to the
root, the explanatory score phi) and the generic ``save``/``load`` of :mod:`xai_jax.results`."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.methods.nma.config import KIND, NMAConfig
from xai_jax.methods.nma.explain import Explanation
from xai_jax.results import Result


#: the name of WordNet's root, where the paper's hypernym paths end (``NMAConfig.human_root = "entity"``)
ENTITY = "entity"


def cluster_id(members) -> str:
    """A cluster's stable id: its sorted member label indices, comma-separated."""
    return ",".join(str(m) for m in sorted(members))


def node_members(linkage: np.ndarray, num_classes: int) -> list[frozenset[int]]:
    """Members of every node of a dendrogram of ``num_classes`` labels: leaves ``0..C-1``, then internal node
    ``C + i`` (row ``i`` of the SciPy ``linkage``)."""
    nodes = [frozenset([i]) for i in range(num_classes)]
    for a, b in np.asarray(linkage)[:, :2].astype(int):
        nodes.append(nodes[a] | nodes[b])
    return nodes


@dataclasses.dataclass
class NMAResult(Result):
    """Everything near-miss analysis found; ``save``/``load`` write and read ``nma.json`` and ``nma.npz``.

    Attributes:
      class_names: one per label.
      synsets: WordNet synset name per label (``None`` when the analysis ran without names).
      p: ``[C, C]`` near-miss matrix (row i: mean near-miss probability of images of class i).
      events: ``[C, C]`` number of near-miss events.
      counts: ``[C]`` ``N_i``, the images each row of ``p`` averages over: the correctly classified ones
        (``config.graph = "near_misses"``) or all images of the class (``"paper"``).
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

    KIND = KIND
    STEM = "nma"
    WHAT = "near-miss analysis result"

    def check(self) -> None:
        """The arrays fit the labels, and the linkage describes a tree of them."""
        c = self.num_classes
        shapes = {"p": (c, c), "events": (c, c), "counts": (c,), "distances": (c, c), "linkage": (c - 1, 4)}
        for key, shape in shapes.items():
            if np.shape(getattr(self, key)) != shape:
                raise ValueError(f"`{key}` has shape {np.shape(getattr(self, key))}, expected {shape} for {c} labels")
        if self.synsets is not None and len(self.synsets) != c:
            raise ValueError(f"{len(self.synsets)} synsets for {c} labels")
        self.members()  # a linkage that does not describe a tree of the C labels fails here

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def members(self) -> list[frozenset[int]]:
        """Members of every node of the dendrogram: leaves ``0..C-1``, then internal node ``C + i``."""
        return node_members(self.linkage, self.num_classes)

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

    def score(self, human=None, match: str | None = None, root: str | None = None) -> tuple[np.ndarray, float]:
        """The explanatory score (eq. 1, 2): phi per label and phi(M) against a human hierarchy.

        Args:
          human: a list of :class:`Concept` (e.g. ``grouping_hierarchy(cifar100_superclasses(...))``), or
            ``None`` for the WordNet tree induced on the label set.
          match: ``"name"`` (the paper: shared concept names) or ``"members"`` (identical label sets); default
            name for the WordNet reference, members for a user grouping.
          root: where the WordNet reference is rooted, ``"labels"`` or ``"entity"`` (``NMAConfig.human_root``,
            the default); a user grouping keeps its own root, the concept of all labels.
        """
        from xai_jax.naming import hierarchy
        from xai_jax.methods.nma.config import HUMAN_ROOTS
        root = root or self.config.human_root
        if root not in HUMAN_ROOTS:
            raise XaiJaxError(f"unknown root {root!r}: expected one of {', '.join(HUMAN_ROOTS)}")
        named_root = None
        if human is None:
            if self.synsets is None:
                raise XaiJaxError("scoring against WordNet needs label synsets; run the analysis with names")
            human = hierarchy.wordnet_hierarchy(_synsets(self.synsets))
            match = match or "name"
            named_root = ENTITY if root == "entity" else None
        return hierarchy.explanatory_score(human, self.concepts(), self.num_classes, match=match or "members",
                                           root=named_root)

    def group_scores(self, groups: Mapping[str, Sequence[int | str]], human=None, match: str | None = None,
                     root: str | None = None) -> dict[str, float]:
        """The explanatory score per group of labels, the paper's Table 2 columns (e.g. animals, vehicles).

        Args:
          groups: group name -> its labels (class names or indices), e.g. ``{"animals": ["cat", "dog"], ...}``.
          human, match, root: the reference, as :meth:`score` takes them.

        Returns:
          ``{"total": phi(M), group: mean phi of its labels}`` (NaN where no label of a group has a score).
        """
        from xai_jax.naming import hierarchy
        indices = {}
        for name, members in groups.items():
            try:
                indices[name] = [self.label_index(m) for m in members]
            except XaiJaxError as err:
                raise XaiJaxError(f"group {name!r}: {err}") from None
        phi, _ = self.score(human, match, root)
        return hierarchy.group_scores(phi, indices)

    def score_note(self, human, match: str, reference: str, groups: Mapping[str, Sequence] | None = None) -> dict:
        """The explanatory score against ``human`` as ``nma.json`` keeps it under ``notes.score``:
        ``{"reference", "match", "phi_M", "phi": {label: phi}}`` (and ``"groups"``: phi per group of labels, as
        :meth:`group_scores`), undefined values as ``None``. ``reference`` names the reference (``--human``'s
        value): for ``"wordnet"`` the tree is WordNet's rooted as ``config.human_root`` says, recorded as
        ``"human_root"``."""
        chosen = None if reference == "wordnet" else human
        phi, phi_m = self.score(chosen, match)
        note = {"reference": reference, "match": match, "phi_M": None if np.isnan(phi_m) else float(phi_m),
                "phi": {n: None if np.isnan(v) else float(v) for n, v in zip(self.class_names, phi)}}
        if reference == "wordnet":
            note["human_root"] = self.config.human_root
        if groups:
            note["groups"] = {n: None if np.isnan(v) else v for n, v in
                              self.group_scores(groups, chosen, match).items()}
        return note

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


def _synsets(names: Sequence[str]):
    from xai_jax.naming.wordnet import synset
    return [synset(n) for n in names]


def classes_without_images(result: NMAResult) -> list[str]:
    """Labels with no counted image: they stay singleton leaves joined at the top of the dendrogram."""
    return [result.class_names[i] for i in np.flatnonzero(result.counts == 0)]
