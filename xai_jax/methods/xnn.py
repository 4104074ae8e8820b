"""Explanation networks (XNN) with the sparse reconstruction autoencoder (SRAE), paper ``xnn_srae.txt``.

An XNN explains one logit ``yhat`` of a classifier from the activations ``Z[M, S]`` of one of its layers
(``tap``) with a few "x-features": an encoder ``S -> 800 -> 100 -> n`` (ReLU) gives ``E = E_theta(Z)``,
a linear head ``ybar = v.E + b`` reproduces the logit, and a mirrored decoder ``n -> 100 -> 800 -> S``
reconstructs a sparse subset of ``Z``. The loss (paper eq. 5, :func:`xai_jax.kernels.srae.srae_loss`) is
faithfulness + ``beta`` * log-penalty sparse reconstruction + ``eta`` * pull-away (orthogonality).
Each x-feature is shown with its contribution ``v_i * E_i`` and a heatmap: the attribution of ``E_i`` to
the image through encoder and backbone (Grad-CAM at a convolutional tap, or contrastive marginal winning
probability for sequential backbones, :mod:`xai_jax.kernels.attribution`).

Baselines with the same trainer (DESIGN "XNN with SRAE"): ``"nn"`` (faithfulness only), ``"sae"``
(faithfulness + plain reconstruction), ``"cae"`` (reconstruction only; the head is fitted afterwards by
weighted least squares) and ``"lasso"`` (scikit-learn's Lasso path on ``Z``: the ``n`` selected units are
the x-features).

Choices where the paper is silent (documented defaults):

- ``Z`` is centred per feature and divided by one global standard deviation before the explainer sees it
  (one scale keeps the relative sizes of the units, which the reconstruction terms weigh); the affine map
  is part of the explainer, so heatmaps differentiate through it.
- The plain reconstruction of SAE/CAE is summed over the ``S`` features (``srae.reconstruction_loss``);
  to keep ``beta`` on the scale of the SRAE's per-feature mean, SAE uses ``beta / S``.
- One-vs-all balance: positives (``labels == class``) weigh ``#negatives / #positives`` unless
  ``positive_weight`` is given.
- ``C`` one-vs-all explainers train at once: their parameters are stacked on a leading class axis, the
  loss and its gradient are ``vmap``-ped over classes, and all classes see the same minibatches. Adam is
  element-wise, so this is exactly ``C`` independent trainings (``tests/test_xnn.py`` checks it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax.errors import XaiJaxError
from xai_jax.kernels import attribution, srae, xnn_metrics
from xai_jax.outputs import atomic_dir, save_npz, write_files
from xai_jax.readers import read_json, read_npz, reading

VARIANTS = srae.VARIANTS + ("lasso",)
#: the kinds of output folder an XNN result and an explanation are (see :mod:`xai_jax.outputs`)
KIND, EXPLANATION_KIND = "xnn", "xnn.explanation"


@dataclasses.dataclass(frozen=True)
class XNNConfig:
    """Hyper-parameters of an explanation network (defaults: the paper and the authors' code).

    Attributes:
      tap: the explained layer (a model tap; flattened to ``S`` features).
      num_x_features: ``n``, the x-features per explainer (5 in the paper).
      hidden: encoder widths before the x-layer (decoder mirrors them); (800, 100) in the paper.
      variant: ``"srae"`` (eq. 5), ``"nn"``, ``"sae"``, ``"cae"`` or ``"lasso"``.
      q, beta, eta: the log penalty's sparsity and the weights of eq. 5.
      positive_weight: weight of a positive sample in one-vs-all training; None: #negatives / #positives.
      learning_rate, epochs, batch_size: Adam and its schedule.
      seed: initialisation and minibatch order.
      heatmap_tap: convolutional tap where heatmaps are computed; None: ``tap`` if it is convolutional,
        else the last convolutional tap before it.
      x_activation: ``"linear"`` (default) or ``"relu"`` x-layer; hidden layers are always ReLU. The
        paper is silent. With ReLU x-features die (constant 0, which the pull-away term scores as
        orthogonal and cannot revive): 27 of 50 on ResNet-56 CIFAR-10 pool features, 0 with linear.
    """

    tap: str = "pool"
    num_x_features: int = 5
    hidden: tuple[int, ...] = (800, 100)
    variant: str = "srae"
    q: float = srae.DEFAULT_Q
    beta: float = srae.DEFAULT_BETA
    eta: float = srae.DEFAULT_ETA
    positive_weight: float | None = None
    learning_rate: float = 1e-3
    epochs: int = 30
    batch_size: int = 256
    seed: int = 0
    heatmap_tap: str | None = None
    x_activation: str = "linear"

    def validate(self) -> None:
        if self.x_activation not in ("relu", "linear"):
            raise XaiJaxError(f"x_activation must be relu or linear, got {self.x_activation!r}")
        if self.variant not in VARIANTS:
            raise XaiJaxError(f"unknown XNN variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.num_x_features < 1:
            raise XaiJaxError(f"num_x_features must be >= 1, got {self.num_x_features}")
        if any(h < 1 for h in self.hidden):
            raise XaiJaxError(f"hidden sizes must be >= 1, got {self.hidden}")
        for name in ("q", "learning_rate"):
            if not getattr(self, name) > 0:
                raise XaiJaxError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "eta"):
            if not getattr(self, name) >= 0:
                raise XaiJaxError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.positive_weight is not None and not self.positive_weight > 0:
            raise XaiJaxError(f"positive_weight must be > 0, got {self.positive_weight}")
        if self.epochs < 1 or self.batch_size < 1:
            raise XaiJaxError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "XNNConfig":
        return cls(**{**raw, "hidden": tuple(raw["hidden"])})


# --------------------------------------------------------------------------------------------------------
# The explainer network: pure functions of a params dict (one class; vmap over the stacked class axis).

def _layer_names(block: Mapping[str, Any]) -> list[str]:
    return sorted(block, key=lambda k: int(k.removeprefix("layer")))


def _dense_init(key, fan_in: int, fan_out: int) -> dict:
    # He-normal for ReLU layers; biases start at 0.
    return {"w": jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(2.0 / fan_in),
            "b": jnp.zeros((fan_out,), jnp.float32)}


def init_explainer(key: jax.Array, num_inputs: int, config: XNNConfig) -> dict:
    """Parameters of one explainer: encoder, head ``v`` (and bias), decoder (absent for ``"nn"``)."""
    widths = (num_inputs, *config.hidden, config.num_x_features)
    keys = jax.random.split(key, 2 * len(widths))
    params = {"encoder": {f"layer{i}": _dense_init(keys[i], a, b) for i, (a, b) in enumerate(zip(widths, widths[1:]))},
              "head": {"w": jax.random.normal(keys[-1], (config.num_x_features,), jnp.float32)
                       / jnp.sqrt(config.num_x_features), "b": jnp.zeros((), jnp.float32)}}
    if config.variant != "nn":
        back = widths[::-1]
        params["decoder"] = {f"layer{i}": _dense_init(keys[len(widths) + i], a, b)
                             for i, (a, b) in enumerate(zip(back, back[1:]))}
    return params


def encode(params: Mapping[str, Any], z: jax.Array, x_activation: str = "linear") -> jax.Array:
    """x-features ``E = E_theta(z)``, ``[M, n]`` from standardised ``z[M, S]`` (ReLU after the hidden
    layers; after the x-layer too unless ``x_activation == "linear"``)."""
    x = z
    names = _layer_names(params["encoder"])
    for i, name in enumerate(names):
        layer = params["encoder"][name]
        x = x @ layer["w"] + layer["b"]
        if i < len(names) - 1 or x_activation == "relu":
            x = jax.nn.relu(x)
    return x


def decode(params: Mapping[str, Any], x_features: jax.Array) -> jax.Array:
    """The reconstruction ``E^-1(E)``: ReLU hidden layers, linear output."""
    names = _layer_names(params["decoder"])
    x = x_features
    for i, name in enumerate(names):
        layer = params["decoder"][name]
        x = x @ layer["w"] + layer["b"]
        if i < len(names) - 1:
            x = jax.nn.relu(x)
    return x


def _variant_beta(config: XNNConfig, num_inputs: int) -> float:
    # SAE's plain reconstruction is summed over S features; /S puts beta on the per-feature scale.
    return config.beta / num_inputs if config.variant == "sae" else config.beta


def _explainer_loss(params, z, targets, weights, *, config: XNNConfig, beta: float):
    x_features = encode(params, z, config.x_activation)
    z_rec = decode(params, x_features) if config.variant != "nn" else None
    head_w, head_b = params["head"]["w"], params["head"]["b"]
    return srae.srae_loss(x_features, head_w, head_b, targets, z, z_rec, variant=config.variant, beta=beta,
                          eta=config.eta, q=config.q, sample_weights=weights)


@functools.lru_cache(maxsize=None)
def _trainer(config: XNNConfig, num_inputs: int, num_samples: int, batch_size: int):
    """A jitted ``train(params, opt_state, z, targets, weights, epoch_keys) -> (params, opt_state, losses)``.

    ``params`` carry a leading class axis ``C``; ``targets`` and ``weights`` are ``[M, C]``. One epoch is a
    ``lax.scan`` over ``M // batch_size`` minibatches of a fresh permutation, the epochs another scan, so
    the whole training is one compiled program.
    """
    optimizer = optax.adam(config.learning_rate)
    loss = functools.partial(_explainer_loss, config=config, beta=_variant_beta(config, num_inputs))
    value_and_grad = jax.vmap(jax.value_and_grad(lambda p, z, y, w: loss(p, z, y, w)[0]), in_axes=(0, None, 1, 1))
    steps = num_samples // batch_size

    def step(carry, indices, z, targets, weights):
        params, opt_state = carry
        values, grads = value_and_grad(params, z[indices], targets[indices], weights[indices])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), values

    @jax.jit
    def train(params, opt_state, z, targets, weights, epoch_keys):
        def epoch(carry, key):
            order = jax.random.permutation(key, num_samples)[: steps * batch_size].reshape(steps, batch_size)
            carry, values = jax.lax.scan(lambda c, i: step(c, i, z, targets, weights), carry, order)
            return carry, jnp.mean(values, axis=0)

        (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), epoch_keys)
        return params, opt_state, losses

    return optimizer, train


@jax.jit
def _weighted_head(x_features, targets, weights):
    """Weighted least squares ``min_v,b sum_i w_i (v.E_i + b - y_i)^2`` (the CAE's head), one class."""
    design = jnp.concatenate([x_features, jnp.ones((x_features.shape[0], 1), x_features.dtype)], axis=1)
    root = jnp.sqrt(weights)[:, None]
    solution = jnp.linalg.lstsq(design * root, targets * root[:, 0])[0]
    return solution[:-1], solution[-1]


def _class_weights(labels: np.ndarray, classes: np.ndarray, positive_weight: float | None) -> np.ndarray:
    positive = labels[:, None] == classes[None, :]
    counts = positive.sum(0)
    if positive_weight is None:
        negatives = len(labels) - counts
        weight = np.where((counts > 0) & (negatives > 0), negatives / np.maximum(counts, 1), 1.0)
    else:
        weight = np.full(len(classes), positive_weight)
    return np.where(positive, weight[None, :], 1.0).astype(np.float32)


def _lasso_explainers(z: np.ndarray, targets: np.ndarray, weights: np.ndarray, n: int) -> dict:
    """The Lasso baseline: per class, the weakest L1 penalty on the Lasso path that keeps <= ``n`` units.

    scikit-learn's coordinate descent (``lasso_path``) on the weighted, centred problem; the selected
    units of ``Z`` are the x-features and their coefficients the head. A Python loop over classes: it is
    the baseline a user would run, not a hot path.
    """
    from sklearn.linear_model import lasso_path
    num_classes = targets.shape[1]
    select = np.zeros((num_classes, n), np.int32)
    head_w = np.zeros((num_classes, n), np.float32)
    head_b = np.zeros((num_classes,), np.float32)
    for c in range(num_classes):
        w = weights[:, c] / weights[:, c].sum()
        z_mean, y_mean = w @ z, w @ targets[:, c]
        root = np.sqrt(w * len(w))[:, None]
        x, y = (z - z_mean) * root, (targets[:, c] - y_mean) * root[:, 0]
        try:  # scikit-learn >= 1.9 takes the number of alphas as `alphas`; older releases as `n_alphas`
            alphas, coefs, _ = lasso_path(x, y, alphas=60, eps=1e-4)
        except (TypeError, ValueError):  # sklearn's InvalidParameterError is both
            alphas, coefs, _ = lasso_path(x, y, n_alphas=60, eps=1e-4)
        counts = (coefs != 0).sum(0)
        best = coefs[:, np.flatnonzero(counts <= n)[-1]]
        units = np.argsort(-np.abs(best))[:n]
        select[c], head_w[c] = units, best[units]
        head_b[c] = y_mean - z_mean @ best
    return {"select": select, "head": {"w": head_w, "b": head_b}}


def _lasso_features(params, z):
    return jnp.take(z, params["select"], axis=1)


# --------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class XNNResult:
    """Trained one-vs-all explainers and their metrics, with ``save``/``load`` (orbax for the networks).

    Attributes:
      config: the :class:`XNNConfig`.
      classes: ``[C]`` the explained logits' indices.
      class_names: names of all the model's classes.
      params: the explainers, stacked on a leading class axis.
      input_mean, input_scale: the standardisation of ``Z`` (``(z - mean) / scale``).
      metrics: per explained class, ``f_reg_train``, ``f_cls_train`` (and ``_test``), ``o1``, ``o2``.
      orthogonality_basis: ``"heatmaps"`` (correlation of heatmaps, the paper's) or ``"x-features"``
        (correlation of x-feature values over samples, when no model was given).
      history: ``[epochs, C]`` mean training loss per epoch (empty for Lasso).
      meta: provenance (model, weights, tap).
    """

    config: XNNConfig
    classes: np.ndarray
    class_names: list[str]
    params: Any
    input_mean: np.ndarray
    input_scale: float
    metrics: dict
    orthogonality_basis: str
    history: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    # --- evaluating the explainers on features ---

    def standardise(self, z: jax.Array) -> jax.Array:
        return (jnp.reshape(z, (z.shape[0], -1)) - self.input_mean) / self.input_scale

    def x_features(self, z: jax.Array) -> jax.Array:
        """``E`` of every explainer: ``[N, C, n]`` from activations ``z[N, ...]`` of the tap."""
        return _all_x_features(self.config.variant, self.config.x_activation, self.params,
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
        where = np.flatnonzero(self.classes == label)
        if not len(where):
            raise XaiJaxError(f"class {label} has no explainer; explained classes: "
                              f"{', '.join(str(int(c)) for c in self.classes)}")
        return int(where[0])

    def explainer(self, label: int | str) -> dict:
        """One class's explainer parameters (the class axis removed)."""
        position = self.class_position(label)
        return jax.tree.map(lambda a: a[position], self.params)

    # --- save / load ---

    def summary(self) -> dict:
        return {"method": "xnn", "config": self.config.to_json(), "classes": [int(c) for c in self.classes],
                "class_names": list(self.class_names), "input_scale": float(self.input_scale),
                "orthogonality_basis": self.orthogonality_basis, "metrics": self.metrics, "meta": self.meta}

    def save(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None) -> None:
        """Writes ``xnn.json``, ``history.npz`` and the explainers (orbax, ``explainers/``) atomically."""
        from xai_jax.weights import save_variables
        with atomic_dir(directory, KIND) as tmp:
            save_variables(os.path.join(tmp, "explainers"),
                           {"params": self.params, "input_mean": np.asarray(self.input_mean, np.float32)},
                           {"variant": self.config.variant})
            save_npz(os.path.join(tmp, "history.npz"), {"history": np.asarray(self.history, np.float32)})
            with open(os.path.join(tmp, "xnn.json"), "w") as f:
                json.dump(self.summary(), f, indent=2)
            write_files(tmp, extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "XNNResult":
        from xai_jax.weights import load_variables
        path = os.path.join(os.fspath(directory), "xnn.json")
        if not os.path.isfile(path):
            raise XaiJaxError(f"{directory}: not an XNN result (no xnn.json; write one with `xai-jax xnn fit --out`)")
        summary = read_json(path, "XNN result file")
        variables, _ = load_variables(os.path.join(os.fspath(directory), "explainers"))
        history = read_npz(os.path.join(os.fspath(directory), "history.npz"), "XNN result file", ("history",))
        with reading(directory, "XNN result"):
            return cls(config=XNNConfig.from_json(summary["config"]), classes=np.asarray(summary["classes"], np.int64),
                       class_names=[str(n) for n in summary["class_names"]], params=variables["params"],
                       input_mean=variables["input_mean"], input_scale=float(summary["input_scale"]),
                       metrics=summary["metrics"], orthogonality_basis=summary["orthogonality_basis"],
                       history=history["history"], meta=dict(summary["meta"]))


@functools.partial(jax.jit, static_argnames=("variant", "x_activation"))
def _all_x_features(variant: str, x_activation: str, params, z):
    if variant == "lasso":
        return jax.vmap(_lasso_features, in_axes=(0, None), out_axes=1)(params, z)
    return jax.vmap(encode, in_axes=(0, None, None), out_axes=1)(params, z, x_activation)


@dataclasses.dataclass
class Explanation:
    """One class's explanation of some images (:meth:`XNN.explain`).

    Attributes:
      class_index: the explained logit.
      x_features: ``[N, n]`` values ``E_i``.
      contributions: ``[N, n]`` ``v_i * E_i`` (the displayed weights).
      approximation: ``[N]`` ``ybar``; logit: ``[N]`` the model's ``yhat``.
      heatmaps: ``[N, n, H, W]`` per-x-feature maps at image resolution, each scaled to [0, 1].
      baseline: ``[N, H, W]`` the 1-heatmap of the logit itself, same method.
      method: ``"gradcam"`` or ``"cmwp"``.
    """

    class_index: int
    x_features: np.ndarray
    contributions: np.ndarray
    approximation: np.ndarray
    logit: np.ndarray
    heatmaps: np.ndarray
    baseline: np.ndarray
    method: str


# --------------------------------------------------------------------------------------------------------
# Heatmaps through backbone + explainer.

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


@functools.lru_cache(maxsize=None)
def _gradcam_fn(model: str, tap: str, heatmap_tap: str, variant: str, x_activation: str, num_classes: int | None):
    """``fn(images, variables, params, mean, scale) -> (E [N, C, n], logits, maps [N, C, n, h, w],
    logit maps [N, C, h, w])``: one ``jax.vjp`` for the batch, its pullback ``vmap``-ped over the ``C * n``
    x-features (plus the ``C`` logits for the 1-heatmaps)."""
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
            return (_all_x_features(variant, x_activation, params, z), out["logits"]), out[heatmap_tap]

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
def _logit_gradcam_fn(model: str, heatmap_tap: str, num_classes: int | None):
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


def _orthogonality_from_heatmaps(result: XNNResult, model: str, variables, source, heatmap_tap: str,
                                 num_classes: int | None, batch_size: int, progress) -> dict:
    """O1, O2 of each class's heatmap correlation, streamed over ``source`` with :func:`xai_jax.engine.run`."""
    from xai_jax import engine
    fn = _gradcam_fn(model, result.config.tap, heatmap_tap, result.config.variant, result.config.x_activation,
                     num_classes)
    classes, n = len(result.classes), result.config.num_x_features
    init = jax.vmap(lambda _: xnn_metrics.correlation_init(n))(jnp.arange(classes))
    params = (variables, result.params, jnp.asarray(result.input_mean), jnp.float32(result.input_scale))

    def step(state, batch, p):
        _, _, maps = fn(batch["images"], *p)
        return jax.vmap(xnn_metrics.correlation_update, in_axes=(0, 1, None))(state, maps, batch["mask"])

    state = engine.run(step, init, source, params, batch_size=batch_size, desc="xnn heatmap correlation",
                       progress=progress)
    p = jax.vmap(xnn_metrics.correlation_matrix)(state)
    return {"o1": np.asarray(jax.vmap(xnn_metrics.o1)(p)), "o2": np.asarray(jax.vmap(xnn_metrics.o2)(p))}


# --------------------------------------------------------------------------------------------------------

def extract_features(model: str, variables, source, tap: str, *, num_classes: int | None = None,
                     batch_size: int = 128, progress: bool | None = None) -> dict[str, np.ndarray]:
    """One pass of the backbone (:func:`xai_jax.engine.map_batches`): ``features`` (the tap, flattened),
    ``logits`` and ``labels``, in dataset order. Compute once and reuse for every variant."""
    from xai_jax import evaluation
    out = evaluation.predict(model, variables, source, (tap,), num_classes=num_classes, batch_size=batch_size,
                             progress=progress)
    return {"features": out[tap].reshape(len(out[tap]), -1), "logits": out["logits"], "labels": out["labels"]}


def check_features(features, logits, labels, what: str = "features") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates ``features [M, ...]``, ``logits [M, K]`` and ``labels [M]``; returns them as arrays."""
    features = np.asarray(features, np.float32)
    logits = np.asarray(logits, np.float32)
    if features.ndim < 2 or logits.ndim != 2:
        raise XaiJaxError(f"{what}: features must be [M, ...] and logits [M, classes], got {features.shape} and "
                          f"{logits.shape}")
    features = features.reshape(len(features), -1)
    if len(features) != len(logits):
        raise XaiJaxError(f"{what}: {len(features)} feature rows but {len(logits)} logit rows")
    if len(features) < 2:
        raise XaiJaxError(f"{what}: need at least 2 samples, got {len(features)}")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(logits))):
        raise XaiJaxError(f"{what}: features or logits hold NaN or infinite values")
    labels = np.argmax(logits, 1) if labels is None else np.asarray(labels)
    if labels.shape != (len(logits),):
        raise XaiJaxError(f"{what}: labels must be [M] = [{len(logits)}], got {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise XaiJaxError(f"{what}: labels must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
    return features, logits, labels.astype(np.int32)


class XNN:
    """Fits one-vs-all explanation networks (all classes at once) and explains images with them."""

    def __init__(self, config: XNNConfig | None = None):
        self.config = config or XNNConfig()
        self.config.validate()

    # --- fitting ---

    def fit_features(self, features, logits, labels=None, *, classes: Sequence[int] | None = None,
                     class_names: Sequence[str] | None = None, test: Mapping[str, np.ndarray] | None = None,
                     meta: dict | None = None) -> XNNResult:
        """Trains the explainers on precomputed activations.

        Args:
          features: ``[M, ...]`` activations of the tap (flattened to ``S``).
          logits: ``[M, K]`` the model's logits (every class: F_cls needs them all).
          labels: ``[M]`` true labels (positives of a one-vs-all explainer); None: the predicted class.
          classes: the logits to explain (default all ``K``).
          class_names: ``K`` names (default "0".."K-1").
          test: optional held-out ``{"features", "logits", "labels"}`` for the ``_test`` metrics.
          meta: provenance stored with the result.

        Returns:
          An :class:`XNNResult`; its orthogonality is on x-feature values (no model to draw heatmaps with).
        """
        config = self.config
        z, logits, labels = check_features(features, logits, labels)
        num_logits = logits.shape[1]
        classes = np.arange(num_logits) if classes is None else np.asarray(classes, np.int64).reshape(-1)
        if len(classes) == 0 or classes.min() < 0 or classes.max() >= num_logits:
            raise XaiJaxError(f"classes must lie in [0, {num_logits}), got {classes.tolist()}")
        class_names = [str(i) for i in range(num_logits)] if class_names is None else [str(c) for c in class_names]
        if len(class_names) != num_logits:
            raise XaiJaxError(f"{len(class_names)} class names for {num_logits} logits")
        mean = z.mean(0)
        scale = float(np.std(z - mean)) or 1.0
        z_std = (z - mean) / scale
        targets = logits[:, classes]
        weights = _class_weights(labels, classes, config.positive_weight)
        if config.variant == "lasso":
            params = jax.tree.map(jnp.asarray, _lasso_explainers(z_std, targets, weights, config.num_x_features))
            history = np.zeros((0, len(classes)), np.float32)
        else:
            params, history = self._train(z_std, targets, weights, classes)
        result = XNNResult(config=config, classes=classes, class_names=class_names, params=params,
                           input_mean=mean, input_scale=scale, metrics={}, orthogonality_basis="x-features",
                           history=history, meta=dict(meta or {}))
        metrics = self._faithfulness(result, z, logits, "train")
        if test is not None:
            tz, tl, _ = check_features(test["features"], test["logits"], test.get("labels"), "test set")
            if tz.shape[1] != z.shape[1] or tl.shape[1] != num_logits:
                raise XaiJaxError(f"test set: features/logits of width {tz.shape[1]}/{tl.shape[1]}, "
                                  f"expected {z.shape[1]}/{num_logits}")
            metrics.update(self._faithfulness(result, tz, tl, "test"))
            ortho_z = tz
        else:
            ortho_z = z
        # Without a model there are no heatmaps: correlate each x-feature's values over the samples.
        x_features = result.x_features(ortho_z)  # [N, C, n]
        maps = jnp.moveaxis(x_features, 1, 0)[:, :, :, None, None]
        p = jax.vmap(xnn_metrics.heatmap_correlation)(maps)
        metrics["o1"] = np.asarray(jax.vmap(xnn_metrics.o1)(p))
        metrics["o2"] = np.asarray(jax.vmap(xnn_metrics.o2)(p))
        result.metrics = _per_class(metrics, classes, class_names)
        return result

    def fit(self, model: str, variables, source, *, test_source=None, classes: Sequence[int] | None = None,
            num_classes: int | None = None, batch_size: int = 128, orthogonality_images: int = 512,
            progress: bool | None = None, meta: dict | None = None, features: Mapping | None = None,
            test_features: Mapping | None = None) -> XNNResult:
        """Runs the backbone once over ``source`` (and ``test_source``), trains, and measures O1/O2 on the
        Grad-CAM heatmaps of the first ``orthogonality_images`` test (else training) images.

        ``features``/``test_features``: the output of :func:`extract_features` for these sources, to
        reuse one backbone pass for several variants.
        """
        from xai_jax import evaluation
        from xai_jax.data import Subset
        evaluation.check_taps(model, (self.config.tap,), num_classes)
        heat_tap = self.config.heatmap_tap or default_heatmap_tap(model, self.config.tap, num_classes)
        evaluation.check_taps(model, (heat_tap,), num_classes)
        train = features or extract_features(model, variables, source, self.config.tap, num_classes=num_classes,
                                             batch_size=batch_size, progress=progress)
        test = None if test_source is None else test_features or extract_features(
            model, variables, test_source, self.config.tap, num_classes=num_classes, batch_size=batch_size,
            progress=progress)
        result = self.fit_features(train["features"], train["logits"], train["labels"], classes=classes,
                                   class_names=list(source.class_names), test=test,
                                   meta={"model": model, "tap": self.config.tap, "heatmap_tap": heat_tap,
                                         **(meta or {})})
        ortho_source = test_source if test_source is not None else source
        ortho_source = Subset(ortho_source, np.arange(min(orthogonality_images, len(ortho_source))))
        ortho = _orthogonality_from_heatmaps(result, model, variables, ortho_source, heat_tap, num_classes,
                                             batch_size, progress)
        for i, name in enumerate(result.metrics):
            result.metrics[name].update({k: _number(v[i]) for k, v in ortho.items()})
        result.orthogonality_basis = "heatmaps"
        return result

    def _train(self, z, targets, weights, classes):
        config = self.config
        batch_size = min(config.batch_size, len(z))
        key = jax.random.key(config.seed)
        init_key, order_key = jax.random.split(key)
        # Class c's initialisation depends on c alone, so a class trains the same alone or with others.
        params = jax.vmap(lambda c: init_explainer(jax.random.fold_in(init_key, c), z.shape[1], config))(
            jnp.asarray(classes))
        params["head"]["b"] = jnp.asarray((weights * targets).sum(0) / weights.sum(0), jnp.float32)
        optimizer, train = _trainer(config, z.shape[1], len(z), batch_size)
        params, _, losses = train(params, optimizer.init(params), jnp.asarray(z), jnp.asarray(targets),
                                  jnp.asarray(weights), jax.random.split(order_key, config.epochs))
        if config.variant == "cae":
            x_features = jax.vmap(encode, in_axes=(0, None, None), out_axes=1)(params, jnp.asarray(z),
                                                                               config.x_activation)
            head_w, head_b = jax.vmap(_weighted_head, in_axes=(1, 1, 1))(x_features, jnp.asarray(targets),
                                                                           jnp.asarray(weights))
            params["head"] = {"w": head_w, "b": head_b}
        return params, np.asarray(losses)

    @staticmethod
    def _faithfulness(result: XNNResult, z, logits, split: str) -> dict:
        approx = result.approximate(z)
        classes = jnp.asarray(result.classes)
        f_reg = jax.vmap(xnn_metrics.f_reg, in_axes=(1, 1))(approx, jnp.asarray(logits)[:, classes])
        f_cls = jax.vmap(xnn_metrics.f_cls, in_axes=(None, 0, 1))(jnp.asarray(logits), classes, approx)
        return {f"f_reg_{split}": np.asarray(f_reg), f"f_cls_{split}": np.asarray(f_cls)}

    # --- explaining ---

    @staticmethod
    def explain(result: XNNResult, model: str, variables, images, label: int | str, *, method: str = "gradcam",
                num_classes: int | None = None) -> Explanation:
        """Explains class ``label``'s logit on ``images`` (uint8 or [0, 1] NHWC, preprocessing included).

        ``method="gradcam"`` works for every backbone (maps at ``result.meta["heatmap_tap"]``);
        ``"cmwp"`` (contrastive marginal winning probability down to the first convolution's output,
        resized to the input) for sequential backbones, those that declare a layer list
        (:func:`xai_jax.models.sequential_layers`: ``small_cnn``, ``vgg11/16/19``, ``cladec_vgg(_rgb)``).
        """
        from xai_jax import models
        position = result.class_position(label)
        images = np.asarray(images)
        spec = models.get(model)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise XaiJaxError(f"images must be [N, H, W, 1 or 3], got {images.shape}")
        one = dataclasses.replace(result, classes=result.classes[position:position + 1],
                                  params=jax.tree.map(lambda a: jnp.asarray(a)[position:position + 1], result.params))
        tap = result.config.tap
        heat_tap = result.meta.get("heatmap_tap") or result.config.heatmap_tap or default_heatmap_tap(
            model, tap, num_classes)
        class_index = int(result.classes[position])
        size = spec.input_shape[:2]
        if method == "gradcam":
            fn = _gradcam_fn(model, tap, heat_tap, result.config.variant, result.config.x_activation, num_classes)
            x_features, logits, maps = fn(images, variables, one.params, jnp.asarray(result.input_mean),
                                          jnp.float32(result.input_scale))
            x_features, maps = x_features[:, 0], maps[:, 0]
            baseline = _logit_gradcam_fn(model, heat_tap, num_classes)(images, variables,
                                                                      jnp.asarray([class_index]))[:, 0]
        elif method == "cmwp":
            x_features, logits, maps, baseline = _cmwp_explain(one, model, variables, images, class_index,
                                                               num_classes)
        else:
            raise XaiJaxError(f"unknown heatmap method {method!r}; valid: gradcam, cmwp")
        head = one.params["head"]
        contributions = x_features * head["w"][0]
        maps = attribution.normalise_maps(attribution.upsample_maps(maps, size))
        baseline = attribution.normalise_maps(attribution.upsample_maps(baseline, size))
        return Explanation(class_index=class_index, x_features=np.asarray(x_features),
                           contributions=np.asarray(contributions),
                           approximation=np.asarray(jnp.sum(contributions, 1) + head["b"][0]),
                           logit=np.asarray(logits[:, class_index]), heatmaps=np.asarray(maps),
                           baseline=np.asarray(baseline), method=method)


def _cmwp_explain(one: XNNResult, model: str, variables, images, class_index: int, num_classes):
    """c-MWP maps of each x-feature and of the logit, through a sequential backbone and the explainer."""
    from xai_jax import models
    if one.config.variant == "lasso":
        raise XaiJaxError("c-MWP heatmaps need a network explainer; use method='gradcam' for Lasso")
    models.sequential_layers(model, variables, one.config.tap)  # a clear error before tracing
    params = jax.tree.map(lambda a: jnp.asarray(a)[0], one.params)
    fn = _cmwp_fn(model, one.config.tap, one.config.num_x_features, one.config.x_activation, num_classes)
    return fn(images, variables, params, jnp.asarray(one.input_mean), jnp.float32(one.input_scale),
              jnp.int32(class_index))


@functools.lru_cache(maxsize=None)
def _cmwp_fn(model: str, tap: str, n: int, x_activation: str, num_classes: int | None):
    from xai_jax import models
    spec = models.get(model)
    forward = models.make_forward(model, (tap,), num_classes)

    def fn(images, variables, params, mean, scale, class_index):
        layers, tap_index = models.sequential_layers(model, variables, tap)
        x = models.preprocess(spec, images)
        chain = list(layers[:tap_index]) + attribution.explainer_layers(params, mean, scale)
        maps = jax.vmap(lambda unit: attribution.contrastive_mwp(chain, x, unit), out_axes=1)(jnp.arange(n))
        baseline = attribution.contrastive_mwp(list(layers), x, class_index)
        out = forward(images, variables)
        x_features = encode(params, (out[tap].reshape(len(images), -1) - mean) / scale, x_activation)
        return x_features, out["logits"], jnp.sum(maps, -1), jnp.sum(baseline, -1)

    return jax.jit(fn)


def part_locality(heatmaps, keypoints=None, visible=None, masks=None, box=None) -> np.ndarray:
    """Each x-feature's locality over annotated parts (paper section 4.2): lower is more local.

    Args:
      heatmaps: ``[N, n, H, W]`` non-negative maps (e.g. :attr:`Explanation.heatmaps`).
      keypoints: ``[N, P, 2]`` part locations ``(x, y)`` on the heatmaps' grid (CUB-style, Voronoi parts
        of Algorithm 1), with ``visible`` ``bool[N, P]``; or
      masks: ``[N, P, H, W]`` object masks (Places/ADE20K-style).
      box: optional ``[N, 4]`` bounding boxes for the Voronoi parts (adds a context part).

    Returns:
      ``[n]`` entropies in nats (``log P`` for mass spread evenly over ``P`` parts).
    """
    heatmaps = jnp.asarray(heatmaps, jnp.float32)
    if heatmaps.ndim != 4:
        raise XaiJaxError(f"heatmaps must be [N, n, H, W], got {heatmaps.shape}")
    height, width = heatmaps.shape[-2:]
    if (keypoints is None) == (masks is None):
        raise XaiJaxError("give part keypoints (with visible) or object masks, not both")
    if masks is not None:
        weights = xnn_metrics.mask_part_weights(masks)
    else:
        visible = np.ones(np.shape(keypoints)[:2], bool) if visible is None else visible
        voronoi = functools.partial(xnn_metrics.voronoi_part_weights, height=height, width=width)
        weights = (jax.vmap(voronoi)(keypoints, visible) if box is None
                   else jax.vmap(voronoi)(keypoints, visible, box))
    if weights.shape[0] != heatmaps.shape[0] or weights.shape[-2:] != heatmaps.shape[-2:]:
        raise XaiJaxError(f"parts {weights.shape} do not match heatmaps {heatmaps.shape}")
    return np.asarray(xnn_metrics.locality(heatmaps, weights))


def _number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _per_class(metrics: Mapping[str, np.ndarray], classes, class_names) -> dict:
    return {class_names[c]: {name: _number(values[i]) for name, values in metrics.items()}
            for i, c in enumerate(classes)}


def metrics_table(results: Mapping[str, XNNResult]) -> list[dict]:
    """Rows of the paper's tables 1-2: per method, the metrics averaged over the explained classes."""
    rows = []
    for name, result in results.items():
        row = {"method": name}
        keys = sorted({k for m in result.metrics.values() for k in m})
        for key in keys:
            values = [m[key] for m in result.metrics.values() if m.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
        rows.append(row)
    return rows
