"""Heatmaps of x-features through backbone and explainer: Grad-CAM at a convolutional tap (any backbone) or
contrastive marginal winning probability (c-MWP, sequential backbones), and the heatmap orthogonality pass.

Every jitted function is built once per (model, taps, variant, ...) and cached, so explaining new images of
the same shapes, or another class, compiles nothing new.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.kernels import attribution, xnn_metrics
from xai_jax.methods.xnn.config import XNNConfig
from xai_jax.methods.xnn.result import Explanation, XNNResult
from xai_jax.models.xnn_explainer import stacked_x_features, x_features

#: the heatmap methods of :func:`explain`
HEATMAP_METHODS = ("gradcam", "cmwp")


def default_heatmap_tap(model: str, tap: str, num_classes: int | None = None) -> str:
    """``tap`` if it is convolutional, else the last convolutional tap before it (forward order)."""
    from xai_jax import models
    shapes = models.tap_shapes(model, num_classes)
    if tap not in shapes:
        raise XaiJaxError(f"{model} has no tap {tap!r}; valid taps: {', '.join(shapes)}")
    names = list(shapes)
    for name in reversed(names[: names.index(tap) + 1]):
        if len(shapes[name]) == 3:
            return name
    raise XaiJaxError(f"{model} has no convolutional tap at or before {tap!r} for heatmaps")


def heatmap_tap_of(result: XNNResult, model: str, num_classes: int | None = None) -> str:
    """The tap where ``result``'s Grad-CAM heatmaps are drawn: the fitted one, the configured one, or the
    default for ``model``."""
    return (result.meta.get("heatmap_tap") or result.config.heatmap_tap
            or default_heatmap_tap(model, result.config.tap, num_classes))


@functools.lru_cache(maxsize=None)
def gradcam_fn(model: str, tap: str, heatmap_tap: str, variant: str, x_activation: str, num_classes: int | None):
    """A jitted ``fn(images, variables, params, mean, scale) -> (E [N, C, n], logits, maps [N, C, n, h, w])``:
    one ``jax.vjp`` for the batch, its pullback ``vmap``-ped over the ``C * n`` x-features."""
    from xai_jax import models
    forward = models.make_forward(model, tuple(dict.fromkeys((tap, heatmap_tap))), num_classes)

    def fn(images, variables, params, mean, scale):
        shape = models.tap_shapes(model, num_classes)[heatmap_tap]
        zero = {heatmap_tap: jnp.zeros((images.shape[0], *shape), jnp.float32)}
        classes = params["head"]["w"].shape[0]

        def outputs(offsets):
            out = forward(images, variables, offsets)
            z = (out[tap].reshape(images.shape[0], -1) - mean) / scale
            # The tap's activations ride along as aux: one backbone pass gives values, maps and pullback.
            return (stacked_x_features(variant, x_activation, params, z), out["logits"]), out[heatmap_tap]

        (x_features, logits), pullback, activations = jax.vjp(outputs, zero, has_aux=True)
        n = x_features.shape[2]
        cot_x = jnp.eye(classes * n, dtype=jnp.float32).reshape(classes * n, 1, classes, n)
        cot_x = jnp.broadcast_to(cot_x, (classes * n, images.shape[0], classes, n))
        grads = jax.vmap(lambda c: pullback((c, jnp.zeros_like(logits)))[0][heatmap_tap])(cot_x)
        maps = jax.vmap(attribution.grad_cam, in_axes=(None, 0))(activations, grads)  # [C*n, N, h, w]
        maps = jnp.moveaxis(maps, 0, 1).reshape(images.shape[0], classes, n, *maps.shape[-2:])
        return x_features, logits, maps

    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def logit_gradcam_fn(model: str, heatmap_tap: str, num_classes: int | None):
    """A jitted ``fn(images, variables, classes [C]) -> [N, C, h, w]``: Grad-CAM of the logits (1-heatmaps)."""
    from xai_jax import models
    forward = models.make_forward(model, (heatmap_tap,), num_classes)

    def fn(images, variables, classes):
        shape = models.tap_shapes(model, num_classes)[heatmap_tap]
        zero = {heatmap_tap: jnp.zeros((images.shape[0], *shape), jnp.float32)}

        def outputs(offsets):
            out = forward(images, variables, offsets)
            return out["logits"], out[heatmap_tap]

        out, pullback, activations = jax.vjp(outputs, zero, has_aux=True)
        cot = jax.nn.one_hot(classes, out.shape[1])[:, None, :] * jnp.ones((1, images.shape[0], 1))
        grads = jax.vmap(lambda c: pullback(c)[0][heatmap_tap])(cot)
        return jnp.moveaxis(jax.vmap(attribution.grad_cam, in_axes=(None, 0))(activations, grads), 0, 1)

    return jax.jit(fn)


def _x_feature_cmwp(layers, tap_index: int, x, params, mean, scale, n: int):
    """``[N, n, h, w]``: c-MWP of each of one explainer's ``n`` x-features through the backbone's ``layers``
    cut at the tap (``params`` without class axis), channels summed. A spatial tap is flattened in the order
    the explainer reads it (``activations.reshape(N, -1)``)."""
    chain = list(layers[:tap_index]) + [{"kind": "flatten"}] + attribution.explainer_layers(params, mean, scale)
    maps = jax.vmap(lambda unit: attribution.contrastive_mwp(chain, x, unit), out_axes=1)(jnp.arange(n))
    return jnp.sum(maps, -1)


@functools.lru_cache(maxsize=None)
def cmwp_fn(model: str, tap: str, n: int, variant: str, x_activation: str, num_classes: int | None):
    """A jitted ``fn(images, variables, params, mean, scale, class_index) -> (E, logits, maps, logit maps)``:
    c-MWP of each x-feature of one explainer (``params`` without class axis) and of the logit."""
    from xai_jax import models
    spec = models.get(model)
    forward = models.make_forward(model, (tap,), num_classes)

    def fn(images, variables, params, mean, scale, class_index):
        layers, tap_index = models.sequential_layers(model, variables, tap)
        x = models.preprocess(spec, images)
        maps = _x_feature_cmwp(layers, tap_index, x, params, mean, scale, n)
        baseline = attribution.contrastive_mwp(list(layers), x, class_index)
        out = forward(images, variables)
        values = x_features(variant, x_activation, params, (out[tap].reshape(len(images), -1) - mean) / scale)
        return values, out["logits"], maps, jnp.sum(baseline, -1)

    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def cmwp_maps_fn(model: str, tap: str, n: int):
    """A jitted ``fn(images, variables, params, mean, scale) -> [N, C, n, h, w]``: c-MWP of every x-feature
    of every class's explainer (``params`` with class axis).

    The classes run one after another (``lax.map``), each with its ``n`` x-features batched: every class
    propagates ``n`` maps of the backbone's activations, so batching the classes too would hold ``C * n``."""
    from xai_jax import models
    spec = models.get(model)

    def fn(images, variables, params, mean, scale):
        layers, tap_index = models.sequential_layers(model, variables, tap)
        x = models.preprocess(spec, images)
        maps = jax.lax.map(lambda p: _x_feature_cmwp(layers, tap_index, x, p, mean, scale, n), params)
        return jnp.moveaxis(maps, 0, 1)

    return jax.jit(fn)


def _cmwp(one: XNNResult, model: str, variables, images, class_index: int, num_classes):
    from xai_jax import models
    models.sequential_layers(model, variables, one.config.tap)  # a clear error before tracing
    params = jax.tree.map(lambda a: jnp.asarray(a)[0], one.params)
    fn = cmwp_fn(model, one.config.tap, one.config.num_x_features, one.config.variant, one.config.x_activation,
                 num_classes)
    return fn(images, variables, params, jnp.asarray(one.input_mean), jnp.float32(one.input_scale),
              jnp.int32(class_index))


def explain(result: XNNResult, model: str, variables, images, label: int | str, *, method: str = "gradcam",
            num_classes: int | None = None) -> Explanation:
    """Explains class ``label``'s logit on ``images`` with its explainer's x-features and their heatmaps.

    Args:
      result: the fitted explainers.
      model, variables: the backbone they explain.
      images: ``[N, H, W, 1 or 3]`` uint8 or [0, 1] (preprocessing included).
      label: the explained class, by index or name.
      method: ``"gradcam"`` works for every backbone (maps at :func:`heatmap_tap_of`); ``"cmwp"``
        (contrastive marginal winning probability down to the first convolution's output, resized to the
        input) for sequential backbones, those that declare a layer list
        (:func:`xai_jax.models.sequential_layers`: ``small_cnn``, ``vgg11/16/19``, ``cladec_vgg(_rgb)``).
      num_classes: outputs of the model's head if not its default.

    Returns:
      an :class:`Explanation` with maps at image resolution.
    """
    from xai_jax import models
    if method not in HEATMAP_METHODS:
        raise XaiJaxError(f"unknown heatmap method {method!r}; valid: {', '.join(HEATMAP_METHODS)}")
    images = np.asarray(images)
    spec = models.get(model)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise XaiJaxError(f"images must be [N, H, W, 1 or 3], got {images.shape}")
    one = result.only(label)
    class_index = int(one.classes[0])
    if method == "gradcam":
        heat_tap = heatmap_tap_of(result, model, num_classes)
        fn = gradcam_fn(model, result.config.tap, heat_tap, result.config.variant, result.config.x_activation,
                        num_classes)
        x_features, logits, maps = fn(images, variables, one.params, jnp.asarray(result.input_mean),
                                      jnp.float32(result.input_scale))
        x_features, maps = x_features[:, 0], maps[:, 0]
        baseline = logit_gradcam_fn(model, heat_tap, num_classes)(images, variables,
                                                                  jnp.asarray([class_index]))[:, 0]
    else:
        x_features, logits, maps, baseline = _cmwp(one, model, variables, images, class_index, num_classes)
    head = one.params["head"]
    contributions = x_features * head["w"][0]
    size = spec.input_shape[:2]
    maps = attribution.normalise_maps(attribution.upsample_maps(maps, size))
    baseline = attribution.normalise_maps(attribution.upsample_maps(baseline, size))
    return Explanation(class_index=class_index, x_features=np.asarray(x_features),
                       contributions=np.asarray(contributions),
                       approximation=np.asarray(jnp.sum(contributions, 1) + head["b"][0]),
                       logit=np.asarray(logits)[:, class_index], heatmaps=np.asarray(maps),
                       baseline=np.asarray(baseline), method=method)


#: what each O1/O2 basis correlates, for reports (``XNNResult.orthogonality_basis``)
BASES = {"cmwp-pixels": "c-MWP heatmaps at the input's pixels, normalised per image (the paper's)",
         "gradcam-pixels": "Grad-CAM heatmaps upsampled to the input's pixels, normalised per image",
         "gradcam-tap": "raw Grad-CAM heatmaps at the heatmap tap's resolution",
         "x-features": "x-feature values over the samples (no heatmaps without a model)"}


def orthogonality_basis(config: XNNConfig, model: str) -> str:
    """The heatmaps whose correlation :func:`heatmap_orthogonality` takes for ``config.orthogonality``:
    ``"cmwp-pixels"`` (a sequential backbone, any explainer: Lasso's through its one-hot selection layer),
    ``"gradcam-pixels"`` (a residual one) or ``"gradcam-tap"`` (a key of :data:`BASES`)."""
    from xai_jax import models
    if config.orthogonality == "tap":
        return "gradcam-tap"
    sequential = models.get(model).sequential is not None
    return "cmwp-pixels" if sequential else "gradcam-pixels"


@functools.lru_cache(maxsize=None)
def _correlation_step(model: str, tap: str, heatmap_tap: str, variant: str, x_activation: str,
                      n: int, num_classes: int | None, basis: str):
    # One step function per setting: engine.run compiles per step function, so a closure made per call
    # would recompile the pass on every fit.
    from xai_jax import models
    size = models.get(model).input_shape[:2]
    if basis == "cmwp-pixels":
        heat = cmwp_maps_fn(model, tap, n)
    else:
        gradcam = gradcam_fn(model, tap, heatmap_tap, variant, x_activation, num_classes)

        def heat(*args):
            return gradcam(*args)[2]

    def step(state, batch, p):
        maps = heat(batch["images"], *p)  # [B, C, n, h, w]
        if basis != "gradcam-tap":
            maps = xnn_metrics.pixel_distribution(attribution.upsample_maps(maps, size))
        return jax.vmap(xnn_metrics.correlation_update, in_axes=(0, 1, None))(state, maps, batch["mask"])

    return step


def heatmap_orthogonality(result: XNNResult, model: str, variables, source, heatmap_tap: str,
                          num_classes: int | None = None, batch_size: int = 128,
                          progress: bool | None = None, basis: str | None = None) -> dict[str, np.ndarray]:
    """O1, O2 (``[C]`` each) of the correlation ``P`` of each class's x-feature heatmaps, streamed over
    ``source`` with :func:`xai_jax.engine.run` (paper section 4.2).

    Every pixel of every image is one observation of the ``n`` x-features' heatmap values
    (:func:`xai_jax.kernels.xnn_metrics.correlation_update`). The paper's heatmaps are c-MWP at the pixels,
    normalised on each image to a distribution ``S_ij = C_ij / sum C`` (``"cmwp-pixels"``); residual
    backbones have no c-MWP, and Grad-CAM, bilinearly upsampled to the input and normalised the same way,
    stands in (``"gradcam-pixels"``). ``"gradcam-tap"`` correlates the raw Grad-CAM maps at
    ``heatmap_tap``: per-image scale and the tap's coarse grid then weigh in (8x8 for ResNet-56 ``layer3``).

    Args:
      result: the fitted explainers.
      model, variables: their backbone.
      source: the images (e.g. the first few hundred held-out ones).
      heatmap_tap: the convolutional tap of the Grad-CAM bases.
      num_classes: outputs of the model's head if not its default.
      batch_size: images per batch.
      progress: show a progress bar (None: when on a terminal).
      basis: a key of :data:`BASES` but ``"x-features"``; None: :func:`orthogonality_basis` of the
        result's config.

    Returns:
      ``{"o1": [C], "o2": [C]}``.
    """
    from xai_jax import engine
    basis = basis or orthogonality_basis(result.config, model)
    if basis not in BASES or basis == "x-features":
        raise XaiJaxError(f"unknown heatmap basis {basis!r}; valid: {', '.join(b for b in BASES if b != 'x-features')}")
    if basis == "cmwp-pixels":
        from xai_jax import models
        models.sequential_layers(model, variables, result.config.tap)  # a clear error before tracing
    classes, n = len(result.classes), result.config.num_x_features
    step = _correlation_step(model, result.config.tap, heatmap_tap, result.config.variant,
                             result.config.x_activation, n, num_classes, basis)
    init = jax.vmap(lambda _: xnn_metrics.correlation_init(n))(jnp.arange(classes))
    params = (variables, result.params, jnp.asarray(result.input_mean), jnp.float32(result.input_scale))
    state = engine.run(step, init, source, params, batch_size=batch_size, desc="xnn heatmap correlation",
                       progress=progress)
    p = jax.vmap(xnn_metrics.correlation_matrix)(state)
    return {"o1": np.asarray(jax.vmap(xnn_metrics.o1)(p)), "o2": np.asarray(jax.vmap(xnn_metrics.o2)(p))}
