"""The :class:`WWW` method object: one layer of a backbone, its fitting stages and its explanations.

Every stage returns a new :class:`WWWResult` (``dataclasses.replace`` of the one it continues) and leaves the
method and its arguments as they were, so that one ``WWW`` can fit, and explain with, several results.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from xai_jax import engine
from xai_jax.data.base import ArraySource, Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import www as K
from xai_jax.methods.www import concepts as concept_ops
from xai_jax.methods.www import passes
from xai_jax.methods.www.config import CONCEPT_FIELDS, CONTRIBUTION_FIELDS, LOGIT_MAPS, WWWConfig, with_stage
from xai_jax.methods.www.result import WWWExplanation, WWWResult


class WWW:
    """WWW for one layer (``tap``) of a registered backbone.

    ``fit_concepts`` (CLIP on probe images, or embeddings a user already has) answers *what*;
    ``fit_class_contributions`` precomputes the class-wise contributions; ``explain`` answers *where*, *why* and
    how far to trust a prediction, given a result with class contributions. Each fitting stage returns a new
    :class:`WWWResult` (save/load it with :meth:`WWWResult.save` / :meth:`WWWResult.load`) and takes the result
    to continue as ``result=``.

    Args:
      model: registry name (``None`` for embeddings-only concept discovery, with ``num_neurons`` from the data).
      variables: its Flax variables.
      tap: the explained layer.
      map_tap: the spatial layer whose channels are the neuron activation maps (default: ``tap`` if spatial,
        else the last spatial tap before it with as many channels, e.g. ``layer3`` for a CIFAR ResNet's ``pool``).
        For ``tap="logits"`` (final-layer neurons, the paper's Tables 2-4): the convolutional layer the class maps
        are computed at (default: the last spatial tap larger than 1 x 1).
      logit_maps: the maps of final-layer neurons: ``"cam"`` (class activation maps ``A @ W``, exact for a
        global-pooled linear head: the logit is their spatial mean plus the bias) or ``"gradcam"`` (Grad-CAM at
        ``map_tap``, any head); default ``"cam"`` where the head is global-pooled (ResNets, MobileNet,
        EfficientNet), else ``"gradcam"`` (VGG, the small CNN).
      config: :class:`WWWConfig`.
      num_classes: outputs of the head if not the model's default.
      compute_dtype: ``"bfloat16"`` runs the backbone of every pass in bf16 (default: float32); the
        contributions, sums and scores stay float32.
    """

    def __init__(self, model: str | None = None, variables: Any = None, tap: str | None = None,
                 map_tap: str | None = None, config: WWWConfig | None = None, num_classes: int | None = None,
                 compute_dtype: str | None = None, logit_maps: str | None = None):
        self.config = config or WWWConfig()
        self.config.validate()
        self.model, self.variables, self.num_classes = model, variables, num_classes
        self.compute_dtype = compute_dtype
        self.tap, self.map_tap = tap, map_tap
        self.tap_shape = None
        self.num_outputs = None
        self.maps_kind, self.head_tap = "tap", None
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
            if tap == "logits":
                self.map_tap, self.maps_kind, self.head_tap = logit_map_source(shapes, map_tap, logit_maps)
            elif logit_maps is not None:
                raise XaiJaxError(f"logit_maps is for final-layer neurons (tap='logits'), not tap {tap!r}")
            elif map_tap is None:
                self.map_tap = tap if len(self.tap_shape) == 3 else default_map_tap(shapes, tap)
            if self.maps_kind == "tap" and (len(shapes[self.map_tap]) != 3 or shapes[self.map_tap][-1] != units):
                raise XaiJaxError(f"map_tap {self.map_tap!r} must be a spatial tap with {units} channels like {tap!r}; "
                                  f"got shape {shapes[self.map_tap]}")
            self.num_outputs = num_classes or models.get(model).num_classes

    def _need_model(self, what: str) -> None:
        if self.model is None or self.variables is None:
            raise XaiJaxError(f"{what} needs a model: WWW(model, variables, tap=...)")

    def new_result(self, num_neurons: int | None = None) -> WWWResult:
        """An empty result for this layer (``num_neurons`` from the data when there is no model)."""
        units = self.tap_shape[-1] if self.tap_shape else num_neurons
        return WWWResult(model=self.model, tap=self.tap, map_tap=self.map_tap, num_neurons=int(units),
                         config=self.config, meta=self._maps_meta())

    def _maps_meta(self) -> dict:
        """``{"logit_maps": "cam" | "gradcam"}`` for final-layer neurons (what a reloaded result explains with)."""
        return {"logit_maps": self.maps_kind} if self.maps_kind != "tap" else {}

    def neuron_maps(self, images, neurons) -> np.ndarray:
        """``[B, k, h, w]`` the activation maps of each image's neurons ``[B, k]`` (channels of ``map_tap``; for
        final-layer neurons CAM or Grad-CAM maps, see ``logit_maps``)."""
        self._need_model("neuron maps")
        images = check_images(images, self.model)
        neurons = np.asarray(neurons, np.int32)
        if neurons.ndim != 2 or len(neurons) != len(images):
            raise XaiJaxError(f"neurons must be [{len(images)} images, k]; got shape {neurons.shape}")
        if neurons.size and (neurons.min() < 0 or neurons.max() >= self.tap_shape[-1]):
            raise XaiJaxError(f"neurons must lie in [0, {self.tap_shape[-1]})")
        return np.asarray(self._maps_fn()(images, self.variables, neurons))

    def _maps_fn(self):
        return passes.neuron_maps_fn(self.model, self.map_tap, self.num_classes, self.maps_kind, self.head_tap,
                                     self.compute_dtype)

    def _continue(self, result: WWWResult | None, units: int) -> WWWResult:
        """``result`` (or a new one) for this layer; raises when it was fitted on another number of neurons."""
        if result is None:
            return self.new_result(units)
        if result.num_neurons != units:
            raise XaiJaxError(f"{units} neurons in the data but the result has {result.num_neurons}")
        if self.model is None:
            return result
        return dataclasses.replace(result, model=self.model, tap=self.tap, map_tap=self.map_tap,
                                   meta={**result.meta, **self._maps_meta()})

    # --- what ---

    def probe(self, source: Source, *, batch_size: int = 128,
              progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The streamed probe pass: each neuron's top-n images, ``(indices [n, U], values [n, U])``."""
        self._need_model("the probe pass")
        n = self.config.n_examples
        if len(source) < n:
            raise XaiJaxError(f"the probe set has {len(source)} images; WWW needs at least n_examples = {n}")
        step = passes.probe_step(self.model, self.tap, self.num_classes, self.compute_dtype)
        state = engine.run(step, K.topn_init(self.tap_shape[-1], n), source, self.variables, batch_size=batch_size,
                           desc="WWW probe", progress=progress)
        state = jax.device_get(state)
        return np.asarray(state.indices), np.asarray(state.values)

    def fit_concepts(self, probe_source: Source, clip_model, concepts: Sequence[str], *,
                     result: WWWResult | None = None, minor: bool = True, batch_size: int = 128,
                     progress: bool | None = None) -> WWWResult:
        """Concept discovery with a CLIP model (``xai_jax.models.clip``) on probe images.

        Only the images in some neuron's top-n are embedded. Minor concepts (``config.minor_crops``): ``"peak"``
        embeds, per neuron, crops of its top-n images around its peak activation (``crop_fraction`` of the image
        side); ``"probe"`` (the paper's) cuts every probe image into ``crop_grid`` x ``crop_grid`` crops, runs the
        probe pass over the crops and embeds each neuron's top-n crops. ``config.use_template`` / ``acs`` are
        Table 5's switches.

        Args:
          probe_source: the probe images.
          clip_model: has ``encode_images`` and ``encode_texts``.
          concepts: the concept words.
          result: the result to continue (e.g. with class contributions); default a new one.
          minor: also the minor concepts (from crops).

        Returns:
          a new result with the concepts and the probe's top-n.
        """
        c = self.config
        indices, values = self.probe(probe_source, batch_size=batch_size, progress=progress)
        concepts = concept_ops.check_concepts(concepts)
        unique, inverse = np.unique(indices, return_inverse=True)
        image_embeddings = concept_ops.embed_images(probe_source, clip_model, unique)
        texts = [c.prompt.format(word) for word in concepts] if c.use_template else list(concepts)
        concept_embeddings = clip_model.encode_texts(texts)
        template_embedding = clip_model.encode_texts([c.template])[0] if c.acs else None
        crops = None
        if minor and c.minor_crops == "probe":
            crops = self.probe_crop_embeddings(probe_source, clip_model, batch_size=batch_size, progress=progress)
        elif minor:
            maps = self._maps_fn()
            crops = concept_ops.crop_embeddings(probe_source, clip_model, indices,
                                                lambda images, neurons: maps(images, self.variables, neurons),
                                                c.crop_fraction)
        fitted = self.fit_concepts_from_embeddings(concepts, concept_embeddings, template_embedding,
                                                   image_embeddings=image_embeddings,
                                                   topn_indices=inverse.reshape(indices.shape),
                                                   crop_embeddings=crops, result=result)
        return dataclasses.replace(fitted, topn_indices=indices, topn_values=values)

    def probe_crops(self, probe_source: Source, *, batch_size: int = 128,
                    progress: bool | None = None) -> tuple[concept_ops.GridCrops, np.ndarray, np.ndarray]:
        """The paper's minor-concept probe: ``(crops, indices [n, U], values [n, U])``, each neuron's top-n of
        the probe set cut into ``crop_grid`` x ``crop_grid`` crops (indices into the :class:`GridCrops` source
        ``crops``; ``indices // crop_grid**2`` is the probe image)."""
        crops = concept_ops.GridCrops(probe_source, self.config.crop_fraction, self.config.crop_grid)
        indices, values = self.probe(crops, batch_size=batch_size, progress=progress)
        return crops, indices, values

    def probe_crop_embeddings(self, probe_source: Source, clip_model, *, batch_size: int = 128,
                              progress: bool | None = None) -> np.ndarray:
        """``[U, n, D]`` CLIP embeddings of each neuron's top-n probe crops (:meth:`probe_crops`)."""
        crops, indices, _ = self.probe_crops(probe_source, batch_size=batch_size, progress=progress)
        unique, inverse = np.unique(indices, return_inverse=True)
        embedded = concept_ops.embed_images(crops, clip_model, unique)
        return embedded[inverse.reshape(indices.shape)].transpose(1, 0, 2)

    def fit_concepts_from_embeddings(self, concepts: Sequence[str], concept_embeddings, template_embedding=None, *,
                                     image_embeddings, activations=None, topn_indices=None, crop_embeddings=None,
                                     result: WWWResult | None = None) -> WWWResult:
        """Concept discovery from embeddings a user already has (CLIP-Dissect and others cache them).

        Args:
          concepts: ``M`` concept words.
          concept_embeddings: ``[M, D]`` text embeddings of the prompted concepts (of the bare words for
            ``use_template=False``: the embeddings are used as given).
          template_embedding: ``[D]`` the bare template's embedding (needed by ``acs`` only).
          image_embeddings: ``[P, D]`` embeddings of the probe images.
          activations: ``[P, U]`` (or ``[P, H, W, U]``) activations of the probe images, to find each neuron's
            top-n (kept in the result); or give ``topn_indices`` ``[n, U]`` (rows of ``image_embeddings``).
          crop_embeddings: ``[U, n, D]`` embeddings of each neuron's crops, for minor concepts.
          result: the result to continue; default a new one.

        Returns:
          a new result with the concepts (and the top-n when found from ``activations``).
        """
        concepts = concept_ops.check_concepts(concepts)
        image_embeddings = concept_ops.finite(image_embeddings, "image embeddings", 2)
        concept_embeddings = concept_ops.finite(concept_embeddings, "concept embeddings", 2)
        c = self.config
        if template_embedding is None and c.acs:
            raise XaiJaxError("the adaptive cosine score (acs) needs the template embedding; give it, or acs=False "
                              "(--no-acs) for the plain cosine")
        dim = image_embeddings.shape[1]
        if template_embedding is not None:
            template_embedding = concept_ops.finite(template_embedding, "template embedding", 1)
            if template_embedding.shape != (dim,):
                raise XaiJaxError(f"the template embedding must have {dim} values; got shape "
                                  f"{template_embedding.shape}")
        if concept_embeddings.shape != (len(concepts), dim):
            raise XaiJaxError(f"concept embeddings must be [{len(concepts)} concepts, {dim}]; "
                              f"got {concept_embeddings.shape}")
        topn = {}
        if topn_indices is None:
            topn_indices, topn_values = _topn_of_activations(activations, image_embeddings.shape[0], c.n_examples)
            topn = {"topn_indices": topn_indices, "topn_values": topn_values}
        topn_indices = np.asarray(topn_indices)
        if topn_indices.ndim != 2 or topn_indices.min() < 0 or topn_indices.max() >= image_embeddings.shape[0]:
            raise XaiJaxError(f"top-n indices must be [n, neurons] rows of the {image_embeddings.shape[0]} image "
                              "embeddings")
        units = topn_indices.shape[1]
        if self.tap_shape is not None and units != self.tap_shape[-1]:
            raise XaiJaxError(f"{units} neurons in the activations but the layer has {self.tap_shape[-1]}")
        base = self._continue(result, units)
        neuron_emb = K.mean_image_embeddings(image_embeddings, topn_indices)
        major = concept_ops.select_in_chunks(neuron_emb, concept_embeddings, template_embedding, c.alpha_major,
                                             c.max_concepts, c.neuron_chunk, c.acs)
        minor = None
        if crop_embeddings is not None:
            crop_embeddings = concept_ops.finite(crop_embeddings, "crop embeddings", 3)
            if crop_embeddings.shape[0] != units or crop_embeddings.shape[2] != dim:
                raise XaiJaxError(f"crop embeddings must be [{units} neurons, crops, {dim}]; "
                                  f"got {crop_embeddings.shape}")
            minor = concept_ops.select_in_chunks(concept_ops.crop_mean_embeddings(crop_embeddings),
                                                 concept_embeddings, template_embedding, c.alpha_minor,
                                                 c.max_concepts, c.neuron_chunk, c.acs)
        return dataclasses.replace(base, concept_names=list(concepts), major=major, minor=minor,
                                   config=with_stage(base.config, c, CONCEPT_FIELDS), **topn)

    # --- why ---

    def fit_class_contributions(self, source: Source, result: WWWResult | None = None, *, batch_size: int = 128,
                                progress: bool | None = None) -> WWWResult:
        """Class-wise mean Taylor-Shapley contributions ``[C, U]`` over ``source`` (the training split), one pass.

        Args:
          source: the images to average over.
          result: the result to continue (e.g. with concepts); default a new one.

        Returns:
          a new result with ``class_contributions``, ``class_counts`` (and the source's class names if the
          result has none).
        """
        self._need_model("class contributions")
        base = self._continue(result, self.tap_shape[-1])
        step = passes.class_step(self.model, self.tap, self.num_classes, self.config.contribution,
                                 self.config.class_by, self.tap_shape, self.compute_dtype)
        state = engine.run(step, K.class_sums_init(self.num_outputs, self.tap_shape[-1]), source, self.variables,
                           batch_size=batch_size, desc="WWW class contributions", progress=progress)
        state = jax.device_get(state)
        names = base.class_names
        if names is None and len(source.class_names) == self.num_outputs:
            names = list(source.class_names)
        return dataclasses.replace(base, class_contributions=np.asarray(K.class_means(state)),
                                   class_counts=np.asarray(state.counts), class_names=names,
                                   config=with_stage(base.config, self.config, CONTRIBUTION_FIELDS))

    def sample_contributions(self, images, classes=None) -> np.ndarray:
        """``[B, U]`` Taylor-Shapley contributions of ``images`` for ``classes`` (default: the prediction)."""
        self._need_model("contributions")
        images = check_images(images, self.model)
        fn = passes.sample_contributions_fn(self.model, self.tap, self.num_classes, self.config.contribution,
                                            self.tap_shape, classes is not None, self.compute_dtype)
        chosen = np.zeros(len(images), np.int32) if classes is None else np.asarray(classes, np.int32)
        if chosen.shape != (len(images),):
            raise XaiJaxError(f"classes must be [{len(images)}] (one per image); got shape {chosen.shape}")
        return np.asarray(fn(images, self.variables, chosen))

    # --- where, why, trust ---

    def _class_matrix(self, result: WWWResult | None) -> np.ndarray:
        if result is None or result.class_contributions is None:
            raise XaiJaxError("no class contributions: run fit_class_contributions (or load a result) first")
        if result.class_contributions.shape != (self.num_outputs, self.tap_shape[-1]):
            raise XaiJaxError(f"class contributions of shape {result.class_contributions.shape} do not fit "
                              f"{self.model}'s {self.tap} ({self.num_outputs} classes x {self.tap_shape[-1]} neurons)")
        return np.asarray(result.class_contributions, np.float32)

    def explain(self, images, result: WWWResult, *, batch_size: int = 64) -> WWWExplanation:
        """Explains each image: predicted class, top-k neurons with concepts and contributions for the sample and
        for the predicted class, their concept maps, both overall heatmaps and the trust score.

        Args:
          images: ``[B, H, W, C]`` images of the model's input shape.
          result: a result with class contributions (and, for concept names, concepts).
        """
        self._need_model("explain")
        class_matrix = self._class_matrix(result)
        images = check_images(images, self.model)
        c = self.config
        fn = passes.explain_fn(self.model, self.tap, self.map_tap, self.num_classes, c.contribution, c.top_k,
                               float(c.percentile), self.tap_shape, True, self.compute_dtype, self.maps_kind,
                               self.head_tap)
        source = ArraySource(images, np.zeros(len(images), np.int32), ["?"])
        out = engine.collect(engine.map_batches(fn, source, (self.variables, class_matrix),
                                                batch_size=min(batch_size, len(images)), progress=False))
        concept = result.concept_label
        return WWWExplanation(
            images=np.asarray(images), predicted=out["predicted"], probabilities=out["probabilities"],
            sample_neurons=out["sample_neurons"], sample_contributions=out["sample_contributions"],
            class_neurons=out["class_neurons"], class_contributions=out["class_contributions"],
            sample_maps=out["sample_maps"], class_maps=out["class_maps"], sample_regions=out["sample_regions"],
            class_regions=out["class_regions"], sample_heatmap=out["sample_heatmap"],
            class_heatmap=out["class_heatmap"], trust=out["trust"],
            sample_concepts=[[concept(int(u)) for u in row] for row in out["sample_neurons"]],
            class_concepts=[[concept(int(u)) for u in row] for row in out["class_neurons"]])

    def trust_scores(self, source: Source, result: WWWResult, *, batch_size: int = 128,
                     progress: bool | None = None) -> dict:
        """One streamed pass: per image ``predicted``, ``labels``, ``trust`` (heatmap similarity), ``msp``."""
        self._need_model("trust scores")
        class_matrix = self._class_matrix(result)
        c = self.config
        fn = passes.explain_fn(self.model, self.tap, self.map_tap, self.num_classes, c.contribution, c.top_k,
                               float(c.percentile), self.tap_shape, False, self.compute_dtype, self.maps_kind,
                               self.head_tap)
        return engine.collect_rows(fn, source, (self.variables, class_matrix), batch_size=batch_size,
                                   desc="WWW trust", progress=progress)


def _topn_of_activations(activations, num_images: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [n, U], values [n, U])`` each neuron's top-n rows of ``activations`` (checked first)."""
    if activations is None:
        raise XaiJaxError("give the probe activations (or top-n indices) with the image embeddings")
    activations = np.asarray(activations, np.float32)
    if activations.ndim not in (2, 4) or activations.shape[0] != num_images:
        raise XaiJaxError(f"activations must be [{num_images} images, neurons] (one row per image embedding); "
                          f"got shape {activations.shape}")
    if not np.isfinite(activations).all():
        raise XaiJaxError("activations contain NaN or infinity")
    if activations.shape[0] < n:
        raise XaiJaxError(f"{activations.shape[0]} probe images; WWW needs at least n_examples = {n}")
    state = K.topn_update(K.topn_init(activations.shape[-1], n), activations, np.arange(activations.shape[0]),
                          np.ones(activations.shape[0], bool))
    return np.asarray(state.indices), np.asarray(state.values)


def default_map_tap(shapes: Mapping[str, tuple], tap: str) -> str:
    """The last spatial tap before ``tap`` with as many channels (the maps a pooled layer is pooled from)."""
    names = list(shapes)
    units = shapes[tap][-1]
    before = [t for t in names[: names.index(tap)] if len(shapes[t]) == 3 and shapes[t][-1] == units]
    if not before:
        spatial = [t for t in names if len(shapes[t]) == 3]
        raise XaiJaxError(f"tap {tap!r} has no spatial maps and no earlier tap has {units} channels; pass map_tap "
                          f"(spatial taps: {', '.join(spatial)})")
    return before[-1]


def logit_map_source(shapes: Mapping[str, tuple], map_tap: str | None,
                     logit_maps: str | None) -> tuple[str, str, str | None]:
    """``(map_tap, maps_kind, head_tap)`` of final-layer neurons: where their maps come from, and how.

    The head is global-pooled when the layer the logits read is ``[K]`` and the last spatial tap has ``K``
    channels (``layer3 -> pool -> logits``); its maps are then CAM at that spatial tap. Any other head (dense
    layers after the last convolution) gets Grad-CAM, by default at the last spatial tap larger than 1 x 1.
    """
    names = list(shapes)
    spatial = [t for t in names[: names.index("logits")] if len(shapes[t]) == 3]
    if not spatial:
        raise XaiJaxError("the model has no spatial tap to compute the maps of its final-layer neurons at")
    head_tap = names[names.index("logits") - 1]
    pooled = len(shapes[head_tap]) == 1 and shapes[head_tap][0] == shapes[spatial[-1]][-1]
    if map_tap is None:
        larger = [t for t in spatial if shapes[t][0] * shapes[t][1] > 1]
        map_tap = spatial[-1] if pooled or not larger else larger[-1]
    if len(shapes[map_tap]) != 3:
        raise XaiJaxError(f"map_tap {map_tap!r} must be a spatial tap; got shape {shapes[map_tap]} (spatial taps: "
                          f"{', '.join(spatial)})")
    cam_possible = pooled and map_tap == spatial[-1]
    kind = logit_maps or ("cam" if cam_possible else "gradcam")
    if kind not in LOGIT_MAPS:
        raise XaiJaxError(f"logit_maps must be one of {', '.join(LOGIT_MAPS)}; got {kind!r}")
    if kind == "cam" and not cam_possible:
        raise XaiJaxError(f"CAM needs a global-pooled linear head read at the last convolution ({spatial[-1]} "
                          f"pooled into {head_tap}); use logit_maps='gradcam' for map_tap {map_tap!r}")
    return map_tap, kind, head_tap if kind == "cam" else None


def check_images(images, model: str) -> np.ndarray:
    """``images`` as ``[N, *input_shape]`` of ``model`` (a channel axis added to grey images)."""
    from xai_jax.models import get
    images = np.asarray(images)
    spec = get(model)
    if images.ndim == 3 and spec.input_shape[-1] == 1:
        images = images[..., None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(spec.input_shape):
        raise XaiJaxError(f"{model} takes images of shape [N, {', '.join(map(str, spec.input_shape))}]; "
                          f"got {images.shape}")
    return images
