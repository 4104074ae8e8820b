"""ClaDec and RefAE: what a layer keeps of the input, decoded back to an image and compared with an autoencoder.

The paper (``../shared/papers/cladec.txt``), as specified in DESIGN.md:

1. The classifier ``C`` is frozen. One pass (:func:`xai_jax.engine.map_batches`) stores the activations of the
   explained layer ``L`` (or a consecutive range of its channels, section 6.4) for the training and test sets.
2. A decoder (:class:`xai_jax.models.cladec.Decoder`) learns ``Xhat_E = D(L(X))`` with eq. (1),
   ``(1 - alpha) sum (X - Xhat_E)^2 + alpha CE(C(Xhat_E), Y)`` (Adam 3e-4, as the authors' code).
3. RefAE, the same encoder architecture freshly initialised plus the same decoder, learns ``Xhat_R`` jointly on
   reconstruction only.
4. Comprehensibility is the reconstruction loss (lower is more familiar), ``dRec = mean ||X - Xhat_E|| -
   ||X - Xhat_R||``; fidelity is the test accuracy of an evaluation classifier of the classifier's architecture
   trained on ClaDec's reconstructions minus that of one trained on RefAE's (``dAcc``, section 5).
5. Occlusion analysis (section 6.6): the 16 occlusions of every image, their ClaDec relevance and the Grad-CAM
   relevance at the same layer, in one ``vmap``; accuracy of ``C`` with the least / most relevant square occluded.

Kernels: :mod:`xai_jax.kernels.cladec`, :func:`xai_jax.kernels.attribution.grad_cam`. Reported reconstruction
losses are per-pixel mean squared errors (the authors' ``nn.MSELoss``, the scale of tables 2-3); the training
loss uses the reduction of :attr:`ClaDecConfig.reduction` (default the paper's sum).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xai_jax import engine, evaluation, models, train
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import cladec as K
from xai_jax.kernels.attribution import grad_cam, normalise_maps, upsample_maps
from xai_jax.models.cladec import Decoder, layer_tap, refae_apply
from xai_jax.outputs import NPZ_MARKER, atomic_dir, save_npz, write_files
from xai_jax.readers import read_json, read_npz, reading
from xai_jax.weights import load_variables, save_variables

REDUCTIONS = ("sum", "mean")
#: the kinds of output folder a ClaDec result and an occlusion analysis are (see :mod:`xai_jax.outputs`)
KIND, OCCLUSION_KIND = "cladec", "cladec.occlusion"


@dataclasses.dataclass(frozen=True)
class ClaDecConfig:
    """Hyper-parameters of ClaDec; the defaults are the paper's (64 epochs, Adam 3e-4, alpha 0).

    Attributes:
      layer: ``-1 .. -5`` counted from the output (see :data:`xai_jax.models.cladec.LAYER_TAPS`) or a tap name.
      neurons: explain only channels ``[start, stop)`` of the layer (nested or disjoint ranges, section 6.4);
        ``None``: the whole layer. RefAE then decodes the same channel range of its own encoder.
      alpha: weight of the classification loss in eq. (1); the authors' code uses 0.001, the paper sweeps 0.9-1.
      decoder_base: channels of the decoder's last hidden transposed convolution (earlier ones double it).
      decoder_widths: explicit hidden widths of the decoder (input side first), overriding ``decoder_base``.
      epochs: decoder (and RefAE) epochs.
      batch_size: decoder (and RefAE) batch size.
      learning_rate: Adam's; ``weight_decay`` is added to the gradient as in PyTorch's Adam (authors: 1e-5).
      reduction: of eq. (1)'s reconstruction term, ``"sum"`` (paper) or ``"mean"`` (authors' code).
      refae: also train RefAE (needed for dRec, dAcc).
      eval_epochs: epochs of the evaluation classifiers (0: skip the fidelity evaluation).
      eval_batch_size: their batch size.
      seed: all randomness (initialisation, shuffling) derives from it.
    """

    layer: int | str = -2
    neurons: tuple[int, int] | None = None
    alpha: float = 0.0
    decoder_base: int = 64
    decoder_widths: tuple[int, ...] | None = None
    epochs: int = 64
    batch_size: int = 128
    learning_rate: float = 3e-4
    weight_decay: float = 1e-5
    reduction: str = "sum"
    refae: bool = True
    eval_epochs: int = 64
    eval_batch_size: int = 128
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise XaiJaxError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.reduction not in REDUCTIONS:
            raise XaiJaxError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {self.reduction!r}")
        for name in ("epochs", "batch_size", "decoder_base", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise XaiJaxError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_epochs < 0:
            raise XaiJaxError(f"eval_epochs must be >= 0, got {self.eval_epochs}")
        if self.neurons is not None:
            start, stop = self.neurons
            if not 0 <= start < stop:
                raise XaiJaxError(f"neurons must be a range start:stop with 0 <= start < stop, got {start}:{stop}")


def nested_ranges(channels: int, sizes) -> list[tuple[int, int]]:
    """Nested channel subsets ``[0, s)`` for each size (fig. 13: smaller subsets inside larger ones)."""
    return [(0, int(s)) for s in sizes if 0 < s <= channels]


def disjoint_ranges(channels: int, size: int, count: int | None = None) -> list[tuple[int, int]]:
    """Disjoint consecutive channel subsets of ``size`` (fig. 14), at most ``count`` of them."""
    ranges = [(s, s + size) for s in range(0, channels - size + 1, size)]
    return ranges[:count] if count else ranges


# --- shared pieces ---------------------------------------------------------------------------------------------

def to_unit(spec, images: jax.Array) -> jax.Array:
    """Images at the model's input size with pixels in [0, 1]: the targets the decoders reconstruct."""
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)
    return models.preprocess(spec, images) * std + mean


def _optimizer(config: ClaDecConfig) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))


def sgd_schedule(epochs: int, steps_per_epoch: int, lr: float = 0.1) -> optax.Schedule:
    """The paper's classifier schedule: lr 0.1, x0.1 twice, at the authors' period ``E//3 + E//10 + 2`` epochs
    (epochs 29 and 58 of 64)."""
    period = epochs // 3 + epochs // 10 + 2
    bounds = {period * k * steps_per_epoch: 0.1 for k in (1, 2) if period * k < epochs}
    return optax.piecewise_constant_schedule(lr, bounds)


def train_classifier(model: str, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int = 128,
                     key: jax.Array, test: tuple[np.ndarray, np.ndarray] | None = None, lr: float = 0.1,
                     progress: bool | None = None, desc: str = "classifier") -> tuple[dict, dict]:
    """Trains a ClaDec classifier (the one to explain, or an evaluation classifier) with the paper's recipe:
    SGD momentum 0.9, weight decay 1e-4, lr 0.1 decayed x0.1 twice; then the batch-norm statistics are
    recomputed for the final weights (:func:`xai_jax.train.recalibrate_batch_stats`), without which a ResNet-10
    trained for a few epochs scores anywhere between 0.65 and 0.94 on MNIST depending on the seed alone.

    Args:
      model: registry name of the architecture.
      images: ``[N, H, W, C]`` uint8 or [0, 1] floats (reconstructions), resized on device to 32x32.
      labels: ``[N]`` ints.
      epochs, batch_size, key, lr: the schedule.
      test: ``(images, labels)`` to report the test accuracy of.

    Returns:
      ``(variables, {"train_accuracy", "test_accuracy", "history"})``.
    """
    spec = models.get(model)
    init = models.init_variables(spec, jax.random.fold_in(key, 0))
    steps = max(1, len(images) // min(batch_size, len(images)))
    optimizer = optax.chain(optax.add_decayed_weights(1e-4),
                            optax.sgd(sgd_schedule(epochs, steps, lr), momentum=0.9))
    state = train.init_state(init["params"], optimizer, {k: v for k, v in init.items() if k != "params"})
    loss_fn = train.classifier_loss(model)
    data = {"images": np.asarray(images), "labels": np.asarray(labels, np.int32)}
    state, history = train.fit(loss_fn, optimizer, state, data, batch_size=batch_size, epochs=epochs,
                               key=jax.random.fold_in(key, 1), progress=progress, desc=desc)
    state = state.replace(model_state=train.recalibrate_batch_stats(loss_fn, state.params, state.model_state, data,
                                                                    batch_size=batch_size))
    variables = train.variables_of(state)
    info = {"train_accuracy": history.train[-1]["accuracy"], "history": history.train}
    if test is not None:
        info["test_accuracy"] = float(classifier_accuracy(model, variables, *test))
    return variables, info


# Rows per call of the maps over stored arrays: the same for every call, so that each map compiles once.
_CHUNK = 256


@functools.lru_cache(maxsize=None)
def _logits_fn(model: str):
    """``fn(rows, variables) -> logits`` for :func:`engine.map_arrays`, one object per model (compiled once)."""
    forward = models.make_forward(model)

    def fn(rows, variables):
        return forward(rows["images"], variables)["logits"]

    return fn


def classifier_accuracy(model: str, variables, images: np.ndarray, labels: np.ndarray) -> float:
    logits = engine.map_arrays(_logits_fn(model), {"images": images}, variables, chunk=_CHUNK)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


@functools.lru_cache(maxsize=None)
def _activation_fn(model: str, tap: str):
    spec = models.get(model)
    forward = models.make_forward(model, (tap,))

    def fn(batch, variables):
        return {"x": to_unit(spec, batch["images"]), "code": forward(batch["images"], variables)[tap],
                "labels": batch["labels"]}

    return fn


def layer_activations(model: str, variables, source: Source, tap: str, *, batch_size: int = 256,
                      progress: bool | None = None) -> dict[str, np.ndarray]:
    """One pass over ``source``: ``{"x": targets in [0, 1] at 32x32, "code": the tap, "labels"}`` (NumPy)."""
    return engine.collect(engine.map_batches(_activation_fn(model, tap), source, variables, batch_size=batch_size,
                                             desc=f"{tap} activations", progress=progress))


# --- the result ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ClaDecResult:
    """Trained ClaDec decoder (and RefAE) for one layer, with the evaluation numbers.

    Attributes:
      config: the :class:`ClaDecConfig`.
      model: registry name of the explained classifier.
      tap: the explained tap.
      code_shape: per-image shape of the decoder's input (after the neuron subset).
      decoder: Flax variables of the ClaDec decoder.
      refae: ``{"encoder": ..., "decoder": ...}`` Flax variables of RefAE, or ``None``.
      fill: ``[C]`` training mean per channel in [0, 1], the occlusion fill.
      metrics: floats: ``rec_loss_cladec``, ``rec_loss_refae`` (per-pixel MSE on the test set), ``d_rec``,
        ``acc_eval_cladec``, ``acc_eval_refae``, ``d_acc``, ``classifier_accuracy``, and the final train losses.
      history: per-epoch training metrics of the decoder (``"cladec"``) and RefAE (``"refae"``).
      meta: free-form provenance (weights path, data).
    """

    config: ClaDecConfig
    model: str
    tap: str
    code_shape: tuple[int, ...]
    decoder: Any
    refae: Any
    fill: np.ndarray
    metrics: dict = dataclasses.field(default_factory=dict)
    history: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def decoder_module(self) -> Decoder:
        spec = models.get(self.model)
        return Decoder(spec.input_shape[-1], spec.input_shape[0], self.config.decoder_base,
                       self.config.decoder_widths)

    def _code(self, code):
        n = self.config.neurons
        return code if n is None else code[..., n[0]:n[1]]

    def reconstruct(self, variables, images) -> dict[str, np.ndarray]:
        """``{"x", "cladec", "refae" (if trained), "logits"}`` for raw images, jitted over the whole batch."""
        return {k: np.asarray(v) for k, v in _reconstruct_fn(self.model, self.tap, self.config.neurons,
                                                            self.decoder_module, self.refae is not None)(
            jnp.asarray(images), variables, self.decoder, self.refae).items()}

    def summary(self) -> dict:
        return {"model": self.model, "tap": self.tap, "layer": self.config.layer, "code_shape": list(self.code_shape),
                "config": dataclasses.asdict(self.config), "metrics": self.metrics, "fill": self.fill.tolist(),
                "meta": self.meta}

    def save(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None) -> None:
        """Writes ``cladec.json``, ``history.json``, ``decoder/`` and ``refae/`` (orbax) atomically."""
        with atomic_dir(directory, KIND) as tmp:
            self.write(tmp, extra_files)

    def write(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None) -> None:
        """Writes the result's files into ``directory``, a folder being built by :func:`xai_jax.outputs.atomic_dir`
        (so that a command can put more beside them, e.g. the classifier it trained)."""
        with open(os.path.join(directory, "cladec.json"), "w") as f:
            json.dump(self.summary(), f, indent=2)
        with open(os.path.join(directory, "history.json"), "w") as f:
            json.dump(self.history, f)
        save_variables(os.path.join(directory, "decoder"), self.decoder, {"model": self.model, "tap": self.tap})
        if self.refae is not None:
            save_variables(os.path.join(directory, "refae"), self.refae, {"model": self.model, "tap": self.tap})
        write_files(directory, extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ClaDecResult":
        path = os.path.join(directory, "cladec.json")
        if not os.path.isfile(path):
            raise XaiJaxError(f"{directory}: not a ClaDec result (no cladec.json; write one with `xai-jax cladec "
                              "train --out DIR`)")
        s = read_json(path, "ClaDec result file")
        decoder, _ = load_variables(os.path.join(directory, "decoder"))
        refae = load_variables(os.path.join(directory, "refae"))[0] if os.path.isdir(
            os.path.join(directory, "refae")) else None
        history = {}
        if os.path.isfile(os.path.join(directory, "history.json")):
            history = read_json(os.path.join(directory, "history.json"), "ClaDec result file")
        with reading(directory, "ClaDec result"):
            config = dict(s["config"])
            for key in ("neurons", "decoder_widths"):
                if config.get(key) is not None:
                    config[key] = tuple(config[key])
            return cls(config=ClaDecConfig(**config), model=s["model"], tap=s["tap"],
                       code_shape=tuple(int(d) for d in s["code_shape"]), decoder=decoder, refae=refae,
                       fill=np.asarray(s["fill"], np.float32), metrics=s["metrics"], history=history,
                       meta=dict(s.get("meta", {})))


@functools.lru_cache(maxsize=None)
def _reconstruct_fn(model: str, tap: str, neurons, decoder: Decoder, with_refae: bool):
    spec = models.get(model)
    forward = models.make_forward(model, (tap,))
    encoder = spec.module()

    @jax.jit
    def fn(images, variables, decoder_vars, refae_vars):
        out = forward(images, variables)
        code = out[tap] if neurons is None else out[tap][..., neurons[0]:neurons[1]]
        result = {"x": to_unit(spec, images), "cladec": decoder.apply(decoder_vars, code), "logits": out["logits"]}
        if with_refae:
            result["refae"] = refae_apply(encoder, decoder, tap, refae_vars, models.preprocess(spec, images),
                                          neurons=neurons)[0]
        return result

    return fn


# --- the method ------------------------------------------------------------------------------------------------

class ClaDec:
    """Trains the decoder of one layer (and RefAE) and evaluates comprehensibility and fidelity."""

    def __init__(self, config: ClaDecConfig | None = None):
        self.config = config or ClaDecConfig()
        self.config.validate()

    def check(self, model: str) -> str:
        """Checks the configuration against ``model`` without touching data: the layer exists, the neuron range
        fits its channels and the decoder can be built on its code. Returns the layer's tap."""
        config = self.config
        tap = layer_tap(model, config.layer) if model in _cladec_models() else str(config.layer)
        evaluation.check_taps(model, (tap,))
        full_shape = models.tap_shapes(model)[tap]
        if config.neurons is not None and config.neurons[1] > full_shape[-1]:
            raise XaiJaxError(f"neurons {config.neurons[0]}:{config.neurons[1]} out of range: {tap} has "
                              f"{full_shape[-1]} channels")
        spec = models.get(model)
        code_shape = full_shape[:-1] + ((config.neurons[1] - config.neurons[0],) if config.neurons else full_shape[-1:])
        decoder = Decoder(spec.input_shape[-1], spec.input_shape[0], config.decoder_base, config.decoder_widths)
        try:
            jax.eval_shape(lambda: decoder.init(jax.random.key(0), jnp.zeros((1, *code_shape), jnp.float32)))
        except XaiJaxError:
            raise
        except (ValueError, TypeError) as err:
            raise XaiJaxError(f"no decoder fits {tap} of {model} ({' '.join(str(err).split())[:200]})") from None
        return tap

    def fit(self, model: str, variables, train_set: Source, test_set: Source, *, progress: bool | None = None,
            meta: dict | None = None, activations: tuple[dict, dict] | None = None) -> ClaDecResult:
        """Trains ClaDec's decoder on the frozen classifier's activations, RefAE, and evaluates both.

        Args:
          model: registry name of a ClaDec classifier (:data:`xai_jax.models.cladec.MODELS`) or any registered
            model whose input is square with a power-of-two side.
          variables: the trained classifier's variables.
          train_set, test_set: labelled images (resized on device to the model's input).
          progress: progress bars and per-epoch lines.
          meta: provenance stored with the result.
          activations: ``(train, test)`` from :func:`layer_activations` to reuse (several configs, one layer).

        Returns:
          a :class:`ClaDecResult`.
        """
        config = self.config
        spec = models.get(model)
        tap = self.check(model)
        if len(train_set) < 1 or len(test_set) < 1:
            raise XaiJaxError("ClaDec needs non-empty training and test sets")
        key = jax.random.key(config.seed)
        if activations is None:
            activations = (layer_activations(model, variables, train_set, tap, progress=progress),
                           layer_activations(model, variables, test_set, tap, progress=progress))
        tr, te = activations
        neurons = config.neurons
        slice_code = (lambda c: c) if neurons is None else (lambda c: c[..., neurons[0]:neurons[1]])
        tr_code = slice_code(tr["code"])
        fill = tr["x"].reshape(-1, tr["x"].shape[-1]).mean(0).astype(np.float32)
        # ClaDec's and RefAE's decoders start at the training images' mean (see Decoder.output_mean)
        decoder = Decoder(spec.input_shape[-1], spec.input_shape[0], config.decoder_base, config.decoder_widths,
                          output_mean=tuple(float(v) for v in fill))
        dec_init = decoder.init(jax.random.fold_in(key, 1), jnp.asarray(tr_code[:1]))

        # ClaDec: only the decoder learns; the classifier is closed over, frozen and in inference mode.
        forward = models.make_forward(model)
        alpha, reduction = float(config.alpha), config.reduction

        def cladec_loss(params, model_state, batch, key):
            xhat = decoder.apply({"params": params}, batch["code"])
            logits = forward(xhat, variables)["logits"] if alpha > 0 else None
            loss, metrics = K.cladec_loss(batch["x"], xhat, logits, batch["labels"], alpha, reduction)
            return loss, (model_state, metrics)

        optimizer = _optimizer(config)
        state, hist = train.fit(cladec_loss, optimizer, train.init_state(dec_init["params"], optimizer),
                                {"code": tr_code, "x": tr["x"], "labels": tr["labels"]},
                                batch_size=config.batch_size, epochs=config.epochs, key=jax.random.fold_in(key, 2),
                                progress=progress, desc="ClaDec decoder")
        decoder_vars = {"params": state.params}
        history = {"cladec": hist.train}

        refae_vars = None
        if config.refae:
            refae_vars, history["refae"] = self._fit_refae(spec, decoder, tap, tr["x"], tr_code, key, progress)

        result = ClaDecResult(config=config, model=model, tap=tap, code_shape=tuple(tr_code.shape[1:]),
                              decoder=jax.tree.map(np.asarray, decoder_vars),
                              refae=None if refae_vars is None else jax.tree.map(np.asarray, refae_vars),
                              fill=fill, history=history, meta=dict(meta or {}))
        result.metrics = self._evaluate(result, variables, tr, te, key, progress)
        return result

    def _fit_refae(self, spec, decoder: Decoder, tap: str, x_train: np.ndarray, code_like: np.ndarray, key,
                   progress):
        config = self.config
        encoder = spec.module()
        enc_init = models.init_variables(spec, jax.random.fold_in(key, 3))
        dec_init = decoder.init(jax.random.fold_in(key, 4), jnp.asarray(code_like[:1]))
        mean = jnp.asarray(spec.mean, jnp.float32)
        std = jnp.asarray(spec.std, jnp.float32)
        reduction = config.reduction

        def refae_loss(params, model_state, batch, key):
            variables = {"encoder": {"params": params["encoder"], **model_state}, "decoder": {"params": params["decoder"]}}
            xhat, stats = refae_apply(encoder, decoder, tap, variables, (batch["x"] - mean) / std, train=True,
                                      neurons=config.neurons, rngs={"dropout": key})
            rec = jnp.mean(K.reconstruction_loss(batch["x"], xhat, reduction))
            new_state = {"batch_stats": stats} if stats is not None else model_state
            return rec, (new_state, {"loss": rec, "reconstruction": rec})

        params = {"encoder": enc_init["params"], "decoder": dec_init["params"]}
        model_state = {k: v for k, v in enc_init.items() if k != "params"}
        optimizer = _optimizer(config)
        state, hist = train.fit(refae_loss, optimizer, train.init_state(params, optimizer, model_state),
                                {"x": x_train}, batch_size=config.batch_size, epochs=config.epochs,
                                key=jax.random.fold_in(key, 5), progress=progress, desc="RefAE")
        # the encoder's batch norm, as for the classifiers
        state = state.replace(model_state=train.recalibrate_batch_stats(
            refae_loss, state.params, state.model_state, {"x": x_train}, batch_size=config.batch_size))
        variables = {"encoder": {"params": state.params["encoder"], **state.model_state},
                     "decoder": {"params": state.params["decoder"]}}
        return variables, hist.train

    def _evaluate(self, result: ClaDecResult, variables, tr: dict, te: dict, key, progress) -> dict:
        config = self.config
        rec_tr = reconstruct_codes(result, tr)
        rec_te = reconstruct_codes(result, te)
        metrics = {"n_train": int(len(tr["x"])), "n_test": int(len(te["x"])),
                   "rec_loss_cladec": float(np.mean(np.square(te["x"] - rec_te["cladec"]))),
                   "train_loss_cladec": result.history["cladec"][-1]["loss"],
                   "classifier_accuracy": classifier_accuracy(result.model, variables, te["x"], te["labels"]),
                   "classifier_accuracy_on_cladec": classifier_accuracy(result.model, variables, rec_te["cladec"],
                                                                        te["labels"])}
        if "refae" in rec_te:
            metrics["rec_loss_refae"] = float(np.mean(np.square(te["x"] - rec_te["refae"])))
            metrics["train_loss_refae"] = result.history["refae"][-1]["loss"]
            metrics["d_rec"] = float(K.d_rec(jnp.asarray(te["x"]), jnp.asarray(rec_te["cladec"]),
                                             jnp.asarray(rec_te["refae"])))
        if config.eval_epochs > 0:
            # Paired: both evaluation classifiers start from the same weights and see the same batches, so dAcc
            # measures the reconstructions and not the draw (at short schedules the draw alone moves accuracy
            # by more than 0.2).
            for which in (k for k in ("cladec", "refae") if k in rec_te):
                _, info = train_classifier(result.model, rec_tr[which], tr["labels"], epochs=config.eval_epochs,
                                           batch_size=config.eval_batch_size, key=jax.random.fold_in(key, 10),
                                           test=(rec_te[which], te["labels"]), progress=progress,
                                           desc=f"C_eval on {which}")
                metrics[f"acc_eval_{which}"] = info["test_accuracy"]
            if "acc_eval_refae" in metrics:
                metrics["d_acc"] = metrics["acc_eval_cladec"] - metrics["acc_eval_refae"]
        return metrics


@functools.lru_cache(maxsize=None)
def _cladec_models():
    from xai_jax.models.cladec import MODELS
    return MODELS


@functools.lru_cache(maxsize=None)
def _decode_fns(model: str, tap: str, neurons, decoder: Decoder, with_refae: bool):
    """``fn(rows, (decoder_vars, refae_vars)) -> {"cladec"[, "refae"]}`` for :func:`engine.map_arrays`."""
    spec = models.get(model)
    encoder = spec.module()
    mean = jnp.asarray(spec.mean, jnp.float32)
    std = jnp.asarray(spec.std, jnp.float32)

    def fn(batch, variables):
        decoder_vars, refae_vars = variables
        out = {"cladec": decoder.apply(decoder_vars, batch["code"])}
        if with_refae:
            out["refae"] = refae_apply(encoder, decoder, tap, refae_vars, (batch["x"] - mean) / std,
                                       neurons=neurons)[0]
        return out

    return fn


def reconstruct_codes(result: ClaDecResult, acts: dict) -> dict[str, np.ndarray]:
    """Reconstructions of stored activations (``layer_activations`` output): ``{"cladec", "refae"}``."""
    fn = _decode_fns(result.model, result.tap, result.config.neurons, result.decoder_module,
                     result.refae is not None)
    return engine.map_arrays(fn, {"code": result._code(acts["code"]), "x": acts["x"]},
                             (result.decoder, result.refae), chunk=_CHUNK)


# --- occlusion analysis ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class OcclusionResult:
    """Section 6.6 for one layer: which of the 16 squares each method deems least / most relevant, and the
    classifier's accuracy with that square occluded (tables 7-8).

    Attributes:
      relevance_cladec, relevance_gradcam: ``[N, 16]``.
      min_cladec, max_cladec, min_gradcam, max_gradcam: ``[N]`` chosen occlusion per image.
      correct: ``[N, 16]`` whether the classifier is right with each square occluded.
      correct_clean: ``[N]`` whether it is right on the unoccluded image.
      labels: ``[N]``.
      accuracy: ``{"cladec_min", "cladec_max", "cladec_d_acc", "gradcam_min", ..., "clean"}``.
    """

    relevance_cladec: np.ndarray
    relevance_gradcam: np.ndarray
    min_cladec: np.ndarray
    max_cladec: np.ndarray
    min_gradcam: np.ndarray
    max_gradcam: np.ndarray
    correct: np.ndarray
    correct_clean: np.ndarray
    labels: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, float]:
        rows = np.arange(len(self.labels))
        out = {"clean": float(self.correct_clean.mean())}
        for method in ("cladec", "gradcam"):
            low = float(self.correct[rows, getattr(self, f"min_{method}")].mean())
            high = float(self.correct[rows, getattr(self, f"max_{method}")].mean())
            out.update({f"{method}_min": low, f"{method}_max": high, f"{method}_d_acc": low - high})
        return out

    def save(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "meta"}
        with atomic_dir(directory, OCCLUSION_KIND) as tmp:
            save_npz(os.path.join(tmp, "occlusion.npz"), arrays)
            with open(os.path.join(tmp, "occlusion.json"), "w") as f:
                json.dump({"accuracy": self.accuracy, "meta": self.meta}, f, indent=2)
            write_files(tmp, extra_files)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "OcclusionResult":
        path = os.path.join(directory, "occlusion.npz")
        if not os.path.isfile(path):
            raise XaiJaxError(f"{directory}: not an occlusion result (no occlusion.npz)")
        arrays = read_npz(path, "occlusion result file")
        arrays.pop(NPZ_MARKER, None)
        meta = read_json(os.path.join(directory, "occlusion.json"), "occlusion result file").get("meta", {})
        with reading(directory, "occlusion result"):
            return cls(**arrays, meta=dict(meta))


@functools.lru_cache(maxsize=None)
def occlusion_step(model: str, tap: str, neurons, decoder: Decoder):
    """``fn(batch, params) -> per-image arrays`` for :func:`xai_jax.engine.map_batches`: Grad-CAM at ``tap`` for
    the predicted class (one ``jax.vjp``), the 16 occluded images through classifier and decoder in one ``vmap``,
    both relevances and the min/max choice. ``params = {"classifier", "decoder", "fill", "key"}``."""
    spec = models.get(model)
    forward = models.make_forward(model, (tap,))
    size = spec.input_shape[:2]
    masks = jnp.asarray(K.occlusion_masks(*size))
    select = (lambda c: c) if neurons is None else (lambda c: c[..., neurons[0]:neurons[1]])

    def fn(batch, params):
        x = to_unit(spec, batch["images"])
        variables = params["classifier"]
        zero = {tap: jnp.zeros((x.shape[0], *models.tap_shapes(model)[tap]), jnp.float32)}
        out, pullback = jax.vjp(lambda o: forward(x, variables, o), zero)
        predicted = jnp.argmax(out["logits"], -1)
        seed = {"logits": jax.nn.one_hot(predicted, out["logits"].shape[-1]), tap: jnp.zeros_like(out[tap])}
        (grads,) = pullback(seed)
        acts, g = out[tap], grads[tap]
        if acts.ndim == 2:  # a dense layer has no spatial extent: a 1x1 map, uniform after upsampling
            acts, g = acts[:, None, None, :], g[:, None, None, :]
        cam = normalise_maps(upsample_maps(grad_cam(acts, g), size))
        xhat = params["decoder_module_apply"](select(acts.reshape(out[tap].shape)))

        def occluded_pass(xo):
            o = forward(xo, variables)
            return o["logits"], params["decoder_module_apply"](select(o[tap]))

        logits_occ, xhat_occ = jax.vmap(occluded_pass)(K.occlude(x, masks, params["fill"]))
        rel_cladec = K.cladec_relevance(xhat, xhat_occ, masks)
        rel_gradcam = K.gradcam_relevance(cam, masks)
        key = jax.random.fold_in(params["key"], batch["index"][0])
        k1, k2 = jax.random.split(key)
        min_c, max_c = K.select_min_max(rel_cladec, k1)
        min_g, max_g = K.select_min_max(rel_gradcam, k2)
        return {"relevance_cladec": rel_cladec, "relevance_gradcam": rel_gradcam, "min_cladec": min_c,
                "max_cladec": max_c, "min_gradcam": min_g, "max_gradcam": max_g,
                "correct": (jnp.argmax(logits_occ, -1) == batch["labels"][None]).T,
                "correct_clean": predicted == batch["labels"], "labels": batch["labels"]}

    return fn


def occlusion_analysis(result: ClaDecResult, variables, source: Source, *, key: jax.Array | None = None,
                       batch_size: int = 64, progress: bool | None = None) -> OcclusionResult:
    """Runs section 6.6's occlusion analysis of ``result``'s layer over ``source`` (one streamed pass)."""
    if len(source) < 1:
        raise XaiJaxError("occlusion analysis needs at least one image")
    key = jax.random.key(result.config.seed + 1) if key is None else key
    decoder = result.decoder_module
    step = _occlusion_map_fn(result.model, result.tap, result.config.neurons, decoder)
    params = {"classifier": variables, "decoder": result.decoder, "fill": jnp.asarray(result.fill), "key": key}
    out = engine.collect(engine.map_batches(step, source, params, batch_size=batch_size, desc="occlusions",
                                            progress=progress))
    return OcclusionResult(**out, meta={"model": result.model, "tap": result.tap, "layer": result.config.layer})


@functools.lru_cache(maxsize=None)
def _occlusion_map_fn(model: str, tap: str, neurons, decoder: Decoder):
    inner = occlusion_step(model, tap, neurons, decoder)

    def fn(batch, params):
        apply = functools.partial(decoder.apply, params["decoder"])
        return inner(batch, {**params, "decoder_module_apply": apply})

    return fn
