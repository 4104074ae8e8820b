"""The method: :class:`ClaDec` checks a configuration against a model, then trains and evaluates one layer."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import evaluation, models
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.methods.cladec.config import ClaDecConfig
from xai_jax.methods.cladec.metrics import evaluate
from xai_jax.methods.cladec.passes import (channel_mean, layer_activations, reconstruct_codes, select_neurons,
                                           subfolder)
from xai_jax.methods.cladec.result import ClaDecResult
from xai_jax.methods.cladec.training import fit_decoder, fit_refae
from xai_jax.models.cladec import Decoder, layer_tap


@functools.lru_cache(maxsize=None)
def _cladec_models():
    from xai_jax.models.cladec import MODELS
    return MODELS


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
            meta: dict | None = None, activations: tuple[dict, dict] | None = None,
            directory: str | None = None) -> ClaDecResult:
        """Trains ClaDec's decoder on the frozen classifier's activations, RefAE, and evaluates both.

        Args:
          model: registry name of a ClaDec classifier (:data:`xai_jax.models.cladec.MODELS`) or any registered
            model whose input is square with a power-of-two side.
          variables: the trained classifier's variables.
          train_set, test_set: labelled images (resized on device to the model's input).
          progress: progress bars and per-epoch lines.
          meta: provenance stored with the result.
          activations: ``(train, test)`` from :func:`layer_activations` to reuse (several configs, one layer).
          directory: an existing folder for every per-image array of the fit (the activations, unless given,
            and the reconstructions the evaluation trains on), as :class:`xai_jax.rowstore.DiskRows` files in
            its subfolders ``train``, ``test``, ``train_recs``, ``test_recs``, read back a block or a minibatch
            at a time, so that host memory does not grow with the dataset; the caller removes the folder.
            None: in memory.

        Returns:
          a new :class:`ClaDecResult`.
        """
        config = self.config
        spec = models.get(model)
        tap = self.check(model)
        if len(train_set) < 1 or len(test_set) < 1:
            raise XaiJaxError("ClaDec needs non-empty training and test sets")
        key = jax.random.key(config.seed)
        if activations is None:
            activations = (layer_activations(model, variables, train_set, tap, progress=progress,
                                             directory=subfolder(directory, "train")),
                           layer_activations(model, variables, test_set, tap, progress=progress,
                                             directory=subfolder(directory, "test")))
        tr, te = activations
        first_code = select_neurons(np.asarray(tr["code"][:1]), config.neurons)  # the decoder's input, one row
        fill = channel_mean(tr["x"])
        # The decoder that is applied, and the one that initialises it: ClaDec's and RefAE's decoders start at the
        # training images' mean (Decoder.output_mean), which only the initialisation reads, so the training steps
        # stay the same program for every data set.
        decoder = Decoder(spec.input_shape[-1], spec.input_shape[0], config.decoder_base, config.decoder_widths)
        decoder_init = decoder.clone(output_mean=tuple(float(v) for v in fill))
        dec_init = decoder_init.init(jax.random.fold_in(key, 1), jnp.asarray(first_code))
        # the whole layer's codes, read as stored: fit_decoder takes the neuron range on device
        decoder_vars, cladec_history = fit_decoder(config, model, variables, decoder, dec_init,
                                                   {"code": tr["code"], "x": tr["x"], "labels": tr["labels"]},
                                                   jax.random.fold_in(key, 2), progress)
        history = {"cladec": cladec_history}
        refae_vars = None
        if config.refae:
            refae_vars, history["refae"] = fit_refae(config, model, tap, decoder, decoder_init, tr["x"],
                                                     first_code, key, progress)
        result = ClaDecResult(config=config, model=model, tap=tap, code_shape=tuple(first_code.shape[1:]),
                              decoder=jax.tree.map(np.asarray, decoder_vars), fill=fill,
                              refae=None if refae_vars is None else jax.tree.map(np.asarray, refae_vars),
                              history=history, meta=dict(meta or {}))
        # the training set's reconstructions are only read by the evaluation classifiers
        train_recs = (reconstruct_codes(result, tr, subfolder(directory, "train_recs")) if config.eval_epochs > 0
                      else {})
        test_recs = reconstruct_codes(result, te, subfolder(directory, "test_recs"))
        metrics = evaluate(result, variables, tr, te, train_recs, test_recs, key=key, eval_epochs=config.eval_epochs,
                           eval_batch_size=config.eval_batch_size, progress=progress)
        return dataclasses.replace(result, metrics=metrics)
