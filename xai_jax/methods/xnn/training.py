"""Training the one-vs-all explainers: on precomputed activations (:func:`fit_features`) or through a backbone
(:func:`fit`, which adds the heatmap orthogonality), all ``C`` classes at once.

``C`` one-vs-all explainers train together: their parameters are stacked on a leading class axis, the loss
and its gradient are ``vmap``-ped over classes, and all classes see the same minibatches. Adam is
element-wise, so this is exactly ``C`` independent trainings (``tests/test_xnn.py`` checks it).

Activations in memory train in one compiled program (a scan over epochs and minibatches). Activations on disk
(:class:`xai_jax.rowstore.DiskRows`, e.g. from ``extract_features(..., directory=D)``) train through the same
minibatch update, one minibatch read at a time in the same order, so host memory holds a minibatch, not the
matrix; every statistic (the standardisation, F_reg, F_cls, O1/O2 of values) is streamed over row blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax import rowstore
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import srae
from xai_jax.methods.xnn import heatmaps
from xai_jax.methods.xnn import metrics
from xai_jax.methods.xnn.config import XNNConfig
from xai_jax.methods.xnn.result import Explanation, XNNResult
from xai_jax.models.xnn_explainer import decode, encode, init_explainer


def variant_beta(config: XNNConfig, num_inputs: int) -> float:
    """The ``beta`` the loss uses: SAE's plain reconstruction is summed over ``S`` features, so ``beta / S``
    puts it on the SRAE's per-feature scale."""
    return config.beta / num_inputs if config.variant == "sae" else config.beta


def explainer_loss(params, z, targets, weights, *, config: XNNConfig, beta: float):
    """:func:`xai_jax.kernels.srae.srae_loss` of one explainer on a minibatch: ``(loss, terms)``."""
    x_features = encode(params, z, config.x_activation)
    z_rec = decode(params, x_features) if config.variant != "nn" else None
    head_w, head_b = params["head"]["w"], params["head"]["b"]
    return srae.srae_loss(x_features, head_w, head_b, targets, z, z_rec, variant=config.variant, beta=beta,
                          eta=config.eta, q=config.q, sample_weights=weights)


def _trainer_config(config: XNNConfig) -> XNNConfig:
    # The fields the compiled training does not read: a new seed (or tap, epochs, ...) must not recompile.
    return dataclasses.replace(config, tap="", seed=0, heatmap_tap=None, positive_weight=None, epochs=1,
                               batch_size=1)


def make_trainer(config: XNNConfig, num_inputs: int, num_samples: int, batch_size: int):
    """``(optimizer, train)``: the Adam optimizer and a jitted
    ``train(params, opt_state, z, targets, weights, epoch_keys) -> (params, opt_state, losses [epochs, C])``.

    ``params`` carry a leading class axis ``C``; ``targets`` and ``weights`` are ``[M, C]``. One epoch is a
    ``lax.scan`` over ``M // batch_size`` minibatches of a fresh permutation, the epochs another scan (one per
    key of ``epoch_keys``), so the whole training is one compiled program. Built once per setting.
    """
    return _make_trainer(_trainer_config(config), num_inputs, num_samples, batch_size)[:2]


@functools.lru_cache(maxsize=None)
def _make_trainer(config: XNNConfig, num_inputs: int, num_samples: int, batch_size: int):
    optimizer = optax.adam(config.learning_rate)
    loss = functools.partial(explainer_loss, config=config, beta=variant_beta(config, num_inputs))
    value_and_grad = jax.vmap(jax.value_and_grad(lambda p, z, y, w: loss(p, z, y, w)[0]), in_axes=(0, None, 1, 1))
    steps = num_samples // batch_size

    def update(carry, z, targets, weights):
        params, opt_state = carry
        values, grads = value_and_grad(params, z, targets, weights)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), values

    def order_of(key):
        return jax.random.permutation(key, num_samples)[: steps * batch_size].reshape(steps, batch_size)

    @jax.jit
    def train(params, opt_state, z, targets, weights, epoch_keys):
        def epoch(carry, key):
            step = lambda c, i: update(c, z[i], targets[i], weights[i])  # noqa: E731
            carry, values = jax.lax.scan(step, carry, order_of(key))
            return carry, jnp.mean(values, axis=0)

        (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state), epoch_keys)
        return params, opt_state, losses

    return optimizer, train, jax.jit(update, donate_argnums=0), jax.jit(order_of)


def _train_rows(config: XNNConfig, params, rows, mean: np.ndarray, scale: float, targets, weights, epoch_keys,
                batch_size: int):
    """:func:`make_trainer`'s training with ``rows`` on disk: the same minibatches in the same order, each read
    (sorted, for the disk), standardised on the host as in memory, and fed to the same jitted update."""
    optimizer, _, update, order_of = _make_trainer(_trainer_config(config), len(mean), len(rows), batch_size)
    carry, losses = (params, optimizer.init(params)), []
    for key in epoch_keys:
        values = []
        for indices in np.asarray(order_of(key)):
            ascending = np.sort(indices)
            block = rows[ascending][np.searchsorted(ascending, indices)]
            z = (block.reshape(len(block), -1).astype(np.float32, copy=False) - mean) / scale
            if values:  # one step in flight: dispatch would otherwise queue every minibatch read in memory
                jax.block_until_ready(values[-1])
            carry, value = update(carry, z, targets[indices], weights[indices])
            values.append(value)
        losses.append(jnp.mean(jnp.stack(values), axis=0))
    return carry[0], np.asarray(jnp.stack(losses))


@jax.jit
def _weighted_head(x_features, targets, weights):
    """Weighted least squares ``min_v,b sum_i w_i (v.E_i + b - y_i)^2`` (the CAE's head), one class."""
    design = jnp.concatenate([x_features, jnp.ones((x_features.shape[0], 1), x_features.dtype)], axis=1)
    root = jnp.sqrt(weights)[:, None]
    solution = jnp.linalg.lstsq(design * root, targets * root[:, 0])[0]
    return solution[:-1], solution[-1]


def class_weights(labels: np.ndarray, classes: np.ndarray, positive_weight: float | None) -> np.ndarray:
    """``[M, C]`` one-vs-all sample weights: 1 for negatives, ``positive_weight`` for positives
    (``labels == class``), or ``#negatives / #positives`` when it is ``None``."""
    positive = labels[:, None] == classes[None, :]
    counts = positive.sum(0)
    if positive_weight is None:
        negatives = len(labels) - counts
        weight = np.where((counts > 0) & (negatives > 0), negatives / np.maximum(counts, 1), 1.0)
    else:
        weight = np.full(len(classes), positive_weight)
    return np.where(positive, weight[None, :], 1.0).astype(np.float32)


def lasso_explainers(z: np.ndarray, targets: np.ndarray, weights: np.ndarray, n: int) -> dict:
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


def init_params(config: XNNConfig, num_inputs: int, classes, targets, weights) -> dict:
    """The explainers of ``classes`` before training, stacked on a class axis; each head's bias starts at its
    class's weighted mean target. Class ``c``'s initialisation depends on ``c`` alone, so a class trains the
    same alone or with others."""
    init_key = jax.random.split(jax.random.key(config.seed))[0]
    params = jax.vmap(lambda c: init_explainer(jax.random.fold_in(init_key, c), num_inputs, config.hidden,
                                               config.num_x_features, decoder=config.variant != "nn"))(
        jnp.asarray(classes))
    params["head"]["b"] = jnp.asarray((weights * targets).sum(0) / weights.sum(0), jnp.float32)
    return params


def train_explainers(config: XNNConfig, z, targets, weights, classes, mean: np.ndarray | None = None,
                     scale: float = 1.0) -> tuple[dict, np.ndarray]:
    """Trains the network explainers of ``classes``; returns ``(params, losses [epochs, C])``. CAE's heads are
    fitted afterwards by weighted least squares.

    Args:
      config: the hyper-parameters.
      z: ``[M, S]`` standardised activations in memory, or ``[M, ...]`` raw ones on disk
        (:class:`xai_jax.rowstore.DiskRows`), standardised a minibatch at a time with ``mean`` and ``scale``.
      targets, weights: ``[M, C]``: the explained logits and the one-vs-all sample weights.
      classes: the ``C`` explained classes.
      mean, scale: the standardisation of activations on disk (``(z - mean) / scale``; ignored in memory).
    """
    on_disk = isinstance(z, rowstore.DiskRows)
    num_inputs = len(mean) if on_disk else z.shape[1]
    batch_size = min(config.batch_size, len(z))
    epoch_keys = jax.random.split(jax.random.split(jax.random.key(config.seed))[1], config.epochs)
    params = init_params(config, num_inputs, classes, targets, weights)
    if on_disk:
        params, losses = _train_rows(config, params, z, mean, scale, targets, weights, epoch_keys, batch_size)
    else:
        optimizer, train = make_trainer(config, num_inputs, len(z), batch_size)
        params, _, losses = train(params, optimizer.init(params), jnp.asarray(z), jnp.asarray(targets),
                                  jnp.asarray(weights), epoch_keys)
    if config.variant == "cae":
        x_features = metrics.streamed_x_features(config.variant, config.x_activation, params, z,
                                                 mean if on_disk else np.zeros(num_inputs, np.float32),
                                                 scale if on_disk else 1.0)
        head_w, head_b = jax.vmap(_weighted_head, in_axes=(1, 1, 1))(x_features, jnp.asarray(targets),
                                                                       jnp.asarray(weights))
        params = {**params, "head": {"w": head_w, "b": head_b}}
    return params, np.asarray(losses)


def check_features(features, logits, labels, what: str = "features") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates ``features [M, ...]``, ``logits [M, K]`` and ``labels [M]``; returns them as arrays
    (features in memory flattened to ``[M, S]``; on disk, :class:`xai_jax.rowstore.DiskRows`, they stay there,
    checked a block at a time; labels the predicted class where ``None``)."""
    on_disk = isinstance(features, rowstore.DiskRows)
    features = features if on_disk else np.asarray(features, np.float32)
    logits = np.asarray(logits, np.float32)
    if features.ndim < 2 or logits.ndim != 2:
        raise XaiJaxError(f"{what}: features must be [M, ...] and logits [M, classes], got {features.shape} and "
                          f"{logits.shape}")
    if not on_disk:
        features = features.reshape(len(features), -1)
    if len(features) != len(logits):
        raise XaiJaxError(f"{what}: {len(features)} feature rows but {len(logits)} logit rows")
    if len(features) < 2:
        raise XaiJaxError(f"{what}: need at least 2 samples, got {len(features)}")
    finite = (all(np.all(np.isfinite(block)) for block in _row_blocks(features)) if on_disk
              else np.all(np.isfinite(features)))
    if not (finite and np.all(np.isfinite(logits))):
        raise XaiJaxError(f"{what}: features or logits hold NaN or infinite values")
    labels = np.argmax(logits, 1) if labels is None else np.asarray(labels)
    if labels.shape != (len(logits),):
        raise XaiJaxError(f"{what}: labels must be [M] = [{len(logits)}], got {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise XaiJaxError(f"{what}: labels must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
    return features, logits, labels.astype(np.int32)


def _row_blocks(rows, block_bytes: int = 64 << 20):
    """``rows`` (in memory or on disk) as consecutive float32 ``[b, S]`` blocks of about ``block_bytes``."""
    width = int(np.prod(rows.shape[1:]))
    step = max(1, block_bytes // (4 * max(width, 1)))
    for start in range(0, len(rows), step):
        block = rows[start:start + step]
        yield np.asarray(block, np.float32).reshape(len(block), width)


def feature_moments(z) -> tuple[np.ndarray, float]:
    """The standardisation of ``z [M, ...]`` (in memory or on disk): the per-unit mean ``[S]`` (float32) and
    one global standard deviation ``sqrt(mean((z - mean)^2))`` (1 where it is 0), in two streamed passes of
    float64 sums over row blocks."""
    total = sum(block.sum(0, dtype=np.float64) for block in _row_blocks(z))
    mean = (total / len(z)).astype(np.float32)
    squares = sum(np.square(block - mean, dtype=np.float64).sum() for block in _row_blocks(z))
    return mean, float(np.sqrt(squares / (len(z) * len(mean)))) or 1.0


def extract_features(model: str, variables, source, tap: str, *, num_classes: int | None = None,
                     batch_size: int = 128, compute_dtype: str | None = None, progress: bool | None = None,
                     directory: str | None = None) -> dict:
    """One pass of the backbone (:func:`xai_jax.evaluation.predict`): ``features`` (the tap), ``logits`` and
    ``labels``, in dataset order, the backbone in ``compute_dtype`` (e.g. ``"bfloat16"``; default float32), the
    outputs float32. Compute once and reuse for every variant.

    Args:
      directory: an existing, empty folder to keep the features in as a ``.npy`` file
        (:class:`xai_jax.rowstore.DiskRows` of the tap's shape ``[M, ...]``, which :func:`fit_features` reads a
        block at a time), so that host memory does not grow with the dataset; None: in memory, flattened to
        ``[M, S]``. Logits and labels are returned in memory either way.
    """
    from xai_jax import evaluation
    out = evaluation.predict(model, variables, source, (tap,), num_classes=num_classes, batch_size=batch_size,
                             compute_dtype=compute_dtype, progress=progress, directory=directory)
    features = out[tap] if directory is not None else out[tap].reshape(len(out[tap]), -1)
    return {"features": features, "logits": np.asarray(out["logits"]), "labels": np.asarray(out["labels"])}


def extract_splits(model: str, variables, source, test_source, tap: str, *, directory: str | None = None,
                   **kwargs) -> tuple[dict, dict | None]:
    """:func:`extract_features` of a training and an optional held-out source: ``(train, test or None)``.

    Args:
      directory: an existing folder for the features on disk, in its new subfolders ``train/`` and ``test/``
        (refused before any pass if either exists); None: in memory.
      kwargs: :func:`extract_features`'s options (``num_classes``, ``batch_size``, ``compute_dtype``,
        ``progress``).
    """
    _check_split_dirs(directory, ("train",) if test_source is None else ("train", "test"))
    train = extract_features(model, variables, source, tap, directory=_split_dir(directory, "train"), **kwargs)
    return train, None if test_source is None else extract_features(
        model, variables, test_source, tap, directory=_split_dir(directory, "test"), **kwargs)


def _check_split_dirs(directory: str | None, splits: Sequence[str]) -> None:
    """Refuses, before any pass, a ``directory`` that is not an existing folder or already holds one of the
    ``splits``' subfolders (whose files are not ours to replace)."""
    if directory is None:
        return
    if not os.path.isdir(directory):
        raise XaiJaxError(f"the features' directory {directory} is not an existing folder")
    taken = [split for split in splits if os.path.lexists(os.path.join(directory, split))]
    if taken:
        raise XaiJaxError(f"the features' directory {directory} already holds {', '.join(s + '/' for s in taken)}; "
                          "give an empty folder")


def _split_dir(directory: str | None, split: str) -> str | None:
    """A new subfolder ``split`` of ``directory`` (checked by :func:`_check_split_dirs`) for one split's features
    on disk (None: in memory)."""
    if directory is None:
        return None
    os.mkdir(os.path.join(directory, split))
    return os.path.join(directory, split)


def fit_features(config: XNNConfig, features, logits, labels=None, *, classes: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None, test: Mapping[str, np.ndarray] | None = None,
                 meta: dict | None = None) -> XNNResult:
    """Trains the explainers on precomputed activations.

    Args:
      config: the hyper-parameters (validated here).
      features: ``[M, ...]`` activations of the tap (flattened to ``S``), in memory or on disk
        (:class:`xai_jax.rowstore.DiskRows`: read a block or a minibatch at a time; Lasso reads them whole).
      logits: ``[M, K]`` the model's logits (every class: F_cls needs them all).
      labels: ``[M]`` true labels (positives of a one-vs-all explainer); None: the predicted class.
      classes: the logits to explain (default all ``K``).
      class_names: ``K`` names (default "0".."K-1").
      test: optional held-out ``{"features", "logits", "labels"}`` for the ``_test`` metrics.
      meta: provenance stored with the result.

    Returns:
      An :class:`XNNResult`; its orthogonality is on x-feature values (no model to draw heatmaps with).
    """
    config.validate()
    z, logits, labels = check_features(features, logits, labels)
    num_logits = logits.shape[1]
    classes = np.arange(num_logits) if classes is None else np.asarray(classes, np.int64).reshape(-1)
    if len(classes) == 0 or classes.min() < 0 or classes.max() >= num_logits:
        raise XaiJaxError(f"classes must lie in [0, {num_logits}), got {classes.tolist()}")
    class_names = [str(i) for i in range(num_logits)] if class_names is None else [str(c) for c in class_names]
    if len(class_names) != num_logits:
        raise XaiJaxError(f"{len(class_names)} class names for {num_logits} logits")
    if test is not None:
        tz, tl, _ = check_features(test["features"], test["logits"], test.get("labels"), "test set")
        width = lambda a: int(np.prod(a.shape[1:]))  # noqa: E731 - features on disk keep the tap's shape
        if width(tz) != width(z) or tl.shape[1] != num_logits:
            raise XaiJaxError(f"test set: features/logits of width {width(tz)}/{tl.shape[1]}, "
                              f"expected {width(z)}/{num_logits}")
    mean, scale = feature_moments(z)
    targets = logits[:, classes]
    weights = class_weights(labels, classes, config.positive_weight)
    on_disk = isinstance(z, rowstore.DiskRows)
    if config.variant == "lasso":  # scikit-learn's coordinate descent holds the whole matrix, even from disk
        z_std = (np.asarray(z, np.float32).reshape(len(z), -1) - mean) / scale
        params = jax.tree.map(jnp.asarray, lasso_explainers(z_std, targets, weights, config.num_x_features))
        history = np.zeros((0, len(classes)), np.float32)
    elif on_disk:
        params, history = train_explainers(config, z, targets, weights, classes, mean, scale)
    else:
        params, history = train_explainers(config, (z - mean) / scale, targets, weights, classes)
    result = XNNResult(config=config, classes=classes, class_names=class_names, params=params,
                       input_mean=mean, input_scale=scale, metrics={}, orthogonality_basis="x-features",
                       history=history, meta=dict(meta or {}))
    values = metrics.faithfulness(result, z, logits, "train")
    if test is not None:
        values.update(metrics.faithfulness(result, tz, tl, "test"))
    # Without a model there are no heatmaps: correlate each x-feature's values over the (test) samples.
    values.update(metrics.x_feature_orthogonality(result, tz if test is not None else z))
    return dataclasses.replace(result, metrics=metrics.per_class(values, classes, class_names))


def fit(config: XNNConfig, model: str, variables, source, *, test_source=None,
        classes: Sequence[int] | None = None, num_classes: int | None = None, batch_size: int = 128,
        orthogonality_images: int = 512, progress: bool | None = None, meta: dict | None = None,
        features: Mapping | None = None, test_features: Mapping | None = None,
        compute_dtype: str | None = None, directory: str | None = None) -> XNNResult:
    """Runs the backbone once over ``source`` (and ``test_source``), trains, and measures O1/O2 on the
    heatmaps of the first ``orthogonality_images`` test (else training) images (``config.orthogonality``,
    :func:`xai_jax.methods.xnn.heatmap_orthogonality`).

    Args:
      config: the hyper-parameters.
      model, variables: the backbone.
      source, test_source: the training and optional held-out images (:mod:`xai_jax.data` sources).
      classes: the logits to explain (default all).
      num_classes: outputs of the model's head if not its default.
      batch_size: images per backbone pass batch.
      orthogonality_images: images whose heatmaps give O1/O2.
      progress: show progress bars (None: when on a terminal).
      meta: provenance stored with the result.
      features, test_features: the output of :func:`extract_features` for these sources, to reuse one
        backbone pass for several variants.
      compute_dtype: the backbone's dtype in the feature passes (e.g. ``"bfloat16"``); the heatmaps of
        O1/O2 (a few hundred images) stay float32.
      directory: an existing folder for the feature passes' activations on disk (``train/`` and ``test/``
        in it, :func:`extract_features`), so that host memory does not grow with the dataset; None: memory.
        A folder that already holds either is refused before any pass (XaiJaxError).

    Returns:
      an :class:`XNNResult` whose ``orthogonality_basis`` names the heatmaps
      (:func:`xai_jax.methods.xnn.orthogonality_basis`).
    """
    from xai_jax import evaluation
    from xai_jax.data import Subset
    config.validate()
    evaluation.check_taps(model, (config.tap,), num_classes)
    heat_tap = config.heatmap_tap or heatmaps.default_heatmap_tap(model, config.tap, num_classes)
    evaluation.check_taps(model, (heat_tap,), num_classes)
    extracted = {"train": not features, "test": test_source is not None and not test_features}
    _check_split_dirs(directory, [split for split, extract in extracted.items() if extract])
    options = dict(num_classes=num_classes, batch_size=batch_size, compute_dtype=compute_dtype, progress=progress)
    train = features or extract_features(model, variables, source, config.tap, directory=_split_dir(directory, "train"),
                                         **options)
    test = None if test_source is None else test_features or extract_features(
        model, variables, test_source, config.tap, directory=_split_dir(directory, "test"), **options)
    result = fit_features(config, train["features"], train["logits"], train["labels"], classes=classes,
                          class_names=list(source.class_names), test=test,
                          meta={"model": model, "tap": config.tap, "heatmap_tap": heat_tap, **(meta or {})})
    ortho_source = test_source if test_source is not None else source
    ortho_source = Subset(ortho_source, np.arange(min(orthogonality_images, len(ortho_source))))
    basis = heatmaps.orthogonality_basis(config, model)
    ortho = heatmaps.heatmap_orthogonality(result, model, variables, ortho_source, heat_tap, num_classes,
                                              batch_size, progress, basis=basis)
    per_class = {name: {**values, **{k: metrics.number(v[i]) for k, v in ortho.items()}}
                 for i, (name, values) in enumerate(result.metrics.items())}
    return dataclasses.replace(result, metrics=per_class, orthogonality_basis=basis)


class XNN:
    """Fits one-vs-all explanation networks (all classes at once) and explains images with them: the
    functions :func:`fit_features`, :func:`fit` and :func:`xai_jax.methods.xnn.explain` with a config."""

    def __init__(self, config: XNNConfig | None = None):
        self.config = config or XNNConfig()
        self.config.validate()

    def fit_features(self, features, logits, labels=None, **kwargs) -> XNNResult:
        """:func:`fit_features` with this config."""
        return fit_features(self.config, features, logits, labels, **kwargs)

    def fit(self, model: str, variables, source, **kwargs) -> XNNResult:
        """:func:`fit` with this config."""
        return fit(self.config, model, variables, source, **kwargs)

    @staticmethod
    def explain(result: XNNResult, model: str, variables, images, label: int | str, *, method: str = "gradcam",
                num_classes: int | None = None) -> Explanation:
        """:func:`xai_jax.methods.xnn.explain`."""
        return heatmaps.explain(result, model, variables, images, label, method=method,
                                   num_classes=num_classes)
