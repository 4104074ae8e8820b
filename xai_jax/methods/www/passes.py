"""WWW's traced functions: the per-batch steps of the probe and class-contribution passes, and the batched
contribution, explanation and trust functions.

Each builder is cached on its static arguments (model, layer, options, shapes, and ``compute_dtype``: e.g.
``"bfloat16"`` runs the backbone in bf16, see :func:`xai_jax.models.make_forward`), so that a second pass over data
of the same shapes reuses the programs of the first: nothing here closes over data or over a value that
changes between calls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xai_jax.kernels import www as K
from xai_jax.kernels.attribution import grad_cam


@functools.lru_cache(maxsize=None)
def probe_step(model: str, tap: str, num_classes: int | None, compute_dtype: str | None = None):
    """``step(state, batch, variables)`` of the probe pass: each neuron's top-n images at ``tap``."""
    from xai_jax.models import make_forward
    forward = make_forward(model, (tap,), num_classes, compute_dtype)

    def step(state, batch, variables):
        return K.topn_update(state, forward(batch["images"], variables)[tap], batch["index"], batch["mask"])

    return step


def contributions(forward, images, variables, tap, classes_of_logits, mode, tap_shape):
    """Taylor-Shapley contributions at ``tap`` for the classes ``classes_of_logits(logits)``: one ``jax.vjp``.

    Args:
      forward: ``make_forward(model, taps)`` with ``tap`` among its taps (it takes an offset per tap).
      images, variables: the batch and the model's variables.
      tap: the explained layer; ``tap_shape`` its per-image shape.
      classes_of_logits: ``logits -> [B]`` the class whose logit is differentiated.
      mode: ``"signed"`` or ``"abs"``.

    Returns:
      ``(w [B, U], logits, classes, outputs)`` with every tap ``forward`` returned in ``outputs``.
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
def class_step(model: str, tap: str, num_classes: int | None, mode: str, class_by: str, tap_shape: tuple,
               compute_dtype: str | None = None):
    """``step(state, batch, variables)`` of the class-contribution pass: per-class sums of ``w``."""
    from xai_jax.models import make_forward
    forward = make_forward(model, (tap,), num_classes, compute_dtype)

    def step(state, batch, variables):
        pick = (lambda logits: batch["labels"]) if class_by == "label" else (lambda logits: jnp.argmax(logits, -1))
        w, _, classes, _ = contributions(forward, batch["images"], variables, tap, pick, mode, tap_shape)
        return K.class_sums_update(state, w, classes, batch["mask"])

    return step


@functools.lru_cache(maxsize=None)
def sample_contributions_fn(model: str, tap: str, num_classes: int | None, mode: str, tap_shape: tuple,
                            given_classes: bool, compute_dtype: str | None = None):
    """``fn(images, variables, classes) -> w [B, U]``, jitted once: the classes are an argument, not a constant."""
    from xai_jax.models import make_forward
    forward = make_forward(model, (tap,), num_classes, compute_dtype)

    def fn(images, variables, classes):
        pick = (lambda logits: classes) if given_classes else (lambda logits: jnp.argmax(logits, -1))
        return contributions(forward, images, variables, tap, pick, mode, tap_shape)[0]

    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def explain_fn(model: str, tap: str, map_tap: str, num_classes: int | None, mode: str, k: int,
               percentile: float, tap_shape: tuple, full: bool, compute_dtype: str | None = None,
               maps_kind: str = "tap", head_tap: str | None = None):
    """``explain_batch(batch, (variables, class_contributions)) -> dict`` for :func:`xai_jax.engine.map_batches`.

    Always ``predicted``, ``trust``, ``msp`` and ``labels``; with ``full`` also the neurons, contributions,
    concept maps and heatmaps of an explanation. ``maps_kind`` and ``head_tap``: see :func:`neuron_maps`.
    """
    from xai_jax.models import make_forward
    taps = (tap,) if map_tap == tap else (tap, map_tap)
    forward = make_forward(model, taps, num_classes, compute_dtype)

    def explain_batch(batch, params):
        variables, class_contributions = params
        images = batch["images"]
        size = tuple(images.shape[1:3])
        w, logits, predicted, outputs = contributions(forward, images, variables, tap,
                                                      lambda lg: jnp.argmax(lg, -1), mode, tap_shape)
        sample_w, sample_u = K.top_k_neurons(w, k)
        class_row = class_contributions[predicted]                                    # [B, U]
        class_w, class_u = K.top_k_neurons(class_row, k)
        # both explanations' maps in one call (one backward pass for Grad-CAM maps of final-layer neurons)
        maps = neuron_maps(forward, images, variables, outputs, map_tap, maps_kind,
                           jnp.concatenate([sample_u, class_u], axis=1), head_tap)
        sample_maps, class_maps = maps[:, :k], maps[:, k:]
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


def head_weights(forward, images, variables, head_tap: str, units: int) -> jax.Array:
    """``[K, C]`` the weights of an affine head, ``W[k, c] = d logit_c / d head_tap_k`` (one image's Jacobian).

    For a global-pooled linear head (``logits = pool @ W + b``) this is ``W`` exactly, read through the model
    itself, so no model has to say where its head's parameters live.

    Args:
      forward: ``make_forward(model, ...)`` (offsets at ``head_tap`` are accepted by any of them).
      images: a batch; only its first image is run.
      head_tap: the ``[K]`` layer the head reads (e.g. ``pool``).
      units: ``K``.
    """
    zero = jnp.zeros((1, units), jnp.float32)
    jacobian = jax.jacrev(lambda offset: forward(images[:1], variables, {head_tap: offset})["logits"][0])(zero)
    return jacobian[:, 0, :].T


def neuron_maps(forward, images, variables, outputs, map_tap: str, maps_kind: str, neurons, head_tap=None):
    """``[B, k, h, w]`` the activation maps of each image's chosen neurons ``[B, k]``.

    Args:
      forward: ``make_forward(model, taps)`` with ``map_tap`` among the taps (``outputs`` is its output).
      images, variables: the batch and the model's variables.
      outputs: ``forward(images, variables)``.
      map_tap: the ``[h, w, K]`` layer the maps come from.
      maps_kind: ``"tap"``: the neurons are ``map_tap``'s channels, their maps its activations;
        ``"cam"``: the neurons are logits of a global-pooled linear head reading ``head_tap``, their maps the class
        activation maps ``A @ W[:, c]`` (:func:`xai_jax.kernels.www.class_activation_maps`; their spatial mean plus
        the bias is the logit); ``"gradcam"``: the neurons are logits of any head, their maps Grad-CAM at
        ``map_tap`` (``ReLU(sum_k mean_yx(d logit_c / d A_k) A_k)``, one backward pass per chosen neuron rank,
        vmapped).
      neurons: ``[B, k]`` int.
      head_tap: the layer the head reads (``"cam"`` only).
    """
    features = outputs[map_tap]
    if maps_kind == "tap":
        return K.gather_maps(features, neurons)
    if maps_kind == "cam":
        return K.class_activation_maps(features, head_weights(forward, images, variables, head_tap,
                                                              features.shape[-1]), neurons)
    if maps_kind != "gradcam":
        raise ValueError(f"maps_kind must be 'tap', 'cam' or 'gradcam'; got {maps_kind!r}")
    logits, pullback = jax.vjp(lambda offset: forward(images, variables, {map_tap: offset})["logits"],
                               jnp.zeros_like(features))

    def one_rank(classes):
        (gradients,) = pullback(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))
        return grad_cam(features, gradients)

    return jax.vmap(one_rank, in_axes=1, out_axes=1)(neurons)


@functools.lru_cache(maxsize=None)
def neuron_maps_fn(model: str, map_tap: str, num_classes: int | None, maps_kind: str = "tap",
                   head_tap: str | None = None, compute_dtype: str | None = None):
    """``fn(images, variables, neurons [B, k]) -> [B, k, h, w]`` :func:`neuron_maps`, jitted once."""
    from xai_jax.models import make_forward
    forward = make_forward(model, (map_tap,), num_classes, compute_dtype)

    def fn(images, variables, neurons):
        return neuron_maps(forward, images, variables, forward(images, variables), map_tap, maps_kind, neurons,
                           head_tap)

    return jax.jit(fn)
