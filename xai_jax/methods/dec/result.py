"""The fitted activation clustering surrogate: its layers' encoders, centroids and posteriors, and what it says.

:class:`DECResult` holds one DEC per clustered layer and the bank of training embeddings; its methods are the
surrogate's predictions (paper eq. 3), its scores (accuracy and fidelity, footnote 1), the most similar training
samples of a query (section 4) and each cluster's concept (figures 4, 5). Saved in the one result layout of
:mod:`xai_jax.results`: ``dec.json``, ``dec.npz`` and the encoders in ``layers/`` (orbax).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from xai_jax import results
from xai_jax.errors import XaiJaxError
from xai_jax.kernels.clustering import log_soft_assignment, nearest_neighbours, validate_layer_weights
from xai_jax.methods.dec.config import KIND, DECConfig
from xai_jax.rowstore import DiskRows


@dataclasses.dataclass
class DECResult(results.Result):
    """A fitted activation clustering surrogate (``save``/``load``: :class:`xai_jax.results.Result`).

    Attributes:
      model: registry name of the explained model.
      class_names: one per output class.
      config: the :class:`DECConfig` used.
      layers: per tap, the encoder's Flax params and the input normalisation ``{"encoder", "norm"}`` (saved
        as the orbax folder ``layers/``).
      centroids: ``[L, k, e]`` cluster centres on the sphere's scale.
      posteriors: ``[L, k, C]`` ``p(y | z_k^j)``.
      train_embeddings: ``[L, N, e]`` the training samples' embeddings (the bank of similar samples).
      train_labels: ``[N]`` labels; ``train_predictions``: ``[N]`` the model's predictions;
      train_indices: ``[N]`` the samples' positions in the training source.
      metrics: accuracy and fidelity per layer and combined (training set; ``evaluate`` adds others).
      history: per layer, pretraining losses, DEC steps, changed fractions and seconds.
      meta: free-form provenance (weights, data).
      train_features: ``[N, f]`` the training samples' penultimate features (float16; ``None`` in results fitted
        from activations without them): the bank of Figure 2's Euclidean baseline. As large as the dataset's
        taps' smallest (4 KiB an image for ResNet-50, 5 GB over ImageNet), so it stays on disk: a
        :class:`xai_jax.rowstore.DiskRows` when fitted with a folder for the taps and whenever loaded, read a
        chunk at a time by :meth:`similar_by_features`.
      feature_tap: the tap they are (``pool`` of a ResNet).
    """

    KIND: ClassVar[str] = KIND
    STEM: ClassVar[str] = "dec"
    WHAT: ClassVar[str] = "DEC surrogate"

    model: str
    class_names: list[str]
    config: DECConfig
    layers: dict[str, Any] = results.trained()
    centroids: np.ndarray
    posteriors: np.ndarray
    train_embeddings: np.ndarray
    train_labels: np.ndarray
    train_predictions: np.ndarray
    train_indices: np.ndarray
    metrics: dict = dataclasses.field(default_factory=dict)
    history: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)
    train_features: np.ndarray | DiskRows | None = results.rows(default=None)
    feature_tap: str | None = None

    def check(self) -> None:
        """The arrays fit the config's taps and clusters, and the bank of training samples is one size."""
        layers_k = (len(self.taps), self.config.clusters)
        if self.centroids.shape[:2] != layers_k or self.posteriors.shape[:2] != layers_k:
            raise ValueError(f"dec.npz centroids {self.centroids.shape} and posteriors {self.posteriors.shape} do "
                             f"not fit {layers_k[0]} taps x {layers_k[1]} clusters")
        if self.train_indices.ndim != 1 or not len(self.train_indices):
            raise ValueError("dec.npz holds no training indices")
        n = len(self.train_indices)
        if self.train_embeddings.shape[:2] != (len(self.taps), n) or len(self.train_labels) != n or len(
                self.train_predictions) != n:
            raise ValueError(f"dec.npz holds embeddings {self.train_embeddings.shape}, {len(self.train_labels)} "
                             f"labels and {len(self.train_predictions)} predictions for {n} training samples")
        if self.train_features is not None and (self.train_features.ndim != 2 or len(self.train_features) != n):
            raise ValueError(f"dec.npz holds features {self.train_features.shape} for {n} training samples")
        if set(self.layers) != set(self.taps):
            raise ValueError(f"layers/ holds the encoders of {', '.join(sorted(self.layers)) or 'no tap'}, "
                             f"not of {', '.join(self.taps)}")

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(self.config.taps)

    def layer_index(self, tap: str | int) -> int:
        """The position of ``tap`` (a name or an index) among the clustered layers."""
        if isinstance(tap, (int, np.integer)):
            if not 0 <= tap < len(self.taps):
                raise XaiJaxError(f"layer index {tap} outside [0, {len(self.taps)})")
            return int(tap)
        if tap not in self.taps:
            raise XaiJaxError(f"the surrogate has no layer {tap!r}; layers: {', '.join(self.taps)}")
        return self.taps.index(tap)

    def weights(self, layer_weights=None) -> np.ndarray:
        """The layers' weights normalised to sum to 1: ``layer_weights`` if given, else the config's (default:
        equal)."""
        raw = self.config.layer_weights if layer_weights is None else layer_weights
        raw = np.ones(len(self.taps)) if raw is None else raw
        try:
            weights = validate_layer_weights(raw, len(self.taps))
        except ValueError as err:
            raise XaiJaxError(str(err)) from None
        return weights / weights.sum()

    def soft_assignments(self, embeddings: np.ndarray) -> np.ndarray:
        """``[L, n, k]`` Student-t soft assignments (DEC eq. 1) of ``[L, n, e]`` embeddings."""
        alpha = self.config.alpha
        return np.stack([np.asarray(jnp.exp(log_soft_assignment(z, c, alpha)))
                         for z, c in zip(embeddings, self.centroids)])

    def layer_probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """``[L, n, C]`` each layer's surrogate ``p(y | x) = sum_k p(y | z_k) q_k(x)`` (paper eq. 3)."""
        q = self.soft_assignments(embeddings)
        return np.einsum("lnk,lkc->lnc", q, self.posteriors)

    def predict_proba(self, embeddings: np.ndarray, layer_weights=None) -> np.ndarray:
        """``[n, C]`` the full surrogate: the layers' eq. 3 averaged with weights (normalised to sum 1)."""
        return np.einsum("l,lnc->nc", self.weights(layer_weights), self.layer_probabilities(embeddings))

    def scores(self, embeddings: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
               layer_weights=None) -> dict:
        """Accuracy (against ``labels``) and fidelity (against the model's ``predictions``), per layer and combined."""
        per_layer = self.layer_probabilities(embeddings).argmax(-1)
        combined = np.einsum("l,lnc->nc", self.weights(layer_weights), self.layer_probabilities(embeddings)).argmax(-1)
        out = {"baseline_accuracy": float(np.mean(predictions == labels)),
               "surrogate_accuracy": float(np.mean(combined == labels)),
               "fidelity": float(np.mean(combined == predictions)),
               "layers": {tap: {"surrogate_accuracy": float(np.mean(per_layer[j] == labels)),
                                "fidelity": float(np.mean(per_layer[j] == predictions))}
                          for j, tap in enumerate(self.taps)},
               "samples": int(len(labels))}
        return out

    def similar(self, embeddings: np.ndarray, m: int = 10, layer_weights=None) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` most similar training samples of each query (section 4): ``(bank rows [q, m], distances)``.

        Rows index ``train_embeddings``; ``train_indices[rows]`` are positions in the training source.
        """
        weights = self.weights(layer_weights)
        n = self.train_embeddings.shape[1]
        if not 1 <= m <= n:
            raise XaiJaxError(f"m must be in [1, {n}] (the training samples), got {m}")
        rows, distances = nearest_neighbours(list(embeddings), list(self.train_embeddings), weights, m)
        return np.asarray(rows), np.asarray(distances)

    def similar_by_features(self, features: np.ndarray, m: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Figure 2's baseline: the ``m`` training samples nearest each query by Euclidean distance of the
        penultimate features (the activation feeding the classifier), ``|f(x) - f(s)|``, beside the surrogate's
        :meth:`similar`.

        Args:
          features: ``[q, f]`` the queries' features (``embed(...)["features"]``).
          m: neighbours per query.

        Returns:
          ``(bank rows [q, m], distances [q, m])``, nearest first, as :meth:`similar`.
        """
        if self.train_features is None:
            raise XaiJaxError("this surrogate holds no penultimate features of its training samples (fitted from "
                              "activations without them): fit it again for the baseline")
        n, dim = self.train_features.shape
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != dim:
            raise XaiJaxError(f"features must be [q, {dim}] (the {self.feature_tap} tap); got {features.shape}")
        if not 1 <= m <= n:
            raise XaiJaxError(f"m must be in [1, {n}] (the training samples), got {m}")
        rows, distances = nearest_neighbours([features], [self.train_features], [1.0], m)
        return np.asarray(rows), np.asarray(distances)

    def concepts(self, tap: str | int, per_cluster: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Each cluster's concept in layer ``tap``: its members nearest its centroid (figures 4, 5).

        Members are the training samples whose hard assignment is the cluster; taking them (rather than the
        nearest samples overall) keeps a sample that lies between centroids from showing up as every cluster's
        concept. A cluster with fewer than ``per_cluster`` members is filled with the nearest other samples.

        Returns:
          ``(bank rows [k, per_cluster], distances [k, per_cluster])``, members first, each part nearest first.
        """
        j = self.layer_index(tap)
        z, mu = self.train_embeddings[j].astype(np.float64), self.centroids[j].astype(np.float64)
        n = len(z)
        if not 1 <= per_cluster <= n:
            raise XaiJaxError(f"per_cluster must be in [1, {n}], got {per_cluster}")
        distances = np.sqrt(np.maximum(np.sum(mu ** 2, 1)[:, None] - 2 * mu @ z.T + np.sum(z ** 2, 1)[None], 0))
        assigned = distances.argmin(0)  # the Student-t q falls with distance: its argmax is the nearest centroid
        outsider = assigned[None, :] != np.arange(len(mu))[:, None]  # [k, n]
        # Distances on the sphere are at most 2 * radius: an offset of 4 * radius ranks every member first.
        rank = distances + outsider * 4 * float(self.config.radius)
        rows = np.argsort(rank, axis=1, kind="stable")[:, :per_cluster]
        return rows, np.take_along_axis(distances, rows, axis=1)

    def cluster_sizes(self) -> np.ndarray:
        """``[L, k]`` training samples per cluster by hard assignment."""
        q = self.soft_assignments(self.train_embeddings)
        k = self.centroids.shape[1]
        return np.stack([np.bincount(layer.argmax(-1), minlength=k) for layer in q])
