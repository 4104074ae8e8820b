"""WWW: what each neuron means, where it fires and why the prediction (Ahn, Kim and Kim, CVPR 2024).

The paper (``../shared/papers/www_what_where_why.txt``), as specified in DESIGN.md ("WWW"):

1. What (section 3.2): one streamed pass over probe images keeps each neuron's top-n (n = 40) activating images
   (conv activations averaged over space). With CLIP image embeddings ``v`` of those images, text embeddings
   ``t_j`` of "A photo of a {concept}" and ``t_tem`` of the bare template, the adaptive cosine score
   ``s_j = mean_o cos(v_o, t_j) - cos(v_o, t_tem)`` (eq. 1) is one matrix product for all neurons; concepts with
   ``s_j > alpha max s`` (eq. 2) are selected: alpha = 0.95 on the images (major), 0.90 on crops of them around
   the neuron's peak (minor).
2. Where/why (3.3, 3.4): Taylor-Shapley contributions ``w_u = a_u df_c/da_u`` (eq. 3) of the explained layer,
   one ``jax.vjp`` per batch (signed as in the authors' code; ``abs`` as printed is an option); the class-wise
   contribution is the mean over each class's training samples (one streamed pass of segment sums). At test time,
   the top-k (k = 3) neurons of the sample and of the predicted class, their concept maps (activation maps
   upsampled bilinearly and thresholded at the 70th percentile) and the overall heatmaps
   ``sum_topk (w_u / sum w) A_u`` (eq. 4) for sample and class.
3. Trust (4.3.2): the cosine similarity of the sample and class heatmaps; low similarity flags a likely
   misprediction (rejection curve and AUROC against the maximum softmax probability).

The explained layer is a tap of a registered backbone. When it has no spatial extent (a pooled penultimate layer,
as in the paper's ResNet-50 figures), the activation maps come from ``map_tap``, the convolutional tap that is
pooled into it (by default the last spatial tap before it with as many channels).
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

from xai_jax import engine
from xai_jax.data.base import ArraySource, Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import www as K
from xai_jax.outputs import NPZ_MARKER, atomic_dir, save_npz, write_files
from xai_jax.readers import read_json, read_npz, reading

CONTRIBUTION_MODES = ("signed", "abs")
CLASS_BY = ("label", "prediction")
#: the kinds of output a WWW result folder and a saved explanation are (see :mod:`xai_jax.outputs`)
KIND, EXPLANATION_KIND = "www", "www.explanation"


@dataclasses.dataclass(frozen=True)
class WWWConfig:
    """Hyper-parameters of WWW; the defaults are the paper's (and the authors' code where the paper is silent).

    Attributes:
      n_examples: top-n activating probe images per neuron (D_rep).
      alpha_major, alpha_minor: concept sensitivity of the adaptive selection (eq. 2).
      top_k: neurons shown per explanation.
      contribution: ``"signed"`` ``a * grad`` (authors' code) or ``"abs"`` (eq. 3 as printed).
      class_by: group training samples into classes by ``"label"`` or by the model's ``"prediction"``.
      percentile: concept regions are the pixels above this percentile of the upsampled activation map.
      crop_fraction: side of the minor-concept crops as a fraction of the image side.
      max_concepts: selected concepts listed per neuron (the best ones; the full count is kept).
      prompt, template: CLIP text for a concept, and the bare template.
      neuron_chunk: neurons scored per block (bounds the ``[chunk, concepts]`` score matrix in memory).
    """

    n_examples: int = 40
    alpha_major: float = 0.95
    alpha_minor: float = 0.90
    top_k: int = 3
    contribution: str = "signed"
    class_by: str = "label"
    percentile: float = 70.0
    crop_fraction: float = 0.5
    max_concepts: int = 20
    prompt: str = "A photo of a {}"
    template: str = "A photo of a"
    neuron_chunk: int = 1024

    def validate(self) -> None:
        if self.contribution not in CONTRIBUTION_MODES:
            raise XaiJaxError(f"contribution must be one of {', '.join(CONTRIBUTION_MODES)}; got {self.contribution!r}")
        if self.class_by not in CLASS_BY:
            raise XaiJaxError(f"class_by must be one of {', '.join(CLASS_BY)}; got {self.class_by!r}")
        for name in ("alpha_major", "alpha_minor"):
            if not 0 < getattr(self, name) <= 1:
                raise XaiJaxError(f"{name} must lie in (0, 1]; got {getattr(self, name)}")
        if not 0 <= self.percentile < 100:
            raise XaiJaxError(f"percentile must lie in [0, 100); got {self.percentile}")
        if not 0 < self.crop_fraction <= 1:
            raise XaiJaxError(f"crop_fraction must lie in (0, 1]; got {self.crop_fraction}")
        for name in ("n_examples", "top_k", "max_concepts", "neuron_chunk"):
            if getattr(self, name) < 1:
                raise XaiJaxError(f"{name} must be >= 1; got {getattr(self, name)}")
        if "{}" not in self.prompt:
            raise XaiJaxError(f"prompt must contain '{{}}' where the concept goes; got {self.prompt!r}")


# --- the result ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class WWWResult:
    """What WWW precomputes before explaining: concepts per neuron and class-wise contributions.

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

    def save(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None) -> None:
        """Writes ``www.json`` (+ ``concepts.json``, ``concepts.npz``, ``probe.npz``, ``contributions.npz`` for
        what was fitted, and ``extra_files``) to ``directory``, atomically."""
        summary = {"model": self.model, "tap": self.tap, "map_tap": self.map_tap, "num_neurons": self.num_neurons,
                   "class_names": self.class_names, "concept_names": self.concept_names,
                   "config": dataclasses.asdict(self.config), "meta": self.meta}
        with atomic_dir(directory, KIND) as tmp:
            with open(os.path.join(tmp, "www.json"), "w") as f:
                json.dump(summary, f, indent=2)
            if self.major is not None:
                with open(os.path.join(tmp, "concepts.json"), "w") as f:
                    json.dump(self.concepts(), f, indent=1)
                arrays = {f"major_{k}": np.asarray(v) for k, v in self.major.items()}
                if self.minor is not None:
                    arrays.update({f"minor_{k}": np.asarray(v) for k, v in self.minor.items()})
                save_npz(os.path.join(tmp, "concepts.npz"), arrays)
            if self.topn_indices is not None:
                save_npz(os.path.join(tmp, "probe.npz"), {"topn_indices": self.topn_indices,
                                                         "topn_values": self.topn_values})
            if self.class_contributions is not None:
                save_npz(os.path.join(tmp, "contributions.npz"),
                         {"class_contributions": self.class_contributions, "class_counts": self.class_counts})
            write_files(tmp, extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WWWResult":
        path = os.path.join(directory, "www.json")
        if not os.path.isfile(path):
            raise XaiJaxError(f"{directory} is not a WWW result (missing www.json)")
        s = read_json(path, "WWW result file")
        parts = {}
        for name, keys in (("concepts", ()), ("probe", ("topn_indices", "topn_values")),
                           ("contributions", ("class_contributions", "class_counts"))):
            file = os.path.join(directory, f"{name}.npz")
            if os.path.isfile(file):
                parts[name] = read_npz(file, "WWW result file", keys)
        with reading(directory, "WWW result"):
            result = cls(model=s["model"], tap=s["tap"], map_tap=s["map_tap"], num_neurons=int(s["num_neurons"]),
                         class_names=s["class_names"], concept_names=s["concept_names"],
                         config=WWWConfig(**s["config"]), meta=dict(s.get("meta", {})))
            if "concepts" in parts:
                arrays = parts["concepts"]
                result.major = {k[6:]: arrays[k] for k in arrays if k.startswith("major_")}
                result.minor = {k[6:]: arrays[k] for k in arrays if k.startswith("minor_")} or None
                for part in filter(None, (result.major, result.minor)):
                    if part["indices"].shape[0] != result.num_neurons or part["indices"].max(
                            initial=0) >= len(result.concept_names or ()):
                        raise ValueError("concepts.npz does not fit the neurons and concepts of www.json")
            if "probe" in parts:
                result.topn_indices, result.topn_values = parts["probe"]["topn_indices"], parts["probe"]["topn_values"]
            if "contributions" in parts:
                arrays = parts["contributions"]
                result.class_contributions, result.class_counts = arrays["class_contributions"], arrays["class_counts"]
                if result.class_contributions.ndim != 2 or result.class_contributions.shape[1] != result.num_neurons:
                    raise ValueError(f"contributions.npz holds {result.class_contributions.shape} contributions for "
                                     f"{result.num_neurons} neurons")
        return result


@dataclasses.dataclass
class WWWExplanation:
    """Per image: prediction, top neurons of sample and class, concept maps, heatmaps and the trust score.

    Arrays have a leading image axis ``B``; maps are at the image resolution ``(H, W)``.

    Attributes:
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
        """All arrays to one ``.npz`` (atomically); concepts as JSON-encoded strings."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        arrays["concepts_json"] = np.asarray(json.dumps({"sample": self.sample_concepts,
                                                         "class": self.class_concepts}))
        save_npz(path, arrays, EXPLANATION_KIND)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WWWExplanation":
        arrays = read_npz(path, "WWW explanation", ("concepts_json",))
        arrays.pop(NPZ_MARKER, None)
        with reading(path, "WWW explanation"):
            concepts = json.loads(str(arrays.pop("concepts_json")))
            return cls(**arrays, sample_concepts=concepts["sample"], class_concepts=concepts["class"])


# --- jitted passes -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _probe_step(model: str, tap: str, num_classes: int | None):
    from xai_jax.models import make_forward
    forward = make_forward(model, (tap,), num_classes)

    def step(state, batch, variables):
        return K.topn_update(state, forward(batch["images"], variables)[tap], batch["index"], batch["mask"])

    return step


def _contributions(forward, images, variables, tap, classes_of_logits, mode, tap_shape):
    """Taylor-Shapley contributions at ``tap`` for the classes ``classes_of_logits(logits)``: one ``jax.vjp``.

    Returns ``(w [B, U], logits, classes, outputs)`` with every tap ``forward`` returned in ``outputs``.
    """
    zero = jnp.zeros((images.shape[0],) + tuple(tap_shape), jnp.float32)

    def from_offset(offset):
        out = forward(images, variables, {tap: offset})
        return (out["logits"], out[tap]), out

    (logits, acts), pullback, outputs = jax.vjp(from_offset, zero, has_aux=True)
    classes = classes_of_logits(logits)
    (grads,) = pullback((jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype), jnp.zeros_like(acts)))
    return K.contributions_from_gradients(acts, grads, mode), logits, classes, outputs


@functools.lru_cache(maxsize=None)
def _class_step(model: str, tap: str, num_classes: int | None, mode: str, class_by: str, tap_shape: tuple):
    from xai_jax.models import make_forward
    forward = make_forward(model, (tap,), num_classes)

    def step(state, batch, variables):
        pick = (lambda logits: batch["labels"]) if class_by == "label" else (lambda logits: jnp.argmax(logits, -1))
        w, _, classes, _ = _contributions(forward, batch["images"], variables, tap, pick, mode, tap_shape)
        return K.class_sums_update(state, w, classes, batch["mask"])

    return step


@functools.lru_cache(maxsize=None)
def _select_fn(max_concepts: int):
    """``fn({"embeddings": [c, D]}, (concepts, template, alpha)) -> select_concepts dict`` for
    :func:`engine.map_arrays`, rows = neurons; alpha is traced, so major and minor share the program."""
    def fn(rows, params):
        concept_embeddings, template_embedding, alpha = params
        scores = K.adaptive_cosine_scores(rows["embeddings"], concept_embeddings, template_embedding)
        return K.select_concepts(scores, alpha, max_concepts)

    return fn


@functools.lru_cache(maxsize=None)
def _sample_contributions_fn(model: str, tap: str, num_classes: int | None, mode: str, tap_shape: tuple,
                             given_classes: bool):
    """``fn(images, variables, classes) -> w [B, U]``, jitted once: the classes are an argument, not a constant."""
    from xai_jax.models import make_forward
    forward = make_forward(model, (tap,), num_classes)

    def fn(images, variables, classes):
        pick = (lambda logits: classes) if given_classes else (lambda logits: jnp.argmax(logits, -1))
        return _contributions(forward, images, variables, tap, pick, mode, tap_shape)[0]

    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _explain_fn(model: str, tap: str, map_tap: str, num_classes: int | None, mode: str, k: int,
                percentile: float, tap_shape: tuple, full: bool):
    from xai_jax.models import make_forward
    taps = (tap,) if map_tap == tap else (tap, map_tap)
    forward = make_forward(model, taps, num_classes)

    def explain_batch(batch, params):
        variables, class_contributions = params
        images = batch["images"]
        size = tuple(images.shape[1:3])
        w, logits, predicted, outputs = _contributions(forward, images, variables, tap,
                                                       lambda lg: jnp.argmax(lg, -1), mode, tap_shape)
        maps = outputs[map_tap]
        sample_w, sample_u = K.top_k_neurons(w, k)
        class_row = class_contributions[predicted]                                    # [B, U]
        class_w, class_u = K.top_k_neurons(class_row, k)
        sample_maps = K.gather_maps(maps, sample_u)
        class_maps = K.gather_maps(maps, class_u)
        sample_heat = K.overall_heatmap(sample_maps, sample_w, size)
        class_heat = K.overall_heatmap(class_maps, class_w, size)
        probs = jax.nn.softmax(logits, -1)
        out = {"predicted": predicted, "trust": K.heatmap_similarity(sample_heat, class_heat),
               "msp": jnp.max(probs, -1), "labels": batch["labels"]}
        if full:
            s_up, s_reg = K.concept_maps(sample_maps, size, percentile)
            c_up, c_reg = K.concept_maps(class_maps, size, percentile)
            out.update(probabilities=probs, sample_neurons=sample_u, sample_contributions=sample_w,
                       class_neurons=class_u, class_contributions=class_w, sample_maps=s_up, class_maps=c_up,
                       sample_regions=s_reg, class_regions=c_reg, sample_heatmap=sample_heat, class_heatmap=class_heat)
        return out

    return explain_batch


@functools.lru_cache(maxsize=None)
def _maps_fn(model: str, map_tap: str, num_classes: int | None):
    from xai_jax.models import make_forward
    forward = make_forward(model, (map_tap,), num_classes)
    return jax.jit(lambda images, variables: forward(images, variables)[map_tap])


# --- the method ----------------------------------------------------------------------------------------------

class WWW:
    """WWW for one layer (``tap``) of a registered backbone.

    ``fit_concepts`` (CLIP on probe images, or embeddings a user already has) answers *what*;
    ``fit_class_contributions`` precomputes the class-wise contributions; ``explain`` answers *where*, *why* and
    how far to trust a prediction. :attr:`result` holds what was fitted (save/load it with :class:`WWWResult`).

    Args:
      model: registry name (``None`` for embeddings-only concept discovery, with ``num_neurons`` from the data).
      variables: its Flax variables.
      tap: the explained layer.
      map_tap: the spatial layer whose channels are the neuron activation maps (default: ``tap`` if spatial,
        else the last spatial tap before it with as many channels, e.g. ``layer3`` for a CIFAR ResNet's ``pool``).
      config: :class:`WWWConfig`.
      num_classes: outputs of the head if not the model's default.
      result: a loaded :class:`WWWResult` to continue from.
    """

    def __init__(self, model: str | None = None, variables: Any = None, tap: str | None = None,
                 map_tap: str | None = None, config: WWWConfig | None = None, num_classes: int | None = None,
                 result: WWWResult | None = None):
        self.config = config or (result.config if result else WWWConfig())
        self.config.validate()
        self.model, self.variables, self.num_classes = model, variables, num_classes
        self.tap, self.map_tap = tap, map_tap
        if model is not None:
            from xai_jax import models
            from xai_jax.evaluation import check_taps
            if tap is None:
                raise XaiJaxError("WWW needs the explained layer: tap=NAME (see `xai-jax info --model NAME`)")
            shapes = models.tap_shapes(model, num_classes)
            check_taps(model, (tap,) + ((map_tap,) if map_tap else ()), num_classes)
            self.tap_shape = tuple(shapes[tap])
            if len(self.tap_shape) not in (1, 3):
                raise XaiJaxError(f"tap {tap!r} has shape {self.tap_shape}; WWW explains [U] or [H, W, U] layers")
            units = self.tap_shape[-1]
            if map_tap is None:
                self.map_tap = tap if len(self.tap_shape) == 3 else _default_map_tap(shapes, tap)
            if len(shapes[self.map_tap]) != 3 or shapes[self.map_tap][-1] != units:
                raise XaiJaxError(f"map_tap {self.map_tap!r} must be a spatial tap with {units} channels like {tap!r}; "
                                  f"got shape {shapes[self.map_tap]}")
            spec = models.get(model)
            class_names = None
            self.result = result or WWWResult(model=model, tap=tap, map_tap=self.map_tap, num_neurons=units,
                                              class_names=class_names, config=self.config)
            self.result.model, self.result.tap, self.result.map_tap = model, tap, self.map_tap
            self.num_outputs = num_classes or spec.num_classes
        else:
            self.tap_shape = None
            self.result = result

    def _need_model(self, what: str) -> None:
        if self.model is None or self.variables is None:
            raise XaiJaxError(f"{what} needs a model: WWW(model, variables, tap=...)")

    # --- what ---

    def probe(self, source: Source, *, batch_size: int = 128,
              progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The streamed probe pass: each neuron's top-n images, ``(indices [n, U], values [n, U])``."""
        self._need_model("the probe pass")
        n = self.config.n_examples
        if len(source) < n:
            raise XaiJaxError(f"the probe set has {len(source)} images; WWW needs at least n_examples = {n}")
        step = _probe_step(self.model, self.tap, self.num_classes)
        state = engine.run(step, K.topn_init(self.tap_shape[-1], n), source, self.variables, batch_size=batch_size,
                           desc="WWW probe", progress=progress)
        state = jax.device_get(state)
        self.result.topn_indices, self.result.topn_values = np.asarray(state.indices), np.asarray(state.values)
        return self.result.topn_indices, self.result.topn_values

    def fit_concepts(self, probe_source: Source, clip_model, concepts: Sequence[str], *, minor: bool = True,
                     batch_size: int = 128, progress: bool | None = None) -> WWWResult:
        """Concept discovery with a CLIP model (``xai_jax.models.clip``) on probe images.

        Only the images in some neuron's top-n are embedded; minor concepts embed, per neuron, crops of its
        top-n images around its peak activation (``crop_fraction`` of the image side).
        """
        indices, _ = self.probe(probe_source, batch_size=batch_size, progress=progress)
        concepts = _check_concepts(concepts)
        unique, inverse = np.unique(indices, return_inverse=True)
        # only images in some neuron's top-n are embedded, read in chunks so that host memory stays bounded
        image_embeddings = np.concatenate([clip_model.encode_images(_as_rgb(probe_source.read(unique[s:s + 1024])[0]))
                                           for s in range(0, len(unique), 1024)])
        concept_embeddings = clip_model.encode_texts([self.config.prompt.format(c) for c in concepts])
        template_embedding = clip_model.encode_texts([self.config.template])[0]
        crop_embeddings = self._crop_embeddings(probe_source, clip_model, indices) if minor else None
        return self.fit_concepts_from_embeddings(concepts, concept_embeddings, template_embedding,
                                                 image_embeddings=image_embeddings,
                                                 topn_indices=inverse.reshape(indices.shape),
                                                 crop_embeddings=crop_embeddings, keep_topn=False)

    def _crop_embeddings(self, source: Source, clip_model, indices: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """``[U, n, D]`` CLIP embeddings of each neuron's top-n images cropped around that neuron's peak."""
        n, units = indices.shape
        maps_fn = _maps_fn(self.model, self.map_tap, self.num_classes)
        pairs_u = np.tile(np.arange(units), n)            # (rank, neuron) pairs, rank-major like indices.ravel()
        pairs_i = indices.ravel()
        out = []
        for start in range(0, len(pairs_i), chunk):
            idx, units_here = pairs_i[start:start + chunk], pairs_u[start:start + chunk]
            images, _ = source.read(idx)
            maps = np.asarray(maps_fn(images, self.variables))          # [b, h, w, U]
            own = maps[np.arange(len(idx)), :, :, units_here]           # [b, h, w]
            height, width = images.shape[1:3]
            crop = (max(1, round(height * self.config.crop_fraction)), max(1, round(width * self.config.crop_fraction)))
            corners = K.peak_crop_corners(own, (height, width), crop)
            rgb = _as_rgb(images)
            crops = np.asarray(K.crop_images(rgb, corners, crop))
            crops = np.clip(np.round(crops), 0, 255).astype(np.uint8) if rgb.dtype == np.uint8 else crops
            out.append(clip_model.encode_images(crops))
        emb = np.concatenate(out)                                       # [n * U, D]
        return emb.reshape(n, units, -1).transpose(1, 0, 2)

    def fit_concepts_from_embeddings(self, concepts: Sequence[str], concept_embeddings, template_embedding, *,
                                     image_embeddings, activations=None, topn_indices=None, crop_embeddings=None,
                                     keep_topn: bool = True) -> WWWResult:
        """Concept discovery from embeddings a user already has (CLIP-Dissect and others cache them).

        Args:
          concepts: ``M`` concept words.
          concept_embeddings: ``[M, D]`` text embeddings of the prompted concepts.
          template_embedding: ``[D]`` the bare template's embedding.
          image_embeddings: ``[P, D]`` embeddings of the probe images.
          activations: ``[P, U]`` (or ``[P, H, W, U]``) activations of the probe images, to find each neuron's
            top-n; or give ``topn_indices`` ``[n, U]`` (rows of ``image_embeddings``) directly.
          crop_embeddings: ``[U, n, D]`` embeddings of each neuron's crops, for minor concepts.

        Returns:
          The updated :attr:`result`.
        """
        concepts = _check_concepts(concepts)
        image_embeddings = _finite(image_embeddings, "image embeddings", 2)
        concept_embeddings = _finite(concept_embeddings, "concept embeddings", 2)
        template_embedding = _finite(template_embedding, "template embedding", 1)
        dim = image_embeddings.shape[1]
        if concept_embeddings.shape != (len(concepts), dim):
            raise XaiJaxError(f"concept embeddings must be [{len(concepts)} concepts, {dim}]; "
                              f"got {concept_embeddings.shape}")
        if template_embedding.shape != (dim,):
            raise XaiJaxError(f"the template embedding must have {dim} values; got shape {template_embedding.shape}")
        n = self.config.n_examples
        if topn_indices is None:
            if activations is None:
                raise XaiJaxError("give the probe activations (or top-n indices) with the image embeddings")
            activations = np.asarray(activations, np.float32)
            if activations.ndim not in (2, 4) or activations.shape[0] != image_embeddings.shape[0]:
                raise XaiJaxError(f"activations must be [{image_embeddings.shape[0]} images, neurons] (one row per "
                                  f"image embedding); got shape {activations.shape}")
            if not np.isfinite(activations).all():
                raise XaiJaxError("activations contain NaN or infinity")
            if activations.shape[0] < n:
                raise XaiJaxError(f"{activations.shape[0]} probe images; WWW needs at least n_examples = {n}")
            state = K.topn_update(K.topn_init(activations.shape[-1], n), activations,
                                  np.arange(activations.shape[0]), np.ones(activations.shape[0], bool))
            topn_indices = np.asarray(state.indices)
            if keep_topn:
                self.result_or_new(activations.shape[-1]).topn_indices = topn_indices
                self.result.topn_values = np.asarray(state.values)
        topn_indices = np.asarray(topn_indices)
        if topn_indices.ndim != 2 or topn_indices.min() < 0 or topn_indices.max() >= image_embeddings.shape[0]:
            raise XaiJaxError(f"top-n indices must be [n, neurons] rows of the {image_embeddings.shape[0]} image "
                              "embeddings")
        units = topn_indices.shape[1]
        result = self.result_or_new(units)
        if result.num_neurons != units:
            raise XaiJaxError(f"{units} neurons in the activations but the layer has {result.num_neurons}")
        c = self.config
        neuron_emb = K.mean_image_embeddings(image_embeddings, topn_indices)
        result.major = self._select(neuron_emb, concept_embeddings, template_embedding, c.alpha_major)
        result.minor = None
        if crop_embeddings is not None:
            crop_embeddings = _finite(crop_embeddings, "crop embeddings", 3)
            if crop_embeddings.shape[0] != units or crop_embeddings.shape[2] != dim:
                raise XaiJaxError(f"crop embeddings must be [{units} neurons, crops, {dim}]; "
                                  f"got {crop_embeddings.shape}")
            crop_means = jnp.mean(K.l2_normalise(jnp.asarray(crop_embeddings)), axis=1)
            result.minor = self._select(crop_means, concept_embeddings, template_embedding, c.alpha_minor)
        result.concept_names = list(concepts)
        return result

    def result_or_new(self, units: int) -> WWWResult:
        if self.result is None:
            self.result = WWWResult(model=None, tap=None, map_tap=None, num_neurons=units, config=self.config)
        return self.result

    def _select(self, neuron_emb, concept_embeddings, template_embedding, alpha) -> dict:
        """Scores and selects in blocks of neurons so that a [U, 82k] matrix never has to exist at once."""
        c = self.config
        return engine.map_arrays(_select_fn(c.max_concepts), {"embeddings": neuron_emb},
                                 (concept_embeddings, template_embedding, np.float32(alpha)), chunk=c.neuron_chunk)

    # --- why ---

    def fit_class_contributions(self, source: Source, *, batch_size: int = 128,
                                progress: bool | None = None) -> WWWResult:
        """Class-wise mean Taylor-Shapley contributions ``[C, U]`` over ``source`` (the training split), one pass."""
        self._need_model("class contributions")
        step = _class_step(self.model, self.tap, self.num_classes, self.config.contribution, self.config.class_by,
                           self.tap_shape)
        state = engine.run(step, K.class_sums_init(self.num_outputs, self.tap_shape[-1]), source, self.variables,
                           batch_size=batch_size, desc="WWW class contributions", progress=progress)
        state = jax.device_get(state)
        self.result.class_contributions = np.asarray(K.class_means(state))
        self.result.class_counts = np.asarray(state.counts)
        if self.result.class_names is None and len(source.class_names) == self.num_outputs:
            self.result.class_names = list(source.class_names)
        return self.result

    def sample_contributions(self, images, classes=None) -> np.ndarray:
        """``[B, U]`` Taylor-Shapley contributions of ``images`` for ``classes`` (default: the prediction)."""
        self._need_model("contributions")
        images = _check_images(images, self.model)
        fn = _sample_contributions_fn(self.model, self.tap, self.num_classes, self.config.contribution,
                                      self.tap_shape, classes is not None)
        chosen = jnp.zeros(len(images), jnp.int32) if classes is None else jnp.asarray(classes, jnp.int32)
        if chosen.shape != (len(images),):
            raise XaiJaxError(f"classes must be [{len(images)}] (one per image); got shape {chosen.shape}")
        return np.asarray(fn(images, self.variables, chosen))

    # --- where, why, trust ---

    def _class_matrix(self) -> jax.Array:
        if self.result is None or self.result.class_contributions is None:
            raise XaiJaxError("no class contributions: run fit_class_contributions (or load a result) first")
        if self.result.class_contributions.shape != (self.num_outputs, self.tap_shape[-1]):
            raise XaiJaxError(f"class contributions of shape {self.result.class_contributions.shape} do not fit "
                              f"{self.model}'s {self.tap} ({self.num_outputs} classes x {self.tap_shape[-1]} neurons)")
        return jnp.asarray(self.result.class_contributions, jnp.float32)

    def explain(self, images, *, batch_size: int = 64) -> WWWExplanation:
        """Explains each image: predicted class, top-k neurons with concepts and contributions for the sample and
        for the predicted class, their concept maps, both overall heatmaps and the trust score."""
        self._need_model("explain")
        images = _check_images(images, self.model)
        c = self.config
        fn = _explain_fn(self.model, self.tap, self.map_tap, self.num_classes, c.contribution, c.top_k,
                         float(c.percentile), self.tap_shape, True)
        source = ArraySource(images, np.zeros(len(images), np.int32), ["?"])
        out = engine.collect(engine.map_batches(fn, source, (self.variables, self._class_matrix()),
                                                batch_size=min(batch_size, len(images)), progress=False))
        concept = self.result.concept_label
        return WWWExplanation(
            images=np.asarray(images), predicted=out["predicted"], probabilities=out["probabilities"],
            sample_neurons=out["sample_neurons"], sample_contributions=out["sample_contributions"],
            class_neurons=out["class_neurons"], class_contributions=out["class_contributions"],
            sample_maps=out["sample_maps"], class_maps=out["class_maps"], sample_regions=out["sample_regions"],
            class_regions=out["class_regions"], sample_heatmap=out["sample_heatmap"],
            class_heatmap=out["class_heatmap"], trust=out["trust"],
            sample_concepts=[[concept(int(u)) for u in row] for row in out["sample_neurons"]],
            class_concepts=[[concept(int(u)) for u in row] for row in out["class_neurons"]])

    def trust_scores(self, source: Source, *, batch_size: int = 128, progress: bool | None = None) -> dict:
        """One streamed pass: per image ``predicted``, ``labels``, ``trust`` (heatmap similarity), ``msp``."""
        self._need_model("trust scores")
        c = self.config
        fn = _explain_fn(self.model, self.tap, self.map_tap, self.num_classes, c.contribution, c.top_k,
                         float(c.percentile), self.tap_shape, False)
        return engine.collect(engine.map_batches(fn, source, (self.variables, self._class_matrix()),
                                                 batch_size=batch_size, desc="WWW trust", progress=progress))


# --- evaluation ----------------------------------------------------------------------------------------------

def rejection_analysis(trust: np.ndarray, msp: np.ndarray, wrong: np.ndarray) -> dict:
    """Rejection curves and AUROCs of heatmap similarity and of the maximum softmax probability (figure 4).

    Returns ``{"auroc_similarity", "auroc_msp", "rejected" [N+1] share, "caught_similarity", "caught_msp"
    [N+1] mispredictions caught, "mispredictions"}``; AUROC treats a misprediction as the positive class and low
    confidence as the score.
    """
    trust, msp, wrong = np.asarray(trust, np.float32), np.asarray(msp, np.float32), np.asarray(wrong, bool)
    if not (trust.shape == msp.shape == wrong.shape) or trust.ndim != 1:
        raise XaiJaxError(f"trust, msp and wrong must be [N] alike; got {trust.shape}, {msp.shape}, {wrong.shape}")
    return {"auroc_similarity": float(K.auroc(-trust, wrong)), "auroc_msp": float(K.auroc(-msp, wrong)),
            "rejected": np.arange(len(wrong) + 1) / max(len(wrong), 1),
            "caught_similarity": np.asarray(K.rejection_curve(trust, wrong)),
            "caught_msp": np.asarray(K.rejection_curve(msp, wrong)), "mispredictions": int(wrong.sum())}


def concept_metrics(selected: Sequence[Sequence[str]], label_synonyms: Sequence[Sequence[str]], *,
                    text_encoder=None, sentence_encoder=None) -> dict:
    """Section 4.1.2 for final-layer neurons: selected concepts vs each neuron's class label.

    Args:
      selected: per neuron, its selected concept words.
      label_synonyms: per neuron, the words naming its class (the first is the label itself).
      text_encoder: ``list[str] -> [M, D]`` (e.g. ``clip_model.encode_texts``) for the CLIP-text cosine, or None.
      sentence_encoder: ``list[str] -> [M, D]`` (e.g. ``sentence.load_minilm().encode``) for the sentence cosine.

    Returns:
      Means over neurons of ``hit`` (hit rate), ``precision``, ``recall``, ``f1``, and ``clip_cos`` /
      ``sentence_cos`` (mean over predicted x true-label pairs; neurons with nothing selected are skipped).
    """
    if len(selected) != len(label_synonyms):
        raise XaiJaxError(f"{len(selected)} neurons with concepts but {len(label_synonyms)} label lists")
    vocab = sorted({w.lower() for words in selected for w in words} | {w.lower() for ws in label_synonyms for w in ws})
    column = {w: j for j, w in enumerate(vocab)}
    sel = np.zeros((len(selected), len(vocab)), bool)
    cor = np.zeros_like(sel)
    for u, (words, truth) in enumerate(zip(selected, label_synonyms)):
        sel[u, [column[w.lower()] for w in words]] = True
        cor[u, [column[w.lower()] for w in truth]] = True
    out = {k: float(np.mean(v)) for k, v in K.selection_metrics(sel, cor).items()}
    labels = [ws[0] for ws in label_synonyms]
    for key, encoder in (("clip_cos", text_encoder), ("sentence_cos", sentence_encoder)):
        if encoder is not None:
            emb_vocab = np.asarray(encoder(vocab), np.float32)
            emb_labels = np.asarray(encoder(labels), np.float32)
            per = np.asarray(K.mean_pair_cosine(sel, emb_vocab, emb_labels))
            out[key] = float(np.nanmean(per))
    return out


def clip_dissect(activations, image_embeddings, concept_embeddings, *, top_k: int = 100, a: float = 10.0,
                 lam: float = 1.0, p_start: float = 0.998, p_end: float = 0.97, neuron_chunk: int = 512) -> np.ndarray:
    """CLIP-Dissect's soft-WPMI baseline: ``[U, M]`` scores (the neuron's description is the argmax).

    ``activations`` ``[P, U]`` (spatially averaged), ``image_embeddings`` ``[P, D]``, ``concept_embeddings``
    ``[M, D]`` (CLIP-Dissect embeds the bare concept words). ``log p(d|E_u)`` is computed in blocks of neurons.
    """
    activations = np.asarray(activations, np.float32)
    if activations.ndim == 4:
        activations = activations.mean(axis=(1, 2))
    top_k = min(top_k, activations.shape[0])
    similarity = K.l2_normalise(jnp.asarray(image_embeddings, jnp.float32)) @ K.l2_normalise(
        jnp.asarray(concept_embeddings, jnp.float32)).T
    log_p_given_e = engine.map_arrays(_log_p_given_e_fn(top_k), {"activations": activations.T},
                                      (similarity, np.float32(a), np.float32(p_start), np.float32(p_end)),
                                      chunk=neuron_chunk)
    return np.asarray(K.soft_wpmi_from_log_p(log_p_given_e, lam))


@functools.lru_cache(maxsize=None)
def _log_p_given_e_fn(top_k: int):
    """``fn({"activations": [c, P]}, (similarity, a, p_start, p_end)) -> [c, M]`` for :func:`engine.map_arrays`:
    the rows are neurons, and only ``top_k`` (a shape) selects the program."""
    def fn(rows, params):
        similarity, a, p_start, p_end = params
        return K.soft_wpmi_log_p_given_e(similarity, rows["activations"].T, top_k, a, p_start, p_end)

    return fn


# --- helpers -------------------------------------------------------------------------------------------------

def _default_map_tap(shapes: Mapping[str, tuple], tap: str) -> str:
    names = list(shapes)
    units = shapes[tap][-1]
    before = [t for t in names[: names.index(tap)] if len(shapes[t]) == 3 and shapes[t][-1] == units]
    if not before:
        spatial = [t for t in names if len(shapes[t]) == 3]
        raise XaiJaxError(f"tap {tap!r} has no spatial maps and no earlier tap has {units} channels; pass map_tap "
                          f"(spatial taps: {', '.join(spatial)})")
    return before[-1]


def _check_concepts(concepts) -> list[str]:
    concepts = [str(c).strip() for c in concepts]
    if not concepts or any(not c for c in concepts):
        raise XaiJaxError("the concept set must be a non-empty list of non-empty words")
    return concepts


def _finite(array, what: str, ndim: int) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if array.ndim != ndim:
        raise XaiJaxError(f"{what} must have {ndim} dimensions; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise XaiJaxError(f"{what} contain NaN or infinity")
    return array


def _check_images(images, model: str) -> np.ndarray:
    from xai_jax.models import get
    images = np.asarray(images)
    spec = get(model)
    if images.ndim == 3 and spec.input_shape[-1] == 1:
        images = images[..., None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(spec.input_shape):
        raise XaiJaxError(f"{model} takes images of shape [N, {', '.join(map(str, spec.input_shape))}]; "
                          f"got {images.shape}")
    return images


def _as_rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images
