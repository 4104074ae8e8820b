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
from xai_jax.kernels.near_miss import (NearMissState, connection_weights, fill_disconnected, label_probability_matrix,
                                       near_miss_matrix)
from xai_jax.methods.nma.config import NMAConfig
from xai_jax.methods.nma.result import cluster_id, node_members

#: the accumulators of a near-miss pass, by name (:func:`xai_jax.kernels.near_miss.near_miss_init`)
STATISTICS = NearMissState._fields
#: those every graph reads; the paper's graph (``NMAConfig.graph = "paper"``) reads the others
NEAR_MISS_STATISTICS = ("sums", "events", "counts")
_SQUARE = ("sums", "events", "label_sums")


def statistics(state: Mapping[str, Any], num_classes: int, graph: str = "near_misses") -> dict[str, np.ndarray]:
    """The near-miss statistics of ``num_classes`` labels as host arrays, their names and shapes checked.

    Args:
      state: ``{"sums": [C, C], "events": [C, C], "counts": [C], "label_sums": [C, C], "label_counts": [C]}``: a
        pass's :class:`NearMissState`, or the same arrays read back from a file (an ``np.load`` of an ``.npz``
        is such a mapping). Statistics saved before the paper's graph existed lack the last two; only
        ``graph="paper"`` needs them.
      num_classes: ``C``.
      graph: the graph they are for (``NMAConfig.graph``).

    Returns:
      ``{name: np.ndarray}`` for the names of :data:`STATISTICS` that ``state`` holds.

    Raises:
      XaiJaxError: an array the graph needs is missing, or one has the wrong shape.
    """
    if isinstance(state, NearMissState):
        state = state._asdict()
    needed = STATISTICS if graph == "paper" else NEAR_MISS_STATISTICS
    missing = [name for name in needed if name not in state]
    if missing:
        raise XaiJaxError(f"near-miss statistics without {', '.join(missing)} (need {', '.join(needed)})")
    arrays = {name: np.asarray(state[name]) for name in STATISTICS if name in state}
    for name, array in arrays.items():
        shape = (num_classes, num_classes) if name in _SQUARE else (num_classes,)
        if array.shape != shape:
            raise XaiJaxError(f"near-miss `{name}` has shape {array.shape}, expected {shape} for "
                              f"{num_classes} labels")
    return arrays


def restrict(arrays: Mapping[str, np.ndarray], indices: Sequence[int]) -> dict[str, np.ndarray]:
    """The statistics of the labels ``indices`` alone: the graph that the pass over all labels induces on them.

    ``p[i, j]`` of two kept labels is unchanged (their images and near misses are the same), and a near miss
    outside the subset is no edge of it; ``counts`` still count the images the full model classifies correctly.
    """
    ix = np.asarray(indices)
    return {name: array[np.ix_(ix, ix)] if array.ndim == 2 else array[ix] for name, array in arrays.items()}


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


def near_miss_probabilities(arrays: Mapping[str, np.ndarray], graph: str = "near_misses") -> np.ndarray:
    """``p[i, j]`` (3.1): with ``graph="near_misses"`` the mean near-miss probability of ``j`` over the counted
    images of class ``i``; with ``"paper"`` the mean ``P(j | x)`` over all images of class ``i``."""
    empty = np.zeros((0,), np.float32)  # a kernel reads only its own fields; older statistics lack the others
    state = NearMissState(**{name: arrays.get(name, empty) for name in STATISTICS})
    matrix = label_probability_matrix if graph == "paper" else near_miss_matrix
    return np.asarray(matrix(state))
