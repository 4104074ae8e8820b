"""The near-miss pass (paper section 3.1) over a model and a data source, or over probabilities a user already
has, and :class:`NearMissAnalysis`, which turns its statistics into an :class:`NMAResult`."""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import engine
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels.near_miss import NearMissState, near_miss_init, near_miss_update
from xai_jax.methods.nma import graph
from xai_jax.methods.nma.config import NMAConfig
from xai_jax.methods.nma.result import NMAResult

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


def _thresholds(config: NMAConfig) -> dict:
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
        """The streamed pass of a backbone over ``source``.

        Args:
          model: the backbone's name (:func:`xai_jax.models.get`).
          variables: its Flax variables.
          source: labelled images.
          num_classes: outputs of the head where not the model's default.
          batch_size: images per step.
          compute_dtype: e.g. ``"bfloat16"`` (default: the model's).
          progress: show a progress bar (default: on a terminal).

        Returns:
          the near-miss statistics (a :class:`NearMissState` of host arrays; :meth:`from_state` takes them).
        """
        from xai_jax.models import get
        classes = num_classes or get(model).num_classes
        self.config.validate(classes)
        c = self.config
        step = _model_step(model, classes, c.k, compute_dtype)
        state = engine.run(step, near_miss_init(classes), source, (variables, _thresholds(c)),
                           batch_size=batch_size, desc="near misses", progress=progress)
        return jax.device_get(state)

    def accumulate_scores(self, scores: np.ndarray, labels: np.ndarray, *, from_logits: bool = False,
                          batch_size: int = 8192, progress: bool | None = None) -> NearMissState:
        """The same pass over precomputed probabilities (or logits, with ``from_logits``) ``[N, C]`` and their
        integer ``labels`` ``[N]``; returns the statistics as :meth:`accumulate` does."""
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
        """Runs ``model`` over ``source`` (``kwargs``: those of :meth:`accumulate`) and builds the hierarchy
        (:meth:`from_state`); the result's ``meta`` names the model."""
        state = self.accumulate(model, variables, source, **kwargs)
        return self.from_state(state, source.class_names, synsets=synsets, dataset=dataset, names=names,
                               meta={"model": model, **(meta or {})})

    def fit_scores(self, scores, labels, class_names: Sequence[str], *, from_logits: bool = False, synsets=None,
                   dataset: str | None = None, names: bool = True, meta: dict | None = None,
                   progress: bool | None = None) -> NMAResult:
        """:meth:`accumulate_scores` then :meth:`from_state`, for probabilities (or logits) a user already has."""
        if len(class_names) != np.shape(scores)[1]:
            raise XaiJaxError(f"{len(class_names)} class names for {np.shape(scores)[1]} columns of scores")
        state = self.accumulate_scores(scores, labels, from_logits=from_logits, progress=progress)
        return self.from_state(state, class_names, synsets=synsets, dataset=dataset, names=names, meta=meta)

    def from_state(self, state: Mapping[str, Any], class_names: Sequence[str], *, synsets=None,
                   dataset: str | None = None, names: bool = True, meta: dict | None = None) -> NMAResult:
        """The connection graph, shortest paths, linkage and names from accumulated near-miss statistics.

        Args:
          state: the :data:`graph.STATISTICS` arrays: from :meth:`accumulate` / :meth:`accumulate_scores`,
            or saved and read back (e.g. ``np.load`` of an ``.npz`` holding them).
          class_names: one per label of the pass.
          synsets: a label -> synset table (JSON path or mapping), as :func:`naming.hierarchy.label_synsets` takes.
          dataset: name of a packaged table (cifar10, cifar100, mnist, fashion_mnist, imagenet).
          names: ``False`` skips WordNet naming (no synsets needed).
          meta: provenance kept in the result.

        Returns:
          a new :class:`NMAResult`; with ``config.labels``, of those labels alone (:func:`graph.restrict`).
        """
        c = self.config
        c.validate(len(class_names))
        arrays = graph.statistics(state, len(class_names), c.graph)
        subset = c.label_indices(class_names)
        if subset is not None:
            arrays, class_names = graph.restrict(arrays, subset), [class_names[i] for i in subset]
        p = graph.near_miss_probabilities(arrays, c.graph)
        distances = graph.shortest_paths(c, p, arrays["events"])
        linkage = graph.cluster(c, distances)
        synset_names, auto_names = (graph.concept_names(linkage, class_names, synsets=synsets, dataset=dataset)
                                    if names else (None, {}))
        # N_i, what each row of p is averaged over: the correctly classified images, or all (the paper's graph)
        counts = arrays["label_counts" if c.graph == "paper" else "counts"]
        return NMAResult(class_names=list(class_names), synsets=synset_names, p=p, events=arrays["events"],
                         counts=counts, distances=distances, linkage=linkage, names=auto_names, config=c,
                         meta=dict(meta or {}))
