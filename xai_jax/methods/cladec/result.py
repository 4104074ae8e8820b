"""ClaDec's results: the trained decoders of one layer (:class:`ClaDecResult`) and an occlusion analysis
(:class:`OcclusionResult`), saved and loaded in the one result layout of :mod:`xai_jax.results`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping

import jax.numpy as jnp
import numpy as np

from xai_jax import models, results
from xai_jax.methods.cladec.config import KIND, OCCLUSION_KIND, ClaDecConfig
from xai_jax.methods.cladec.passes import reconstruct_fn
from xai_jax.models.cladec import Decoder


@dataclasses.dataclass
class ClaDecResult(results.Result):
    """Trained ClaDec decoder (and RefAE) for one layer, with the evaluation numbers.

    Saved as ``cladec.json`` (config, tap, metrics, history, meta), ``cladec.npz`` (``fill``) and the orbax
    folders ``decoder/`` and ``refae/``.

    Attributes:
      config: the :class:`ClaDecConfig`.
      model: registry name of the explained classifier.
      tap: the explained tap.
      code_shape: per-image shape of the decoder's input (after the neuron subset).
      decoder: Flax variables of the ClaDec decoder.
      fill: ``[C]`` training mean per channel in [0, 1], the occlusion fill.
      refae: ``{"encoder": ..., "decoder": ...}`` Flax variables of RefAE, or ``None``.
      metrics: floats: ``rec_loss_cladec``, ``rec_loss_refae`` (per-pixel MSE on the test set), ``d_rec``,
        ``acc_eval_cladec``, ``acc_eval_refae``, ``d_acc``, ``classifier_accuracy``, and the final train losses.
      history: per-epoch training metrics of the decoder (``"cladec"``) and RefAE (``"refae"``).
      meta: free-form provenance (weights path, data).
    """

    KIND: ClassVar[str] = KIND
    STEM: ClassVar[str] = "cladec"
    WHAT: ClassVar[str] = "ClaDec result"

    config: ClaDecConfig
    model: str
    tap: str
    code_shape: tuple[int, ...]
    decoder: Any = results.trained()
    fill: np.ndarray
    refae: Any = results.trained(default=None)
    metrics: dict = dataclasses.field(default_factory=dict)
    history: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """The fill has one value per channel, and the code the neuron range's width."""
        fill = np.asarray(self.fill)
        if fill.ndim != 1 or fill.size < 1:
            raise ValueError(f"fill must be [C], got shape {fill.shape}")
        neurons = self.config.neurons
        if neurons is not None and (not self.code_shape or self.code_shape[-1] != neurons[1] - neurons[0]):
            raise ValueError(f"code shape {self.code_shape} does not match neurons {neurons[0]}:{neurons[1]}")

    @property
    def decoder_module(self) -> Decoder:
        """The decoder's Flax module (its initialisation aside, which the variables replace)."""
        spec = models.get(self.model)
        return Decoder(spec.input_shape[-1], spec.input_shape[0], self.config.decoder_base,
                       self.config.decoder_widths)

    def reconstruct(self, variables, images) -> dict[str, np.ndarray]:
        """Raw images through the classifier ``variables`` and back, jitted over the whole batch.

        Returns:
          ``{"x" (the images in [0, 1]), "cladec", "refae" (if trained), "logits"}``.
        """
        fn = reconstruct_fn(self.model, self.tap, self.config.neurons, self.decoder_module, self.refae is not None)
        return {k: np.asarray(v) for k, v in fn(jnp.asarray(images), variables, self.decoder, self.refae).items()}


@dataclasses.dataclass
class OcclusionResult(results.Result):
    """Section 6.6 for one layer: which of the 16 squares each method deems least / most relevant, and the
    classifier's accuracy with that square occluded (tables 7-8).

    Saved as ``occlusion.npz`` (the arrays) and ``occlusion.json`` (``meta``, and :attr:`accuracy` under
    ``notes``).

    Attributes:
      relevance_cladec, relevance_gradcam: ``[N, 16]``.
      min_cladec, max_cladec, min_gradcam, max_gradcam: ``[N]`` chosen occlusion per image.
      correct: ``[N, 16]`` whether the classifier is right with each square occluded.
      correct_clean: ``[N]`` whether it is right on the unoccluded image.
      labels: ``[N]``.
      meta: the model, tap and layer analysed.
    """

    KIND: ClassVar[str] = OCCLUSION_KIND
    STEM: ClassVar[str] = "occlusion"
    WHAT: ClassVar[str] = "ClaDec occlusion result"

    relevance_cladec: np.ndarray
    relevance_gradcam: np.ndarray
    min_cladec: np.ndarray
    max_cladec: np.ndarray
    min_gradcam: np.ndarray
    max_gradcam: np.ndarray
    correct: np.ndarray
    correct_clean: np.ndarray
    labels: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """Every array has a row per label; relevances and correctness one column per occlusion."""
        n = len(self.labels)
        squares = np.shape(self.relevance_cladec)[1:]
        for name in ("relevance_cladec", "relevance_gradcam", "correct"):
            if np.shape(getattr(self, name)) != (n, *squares) or len(squares) != 1:
                raise ValueError(f"{name} must be [{n}, occlusions], got {np.shape(getattr(self, name))}")
        for name in ("min_cladec", "max_cladec", "min_gradcam", "max_gradcam", "correct_clean"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"{name} must be [{n}], got {np.shape(getattr(self, name))}")

    @property
    def accuracy(self) -> dict[str, float]:
        """``{"clean", "cladec_min", "cladec_max", "cladec_d_acc", "gradcam_min", ...}``: the classifier's
        accuracy with the least / most relevant square occluded, and their difference."""
        rows = np.arange(len(self.labels))
        out = {"clean": float(np.mean(self.correct_clean))}
        for method in ("cladec", "gradcam"):
            low = float(self.correct[rows, getattr(self, f"min_{method}")].mean())
            high = float(self.correct[rows, getattr(self, f"max_{method}")].mean())
            out.update({f"{method}_min": low, f"{method}_max": high, f"{method}_d_acc": low - high})
        return out

    def write(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None,
              notes: Mapping[str, Any] | None = None) -> None:
        """:meth:`xai_jax.results.Result.write`, with :attr:`accuracy` in the notes (for people; not read back)."""
        super().write(directory, extra_files, {"accuracy": self.accuracy, **(notes or {})})
