"""ClaDec's training: the classifiers (the one explained, the evaluation ones), ClaDec's decoder and RefAE.

Losses and optimisers are built once per static argument set (``lru_cache``), and the frozen classifier's
variables travel in the training state's ``model_state`` rather than in a closure, so a second fit of the
same configuration on other data of the same shapes reuses the compiled steps of :func:`xai_jax.train.fit`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax import models, rowstore, train
from xai_jax.kernels import cladec as K
from xai_jax.methods.cladec.passes import classifier_accuracy, select_neurons
from xai_jax.models.cladec import Decoder, refae_apply


@functools.lru_cache(maxsize=None)
def adam(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """The decoders' optimiser: Adam with the weight decay added to the gradient, as PyTorch's Adam."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def sgd_schedule(epochs: int, steps_per_epoch: int, lr: float = 0.1) -> optax.Schedule:
    """The paper's classifier schedule: lr 0.1, x0.1 twice, at the authors' period ``E//3 + E//10 + 2`` epochs
    (epochs 29 and 58 of 64)."""
    period = epochs // 3 + epochs // 10 + 2
    bounds = {period * k * steps_per_epoch: 0.1 for k in (1, 2) if period * k < epochs}
    return optax.piecewise_constant_schedule(lr, bounds)


@functools.lru_cache(maxsize=None)
def _classifier_optimizer(epochs: int, steps: int, lr: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(sgd_schedule(epochs, steps, lr), momentum=0.9))


def train_classifier(model: str, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int = 128,
                     key: jax.Array, test: tuple[np.ndarray, np.ndarray] | None = None, lr: float = 0.1,
                     progress: bool | None = None, desc: str = "classifier") -> tuple[dict, dict]:
    """Trains a ClaDec classifier (the one to explain, or an evaluation classifier) with the paper's recipe:
    SGD momentum 0.9, weight decay 1e-4, lr 0.1 decayed x0.1 twice; then the batch-norm statistics are
    recomputed for the final weights (:func:`xai_jax.train.recalibrate_batch_stats`), without which a ResNet-10
    trained for a few epochs scores anywhere between 0.65 and 0.94 on MNIST depending on the seed alone.

    Args:
      model: registry name of the architecture.
      images: ``[N, H, W, C]`` uint8 or [0, 1] floats (reconstructions), resized on device to 32x32; in memory or
        :class:`xai_jax.rowstore.DiskRows` (read a minibatch at a time).
      labels: ``[N]`` ints.
      epochs, batch_size, key, lr: the schedule.
      test: ``(images, labels)`` to report the test accuracy of.

    Returns:
      ``(variables, {"train_accuracy", "test_accuracy", "history"})``.
    """
    spec = models.get(model)
    init = models.init_variables(spec, jax.random.fold_in(key, 0))
    steps = max(1, len(images) // min(batch_size, len(images)))
    optimizer = _classifier_optimizer(epochs, steps, lr)
    state = train.init_state(init["params"], optimizer, {k: v for k, v in init.items() if k != "params"})
    loss_fn = train.classifier_loss(model)
    data = {"images": rowstore.as_rows(images), "labels": np.asarray(labels, np.int32)}
    state, history = train.fit(loss_fn, optimizer, state, data, batch_size=batch_size, epochs=epochs,
                               key=jax.random.fold_in(key, 1), progress=progress, desc=desc)
    state = state.replace(model_state=train.recalibrate_batch_stats(loss_fn, state.params, state.model_state, data,
                                                                    batch_size=batch_size))
    variables = train.variables_of(state)
    info = {"train_accuracy": history.train[-1]["accuracy"], "history": history.train}
    if test is not None:
        info["test_accuracy"] = float(classifier_accuracy(model, variables, *test))
    return variables, info


@functools.lru_cache(maxsize=None)
def decoder_loss(model: str, decoder: Decoder, alpha: float, reduction: str, neurons=None) -> train.LossFn:
    """Eq. (1) for ClaDec's decoder; the frozen classifier (inference mode) is the ``model_state``, which
    comes back unchanged: ``loss_fn(params, classifier_variables, batch, key)`` for :func:`xai_jax.train.fit`.
    ``batch["code"]`` is the whole layer; the channel range ``neurons`` is taken on device, so that stored
    codes are read as they are, a minibatch at a time."""
    forward = models.make_forward(model)

    def loss_fn(params, classifier, batch, key):
        xhat = decoder.apply({"params": params}, select_neurons(batch["code"], neurons))
        logits = forward(xhat, classifier)["logits"] if alpha > 0 else None
        loss, metrics = K.cladec_loss(batch["x"], xhat, logits, batch["labels"], alpha, reduction)
        return loss, (classifier, metrics)

    return loss_fn


def fit_decoder(config, model: str, variables, decoder: Decoder, init: dict, data: dict, key: jax.Array,
                progress: bool | None = None) -> tuple[dict, list[dict]]:
    """Trains ClaDec's decoder on stored codes; only the decoder learns.

    Args:
      config: the :class:`ClaDecConfig` (alpha, reduction, schedule).
      model, variables: the frozen classifier.
      decoder: the decoder module (apply only: its initialisation is ``init``).
      init: the decoder's initial variables.
      data: ``{"code" (the whole layer), "x", "labels"}``, in memory or :class:`xai_jax.rowstore.DiskRows`.
      key: shuffling.

    Returns:
      ``(decoder variables, per-epoch training metrics)``.
    """
    loss_fn = decoder_loss(model, decoder, float(config.alpha), config.reduction, config.neurons)
    optimizer = adam(config.learning_rate, config.weight_decay)
    state, hist = train.fit(loss_fn, optimizer, train.init_state(init["params"], optimizer, variables), data,
                            batch_size=config.batch_size, epochs=config.epochs, key=key, progress=progress,
                            desc="ClaDec decoder")
    return {"params": state.params}, hist.train


@functools.lru_cache(maxsize=None)
def refae_loss(model: str, tap: str, neurons, decoder: Decoder, reduction: str) -> train.LossFn:
    """RefAE's reconstruction loss, encoder (batch norm in training mode) and decoder trained jointly:
    ``params = {"encoder", "decoder"}``, ``model_state`` the encoder's batch statistics."""
    spec = models.get(model)
    encoder = spec.module()
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)

    def loss_fn(params, model_state, batch, key):
        variables = {"encoder": {"params": params["encoder"], **model_state}, "decoder": {"params": params["decoder"]}}
        xhat, stats = refae_apply(encoder, decoder, tap, variables, (batch["x"] - mean) / std, train=True,
                                  neurons=neurons, rngs={"dropout": key})
        rec = jnp.mean(K.reconstruction_loss(batch["x"], xhat, reduction))
        new_state = {"batch_stats": stats} if stats is not None else model_state
        return rec, (new_state, {"loss": rec, "reconstruction": rec})

    return loss_fn


def fit_refae(config, model: str, tap: str, decoder: Decoder, decoder_init: Decoder, x_train: np.ndarray,
              code_like: np.ndarray, key: jax.Array, progress: bool | None = None) -> tuple[dict, list[dict]]:
    """Trains RefAE: the classifier's architecture freshly initialised, up to ``tap``, plus ClaDec's decoder.

    Args:
      config: the :class:`ClaDecConfig`.
      model, tap: the encoder's architecture and where it hands over to the decoder.
      decoder: the decoder module to apply; ``decoder_init`` the one to initialise (its output starts at the
        training mean).
      x_train: ``[N, H, W, C]`` targets in [0, 1] (in memory or :class:`xai_jax.rowstore.DiskRows`).
      code_like: one code (of the neuron range), for the decoder's initialisation.
      key: initialisation (``fold_in`` 3, 4) and shuffling (5).

    Returns:
      ``({"encoder": ..., "decoder": ...} variables, per-epoch training metrics)``.
    """
    spec = models.get(model)
    enc_init = models.init_variables(spec, jax.random.fold_in(key, 3))
    dec_init = decoder_init.init(jax.random.fold_in(key, 4), jnp.asarray(code_like[:1]))
    loss_fn = refae_loss(model, tap, config.neurons, decoder, config.reduction)
    params = {"encoder": enc_init["params"], "decoder": dec_init["params"]}
    model_state = {k: v for k, v in enc_init.items() if k != "params"}
    optimizer = adam(config.learning_rate, config.weight_decay)
    state, hist = train.fit(loss_fn, optimizer, train.init_state(params, optimizer, model_state),
                            {"x": x_train}, batch_size=config.batch_size, epochs=config.epochs,
                            key=jax.random.fold_in(key, 5), progress=progress, desc="RefAE")
    # the encoder's batch norm, as for the classifiers
    state = state.replace(model_state=train.recalibrate_batch_stats(
        loss_fn, state.params, state.model_state, {"x": x_train}, batch_size=config.batch_size))
    variables = {"encoder": {"params": state.params["encoder"], **state.model_state},
                 "decoder": {"params": state.params["decoder"]}}
    return variables, hist.train
