"""The activation clustering surrogate's passes: the taps of a dataset, one DEC per layer, new data embedded.

The paper (``../shared/papers/dec_activation_clustering.txt``, Liu & Arik), as specified in DESIGN.md
("DEC activation clustering surrogate"):

1. One streamed pass of the backbone over the training set keeps the selected taps (flattened, stored on the
   host as ``float16`` to halve the memory, in memory or in a folder on disk; they are only ever read back as
   float32) next to the labels, the model's predictions (section 3.1) and the penultimate features of
   Figure 2's baseline, which the result keeps (on disk when the taps were).
2. Per selected layer ``j``: an autoencoder ``d -> 500 -> 500 -> 2000 -> e`` (ReLU, linear embedding, DEC's
   shape), pretrained on reconstruction; the embeddings are projected onto the sphere of radius 8 (footnote 2);
   k-means with 20 restarts starts ``k`` centroids; DEC then minimises ``KL(P || Q)`` over the encoder and
   the centroids (:func:`xai_jax.methods.dec.refine.dec_refine`).
3. The layer's surrogate is eq. 3 with the clusters' empirical posteriors
   (:func:`xai_jax.methods.dec.refine.cluster_posteriors`), the result a
   :class:`xai_jax.methods.dec.result.DECResult`.

Every pass over data is blocked and jitted (no loop over samples or clusters); the layers are a short Python
loop because their input sizes differ.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax import engine, train
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels.clustering import kmeans
from xai_jax.methods.dec.autoencoder import (decoder, embed_rows, encode, encoder, normalisation,
                                             pretrain_loss)
from xai_jax.methods.dec.config import DECConfig
from xai_jax.methods.dec.refine import DEVICE_BYTES, cluster_posteriors, dec_refine
from xai_jax.methods.dec.result import DECResult
from xai_jax.rowstore import DiskRows


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # one optimizer per step size: train.fit jits once per (loss, optimizer), and a new optax.adam each fit
    # would compile the pretraining step again for every layer and every fit
    return optax.adam(learning_rate)


def feature_tap(model: str, num_classes: int | None = None) -> str:
    """The model's penultimate features: the tap that feeds the classifier (the last one before ``logits``), e.g.
    ``pool`` of a ResNet, ``fc`` of the small CNN, ``fc7`` of a VGG.

    Figure 2's baseline finds similar training samples by Euclidean distance of these features.
    """
    from xai_jax.models import tap_shapes
    names = list(tap_shapes(model, num_classes))
    return names[names.index("logits") - 1]


def _with_feature_tap(model: str, taps: tuple[str, ...], num_classes: int | None) -> tuple[str, tuple[str, ...]]:
    feature = feature_tap(model, num_classes)
    return feature, taps + ((feature,) if feature not in taps else ())


@functools.lru_cache(maxsize=None)
def _tap_fn(model: str, taps: tuple[str, ...], num_classes: int | None, compute_dtype: str | None):
    from xai_jax.models import make_forward
    feature, forward_taps = _with_feature_tap(model, taps, num_classes)
    forward = make_forward(model, forward_taps, num_classes, compute_dtype)

    def fn(batch, variables):
        out = forward(batch["images"], variables)
        n = batch["images"].shape[0]
        return {"taps": {t: out[t].reshape(n, -1).astype(jnp.float16) for t in taps},
                "features": out[feature].reshape(n, -1).astype(jnp.float16),
                "predictions": jnp.argmax(out["logits"], -1).astype(jnp.int32), "labels": batch["labels"]}

    return fn


@functools.lru_cache(maxsize=None)
def _embed_fn(model: str, taps: tuple[str, ...], num_classes: int | None, compute_dtype: str | None,
              hidden: tuple[int, ...], embedding: int, radius: float, with_features: bool):
    from xai_jax.models import make_forward
    feature, forward_taps = _with_feature_tap(model, taps, num_classes)
    forward = make_forward(model, forward_taps if with_features else taps, num_classes, compute_dtype)

    def fn(batch, params):
        variables, layers = params
        out = forward(batch["images"], variables)
        n = batch["images"].shape[0]
        # float16 round trip: the same activations the encoders were trained on (and the bank of features holds)
        z = [encode(hidden, embedding, radius, layers[t], out[t].reshape(n, -1).astype(jnp.float16)) for t in taps]
        rows = {"embeddings": jnp.stack(z, axis=1), "predictions": jnp.argmax(out["logits"], -1).astype(jnp.int32),
                "labels": batch["labels"]}
        if with_features:
            rows["features"] = out[feature].reshape(n, -1).astype(jnp.float16).astype(jnp.float32)
        return rows

    return fn


@dataclasses.dataclass
class Activations:
    """The selected taps of a dataset, flattened, on the host (float16), with labels and model predictions, and
    the penultimate features (:func:`feature_tap`, float16) for the Euclidean baseline of similar samples."""

    taps: dict[str, np.ndarray | DiskRows]
    labels: np.ndarray
    predictions: np.ndarray
    indices: np.ndarray
    features: np.ndarray | DiskRows | None = None


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

    def activations(self, source: Source, directory: str | None = None) -> Activations:
        """One pass of the model over ``source``; taps stored as float16 rows.

        Args:
          source: the images (labels included).
          directory: an existing folder to keep the taps in, as ``.npy`` files read back a block at a time
            (:class:`xai_jax.rowstore.DiskRows`: host memory stays that of a few batches whatever the dataset's
            size; the caller removes the folder when done with them and with a result fitted from them), or None
            to hold them in memory.

        Returns:
          the flattened taps ``{tap: [n, d]}`` with labels, the model's predictions, positions ``0..n-1`` and the
          penultimate features ``[n, f]`` (the taps and the features as :class:`DiskRows` with a ``directory``).
        """
        n = len(source)
        if n == 0:
            raise XaiJaxError("the training set is empty")
        fn = _tap_fn(self.model, self.config.taps, self.num_classes, self.compute_dtype)
        out = engine.collect_rows(fn, source, self.variables, batch_size=self.batch_size, desc="activations",
                                  progress=self.progress, directory=directory)
        small = {k: np.asarray(out[k]) for k in ("labels", "predictions")}
        # the features stay where the pass put them: on disk with a directory (4 KiB an image for ResNet-50's pool)
        return Activations(out["taps"], small["labels"], small["predictions"], np.arange(n), out["features"])

    def fit(self, source: Source | None = None, *, activations: Activations | None = None,
            class_names: Sequence[str] | None = None, meta: dict | None = None,
            directory: str | None = None) -> DECResult:
        """Trains the surrogate: one DEC per tap, then the clusters' posteriors and the training scores.

        Args:
          source: the training images (one pass of :meth:`activations`), or ``None`` with ``activations``.
          activations: precomputed taps, labels and predictions (reused across fits).
          class_names: one per class (default: the source's, else ``"0"``, ``"1"``, ...).
          meta: provenance stored in the result.
          directory: where :meth:`activations` keeps the taps and the features (None: in memory); the result's
            ``train_features`` read from there, so save the result before the folder is removed.

        Returns:
          a new :class:`DECResult` with ``metrics["train"]`` and each layer's ``history``.
        """
        if activations is None:
            if source is None:
                raise XaiJaxError("fit needs a source or activations")
            activations = self.activations(source, directory)
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
                           train_indices=activations.indices, history=history, meta=dict(meta or {}),
                           train_features=activations.features,
                           feature_tap=None if activations.features is None else feature_tap(self.model,
                                                                                             self.num_classes))
        train_scores = result.scores(embeddings, activations.labels, activations.predictions)
        return dataclasses.replace(result, metrics={"train": train_scores})

    def _fit_layer(self, x: np.ndarray, key: jax.Array, tap: str):
        """Pretrain the autoencoder, k-means, then DEC for one layer.

        Returns ``(layer, embeddings, centroids, history)``."""
        c = self.config
        n, dim = x.shape
        hidden, e = tuple(c.hidden), c.embedding_size
        init_key, fit_key, kmeans_key, dec_key = jax.random.split(key, 4)
        norm = normalisation(x)

        enc_key, dec_init_key = jax.random.split(init_key)
        params = {"encoder": encoder(hidden, e).init(enc_key, jnp.zeros((1, dim)))["params"],
                  "decoder": decoder(hidden, dim).init(dec_init_key, jnp.zeros((1, e)))["params"]}
        optimizer = _adam(c.pretrain_learning_rate)
        state = train.init_state(params, optimizer, {"norm": norm})
        pretrain_losses = []
        if c.pretrain_epochs:
            state, hist = train.fit(pretrain_loss(hidden, e, dim), optimizer, state, {"x": x},
                                    batch_size=c.batch_size, epochs=c.pretrain_epochs, key=fit_key,
                                    progress=self.progress, desc=f"autoencoder {tap}", device_bytes=DEVICE_BYTES)
            pretrain_losses = [h["loss"] for h in hist.train]
        layer = {"encoder": state.params["encoder"], "norm": norm}

        z = embed_rows(hidden, e, c.radius, layer, x)
        mu, _, _ = kmeans(jnp.asarray(z), c.clusters, kmeans_key, n_init=c.kmeans_inits)

        layer, z, centroids, dec_history = dec_refine(c, layer, x, z, mu, dec_key)
        return layer, z, centroids, {"pretrain_loss": pretrain_losses, **dec_history, "input_dim": dim}

    def embed(self, result: DECResult, source: Source, *, features: bool = True) -> dict:
        """Embeddings ``[L, n, e]``, model predictions, labels and (with ``features``) the penultimate
        ``features`` ``[n, f]`` of ``source`` under ``result``'s encoders (one pass; the taps are never stored)."""
        c = result.config
        if result.model != self.model:
            raise XaiJaxError(f"the surrogate was fitted on {result.model}, not {self.model}")
        fn = _embed_fn(self.model, result.taps, self.num_classes, self.compute_dtype, tuple(c.hidden),
                       c.embedding_size, float(c.radius), bool(features))
        out = engine.collect_rows(fn, source, (self.variables, result.layers), batch_size=self.batch_size,
                                  desc="embed", progress=self.progress)
        return {**out, "embeddings": np.moveaxis(out["embeddings"], 1, 0)}

    def evaluate(self, result: DECResult, source: Source, layer_weights=None) -> dict:
        """Baseline accuracy, surrogate accuracy and fidelity (per layer and combined) on ``source``."""
        out = self.embed(result, source, features=False)
        return result.scores(out["embeddings"], out["labels"], out["predictions"], layer_weights)
