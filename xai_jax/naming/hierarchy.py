"""Labels as WordNet synsets, names of label clusters, and the reference hierarchies of near-miss analysis.

Labels to synsets: ImageNet classes are wnids; CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST have curated
tables in ``naming/tables/<dataset>.json`` (class name as the dataset spells it -> nltk synset name), each
entry chosen by reading the WordNet 3.0 definitions. Choices worth knowing: CIFAR-100 ``aquarium_fish`` is
``fish.n.01`` (WordNet has no aquarium or tropical fish synset), ``mushroom`` the vegetable
(``mushroom.n.05``, as the dataset files it under fruit_and_vegetables), ``lamp`` the household lamp
(``lamp.n.02``, a piece of furniture; ImageNet's table lamp lies under it), ``girl`` ``female_child.n.01``
to match ``boy`` = ``male_child.n.01``; Fashion-MNIST ``T-shirt/top`` is ``jersey.n.03`` (lemmas jersey,
T-shirt), ``Bag`` the handbag ``bag.n.04`` and ``Ankle boot`` ``boot.n.01``; MNIST digits are the digit
synsets (``zero.n.02``, ``one.n.01``, ... ``nine.n.01``, all under ``digit.n.01``).

Hierarchies: a hierarchy is a list of :class:`Concept` (a name and a set of label indices). The human
reference of the paper's explanatory score (eq. 1, 2) is by default :func:`wordnet_hierarchy`, the WordNet
tree induced on the label set; :func:`grouping_hierarchy` turns a user grouping such as the CIFAR-100
superclasses into one. :func:`explanatory_score` compares a machine hierarchy (the named clusters of the
near-miss dendrogram) with a human one.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import os
import re
from typing import Mapping, Sequence

import numpy as np
from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

from xai_jax.errors import XaiJaxError
from xai_jax.naming.wordnet import (_ancestors, concept_name, hypernym_path, load_wordnet, lowest_common_hypernym,
                                    synset, synset_from_wnid)

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet")
# Datasets whose class names are wnids and so need no table.
WNID_DATASETS = ("imagenet",)
ROOT_NAME = "root"
MATCHES = ("name", "members")
TABLE_HINT = "pass table= a JSON file (or dict) of class name -> WordNet noun synset name (e.g. dog.n.01) or wnid"
_WNID = re.compile(r"n\d{8}")


@dataclasses.dataclass(frozen=True)
class Concept:
    """A group of labels with its name: a node of a (human or machine) concept hierarchy.

    Attributes:
      name: what people call the group, e.g. ``"carnivore"``.
      members: the label indices in the group.
    """

    name: str
    members: frozenset[int]


# ---------------------------------------------------------------------------------------------------
# Labels to synsets


def normalize_class_name(name: str) -> str:
    """The key class names are looked up by: case, underscores and runs of blanks do not matter
    (``"Ankle boot"``, ``"ankle_boot"`` and ``"ANKLE  BOOT"`` are one class); other punctuation does."""
    return " ".join(str(name).replace("_", " ").split()).lower()


def packaged_table(dataset: str) -> dict[str, str]:
    """The curated class name -> synset name table shipped for a dataset.

    Args:
      dataset: one of ``DATASETS`` other than ``"imagenet"`` (whose class names are wnids).

    Returns:
      A fresh dict in label order, e.g. ``{"airplane": "airplane.n.01", ...}`` for ``"cifar10"``.

    Raises:
      XaiJaxError: an unknown dataset, or ``"imagenet"``.
    """
    dataset = _check_dataset(dataset)
    if dataset in WNID_DATASETS:
        raise XaiJaxError(f"{dataset} has no packaged table: its class names are wnids (e.g. n01440764)")
    return dict(_read_packaged_json(f"{dataset}.json"))


def label_synsets(class_names: Sequence[str], dataset: str | None = None,
                  table: str | os.PathLike | Mapping[str, str] | None = None,
                  wordnet: WordNetCorpusReader | None = None) -> list[Synset]:
    """The WordNet noun synset of each class.

    Which source names the classes, first that applies: ``table`` (values: synset names or wnids);
    ``dataset`` (its packaged table; for ``"imagenet"`` the class names are wnids); class names that are
    all wnids (``n`` and 8 digits). Class names are matched as :func:`normalize_class_name` says.

    Args:
      class_names: the class names in label order (MNIST's may be the digits as ints; bytes are decoded
        as UTF-8).
      dataset: one of ``DATASETS``.
      table: a JSON file, or a mapping, of class name -> synset name (``"dog.n.01"``) or wnid.
      wordnet: a reader from :func:`load_wordnet`; default ``load_wordnet()``.

    Returns:
      One synset per class, in label order.

    Raises:
      XaiJaxError: no source, a class missing from the table, an unknown synset or wnid, a synset that is
        not a noun, or an unreadable table file.
    """
    names = [_class_name_text(name) for name in class_names]
    if not names:
        raise XaiJaxError("label_synsets needs at least one class name")
    if dataset is not None:
        _check_dataset(dataset)
    reader = load_wordnet() if wordnet is None else wordnet
    if table is not None:
        entries, source = _read_table(table)
    elif dataset is not None and dataset not in WNID_DATASETS:
        entries, source = _read_packaged_json(f"{dataset}.json"), f"the packaged {dataset} table"
    elif dataset is not None or all(_WNID.fullmatch(name) for name in names):
        return [_wnid_synset(name, reader) for name in names]
    else:
        raise XaiJaxError(f"no WordNet synsets for class names such as {names[0]!r}: pass dataset= (one of "
                          f"{', '.join(DATASETS)}) or {TABLE_HINT.removeprefix('pass ')}")
    lookup = _normalized_lookup(entries, source)
    synsets = []
    for name in names:
        key = normalize_class_name(name)
        if key not in lookup:
            raise XaiJaxError(f"no synset for class {name!r} in {source}; {TABLE_HINT}")
        synsets.append(_table_synset(name, lookup[key], source, reader))
    return synsets


def _class_name_text(name) -> str:
    # Class names read from npz or HDF5 files often come as bytes.
    return (name.decode("utf-8") if isinstance(name, bytes) else str(name)).strip()


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise XaiJaxError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    return dataset


@functools.lru_cache(maxsize=None)
def _read_packaged_json(filename: str):
    text = importlib.resources.files("xai_jax.naming").joinpath("tables").joinpath(filename).read_text(encoding="utf-8")
    return json.loads(text)


def _read_table(table: str | os.PathLike | Mapping[str, str]) -> tuple[dict[str, str], str]:
    """A user table as a dict, and how to name it in messages."""
    if isinstance(table, Mapping):
        entries, source = dict(table), "the given table"
    else:
        from xai_jax.readers import read_json
        path = os.fspath(table)
        source = f"table file {path}"
        entries = read_json(path, "synset table")
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise XaiJaxError(f"{source} must be a JSON object of class name -> synset name or wnid")
    return {str(k): v for k, v in entries.items()}, source


def _normalized_lookup(entries: Mapping[str, str], source: str) -> dict[str, str]:
    lookup: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for name, value in entries.items():
        key = normalize_class_name(name)
        if key in lookup and lookup[key] != value:
            raise XaiJaxError(f"{source} names one class twice with different synsets: {spelled[key]!r} and "
                              f"{name!r}")
        lookup[key], spelled[key] = value, name
    return lookup


def _wnid_synset(name: str, reader: WordNetCorpusReader) -> Synset:
    if not _WNID.fullmatch(name):
        raise XaiJaxError(f"ImageNet class {name!r} is not a noun wnid (like n01440764); pass the wnids, or "
                          f"{TABLE_HINT.removeprefix('pass ')}")
    return synset_from_wnid(name, reader)


def _table_synset(name: str, value: str, source: str, reader: WordNetCorpusReader) -> Synset:
    try:
        found = synset_from_wnid(value, reader) if re.fullmatch(r"[nvasr]\d{8}", value.strip()) \
            else synset(value.strip(), reader)
    except XaiJaxError as e:
        raise XaiJaxError(f"class {name!r} in {source}: {e}") from None
    if found.pos() != "n":
        raise XaiJaxError(f"class {name!r} in {source}: {found.name()} is not a noun synset")
    return found


# ---------------------------------------------------------------------------------------------------
# Names and hierarchies


def cluster_name(synsets: Sequence[Synset]) -> str:
    """The name of a cluster of labels: the first lemma of their lowest common hypernym (a single label's
    own name), e.g. ``"carnivore"`` for cat and dog.

    Raises:
      XaiJaxError: no synsets, or no common hypernym.
    """
    return concept_name(lowest_common_hypernym(synsets))


def candidate_names(synsets: Sequence[Synset], limit: int = 8) -> list[dict[str, str]]:
    """Names WordNet offers for a cluster of labels, for a person choosing one: the lemmas of the labels' lowest
    common hypernym (the automatic name first), then its hypernyms from the nearest up, each with its gloss.

    Args:
      synsets: the cluster's label synsets (one or more).
      limit: the most names returned.

    Returns:
      ``[{"name": "motor vehicle", "synset": "motor_vehicle.n.01", "gloss": "a self-propelled wheeled vehicle
      ..."}, ...]``, no name twice.

    Raises:
      XaiJaxError: no synsets, or no common hypernym.
    """
    lowest = lowest_common_hypernym(synsets)
    offered, seen = [], set()
    for node in [lowest, *hypernym_path(lowest)[-2::-1]]:
        for lemma in (node.lemmas() if node is lowest else node.lemmas()[:1]):
            name = lemma.name().replace("_", " ")
            if name.lower() in seen:
                continue
            seen.add(name.lower())
            offered.append({"name": name, "synset": node.name(), "gloss": node.definition()})
            if len(offered) >= limit:
                return offered
    return offered


def _depth_rank_key(node: Synset) -> tuple[int, str]:
    # lowest_common_hypernym's order: deepest first (nltk's max_depth), ties to the smaller name.
    return -node.max_depth(), node.name()


def wordnet_hierarchy(synsets: Sequence[Synset]) -> list[Concept]:
    """The WordNet tree induced on a label set: the default human reference of the explanatory score.

    Its concepts are the distinct branching nodes: the lowest common hypernym (as
    :func:`lowest_common_hypernym` picks it) of every pair of labels, plus the root, the lowest common
    hypernym of all labels. A concept's members are all labels whose synset is it or lies under it through
    hypernyms and instance hypernyms, the closure ``lowest_common_hypernym`` uses; because WordNet lets a
    synset have several parents, a label can lie under a concept that is not on its own chain of pairwise
    hypernyms, and the concepts then form a DAG rather than a tree. Labels (leaves) are not concepts unless
    they are a branching node themselves (a label that is a hypernym of another). Distinct synsets with the
    same first lemma and the same members give one concept.

    Cost: the pairwise hypernyms are found from the labels' ancestor sets, with each node's members as a
    bitmask, rather than one nltk call per pair: the 1,000 ImageNet labels take about 0.1 s (0.4 s the
    first time in a process, while nltk computes synset depths), 21,841 random noun synsets a few seconds.

    Args:
      synsets: one synset per label, in label order.

    Returns:
      The concepts, ordered by member count (descending), then name, then members.

    Raises:
      XaiJaxError: no synsets, or labels without a common hypernym.
    """
    synsets = list(synsets)
    if not synsets:
        lowest_common_hypernym(synsets)  # raises its error for no synsets
    ancestor_sets = [_ancestors(s) for s in synsets]
    # One depth look-up per distinct synset: nltk's max_depth recurses on objects it does not always cache.
    rank_key = {node: _depth_rank_key(node) for node in set().union(*ancestor_sets)}
    ancestors = [sorted(above, key=rank_key.__getitem__) for above in ancestor_sets]
    masks = _member_masks(ancestors)
    everyone = (1 << len(synsets)) - 1
    common = [node for node, mask in masks.items() if mask == everyone]
    # The root is lowest_common_hypernym's choice among the common hypernyms; without any, it raises.
    root = min(common, key=rank_key.__getitem__) if common else lowest_common_hypernym(synsets)
    branching = {root}
    for label, above in enumerate(ancestors):
        # Walking up from the label, deepest first, each ancestor is the lowest common hypernym of the
        # label and every label under it that no deeper ancestor already holds; it is a branching node
        # when there is at least one such label. Members are bitmasks (Python ints), so this is a few
        # big-integer operations per ancestor rather than one set intersection per pair.
        seen = 1 << label
        for node in above:
            if masks[node] & ~seen:
                branching.add(node)
                seen |= masks[node]
                if seen == everyone:
                    break
    concepts = {Concept(concept_name(node), _mask_members(masks[node], len(synsets))) for node in branching}
    return sorted(concepts, key=_concept_order)


def _member_masks(ancestors: Sequence[Sequence[Synset]]) -> dict[Synset, int]:
    """For every synset above some label, the labels under it as a bitmask (bit i: label i)."""
    members: dict[Synset, list[int]] = {}
    for label, above in enumerate(ancestors):
        for node in above:
            members.setdefault(node, []).append(label)
    row = np.zeros(len(ancestors), dtype=bool)
    masks = {}
    for node, labels in members.items():
        row[:] = False
        row[labels] = True
        masks[node] = int.from_bytes(np.packbits(row, bitorder="little").tobytes(), "little")
    return masks


def _mask_members(mask: int, num_labels: int) -> frozenset[int]:
    packed = np.frombuffer(mask.to_bytes((num_labels + 7) // 8, "little"), dtype=np.uint8)
    return frozenset(np.flatnonzero(np.unpackbits(packed, bitorder="little")[:num_labels]).tolist())


def _concept_order(concept: Concept) -> tuple:
    return -len(concept.members), concept.name, sorted(concept.members)


def grouping_hierarchy(groups: Mapping[str, Sequence[int]], num_labels: int) -> list[Concept]:
    """A user grouping of labels (e.g. the CIFAR-100 superclasses) as a hierarchy: one concept per group
    and a root concept named ``"root"`` holding all labels.

    Args:
      groups: group name -> the label indices in it.
      num_labels: the number of labels C; indices must lie in ``[0, C)``.

    Returns:
      The concepts, ordered as :func:`wordnet_hierarchy` orders them (the root first).

    Raises:
      XaiJaxError: a bad ``num_labels``, an empty group, an index that is not an int in range, or a group
        named ``"root"``.
    """
    num_labels = _check_num_labels(num_labels)
    concepts = {Concept(ROOT_NAME, frozenset(range(num_labels)))}
    for name, members in groups.items():
        if name == ROOT_NAME:
            raise XaiJaxError(f"a group may not be named {ROOT_NAME!r}: that name is kept for the concept of all "
                              f"labels")
        indices = [_check_label(index, num_labels, f"group {name!r}") for index in members]
        if not indices:
            raise XaiJaxError(f"group {name!r} has no labels")
        concepts.add(Concept(str(name), frozenset(indices)))
    return sorted(concepts, key=_concept_order)


def cifar100_superclasses(class_names: Sequence[str]) -> dict[str, list[int]]:
    """The 20 CIFAR-100 superclasses (coarse labels) as indices into the given class order.

    Args:
      class_names: CIFAR-100 fine labels (all 100 or some of them) in label order, matched as
        :func:`normalize_class_name` says.

    Returns:
      superclass name -> sorted label indices, in the coarse label order; superclasses with none of the
      given classes are left out.

    Raises:
      XaiJaxError: a class that is not a CIFAR-100 fine label, or one given twice.
    """
    index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        key = normalize_class_name(name)
        if key in index:
            raise XaiJaxError(f"class {name!r} is given twice (labels {index[key]} and {i})")
        index[key] = i
    superclasses = _read_packaged_json("cifar100_superclasses.json")
    fine = {normalize_class_name(f) for members in superclasses.values() for f in members}
    unknown = [name for name in class_names if normalize_class_name(name) not in fine]
    if unknown:
        raise XaiJaxError(f"{unknown[0]!r} is not a CIFAR-100 fine label (e.g. apple, aquarium_fish, baby)")
    groups = {}
    for coarse, members in superclasses.items():
        indices = sorted(index[key] for key in map(normalize_class_name, members) if key in index)
        if indices:
            groups[coarse] = indices
    return groups


def group_scores(phi: np.ndarray, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """The explanatory score of groups of labels (the paper's Table 2 columns: animals, vehicles, ...): the mean
    ``phi(i)`` over each group's labels that have a score (NaN when none has).

    Args:
      phi: ``[C]`` per-label scores from :func:`explanatory_score`.
      groups: group name -> label indices in ``[0, C)``.

    Returns:
      ``{"total": phi(M), group: mean phi}`` in the groups' order.

    Raises:
      XaiJaxError: an empty group or an index out of range.
    """
    if "total" in groups:
        raise XaiJaxError("a group may not be named 'total': that name is kept for the score of all labels")
    phi = np.asarray(phi, np.float64)
    out = {}
    for name, members in {"total": range(len(phi)), **groups}.items():
        indices = [_check_label(index, len(phi), f"group {name!r}") for index in members]
        if not indices:
            raise XaiJaxError(f"group {name!r} has no labels")
        scored = phi[indices][~np.isnan(phi[indices])]
        out[str(name)] = float(scored.mean()) if scored.size else math.nan
    return out


def concept_path(concepts: Sequence[Concept], label: int) -> list[Concept]:
    """The concepts that contain a label, smallest first (ties by name): its path from leaf to root."""
    return sorted((c for c in concepts if label in c.members), key=lambda c: (len(c.members), c.name))


# ---------------------------------------------------------------------------------------------------
# Explanatory score


def explanatory_score(human: Sequence[Concept], machine: Sequence[Concept], num_labels: int,
                      match: str = "name", root: str | None = None) -> tuple[np.ndarray, float]:
    """The paper's explanatory measurement of a machine hierarchy against a human one (eq. 1 and 2).

    For label i, ``S_i`` are the concepts on its path in ``human`` and ``U_i`` those on its path in
    ``machine``, both without leaves (concepts with a single member) and roots (concepts holding all labels);
    ``phi(i) = |S_i & U_i| / |S_i|`` and ``phi(M)`` is the mean over labels. Concepts are the same when
    their names are (``match="name"``, the paper's "how many joint concepts": use it for hierarchies named
    by WordNet on both sides) or when their member sets are (``match="members"``: use it for a human
    grouping whose names are not WordNet's, such as the CIFAR-100 superclasses); by name, concepts of one
    name on a path count once, as the verbal explanation says a name once. A label whose ``S_i`` is
    empty (nothing between it and the root in the human hierarchy) has no score: ``phi(i)`` is NaN and it
    is left out of the mean; when every label is NaN, so is ``phi(M)``.

    With ``root`` a name (the paper's ``"entity"``), the roots left out are the concepts of that name instead of
    those holding all labels: both hierarchies are then rooted above the label set, and a concept of all labels
    named otherwise (the label set's common hypernym, e.g. "whole") counts on both sides.

    Args:
      human: the reference concepts, e.g. :func:`wordnet_hierarchy` or :func:`grouping_hierarchy`.
      machine: the named clusters of the model's hierarchy.
      num_labels: the number of labels C; members must lie in ``[0, C)``.
      match: ``"name"`` or ``"members"``.
      root: ``None`` (the roots are the concepts of all labels) or the root's name.

    Returns:
      ``(phi, phi_M)``: float64 ``[C]`` scores per label, and their mean over labels with a score.

    Raises:
      XaiJaxError: a bad ``num_labels`` or ``match``, or a concept member out of range.
    """
    num_labels = _check_num_labels(num_labels)
    if match not in MATCHES:
        raise XaiJaxError(f"unknown match {match!r}: expected one of {', '.join(MATCHES)}")
    human_sets = _inner_concepts_per_label(human, num_labels, match, "human", root)
    machine_sets = _inner_concepts_per_label(machine, num_labels, match, "machine", root)
    phi = np.full(num_labels, np.nan)
    for label, (reference, found) in enumerate(zip(human_sets, machine_sets)):
        if reference:
            phi[label] = len(reference & found) / len(reference)
    scored = phi[~np.isnan(phi)]
    return phi, float(scored.mean()) if scored.size else math.nan


def _inner_concepts_per_label(concepts: Sequence[Concept], num_labels: int, match: str, side: str,
                              root: str | None = None) -> list[set]:
    """For each label, the keys (names or member sets) of the concepts above it, leaves and roots left out
    (roots: the concepts of all labels, or with ``root`` those named so)."""
    per_label: list[set] = [set() for _ in range(num_labels)]
    for concept in concepts:
        for member in concept.members:
            _check_label(member, num_labels, f"{side} concept {concept.name!r}")
        is_root = concept.name == root if root is not None else len(concept.members) == num_labels
        if len(concept.members) > 1 and not is_root:
            key = concept.name if match == "name" else concept.members
            for member in concept.members:
                per_label[member].add(key)
    return per_label


def _check_num_labels(num_labels) -> int:
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise XaiJaxError(f"num_labels must be a positive int, got {num_labels!r}")
    return int(num_labels)


def _check_label(index, num_labels: int, where: str) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < num_labels:
        raise XaiJaxError(f"{where}: label {index!r} is not an index in [0, {num_labels})")
    return int(index)
