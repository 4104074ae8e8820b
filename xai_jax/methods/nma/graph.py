"""From near-miss statistics to the concept hierarchy (paper sections 3.2 and 3.3): the connection graph's
shortest-path metric (jitted kernels), SciPy's linkage of it and WordNet's name of every cluster (on the host,
once, on a C x C matrix)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import scipy.cluster.hierarchy as sch
from scipy.spatial.distance import pdist, squareform

from xai_jax.errors import XaiJaxError
from xai_jax.kernels.floyd_warshall import floyd_warshall, floyd_warshall_auto
from xai_jax.kernels.near_miss import NearMissState, connection_weights, fill_disconnected, near_miss_matrix
from xai_jax.methods.nma.config import NMAConfig
from xai_jax.methods.nma.result import cluster_id, node_members

#: the accumulators of a near-miss pass, by name (:func:`xai_jax.kernels.near_miss.near_miss_init`)
STATISTICS = NearMissState._fields


def statistics(state: Mapping[str, Any], num_classes: int) -> dict[str, np.ndarray]:
    """The near-miss statistics of ``num_classes`` labels as host arrays, their names and shapes checked.

    Args:
      state: ``{"sums": [C, C], "events": [C, C], "counts": [C]}``: a pass's :class:`NearMissState`, or the
        same arrays read back from a file (an ``np.load`` of an ``.npz`` is such a mapping).
      num_classes: ``C``.

    Returns:
      ``{name: np.ndarray}`` for the names of :data:`STATISTICS`.

    Raises:
      XaiJaxError: an array is missing or has the wrong shape.
    """
    if isinstance(state, NearMissState):
        state = state._asdict()
    missing = [name for name in STATISTICS if name not in state]
    if missing:
        raise XaiJaxError(f"near-miss statistics without {', '.join(missing)} (need {', '.join(STATISTICS)})")
    arrays = {name: np.asarray(state[name]) for name in STATISTICS}
    square = (num_classes, num_classes)
    for name, shape in (("sums", square), ("events", square), ("counts", (num_classes,))):
        if arrays[name].shape != shape:
            raise XaiJaxError(f"near-miss `{name}` has shape {arrays[name].shape}, expected {shape} for "
                              f"{num_classes} labels")
    return arrays


def shortest_paths(config: NMAConfig, p: np.ndarray, events: np.ndarray) -> np.ndarray:
    """The connection graph's shortest-path metric, ``float64 [C, C]``: symmetric, zero diagonal, disconnected
    pairs at twice the largest finite distance (section 3.2)."""
    weights = connection_weights(jnp.asarray(p), jnp.asarray(events), t=config.t, symmetrize=config.symmetrize,
                                 mode=config.edge_weight)
    shortest = (floyd_warshall_auto(weights) if config.block_size is None
                else floyd_warshall(weights, block_size=config.block_size))
    distances = np.asarray(fill_disconnected(shortest), np.float64)
    distances = (distances + distances.T) / 2  # exact in theory; removes float rounding asymmetry
    np.fill_diagonal(distances, 0.0)
    return distances


def cluster(config: NMAConfig, distances: np.ndarray) -> np.ndarray:
    """SciPy's linkage matrix ``[C - 1, 4]`` of the metric, as ``config.linkage_input`` says."""
    if config.linkage_input == "condensed":
        return sch.linkage(squareform(distances, checks=False), method=config.linkage)
    # The paper's figures: each label's row of distances is a feature vector, compared by Euclid.
    return sch.linkage(pdist(distances, "euclidean"), method=config.linkage)


def concept_names(linkage: np.ndarray, class_names: Sequence[str], *, synsets=None,
                  dataset: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Each label's WordNet synset and each cluster's name, the lowest common hypernym of its labels (3.3).

    Args:
      linkage: the dendrogram of the labels.
      class_names: one per label.
      synsets: a label -> synset table (JSON path or mapping), as :func:`naming.hierarchy.label_synsets` takes.
      dataset: name of a packaged table (cifar10, cifar100, mnist, fashion_mnist, imagenet).

    Returns:
      ``(synset name per label, {cluster id: name})`` for every internal node.
    """
    from xai_jax.naming import hierarchy
    resolved = hierarchy.label_synsets(class_names, dataset=dataset, table=synsets)
    names = {cluster_id(members): hierarchy.cluster_name([resolved[m] for m in sorted(members)])
             for members in node_members(linkage, len(class_names))[len(class_names):]}
    return [s.name() for s in resolved], names


def near_miss_probabilities(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``p[i, j]``, the mean near-miss probability of ``j`` over the counted images of class ``i`` (3.1)."""
    return np.asarray(near_miss_matrix(NearMissState(**{name: arrays[name] for name in STATISTICS})))
