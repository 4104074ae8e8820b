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
               percentile: float, tap_shape: tuple, full: bool, compute_dtype: str | None = None):
    """``explain_batch(batch, (variables, class_contributions)) -> dict`` for :func:`xai_jax.engine.map_batches`.

    Always ``predicted``, ``trust``, ``msp`` and ``labels``; with ``full`` also the neurons, contributions,
    concept maps and heatmaps of an explanation.
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
def maps_fn(model: str, map_tap: str, num_classes: int | None, compute_dtype: str | None = None):
    """``fn(images, variables) -> [B, h, w, U]`` the activation maps at ``map_tap``, jitted once."""
    from xai_jax.models import make_forward
    forward = make_forward(model, (map_tap,), num_classes, compute_dtype)
    return jax.jit(lambda images, variables: forward(images, variables)[map_tap])
