"""Activation clustering surrogate: explain a classifier by Deep Embedded Clustering of its layers' activations.

The paper (``../shared/papers/dec_activation_clustering.txt``, Liu & Arik), as specified in DESIGN.md
("DEC activation clustering surrogate"):

1. One streamed pass of the backbone over the training set keeps the selected taps (flattened, stored on the
   host as ``float16`` to halve the memory; they are only ever read back as float32) next to the labels and
   the model's predictions (section 3.1).
2. Per selected layer ``j``: an autoencoder ``d -> 500 -> 500 -> 2000 -> e`` (ReLU, linear embedding, DEC's
   shape), pretrained on reconstruction; the embeddings are projected onto the sphere of radius 8 (footnote 2);
   k-means with 20 restarts starts ``k`` centroids; DEC then minimises ``KL(P || Q)`` over the encoder and
   the centroids, with the Student-t soft assignment ``Q`` of ``alpha = 100`` (footnote 3) and the target
   ``P`` recomputed over the whole training set every ``T`` steps, until fewer than 0.1 % of the hard
   assignments change between two refreshes (DEC section 3.1.3).
3. The layer's surrogate is eq. 3, ``p(y | x) = sum_k p(y | z_k) q_k(x)`` with ``p(y | z_k)`` the
   soft-assignment-weighted frequencies of the training labels in cluster ``k`` ("the empirical posteriors
   observed from the training data"); the full surrogate averages the layers with weights ``w_j`` (equal by
   default). Fidelity (footnote 1) is the surrogate's accuracy at predicting the model's predictions.
4. Explanations: the ``m`` training samples nearest a query by ``sum_j w_j |z_j(x) - z_j(s)|`` (section 4,
   :func:`xai_jax.kernels.clustering.nearest_neighbours`), and each cluster's concept, the training samples
   whose embeddings are nearest its centroid (figures 4, 5).

Every pass over data is blocked and jitted (no loop over samples or clusters); the layers are a short Python
loop because their input sizes differ. The DEC refinement runs ``T`` steps as one jitted ``lax.scan`` over
device-resident activations.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax import engine, train
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels.clustering import (cluster_frequencies, kl_divergence_log, kmeans, log_soft_assignment,
                                        nearest_neighbours, project_to_sphere, target_distribution,
                                        validate_layer_weights)
from xai_jax.outputs import atomic_dir, save_npz, write_files
from xai_jax.readers import read_json, read_npz, reading

POSTERIORS = ("labels", "predictions")



def layer_emphasis(num_layers: int, which: str) -> tuple[float, ...]:
    """The paper's low-/high-layer weightings (figure 12: 2, 1, 0, 0 and 0, 0, 1, 2) for any number of layers."""
    half = -(-num_layers // 2)
    low = tuple(float(max(half - j, 0)) for j in range(num_layers))
    return low if which == "low" else tuple(reversed(low))

#: the kind of output folder a DEC surrogate is (see :mod:`xai_jax.outputs`)
KIND = "dec"

@dataclasses.dataclass(frozen=True)
class DECConfig:
    """Hyper-parameters of the surrogate; the defaults are the paper's CIFAR-10 setting (Table 1, footnotes).

    Attributes:
      taps: the model's activations to cluster, in forward order (e.g. ``("stem", "layer1", "layer2", "layer3")``).
      embedding_size: ``e = dim(V^j)`` (20).
      clusters: ``k = l_j`` clusters per layer (15).
      alpha: Student-t degrees of freedom of the soft assignment (100, footnote 3; DEC's default is 1).
      radius: the embeddings' hypersphere radius (8, footnote 2).
      layer_weights: ``w_j`` of the full surrogate (``None``: equal).
      hidden: the autoencoder's hidden widths (DEC: 500, 500, 2000).
      pretrain_epochs: epochs of reconstruction pretraining (Adam).
      pretrain_learning_rate: Adam's step size while pretraining.
      batch_size: examples per step of pretraining and of DEC.
      dec_learning_rate: SGD step size of the DEC refinement (DEC: 0.01, momentum 0.9).
      update_interval: ``T``, DEC steps between two full-training-set refreshes of the target ``P``.
      tolerance: stop when the fraction of changed hard assignments between refreshes is below this (0.1 %).
      max_dec_steps: most DEC steps per layer (rounded up to a multiple of ``update_interval``).
      kmeans_inits: k-means restarts (20).
      posterior: ``"labels"`` (the paper: training labels) or ``"predictions"`` (the model's predictions) for
        ``p(y | z_k)``.
      seed: all randomness (initialisation, shuffling, k-means) derives from it.
    """

    taps: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3")
    embedding_size: int = 20
    clusters: int = 15
    alpha: float = 100.0
    radius: float = 8.0
    layer_weights: tuple[float, ...] | None = None
    hidden: tuple[int, ...] = (500, 500, 2000)
    pretrain_epochs: int = 20
    pretrain_learning_rate: float = 1e-3
    batch_size: int = 256
    dec_learning_rate: float = 0.01
    update_interval: int = 140
    tolerance: float = 0.001
    max_dec_steps: int = 2000
    kmeans_inits: int = 20
    posterior: str = "labels"
    seed: int = 0

    def weights(self) -> np.ndarray:
        """The layers' weights, normalised to sum to 1."""
        raw = np.ones(len(self.taps)) if self.layer_weights is None else self.layer_weights
        try:
            weights = validate_layer_weights(raw, len(self.taps))
        except ValueError as err:
            raise XaiJaxError(str(err)) from None
        return weights / weights.sum()

    def validate(self, num_samples: int | None = None) -> None:
        if not self.taps:
            raise XaiJaxError("select at least one tap to cluster")
        if len(set(self.taps)) != len(self.taps):
            raise XaiJaxError(f"taps repeat: {', '.join(self.taps)}")
        for name in ("embedding_size", "clusters", "batch_size", "update_interval", "kmeans_inits"):
            if getattr(self, name) < 1:
                raise XaiJaxError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pretrain_epochs < 0 or self.max_dec_steps < 0:
            raise XaiJaxError("pretrain_epochs and max_dec_steps must be >= 0")
        if self.alpha <= 0 or self.radius <= 0:
            raise XaiJaxError(f"alpha and radius must be > 0, got {self.alpha} and {self.radius}")
        if any(h < 1 for h in self.hidden):
            raise XaiJaxError(f"hidden widths must be >= 1, got {self.hidden}")
        if self.posterior not in POSTERIORS:
            raise XaiJaxError(f"posterior must be one of {', '.join(POSTERIORS)}; got {self.posterior!r}")
        self.weights()
        if num_samples is not None and self.clusters > num_samples:
            raise XaiJaxError(f"{self.clusters} clusters need at least as many training samples; got {num_samples}")


# --- the autoencoder -----------------------------------------------------------------------------------------

class MLP(nn.Module):
    """Dense layers with ReLU between them and a linear output (DEC's encoder and decoder)."""

    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense{i}")(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


def _normalise(x, norm):
    # Activations differ in scale between layers: centre each feature, divide by the layer's overall std,
    # so every autoencoder sees inputs of unit scale while the features keep their relative sizes.
    return (x.astype(jnp.float32) - norm["mean"]) / norm["scale"]


@functools.lru_cache(maxsize=None)
def _encoder(hidden: tuple[int, ...], embedding: int):
    return MLP(hidden + (embedding,))


@functools.lru_cache(maxsize=None)
def _decoder(hidden: tuple[int, ...], dim: int):
    return MLP(tuple(reversed(hidden)) + (dim,))


def _encode(hidden, embedding, radius, layer, x):
    """Sphere-projected embeddings ``[n, e]`` of raw activations ``[n, d]`` (layer: params + norm)."""
    z = _encoder(hidden, embedding).apply({"params": layer["encoder"]}, _normalise(x, layer["norm"]))
    return project_to_sphere(z, radius)


@functools.lru_cache(maxsize=None)
def _pretrain_loss(hidden: tuple[int, ...], embedding: int, dim: int):
    encoder, decoder = _encoder(hidden, embedding), _decoder(hidden, dim)

    def loss_fn(params, model_state, batch, key):
        x = _normalise(batch["x"], model_state["norm"])
        reconstruction = decoder.apply({"params": params["decoder"]}, encoder.apply({"params": params["encoder"]}, x))
        loss = jnp.mean(jnp.square(reconstruction - x))
        return loss, (model_state, {"loss": loss})

    return loss_fn


@functools.lru_cache(maxsize=None)
def _dec_steps(hidden: tuple[int, ...], embedding: int, radius: float, alpha: float, learning_rate: float):
    """``T`` DEC steps in one jitted ``lax.scan``: minibatch KL(P || Q) (DEC eq. 2) over encoder and centroids,
    targets ``P`` fixed (computed over the whole training set before the call)."""
    optimizer = optax.sgd(learning_rate, momentum=0.9)

    def loss_fn(params, norm, x, p):
        z = _encode(hidden, embedding, radius, {"encoder": params["encoder"], "norm": norm}, x)
        return kl_divergence_log(p, log_soft_assignment(z, params["centroids"], alpha))

    def run(params, opt_state, norm, x_all, p_all, order):
        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, norm, x_all[idx], p_all[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, losses

    return optimizer, jax.jit(run, donate_argnums=(0, 1))


@functools.lru_cache(maxsize=None)
def _embed_rows_fn(hidden: tuple[int, ...], embedding: int, radius: float):
    """``fn({"x": [c, d]}, layer) -> [c, e]`` for :func:`engine.map_arrays`, one object per architecture."""
    def fn(rows, layer):
        return _encode(hidden, embedding, radius, layer, rows["x"])

    return fn


def _embed_rows(hidden: tuple[int, ...], embedding: int, radius: float, layer, x: np.ndarray,
                chunk: int = 4096) -> np.ndarray:
    """Sphere-projected embeddings ``[n, e]`` of host activations ``[n, d]`` (any float dtype), ``chunk`` rows
    per call: the float16 store is never converted whole, and every call reuses one compiled program."""
    return engine.map_arrays(_embed_rows_fn(hidden, embedding, radius), {"x": x}, layer, chunk=chunk)


# --- the result ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DECResult:
    """A fitted activation clustering surrogate, with ``save``/``load``.

    Attributes:
      model: registry name of the explained model.
      class_names: one per output class.
      config: the :class:`DECConfig` used.
      layers: per tap, the encoder's Flax params and the input normalisation ``{"encoder", "norm"}``.
      centroids: ``[L, k, e]`` cluster centres on the sphere's scale.
      posteriors: ``[L, k, C]`` ``p(y | z_k^j)``.
      train_embeddings: ``[L, N, e]`` the training samples' embeddings (the bank of similar samples).
      train_labels: ``[N]`` labels; ``train_predictions``: ``[N]`` the model's predictions;
      train_indices: ``[N]`` the samples' positions in the training source.
      metrics: accuracy and fidelity per layer and combined (training set; ``evaluate`` adds others).
      history: per layer, pretraining losses, DEC steps, changed fractions and seconds.
      meta: free-form provenance (weights, data).
    """

    model: str
    class_names: list[str]
    config: DECConfig
    layers: dict[str, Any]
    centroids: np.ndarray
    posteriors: np.ndarray
    train_embeddings: np.ndarray
    train_labels: np.ndarray
    train_predictions: np.ndarray
    train_indices: np.ndarray
    metrics: dict = dataclasses.field(default_factory=dict)
    history: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(self.config.taps)

    def layer_index(self, tap: str | int) -> int:
        if isinstance(tap, (int, np.integer)):
            if not 0 <= tap < len(self.taps):
                raise XaiJaxError(f"layer index {tap} outside [0, {len(self.taps)})")
            return int(tap)
        if tap not in self.taps:
            raise XaiJaxError(f"the surrogate has no layer {tap!r}; layers: {', '.join(self.taps)}")
        return self.taps.index(tap)

    def weights(self, layer_weights=None) -> np.ndarray:
        if layer_weights is None:
            return self.config.weights()
        given = tuple(float(w) for w in np.ravel(layer_weights))
        return dataclasses.replace(self.config, layer_weights=given).weights()

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

    # --- save / load ---

    def save(self, directory: str | os.PathLike, extra_files: dict[str, bytes] | None = None) -> None:
        """Writes ``dec.json`` (config, metrics, history), ``dec.npz`` (arrays), ``encoders/`` (orbax) and
        ``extra_files`` (name -> bytes) into ``directory``, atomically."""
        from xai_jax.weights import save_variables
        summary = {"model": self.model, "class_names": list(self.class_names),
                   "config": dataclasses.asdict(self.config), "metrics": self.metrics, "history": self.history,
                   "meta": self.meta}
        with atomic_dir(directory, KIND) as tmp:
            with open(os.path.join(tmp, "dec.json"), "w") as f:
                json.dump(summary, f, indent=2)
            save_npz(os.path.join(tmp, "dec.npz"), {
                "centroids": self.centroids, "posteriors": self.posteriors, "train_embeddings": self.train_embeddings,
                "train_labels": self.train_labels, "train_predictions": self.train_predictions,
                "train_indices": self.train_indices})
            save_variables(os.path.join(tmp, "encoders"), self.layers, {"taps": list(self.taps)})
            write_files(tmp, extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DECResult":
        from xai_jax.weights import load_variables
        for name in ("dec.json", "dec.npz", "encoders"):
            if not os.path.exists(os.path.join(directory, name)):
                raise XaiJaxError(f"{directory} is not a DEC surrogate (missing {name})")
        summary = read_json(os.path.join(directory, "dec.json"), "DEC result file")
        arrays = read_npz(os.path.join(directory, "dec.npz"), "DEC result file",
                          ("centroids", "posteriors", "train_embeddings", "train_labels", "train_predictions",
                           "train_indices"))
        layers, _ = load_variables(os.path.join(directory, "encoders"))
        with reading(directory, "DEC surrogate"):
            config = summary["config"]
            config = DECConfig(**{**config, "taps": tuple(config["taps"]), "hidden": tuple(config["hidden"]),
                                  "layer_weights": None if config["layer_weights"] is None
                                  else tuple(config["layer_weights"])})
            result = cls(model=summary["model"], class_names=summary["class_names"], config=config, layers=layers,
                         centroids=arrays["centroids"], posteriors=arrays["posteriors"],
                         train_embeddings=arrays["train_embeddings"], train_labels=arrays["train_labels"],
                         train_predictions=arrays["train_predictions"], train_indices=arrays["train_indices"],
                         metrics=summary["metrics"], history=summary["history"], meta=dict(summary["meta"]))
            layers_k = (len(config.taps), config.clusters)
            if result.centroids.shape[:2] != layers_k or result.posteriors.shape[:2] != layers_k:
                raise ValueError(f"dec.npz centroids {result.centroids.shape} and posteriors "
                                 f"{result.posteriors.shape} do not fit {layers_k[0]} taps x {layers_k[1]} clusters")
            if result.train_indices.ndim != 1 or not len(result.train_indices):
                raise ValueError("dec.npz holds no training indices")
        return result


# --- the method --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tap_fn(model: str, taps: tuple[str, ...], num_classes: int | None, compute_dtype: str | None):
    from xai_jax.models import make_forward
    forward = make_forward(model, taps, num_classes, compute_dtype)

    def fn(batch, variables):
        out = forward(batch["images"], variables)
        n = batch["images"].shape[0]
        return {"taps": {t: out[t].reshape(n, -1).astype(jnp.float16) for t in taps},
                "predictions": jnp.argmax(out["logits"], -1).astype(jnp.int32), "labels": batch["labels"]}

    return fn


@functools.lru_cache(maxsize=None)
def _embed_fn(model: str, taps: tuple[str, ...], num_classes: int | None, compute_dtype: str | None,
              hidden: tuple[int, ...], embedding: int, radius: float):
    from xai_jax.models import make_forward
    forward = make_forward(model, taps, num_classes, compute_dtype)

    def fn(batch, params):
        variables, layers = params
        out = forward(batch["images"], variables)
        n = batch["images"].shape[0]
        # float16 round trip: the same activations the encoders were trained on
        z = [_encode(hidden, embedding, radius, layers[t], out[t].reshape(n, -1).astype(jnp.float16)) for t in taps]
        return {"embeddings": jnp.stack(z, axis=1), "predictions": jnp.argmax(out["logits"], -1).astype(jnp.int32),
                "labels": batch["labels"]}

    return fn


@dataclasses.dataclass
class Activations:
    """The selected taps of a dataset, flattened, on the host (float16), with labels and model predictions."""

    taps: dict[str, np.ndarray]
    labels: np.ndarray
    predictions: np.ndarray
    indices: np.ndarray


class ActivationClusteringSurrogate:
    """The activation clustering surrogate of ``model`` (with ``variables``) under a :class:`DECConfig`.

    ``fit(source)`` streams the taps once (or takes :class:`Activations` from :meth:`activations`, to reuse
    them across fits), trains one DEC per layer and returns a :class:`DECResult`; ``embed`` and ``evaluate``
    run new images through the model and the result's encoders.
    """

    def __init__(self, model: str, variables: Any, config: DECConfig | None = None, *, num_classes: int | None = None,
                 batch_size: int = 128, compute_dtype: str | None = None, progress: bool | None = None):
        from xai_jax.evaluation import check_taps
        self.model, self.variables = model, variables
        self.config = config or DECConfig()
        self.config.validate()
        check_taps(model, self.config.taps, num_classes)
        self.num_classes, self.batch_size = num_classes, batch_size
        self.compute_dtype, self.progress = compute_dtype, progress

    def activations(self, source: Source) -> Activations:
        """One pass of the model over ``source``; taps written into preallocated float16 host arrays."""
        from xai_jax.models import tap_shapes
        n = len(source)
        if n == 0:
            raise XaiJaxError("the training set is empty")
        shapes = tap_shapes(self.model, self.num_classes)
        taps = {t: np.empty((n, int(np.prod(shapes[t]))), np.float16) for t in self.config.taps}
        labels, predictions = np.empty(n, np.int32), np.empty(n, np.int32)
        fn = _tap_fn(self.model, self.config.taps, self.num_classes, self.compute_dtype)
        start = 0
        for out in engine.map_batches(fn, source, self.variables, batch_size=self.batch_size, desc="activations",
                                      progress=self.progress):
            rows = len(out["labels"])
            for t in taps:
                taps[t][start:start + rows] = out["taps"][t]
            labels[start:start + rows], predictions[start:start + rows] = out["labels"], out["predictions"]
            start += rows
        return Activations(taps, labels, predictions, np.arange(n))

    def fit(self, source: Source | None = None, *, activations: Activations | None = None,
            class_names: Sequence[str] | None = None, meta: dict | None = None) -> DECResult:
        """Trains the surrogate on ``source`` (or on precomputed ``activations``)."""
        if activations is None:
            if source is None:
                raise XaiJaxError("fit needs a source or activations")
            activations = self.activations(source)
        c = self.config
        n = len(activations.labels)
        c.validate(n)
        missing = [t for t in c.taps if t not in activations.taps]
        if missing:
            raise XaiJaxError(f"activations lack the taps {', '.join(missing)}; "
                              f"they have {', '.join(activations.taps)}")
        names = list(class_names or (source.class_names if source is not None else []))
        num_classes = len(names) or int(max(activations.labels.max(), activations.predictions.max()) + 1)
        names = names or [str(i) for i in range(num_classes)]
        key = jax.random.key(c.seed)
        layers, embeddings, centroids, history = {}, [], [], {}
        for j, tap in enumerate(c.taps):
            start = time.perf_counter()
            layer, z, mu, layer_history = self._fit_layer(activations.taps[tap], jax.random.fold_in(key, j), tap)
            layer_history["seconds"] = round(time.perf_counter() - start, 2)
            layers[tap], history[tap] = layer, layer_history
            embeddings.append(z)
            centroids.append(mu)
        embeddings, centroids = np.stack(embeddings), np.stack(centroids)
        targets = activations.labels if c.posterior == "labels" else activations.predictions
        posteriors = cluster_posteriors(embeddings, centroids, targets, num_classes, c.alpha)
        result = DECResult(model=self.model, class_names=names, config=c, layers=layers, centroids=centroids,
                           posteriors=posteriors, train_embeddings=embeddings.astype(np.float32),
                           train_labels=activations.labels, train_predictions=activations.predictions,
                           train_indices=activations.indices, history=history, meta=dict(meta or {}))
        result.metrics = {"train": result.scores(embeddings, activations.labels, activations.predictions)}
        return result

    def _fit_layer(self, x: np.ndarray, key: jax.Array, tap: str):
        """Pretrain the autoencoder, k-means, then DEC for one layer.

        Returns ``(layer, embeddings, centroids, history)``."""
        c = self.config
        n, dim = x.shape
        hidden, e = tuple(c.hidden), c.embedding_size
        init_key, fit_key, kmeans_key, dec_key = jax.random.split(key, 4)
        # Normalisation statistics in float64 blocks (the float16 array is never converted whole).
        mean = np.zeros(dim, np.float64)
        for s in range(0, n, 8192):
            mean += x[s:s + 8192].astype(np.float64).sum(0)
        mean /= n
        var = 0.0
        for s in range(0, n, 8192):
            var += float(np.square(x[s:s + 8192].astype(np.float64) - mean).sum())
        scale = max(np.sqrt(var / (n * dim)), 1e-6)
        norm = {"mean": jnp.asarray(mean, jnp.float32), "scale": jnp.asarray(scale, jnp.float32)}

        enc_key, dec_init_key = jax.random.split(init_key)
        params = {"encoder": _encoder(hidden, e).init(enc_key, jnp.zeros((1, dim)))["params"],
                  "decoder": _decoder(hidden, dim).init(dec_init_key, jnp.zeros((1, e)))["params"]}
        optimizer = optax.adam(c.pretrain_learning_rate)
        state = train.init_state(params, optimizer, {"norm": norm})
        pretrain_losses = []
        if c.pretrain_epochs:
            state, hist = train.fit(_pretrain_loss(hidden, e, dim), optimizer, state, {"x": x},
                                    batch_size=c.batch_size, epochs=c.pretrain_epochs, key=fit_key,
                                    progress=self.progress, desc=f"autoencoder {tap}", device_bytes=4 << 30)
            pretrain_losses = [h["loss"] for h in hist.train]
        layer = {"encoder": state.params["encoder"], "norm": norm}

        z = _embed_rows(hidden, e, float(c.radius), layer, x)
        mu, _, _ = kmeans(jnp.asarray(z), c.clusters, kmeans_key, n_init=c.kmeans_inits)

        layer, z, centroids, dec_history = dec_refine(c, layer, x, z, mu, dec_key)
        return layer, z, centroids, {"pretrain_loss": pretrain_losses, **dec_history, "input_dim": dim}

    def embed(self, result: DECResult, source: Source) -> dict:
        """Embeddings ``[L, n, e]``, model predictions and labels of ``source`` under ``result``'s encoders
        (one pass; the taps are never stored)."""
        c = result.config
        if result.model != self.model:
            raise XaiJaxError(f"the surrogate was fitted on {result.model}, not {self.model}")
        fn = _embed_fn(self.model, result.taps, self.num_classes, self.compute_dtype, tuple(c.hidden),
                       c.embedding_size, float(c.radius))
        out = engine.collect(engine.map_batches(fn, source, (self.variables, result.layers),
                                                batch_size=self.batch_size, desc="embed", progress=self.progress))
        return {"embeddings": np.moveaxis(out["embeddings"], 1, 0), "predictions": out["predictions"],
                "labels": out["labels"]}

    def evaluate(self, result: DECResult, source: Source, layer_weights=None) -> dict:
        """Baseline accuracy, surrogate accuracy and fidelity (per layer and combined) on ``source``."""
        out = self.embed(result, source)
        return result.scores(out["embeddings"], out["labels"], out["predictions"], layer_weights)


def dec_refine(config: DECConfig, layer: dict, x: np.ndarray, z: np.ndarray, centroids, key: jax.Array):
    """DEC's clustering phase (DEC section 3.1) for one layer: minibatch SGD on ``KL(P || Q)`` over the encoder
    and the centroids, the target ``P`` recomputed over the whole training set every ``T = update_interval``
    steps, until fewer than ``tolerance`` of the hard assignments change between two refreshes or
    ``max_dec_steps`` (rounded up to a multiple of ``T``) ran.

    Args:
      config: the surrogate's config (alpha, radius, hidden, embedding size, T, tolerance, steps, batch size).
      layer: ``{"encoder": params, "norm": {"mean", "scale"}}`` (the pretrained encoder).
      x: ``[n, d]`` the layer's training activations (host, any float dtype).
      z: ``[n, e]`` their current embeddings; centroids: ``[k, e]`` from k-means.
      key: ``jax.random`` key of the minibatch draws.

    Returns:
      ``(layer, z, centroids, history)`` with the refined encoder, the final embeddings and centroids, and
      ``dec_steps``, ``dec_kl`` (mean loss per T steps) and ``changed`` (fraction per refresh).
    """
    c = config
    n = len(x)
    hidden, e = tuple(c.hidden), c.embedding_size
    norm = layer["norm"]
    dec_optimizer, run = _dec_steps(hidden, e, float(c.radius), float(c.alpha), float(c.dec_learning_rate))
    params = {"encoder": jax.tree.map(jnp.array, layer["encoder"]), "centroids": jnp.array(centroids)}
    opt_state = dec_optimizer.init(params)
    x_device = jnp.asarray(x)
    batch = min(c.batch_size, n)
    q = jnp.exp(log_soft_assignment(z, params["centroids"], c.alpha))
    assigned = np.asarray(jnp.argmax(q, -1))
    changed, kl, steps = [], [], 0
    while steps < c.max_dec_steps:
        p = target_distribution(q, cluster_frequencies(q))
        # Always T steps per call (one compiled program): max_dec_steps is rounded up to a multiple of T.
        order = jax.random.randint(jax.random.fold_in(key, steps), (c.update_interval, batch), 0, n)
        params, opt_state, losses = run(params, opt_state, norm, x_device, p, order)
        steps += c.update_interval
        kl.append(float(jnp.mean(losses)))
        layer = {"encoder": params["encoder"], "norm": norm}
        z = _embed_rows(hidden, e, float(c.radius), layer, x)
        q = jnp.exp(log_soft_assignment(z, params["centroids"], c.alpha))
        new = np.asarray(jnp.argmax(q, -1))
        changed.append(float(np.mean(new != assigned)))
        assigned = new
        if changed[-1] < c.tolerance:
            break
    return layer, z, np.asarray(params["centroids"]), {"dec_steps": steps, "dec_kl": kl, "changed": changed}


def cluster_posteriors(embeddings: np.ndarray, centroids: np.ndarray, targets: np.ndarray, num_classes: int,
                       alpha: float) -> np.ndarray:
    """``[L, k, C]`` ``p(y | z_k) = sum_i q_ik [y_i = y] / sum_i q_ik`` (paper eq. 3's empirical posteriors).

    A cluster with no mass (``sum_i q_ik = 0``) gets the overall class frequencies.
    """
    one_hot = np.eye(num_classes)[targets]
    prior = one_hot.mean(0)
    out = []
    for z, mu in zip(embeddings, centroids):
        q = np.asarray(jnp.exp(log_soft_assignment(z, mu, alpha)), np.float64)
        mass = q.sum(0)[:, None]
        counts = q.T @ one_hot
        out.append(np.where(mass > 0, counts / np.where(mass > 0, mass, 1), prior))
    return np.stack(out)
