"""What WWW fits (:class:`WWWResult`: concepts per neuron, class-wise contributions) and what it explains
(:class:`WWWExplanation`: one image's neurons, maps, heatmaps and trust)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.methods.www.config import EXPLANATION_KIND, KIND, WWWConfig
from xai_jax.outputs import NPZ_MARKER, save_npz
from xai_jax.readers import read_npz, reading
from xai_jax.results import Result

#: the arrays of a concept selection (see :func:`xai_jax.kernels.www.select_concepts`)
SELECTION_KEYS = ("indices", "scores", "selected", "count")


@dataclasses.dataclass(frozen=True)
class WWWResult(Result):
    """What WWW precomputes before explaining: concepts per neuron and class-wise contributions.

    Each fitting stage of :class:`xai_jax.methods.www.WWW` returns a new result with its part filled in (and its
    options recorded in ``config``); the parts not fitted are ``None``. Saved as ``www.json`` + ``www.npz``
    (:class:`xai_jax.results.Result`), with ``concepts.json`` beside for people when concepts are fitted.

    Attributes:
      model, tap, map_tap: backbone, explained layer, and the layer whose channels give the activation maps
        (``None`` when only embeddings were given).
      num_neurons: units of the explained layer.
      class_names: one per output.
      concept_names: the concept set (``None`` before concepts are fitted).
      major, minor: ``{"indices", "scores", "selected", "count"}`` arrays (see
        :func:`xai_jax.kernels.www.select_concepts`) or ``None``.
      topn_indices, topn_values: ``[n, U]`` each neuron's top-n probe images (positions in the probe source).
      class_contributions: ``[C, U]`` mean Taylor-Shapley contribution per class, ``class_counts`` ``[C]``.
      config, meta: the :class:`WWWConfig` and free-form provenance.
    """

    KIND: ClassVar[str] = KIND
    STEM: ClassVar[str] = "www"
    WHAT: ClassVar[str] = "WWW result"

    model: str | None
    tap: str | None
    map_tap: str | None
    num_neurons: int
    class_names: list[str] | None = None
    concept_names: list[str] | None = None
    major: dict | None = None
    minor: dict | None = None
    topn_indices: np.ndarray | None = None
    topn_values: np.ndarray | None = None
    class_contributions: np.ndarray | None = None
    class_counts: np.ndarray | None = None
    config: WWWConfig = dataclasses.field(default_factory=WWWConfig)
    meta: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Raises ``ValueError`` when the parts disagree with ``num_neurons`` or the concept set."""
        units = self.num_neurons
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"num_neurons must be a positive integer; got {units!r}")
        if self.minor is not None and self.major is None:
            raise ValueError("minor concepts without major ones")
        for name in ("major", "minor"):
            part = getattr(self, name)
            if part is None:
                continue
            if not isinstance(part, Mapping) or set(part) != set(SELECTION_KEYS):
                raise ValueError(f"{name} must hold the arrays {', '.join(SELECTION_KEYS)}")
            if part["indices"].ndim != 2 or part["indices"].shape[0] != units or any(
                    part[k].shape[0] != units for k in SELECTION_KEYS):
                raise ValueError(f"the {name} concepts do not fit the {units} neurons")
            if self.concept_names is None or part["indices"].max(initial=0) >= len(self.concept_names):
                raise ValueError(f"the {name} concepts index past the {len(self.concept_names or ())} concept names")
        if (self.topn_indices is None) != (self.topn_values is None):
            raise ValueError("topn_indices and topn_values come together")
        if self.topn_indices is not None and (self.topn_indices.ndim != 2 or self.topn_indices.shape[1] != units
                                              or self.topn_values.shape != self.topn_indices.shape):
            raise ValueError(f"top-n arrays {self.topn_indices.shape} / {self.topn_values.shape} do not fit "
                             f"{units} neurons")
        if (self.class_contributions is None) != (self.class_counts is None):
            raise ValueError("class_contributions and class_counts come together")
        if self.class_contributions is not None:
            if self.class_contributions.ndim != 2 or self.class_contributions.shape[1] != units:
                raise ValueError(f"{self.class_contributions.shape} class contributions for {units} neurons")
            if self.class_counts.shape != self.class_contributions.shape[:1]:
                raise ValueError(f"{self.class_counts.shape} class counts for {self.class_contributions.shape[0]} "
                                 "classes")

    def write(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None,
              notes: Mapping[str, Any] | None = None) -> None:
        """:meth:`Result.write`, plus ``concepts.json`` (:meth:`concepts`, not read back) when concepts are
        fitted."""
        extra = dict(extra_files or {})
        if self.major is not None:
            extra.setdefault("concepts.json", json.dumps(self.concepts(), indent=1).encode())
        super().write(directory, extra, notes)

    def _listed(self, part: dict | None, neuron: int) -> list[dict]:
        if part is None:
            return []
        keep = part["selected"][neuron]
        return [{"concept": self.concept_names[j], "score": float(s)}
                for j, s in zip(part["indices"][neuron][keep], part["scores"][neuron][keep])]

    def concepts(self) -> list[dict]:
        """One entry per neuron: ``{"major": [{"concept", "score"}, ...], "minor": [...]}`` (minor if fitted)."""
        if self.major is None:
            raise XaiJaxError("no concepts fitted: run fit_concepts first")
        out = []
        for u in range(self.num_neurons):
            entry = {"major": self._listed(self.major, u)}
            if self.minor is not None:
                entry["minor"] = self._listed(self.minor, u)
            out.append(entry)
        return out

    def concept_label(self, neuron: int, minor: bool = False, limit: int = 3) -> str:
        """The neuron's concepts as a short text ("dog, puppy"); empty when no concepts are fitted."""
        part = self.minor if minor else self.major
        if part is None:
            return ""
        return ", ".join(c["concept"] for c in self._listed(part, neuron)[:limit])


@dataclasses.dataclass
class WWWExplanation:
    """Per image: prediction, top neurons of sample and class, concept maps, heatmaps and the trust score.

    Arrays have a leading image axis ``B``; maps are at the image resolution ``(H, W)``.

    Attributes:
      images: ``[B, H, W, C]`` the explained images.
      predicted, probabilities: ``[B]`` class and ``[B, C]`` softmax.
      sample_neurons, sample_contributions: ``[B, k]`` the sample's top-k neurons and their ``w_u(x)``.
      class_neurons, class_contributions: ``[B, k]`` the predicted class's top-k neurons and class-wise ``w``.
      sample_maps, class_maps: ``[B, k, H, W]`` activation maps of those neurons, upsampled.
      sample_regions, class_regions: ``[B, k, H, W]`` bool concept maps (above the percentile).
      sample_heatmap, class_heatmap: ``[B, H, W]`` eq. 4 with normalised weights.
      trust: ``[B]`` cosine similarity of the two heatmaps.
      sample_concepts, class_concepts: per image, per top neuron, its major concepts as text.
    """

    images: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    sample_neurons: np.ndarray
    sample_contributions: np.ndarray
    class_neurons: np.ndarray
    class_contributions: np.ndarray
    sample_maps: np.ndarray
    class_maps: np.ndarray
    sample_regions: np.ndarray
    class_regions: np.ndarray
    sample_heatmap: np.ndarray
    class_heatmap: np.ndarray
    trust: np.ndarray
    sample_concepts: list[list[str]]
    class_concepts: list[list[str]]

    def summary(self, class_names: Sequence[str] | None = None) -> list[dict]:
        """A JSON-ready record per image."""
        out = []
        for i in range(len(self.predicted)):
            name = class_names[int(self.predicted[i])] if class_names else int(self.predicted[i])
            out.append({
                "predicted": name, "probability": float(self.probabilities[i, self.predicted[i]]),
                "trust": float(self.trust[i]),
                "sample_neurons": [{"neuron": int(u), "contribution": float(w), "concepts": c} for u, w, c in
                                   zip(self.sample_neurons[i], self.sample_contributions[i], self.sample_concepts[i])],
                "class_neurons": [{"neuron": int(u), "contribution": float(w), "concepts": c} for u, w, c in
                                  zip(self.class_neurons[i], self.class_contributions[i], self.class_concepts[i])]})
        return out

    def save(self, path: str | os.PathLike) -> None:
        """All arrays to one ``.npz`` marked as a ``www.explanation`` (atomically); concepts as a JSON string."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        arrays["concepts_json"] = np.asarray(json.dumps({"sample": self.sample_concepts,
                                                         "class": self.class_concepts}))
        save_npz(path, arrays, EXPLANATION_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WWWExplanation":
        """The explanation :meth:`save` wrote to ``path``; one line (:class:`XaiJaxError`) for anything else."""
        arrays = read_npz(path, "WWW explanation", ("concepts_json",))
        arrays.pop(NPZ_MARKER, None)
        with reading(path, "WWW explanation"):
            concepts = json.loads(str(arrays.pop("concepts_json")))
            return cls(**arrays, sample_concepts=concepts["sample"], class_concepts=concepts["class"])
