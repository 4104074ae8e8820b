"""Section 6.6's occlusion analysis: the 16 occlusions of every image, their ClaDec and Grad-CAM relevance, and
the classifier's accuracy with the least / most relevant square occluded, in one streamed pass."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xai_jax import compiler_options, engine, models
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import cladec as K
from xai_jax.kernels.attribution import grad_cam, normalise_maps, upsample_maps
from xai_jax.methods.cladec.passes import select_neurons, to_unit
from xai_jax.methods.cladec.result import ClaDecResult, OcclusionResult
from xai_jax.models.cladec import Decoder


@functools.lru_cache(maxsize=None)
def occlusion_step(model: str, tap: str, neurons, decoder: Decoder):
    """``fn(batch, params) -> per-image arrays`` for :func:`xai_jax.engine.map_batches`: Grad-CAM at ``tap`` for
    the predicted class (one ``jax.vjp``), the 16 occluded images through classifier and decoder in one ``vmap``,
    both relevances and the min/max choice.

    Args:
      model, tap, neurons: the explained layer (and channel range).
      decoder: the decoder module.

    Returns:
      ``fn(batch, params)`` with ``batch = {"images", "labels", "index"}`` and
      ``params = {"classifier", "decoder" (variables), "fill" ([C]), "key"}``; built once per argument set, so
      every pass with it shares one compiled program per batch shape.
    """
    spec = models.get(model)
    forward = models.make_forward(model, (tap,))
    size = spec.input_shape[:2]
    masks = jnp.asarray(K.occlusion_masks(*size))

    def fn(batch, params):
        x = to_unit(spec, batch["images"])
        variables = params["classifier"]
        decode = functools.partial(decoder.apply, params["decoder"])
        zero = {tap: jnp.zeros((x.shape[0], *models.tap_shapes(model)[tap]), jnp.float32)}
        out, pullback = jax.vjp(lambda o: forward(x, variables, o), zero)
        predicted = jnp.argmax(out["logits"], -1)
        seed = {"logits": jax.nn.one_hot(predicted, out["logits"].shape[-1]), tap: jnp.zeros_like(out[tap])}
        (grads,) = pullback(seed)
        acts, g = out[tap], grads[tap]
        if acts.ndim == 2:  # a dense layer has no spatial extent: a 1x1 map, uniform after upsampling
            acts, g = acts[:, None, None, :], g[:, None, None, :]
        cam = normalise_maps(upsample_maps(grad_cam(acts, g), size))
        xhat = decode(select_neurons(acts.reshape(out[tap].shape), neurons))

        def occluded_pass(xo):
            o = forward(xo, variables)
            return o["logits"], decode(select_neurons(o[tap], neurons))

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

    return compiler_options.without_library_fusion(fn)


def occlusion_analysis(result: ClaDecResult, variables, source: Source, *, key: jax.Array | None = None,
                       batch_size: int = 64, progress: bool | None = None) -> OcclusionResult:
    """Runs section 6.6's occlusion analysis of ``result``'s layer over ``source`` (one streamed pass).

    Args:
      result: the trained decoder of the layer.
      variables: the classifier's.
      source: labelled images.
      key: breaks ties between equally relevant squares (default from the result's seed).
      batch_size: images per step (each is 17 forward passes).

    Returns:
      a new :class:`OcclusionResult`.
    """
    if len(source) < 1:
        raise XaiJaxError("occlusion analysis needs at least one image")
    key = jax.random.key(result.config.seed + 1) if key is None else key
    step = occlusion_step(result.model, result.tap, result.config.neurons, result.decoder_module)
    params = {"classifier": variables, "decoder": result.decoder, "fill": jnp.asarray(result.fill), "key": key}
    out = engine.collect_rows(step, source, params, batch_size=batch_size, desc="occlusions", progress=progress)
    return OcclusionResult(**out, meta={"model": result.model, "tap": result.tap, "layer": result.config.layer})
