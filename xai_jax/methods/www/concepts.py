"""What a neuron means: WWW's concept selection from CLIP embeddings (section 3.2), the crops of minor concepts,
and the CLIP-Dissect baseline."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import engine
from xai_jax.data.base import Source
from xai_jax.errors import XaiJaxError
from xai_jax.kernels import www as K


def select_in_chunks(neuron_emb, concept_embeddings, template_embedding, alpha: float, max_concepts: int,
                     neuron_chunk: int, acs: bool = True) -> dict:
    """Adaptive cosine scores (eq. 1) and selection (eq. 2) in blocks of ``neuron_chunk`` neurons, so that a
    ``[U, 82k]`` score matrix never has to exist at once.

    Args:
      neuron_emb: ``[U, D]`` each neuron's mean (normalised) image embedding.
      concept_embeddings, template_embedding: ``[M, D]`` the concepts and ``[D]`` the bare template (unused,
        may be None, without ``acs``).
      alpha: the concept sensitivity.
      max_concepts: selected concepts kept per neuron.
      neuron_chunk: neurons per block.
      acs: score by the adaptive cosine of eq. 1; False: by the plain mean cosine (Table 5's ablation).

    Returns:
      :func:`xai_jax.kernels.www.select_concepts`'s arrays for all ``U`` neurons, on the host.
    """
    if template_embedding is None:
        template_embedding = np.zeros(np.shape(concept_embeddings)[-1], np.float32)
    return engine.map_arrays(_select_fn(max_concepts, bool(acs)), {"embeddings": neuron_emb},
                             (concept_embeddings, template_embedding, np.float32(alpha)), chunk=neuron_chunk)


@functools.lru_cache(maxsize=None)
def _select_fn(max_concepts: int, acs: bool = True):
    """``fn({"embeddings": [c, D]}, (concepts, template, alpha)) -> select_concepts dict`` for
    :func:`engine.map_arrays`, rows = neurons; alpha is traced, so major and minor share the program."""
    def fn(rows, params):
        concept_embeddings, template_embedding, alpha = params
        scores = (K.adaptive_cosine_scores(rows["embeddings"], concept_embeddings, template_embedding) if acs
                  else K.cosine_scores(rows["embeddings"], concept_embeddings))
        return K.select_concepts(scores, alpha, max_concepts)

    return fn


def crop_mean_embeddings(crop_embeddings: np.ndarray) -> jax.Array:
    """``[U, D]`` the mean of each neuron's normalised crop embeddings ``[U, crops, D]``."""
    return jnp.mean(K.l2_normalise(jnp.asarray(crop_embeddings)), axis=1)


def embed_images(source: Source, clip_model, indices: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """``[len(indices), D]`` CLIP embeddings of ``source``'s images at ``indices``, read and embedded in chunks so
    that host memory stays bounded."""
    return np.concatenate([clip_model.encode_images(as_rgb(source.read(indices[s:s + chunk])[0]))
                           for s in range(0, len(indices), chunk)])


def crop_embeddings(source: Source, clip_model, indices: np.ndarray,
                    neuron_maps: Callable[[np.ndarray, np.ndarray], np.ndarray], crop_fraction: float,
                    chunk: int = 4096) -> np.ndarray:
    """``[U, n, D]`` CLIP embeddings of each neuron's top-n images cropped around that neuron's peak (the
    ``minor_crops="peak"`` protocol).

    Args:
      source: the probe source ``indices`` point into.
      clip_model: has ``encode_images(uint8 or float [B, H, W, 3]) -> [B, D]``.
      indices: ``[n, U]`` each neuron's top-n probe images.
      neuron_maps: ``(images [B, ...], neurons [B, 1]) -> [B, 1, h, w]`` each image's map of one neuron
        (:func:`xai_jax.methods.www.passes.neuron_maps_fn`: a channel, a CAM or a Grad-CAM map).
      crop_fraction: side of a crop as a fraction of the image side.
      chunk: (image, neuron) pairs read and embedded at once (bounds host memory).
    """
    n, units = indices.shape
    pairs_u = np.tile(np.arange(units), n)            # (rank, neuron) pairs, rank-major like indices.ravel()
    pairs_i = indices.ravel()
    out = []
    for start in range(0, len(pairs_i), chunk):
        idx, units_here = pairs_i[start:start + chunk], pairs_u[start:start + chunk]
        images, _ = source.read(idx)
        own = np.asarray(neuron_maps(images, units_here[:, None].astype(np.int32)))[:, 0]     # [b, h, w]
        height, width = images.shape[1:3]
        crop = crop_size(height, width, crop_fraction)
        corners = K.peak_crop_corners(own, (height, width), crop)
        rgb = as_rgb(images)
        crops = np.asarray(K.crop_images(rgb, corners, crop))
        crops = np.clip(np.round(crops), 0, 255).astype(np.uint8) if rgb.dtype == np.uint8 else crops
        out.append(clip_model.encode_images(crops))
    emb = np.concatenate(out)                                       # [n * U, D]
    return emb.reshape(n, units, -1).transpose(1, 0, 2)


def crop_size(height: int, width: int, crop_fraction: float) -> tuple[int, int]:
    """``(ch, cw)`` the crop of ``crop_fraction`` of each image side (at least one pixel)."""
    return max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction))


class GridCrops(Source):
    """The paper's probe set of crops (``minor_crops="probe"``): every probe image cut into a ``grid x grid``
    lattice of crops of ``crop_fraction`` of its side, each resized back to the image size so that the model
    ranks crops as it ranks images.

    Item ``i`` is crop ``i % grid**2`` (row-major) of image ``i // grid**2``; its label is the image's.
    """

    def __init__(self, source: Source, crop_fraction: float, grid: int):
        self.source, self.grid = source, int(grid)
        self.class_names, self.description = source.class_names, f"crops of {source.description}"
        shape = source.image_shape()
        self.size = tuple(shape[:2])
        self.crop = crop_size(*self.size, crop_fraction)
        self.corners = np.asarray(K.grid_crop_corners(self.size, self.crop, self.grid))

    def __len__(self) -> int:
        return len(self.source) * len(self.corners)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices)
        per = len(self.corners)
        images, labels = self.source.read(indices // per)
        grey = images.ndim == 3
        crops = np.asarray(K.crop_images(images[..., None] if grey else images, self.corners[indices % per],
                                         self.crop, self.size))
        crops = crops[..., 0] if grey else crops
        if images.dtype == np.uint8:
            crops = np.clip(np.round(crops), 0, 255).astype(np.uint8)
        return crops, labels


def clip_dissect(activations, image_embeddings, concept_embeddings, *, top_k: int = 100, a: float = 10.0,
                 lam: float = 1.0, p_start: float = 0.998, p_end: float = 0.97, neuron_chunk: int = 512) -> np.ndarray:
    """CLIP-Dissect's soft-WPMI baseline: ``[U, M]`` scores (the neuron's description is the argmax).

    ``activations`` ``[P, U]`` (spatially averaged), ``image_embeddings`` ``[P, D]``, ``concept_embeddings``
    ``[M, D]`` (CLIP-Dissect embeds the bare concept words). ``log p(d|E_u)`` is computed in blocks of neurons.
    """
    activations = np.asarray(activations, np.float32)
    if activations.ndim == 4:
        activations = activations.mean(axis=(1, 2))
    top_k = min(top_k, activations.shape[0])
    probabilities = _concept_probabilities(jnp.asarray(image_embeddings, jnp.float32),
                                           jnp.asarray(concept_embeddings, jnp.float32), np.float32(a))
    log_p_given_e = engine.map_arrays(_log_p_given_e_fn(top_k), {"activations": activations.T},
                                      (probabilities, np.float32(p_start), np.float32(p_end)), chunk=neuron_chunk)
    return np.asarray(K.soft_wpmi_from_log_p(log_p_given_e, lam))


@jax.jit
def _concept_probabilities(image_embeddings, concept_embeddings, a):
    """CLIP-Dissect's ``softmax(a * cos)`` of every probe image over the concepts, computed once for all neurons."""
    similarity = K.l2_normalise(image_embeddings) @ K.l2_normalise(concept_embeddings).T
    return K.concept_probabilities(similarity, a)


@functools.lru_cache(maxsize=None)
def _log_p_given_e_fn(top_k: int):
    """``fn({"activations": [c, P]}, (probabilities, p_start, p_end)) -> [c, M]`` for :func:`engine.map_arrays`:
    the rows are neurons, and only ``top_k`` (a shape) selects the program."""
    def fn(rows, params):
        probabilities, p_start, p_end = params
        return K.log_p_given_e(probabilities, rows["activations"].T, top_k, p_start, p_end)

    return fn


def check_concepts(concepts: Sequence[str]) -> list[str]:
    """The concept words, stripped; raises :class:`XaiJaxError` for an empty set or an empty word."""
    concepts = [str(c).strip() for c in concepts]
    if not concepts or any(not c for c in concepts):
        raise XaiJaxError("the concept set must be a non-empty list of non-empty words")
    return concepts


def finite(array, what: str, ndim: int) -> np.ndarray:
    """``array`` as float32; raises :class:`XaiJaxError` unless it has ``ndim`` axes and finite values."""
    array = np.asarray(array, np.float32)
    if array.ndim != ndim:
        raise XaiJaxError(f"{what} must have {ndim} dimensions; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise XaiJaxError(f"{what} contain NaN or infinity")
    return array


def as_rgb(images: np.ndarray) -> np.ndarray:
    """Grey images ``[B, H, W]`` or ``[B, H, W, 1]`` repeated to three channels (CLIP takes RGB)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images
