"""The XNN paper's measures of an explainer: faithfulness (F_reg, F_cls), orthogonality (O1, O2) and part
locality, and the tables of them (:mod:`xai_jax.kernels.xnn_metrics` holds the per-batch kernels)."""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.kernels import xnn_metrics
from xai_jax.methods.xnn.result import XNNResult
from xai_jax.models.xnn_explainer import stacked_x_features


@functools.lru_cache(maxsize=None)
def _x_features_fn(variant: str, x_activation: str):
    # one function object per setting: engine.map_arrays caches its compiled program on it
    def fn(chunk, p):
        params, mean, scale = p
        z = chunk["z"].reshape(chunk["z"].shape[0], -1).astype(jnp.float32)
        return stacked_x_features(variant, x_activation, params, (z - mean) / scale)
    return fn


def streamed_x_features(variant: str, x_activation: str, params, z, mean, scale) -> np.ndarray:
    """``E [M, C, n]`` of the explainers ``params`` on ``(z - mean) / scale``, ``z [M, ...]`` in memory or on
    disk (:class:`xai_jax.rowstore.DiskRows`), a chunk of rows at a time (:func:`xai_jax.engine.map_arrays`)."""
    from xai_jax import engine
    return engine.map_arrays(_x_features_fn(variant, x_activation), {"z": z},
                             (params, jnp.asarray(mean, jnp.float32), jnp.float32(scale)), chunk=1024)


def _result_x_features(result: XNNResult, z) -> np.ndarray:
    return streamed_x_features(result.config.variant, result.config.x_activation, result.params, z,
                               result.input_mean, result.input_scale)


def faithfulness(result: XNNResult, z, logits, split: str) -> dict[str, np.ndarray]:
    """``{"f_reg_<split>", "f_cls_<split>"}``: ``[C]`` each, of the explainers on activations ``z[M, ...]``
    (in memory or on disk) with the model's ``logits[M, K]`` (F_cls needs every logit)."""
    head = result.params["head"]
    approx = jnp.einsum("ncx,cx->nc", _result_x_features(result, z), head["w"]) + head["b"]
    classes = jnp.asarray(result.classes)
    f_reg = jax.vmap(xnn_metrics.f_reg, in_axes=(1, 1))(approx, jnp.asarray(logits)[:, classes])
    f_cls = jax.vmap(xnn_metrics.f_cls, in_axes=(None, 0, 1))(jnp.asarray(logits), classes, approx)
    return {f"f_reg_{split}": np.asarray(f_reg), f"f_cls_{split}": np.asarray(f_cls)}


def x_feature_orthogonality(result: XNNResult, z) -> dict[str, np.ndarray]:
    """``{"o1", "o2"}`` (``[C]`` each) of the correlation of each x-feature's values over the samples ``z``
    (in memory or on disk): the orthogonality there is without a model to draw heatmaps with."""
    x_features = _result_x_features(result, z)  # [N, C, n]
    maps = jnp.moveaxis(x_features, 1, 0)[:, :, :, None, None]  # each value a 1x1 "heatmap"
    p = jax.vmap(xnn_metrics.heatmap_correlation)(maps)
    return {"o1": np.asarray(jax.vmap(xnn_metrics.o1)(p)), "o2": np.asarray(jax.vmap(xnn_metrics.o2)(p))}


def number(value) -> float | None:
    """A JSON number; ``None`` for NaN (a metric without samples)."""
    value = float(value)
    return None if np.isnan(value) else value


def per_class(metrics: Mapping[str, np.ndarray], classes, class_names) -> dict:
    """``{class name: {metric: value}}`` from ``{metric: [C] values}``."""
    return {class_names[c]: {name: number(values[i]) for name, values in metrics.items()}
            for i, c in enumerate(classes)}


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
