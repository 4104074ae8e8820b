"""Backbones chosen by name: the Flax module, its preprocessing, its taps and its converter.

Every backbone is a Flax linen module whose ``__call__(x, train=False)`` returns logits and records
named intermediate activations ("taps") with :func:`xai_jax.models.common.tap`. :func:`apply_model`
returns the taps a caller asks for; under ``jit`` the ones nobody asked for are dead code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError

Variables = Mapping[str, Any]
TAPS = "taps"
TAPS_VARIABLE = "__taps__"
OFFSETS = "tap_offsets"  # {TAPS_VARIABLE: {tap name: array added to that tap}}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to run one backbone on raw images.

    Attributes:
      name: registry name, e.g. ``"cifar_resnet56"``.
      build: ``build(num_classes) -> flax.linen.Module``.
      input_shape: ``(H, W, C)`` the module expects after preprocessing.
      num_classes: default number of outputs.
      mean, std: per-channel normalisation applied to images scaled to [0, 1].
      resize: shorter side that variable-size images (image folders) are resized to on the host before a
        centre crop to ``input_shape``; ``None`` for models of small fixed-size images.
      convert: ``convert(state_dict) -> variables`` from a PyTorch state dict (names without a
        ``module.`` prefix, values as NumPy arrays) to Flax variables; ``None`` if the model has no
        PyTorch counterpart.
      description: one line for ``xai-jax info``.
      sequential: for a backbone that is a plain chain of layers, ``sequential(variables, input_shape) ->
        (layers, ends)``: its layer list for c-MWP (the format of :mod:`xai_jax.kernels.attribution`, from
        the preprocessed input to the logits, inference mode) at a preprocessed ``input_shape`` ``(H, W,
        C)``, and ``{tap: k}`` with ``layers[:k]`` ending at each tap's activation. ``None``: not sequential
        (residual networks; they use Grad-CAM). Read with :func:`sequential_layers`.
    """

    name: str
    build: Callable[[int], Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    convert: Callable[[Mapping[str, np.ndarray]], dict] | None = None
    description: str = ""
    sequential: Callable[[Variables, tuple[int, int, int]], tuple[list[dict], dict[str, int]]] | None = None

    def module(self, num_classes: int | None = None):
        return self.build(self.num_classes if num_classes is None else num_classes)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise XaiJaxError(f"unknown model {name!r}; known models: {', '.join(names())}") from None


def preprocess(spec: ModelSpec, images: jax.Array) -> jax.Array:
    """Maps a batch of raw images to the model's input: float32 ``[N, H, W, C]``, normalised.

    Integer images are scaled by 1/255, float images are taken to be in [0, 1] already. Grey images feed
    RGB models by repetition (and RGB images grey models by their mean); images of another size are
    resized bilinearly on device. Jittable; the image shape decides the trace.

    Args:
      spec: the model's spec.
      images: ``[N, h, w]`` or ``[N, h, w, c]``, uint8 in [0, 255] or float in [0, 1].

    Returns:
      ``(x - mean) / std`` at ``spec.input_shape``.
    """
    x = jnp.asarray(images)
    if jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.float32) / 255.0
    else:
        x = x.astype(jnp.float32)
    if x.ndim == 3:
        x = x[..., None]
    height, width, channels = spec.input_shape
    if x.shape[-1] != channels:
        if x.shape[-1] == 1:
            x = jnp.repeat(x, channels, axis=-1)
        elif channels == 1:
            x = jnp.mean(x, axis=-1, keepdims=True)
        else:
            raise XaiJaxError(f"{spec.name} takes {channels}-channel images, got {x.shape[-1]} channels")
    if x.shape[1:3] != (height, width):
        x = jax.image.resize(x, (x.shape[0], height, width, channels), method="bilinear")
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)
    return (x - mean) / std


def apply_model(module, variables: Variables, x: jax.Array, taps: Sequence[str] = (), train: bool = False,
                rngs: dict | None = None, offsets: Mapping[str, jax.Array] | None = None):
    """Runs ``module`` and returns ``(logits, {tap name: activation})``.

    Args:
      module: a registered backbone.
      variables: its Flax variables (``params`` and, for batch-norm models, ``batch_stats``).
      x: preprocessed input ``[N, H, W, C]``.
      taps: names of intermediate activations to return (see :func:`tap_shapes`).
      train: training mode (batch norm on batch statistics, dropout where ``rngs`` has a ``dropout`` key);
        then, for batch-norm models, the returned dict also holds the updated ``"batch_stats"``.
      rngs: random keys for training mode, e.g. ``{"dropout": key}``.
      offsets: ``{tap name: array}`` added to those activations before the forward pass continues from
        them. Differentiating with respect to a zero offset gives the gradient at the tap (Grad-CAM,
        Taylor contributions); see :func:`make_forward`.

    Returns:
      logits ``[N, num_classes]`` and a dict of the requested taps, NHWC for conv layers.
    """
    variables = {k: v for k, v in variables.items() if k not in (TAPS, OFFSETS)}
    requested = tuple(taps)
    if offsets:
        variables[OFFSETS] = {TAPS_VARIABLE: dict(offsets)}
        taps = tuple(taps) + tuple(t for t in offsets if t not in taps)  # so an unknown offset name is reported
    mutable = [TAPS] if taps else []
    if train and "batch_stats" in variables:
        mutable.append("batch_stats")
    if not mutable:
        return module.apply(variables, x, train=train, rngs=rngs), {}
    logits, state = module.apply(variables, x, train=train, mutable=mutable, rngs=rngs)
    recorded = state.get(TAPS, {}).get(TAPS_VARIABLE, {})
    missing = [t for t in taps if t not in recorded]
    if missing:
        raise XaiJaxError(
            f"{type(module).__name__} has no tap {missing[0]!r}; valid taps: {', '.join(recorded)}"
        )
    out = {t: recorded[t] for t in requested}
    if "batch_stats" in mutable:
        out["batch_stats"] = state["batch_stats"]
    return logits, out


@functools.lru_cache(maxsize=None)
def _tap_shapes(name: str, num_classes: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    spec = get(name)
    module = spec.module(num_classes)
    x = jax.ShapeDtypeStruct((1, *spec.input_shape), jnp.float32)
    order: list[str] = []  # pytree flattening sorts dict keys; remember the forward order while tracing

    def all_taps(x):
        variables = module.init(jax.random.key(0), x)
        _, state = module.apply(variables, x, mutable=[TAPS])
        taps = state[TAPS][TAPS_VARIABLE]
        order.extend(taps)
        return taps

    shapes = jax.eval_shape(all_taps, x)
    return tuple((k, tuple(shapes[k].shape[1:])) for k in order)


def tap_shapes(name: str, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """The model's taps in forward order, each with its per-image shape (no batch axis)."""
    spec = get(name)
    return dict(_tap_shapes(name, spec.num_classes if num_classes is None else num_classes))


def sequential_layers(name: str, variables: Variables, tap: str | None = None,
                      input_shape: tuple[int, int, int] | None = None) -> tuple[list[dict], int]:
    """The layer list that c-MWP reads (:mod:`xai_jax.kernels.attribution`) and where ``tap`` ends in it.

    Args:
      name: registry name of a sequential backbone (``small_cnn``, ``vgg11`` ...; see ``ModelSpec.sequential``).
      variables: its Flax variables (the list holds their arrays, so it can be built under ``jit``).
      tap: a tap of the model; ``None``: the logits (the whole list).
      input_shape: ``(H, W, C)`` of the preprocessed input the list will run on (default the spec's, which is
        what :func:`preprocess` produces); VGG's adaptive pool depends on it.

    Returns:
      ``(layers, index)``: running ``layers[:index]`` on the preprocessed input gives ``tap``'s activation.

    Raises:
      XaiJaxError: the model is not sequential, or has no such tap (the message lists the valid ones).
    """
    spec = get(name)
    if spec.sequential is None:
        readable = ", ".join(n for n in names() if _REGISTRY[n].sequential is not None)
        raise XaiJaxError(f"c-MWP reads sequential backbones ({readable}); {name} is not: use Grad-CAM")
    layers, ends = spec.sequential(variables, tuple(spec.input_shape if input_shape is None else input_shape))
    if tap is None:
        return layers, len(layers)
    if tap not in ends:
        raise XaiJaxError(f"{name} has no tap {tap!r}; valid taps: {', '.join(ends)}")
    return layers, ends[tap]


def init_variables(spec: ModelSpec, key: jax.Array, num_classes: int | None = None) -> dict:
    """Randomly initialised variables of ``spec``'s module (for training or parity tests)."""
    module = spec.module(num_classes)
    variables = module.init(key, jnp.zeros((1, *spec.input_shape), jnp.float32))
    return {k: v for k, v in variables.items() if k != TAPS}


@functools.lru_cache(maxsize=None)
def make_forward(name: str, taps: tuple[str, ...] = (), num_classes: int | None = None,
                 compute_dtype: str | None = None):
    """A cached pure function ``forward(images, variables, offsets=None) -> {"logits": ..., tap: ...}``.

    Preprocessing is included, so ``images`` are raw (uint8 or [0, 1] floats). Cached on its arguments:
    every caller asking for the same model and taps shares one function, hence one compiled program.

    Args:
      name: registry name.
      taps: intermediate activations to return next to the logits.
      num_classes: outputs of the head (default: the spec's).
      compute_dtype: ``"bfloat16"`` runs the backbone in bf16 (inputs and weights cast; outputs returned in
        float32); ``None`` keeps float32.

    ``offsets`` (``{tap: array of the tap's batch shape}``) are added to those taps; the gradient of any
    function of the outputs with respect to zero offsets is its gradient at the taps, for a whole batch in
    one ``jax.vjp``::

        forward = make_forward("cifar_resnet56", taps=("layer3",))
        zero = {"layer3": jnp.zeros((n, 8, 8, 64))}
        out, pullback = jax.vjp(lambda o: forward(images, variables, o)["logits"], zero)
        (grads,) = pullback(jax.nn.one_hot(classes, 10))   # grads["layer3"]: d logit_c / d activation
    """
    spec = get(name)
    module = spec.module(num_classes)
    dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)

    def forward(images, variables, offsets=None):
        x = preprocess(spec, images)
        if dtype is not None:
            x = x.astype(dtype)
            variables = jax.tree.map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v,
                                     variables)
        logits, out = apply_model(module, variables, x, taps, offsets=offsets)
        out = {"logits": logits, **out}
        return jax.tree.map(lambda a: a.astype(jnp.float32), out)

    return forward
