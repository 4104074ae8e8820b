"""What an XNN fit returns (:class:`XNNResult`, saved in the one result layout) and what explaining images
returns (:class:`Explanation`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import results
from xai_jax.errors import XaiJaxError
from xai_jax.methods.xnn.config import EXPLANATION_KIND, KIND, XNNConfig
from xai_jax.models.xnn_explainer import stacked_x_features


@dataclasses.dataclass
class XNNResult(results.Result):
    """Trained one-vs-all explainers and their metrics.

    Saved as ``xnn.json`` (config, names, metrics, provenance), ``xnn.npz`` (classes, standardisation mean,
    history) and the explainers as an orbax folder ``params/``.

    Attributes:
      config: the :class:`XNNConfig`.
      classes: ``[C]`` the explained logits' indices.
      class_names: names of all the model's classes.
      params: the explainers, stacked on a leading class axis.
      input_mean, input_scale: the standardisation of ``Z`` (``(z - mean) / scale``).
      metrics: per explained class, ``f_reg_train``, ``f_cls_train`` (and ``_test``), ``o1``, ``o2``.
      orthogonality_basis: what O1/O2 correlate, a key of :data:`xai_jax.methods.xnn.BASES`:
        ``"cmwp-pixels"`` (the paper's), ``"gradcam-pixels"``, ``"gradcam-tap"``, or ``"x-features"``
        (x-feature values over the samples, when no model was given); ``"heatmaps"`` in results saved
        before 2026-12 (raw Grad-CAM at the tap).
      history: ``[epochs, C]`` mean training loss per epoch (empty for Lasso).
      meta: provenance (model, weights, tap).
    """

    KIND: ClassVar[str] = KIND
    STEM: ClassVar[str] = "xnn"
    WHAT: ClassVar[str] = "fitted XNN"

    config: XNNConfig
    classes: np.ndarray
    class_names: list[str]
    params: Any = results.trained()
    input_mean: np.ndarray
    input_scale: float
    metrics: dict
    orthogonality_basis: str
    history: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        """The explainers, classes, standardisation and history must agree in their sizes."""
        classes = np.asarray(self.classes)
        if classes.ndim != 1 or not len(classes):
            raise ValueError(f"classes must be a non-empty [C] array, got shape {classes.shape}")
        if classes.min() < 0 or classes.max() >= len(self.class_names):
            raise ValueError(f"classes {classes.tolist()} do not index the {len(self.class_names)} class names")
        head = np.shape(self.params["head"]["w"])
        if head != (len(classes), self.config.num_x_features):
            raise ValueError(f"explainer heads of shape {head}, expected ({len(classes)}, "
                             f"{self.config.num_x_features})")
        if np.ndim(self.input_mean) != 1:
            raise ValueError(f"input_mean must be [S], got shape {np.shape(self.input_mean)}")
        if "encoder" in self.params:
            first = np.shape(self.params["encoder"]["layer0"]["w"])
            if first[:2] != (len(classes), len(self.input_mean)):
                raise ValueError(f"first encoder layer of shape {first} for {len(classes)} classes and "
                                 f"{len(self.input_mean)} input features")
        history = np.shape(self.history)
        if len(history) != 2 or history[1] != len(classes):
            raise ValueError(f"history must be [epochs, {len(classes)}], got shape {history}")

    # --- evaluating the explainers on features ---

    def standardise(self, z: jax.Array) -> jax.Array:
        return (jnp.reshape(z, (z.shape[0], -1)) - self.input_mean) / self.input_scale

    def x_features(self, z: jax.Array) -> jax.Array:
        """``E`` of every explainer: ``[N, C, n]`` from activations ``z[N, ...]`` of the tap."""
        return stacked_x_features(self.config.variant, self.config.x_activation, self.params,
                                  self.standardise(jnp.asarray(z, jnp.float32)))

    def approximate(self, z: jax.Array) -> jax.Array:
        """``ybar = v.E + b`` of every explainer, ``[N, C]``."""
        x_features = self.x_features(z)
        return jnp.einsum("ncx,cx->nc", x_features, self.params["head"]["w"]) + self.params["head"]["b"]

    def contributions(self, z: jax.Array) -> jax.Array:
        """``v_i * E_i``: ``[N, C, n]``; they sum (with the bias) to :meth:`approximate`."""
        return self.x_features(z) * self.params["head"]["w"][None]

    def class_position(self, label: int | str) -> int:
        """The position in :attr:`classes` of a class given by index or name."""
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.class_names:
                raise XaiJaxError(f"unknown class {label!r}; classes: {', '.join(self.class_names)}")
            label = self.class_names.index(label)
        label = int(label)
        where = np.flatnonzero(np.asarray(self.classes) == label)
        if not len(where):
            raise XaiJaxError(f"class {label} has no explainer; explained classes: "
                              f"{', '.join(str(int(c)) for c in self.classes)}")
        return int(where[0])

    def explainer(self, label: int | str) -> dict:
        """One class's explainer parameters (the class axis removed)."""
        position = self.class_position(label)
        return jax.tree.map(lambda a: a[position], self.params)

    def only(self, label: int | str) -> "XNNResult":
        """A result with one class's explainer (class axis kept, of size 1)."""
        position = jnp.asarray([self.class_position(label)])
        # A gather with a traced index: a static slice per position would compile a program per class.
        return dataclasses.replace(self, classes=np.asarray(self.classes)[np.asarray(position)],
                                   params=jax.tree.map(lambda a: jnp.take(jnp.asarray(a), position, axis=0),
                                                       self.params))


@dataclasses.dataclass
class Explanation:
    """One class's explanation of some images (:func:`xai_jax.methods.xnn.explain`).

    Attributes:
      class_index: the explained logit.
      x_features: ``[N, n]`` values ``E_i``.
      contributions: ``[N, n]`` ``v_i * E_i`` (the displayed weights).
      approximation: ``[N]`` ``ybar``; logit: ``[N]`` the model's ``yhat``.
      heatmaps: ``[N, n, H, W]`` per-x-feature maps at image resolution, each scaled to [0, 1].
      baseline: ``[N, H, W]`` the 1-heatmap of the logit itself, same method.
      method: ``"gradcam"`` or ``"cmwp"``.
    """

    KIND: ClassVar[str] = EXPLANATION_KIND

    class_index: int
    x_features: np.ndarray
    contributions: np.ndarray
    approximation: np.ndarray
    logit: np.ndarray
    heatmaps: np.ndarray
    baseline: np.ndarray
    method: str
