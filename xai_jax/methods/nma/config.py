"""The hyper-parameters of near-miss analysis and their option sets (no JAX: the command line builds its flags
from them)."""

from __future__ import annotations

import dataclasses

from xai_jax import config as C
from xai_jax.errors import XaiJaxError

#: the kind of output folder a near-miss result is (see :mod:`xai_jax.outputs`)
KIND = "nma"
#: how the near-miss matrix becomes symmetric (the same tuple as :data:`xai_jax.kernels.near_miss.SYMMETRIZE`,
#: checked by a test: this module must not import the kernel, which imports JAX)
SYMMETRIZE = ("mean", "max")
#: the edge weights of the connection graph (:data:`xai_jax.kernels.near_miss.MODES`, checked by a test)
EDGE_WEIGHTS = ("probability", "summed", "count")
#: SciPy's linkage methods that take a distance matrix
LINKAGE_METHODS = ("average", "single", "complete", "weighted", "ward")
#: what the linkage clusters: the metric itself, or each label's row of it as a feature vector
LINKAGE_INPUTS = ("condensed", "rows")
#: which probabilities make the near-miss matrix: the correctly classified images' top-K near misses (the default
#: reading), or every image's whole probability vector (the paper's section 3.1 literally)
GRAPHS = ("near_misses", "paper")
#: where the WordNet reference of the explanatory score is rooted: the label set's lowest common hypernym, or
#: WordNet's own root "entity" (the paper's paths)
HUMAN_ROOTS = ("labels", "entity")


@dataclasses.dataclass(frozen=True)
class NMAConfig:
    """Hyper-parameters of near-miss analysis; the defaults are the paper's (K = 3, t = 1e-6).

    Attributes:
      k: near misses are among the top ``k`` labels (the true label included), so ``k - 1`` at most.
      t: probability cutoff of a near miss, and of an edge of the connection graph.
      min_confidence: count only images whose top-1 probability is at least this (0: all correct ones).
      symmetrize: ``"mean"`` ``(p + p.T) / 2`` or ``"max"``.
      edge_weight: ``"probability"`` ``1 - s`` (the paper), ``"summed"`` ``(1 - p) + (1 - p.T)``, or
        ``"count"`` ``1 / (near-miss events between i and j)``.
      linkage: SciPy linkage method.
      linkage_input: ``"condensed"`` clusters the shortest-path metric itself; ``"rows"`` clusters the rows of
        the square distance matrix as feature vectors (Euclidean), which reproduces the large merge heights
        of the paper's figures.
      block_size: Floyd-Warshall tile size (default: blocked by 32 from 256 labels on, unblocked below; the
        measured policy of :func:`~xai_jax.kernels.floyd_warshall.floyd_warshall_auto`).
      graph: ``"near_misses"``: ``p[i, j]`` sums ``P(j | x)`` over the correctly classified images of ``i`` whose
        top ``k`` hold ``j``, divided by their number; ``"paper"``: section 3.1 literally, ``p[i, j] = (1 / N_i)
        sum_x P(j | x)`` over all ``N_i`` images of ``i`` (``k`` and ``min_confidence`` play no part). The
        paper's undirected edge for each ordered pair with ``p[i, j] >= t`` is ``--symmetrize max``.
      labels: analyse only these labels (class names, or indices): the graph induced on them by the one pass
        over all labels, e.g. the paper's 41 ImageNet labels of Table 2 (default: all).
      human_root: the WordNet reference of the explanatory score: ``"labels"`` roots it at the label set's
        lowest common hypernym (left out of S_i, as the machine's root is of U_i); ``"entity"`` at WordNet's
        root, as the paper's paths end, so the labels' common hypernym counts on both sides.
    """

    k: int = C.option(3, low=1)
    t: float = C.option(1e-6, low=0.0, high=1.0, high_open=True)
    min_confidence: float = C.option(0.0, low=0.0, high=1.0)
    symmetrize: str = C.option("mean", choices=SYMMETRIZE)
    edge_weight: str = C.option("probability", choices=EDGE_WEIGHTS)
    linkage: str = C.option("average", choices=LINKAGE_METHODS)
    linkage_input: str = C.option("condensed", choices=LINKAGE_INPUTS)
    block_size: int | None = C.option(None, low=1)
    graph: str = C.option("near_misses", choices=GRAPHS)
    labels: tuple[str, ...] | None = C.option(None, metavar="NAME,NAME,...")
    human_root: str = C.option("labels", choices=HUMAN_ROOTS)

    def validate(self, num_classes: int | None = None) -> None:
        """Raises :class:`XaiJaxError` for a value outside its declared choices or bounds, and, given the
        number of labels ``C``, for ``K >= C`` or fewer than two labels."""
        C.check(self)
        if num_classes is None:
            return
        if num_classes < 2:
            raise XaiJaxError(f"near-miss analysis needs at least 2 classes; got {num_classes}")
        if self.k >= num_classes:
            raise XaiJaxError(f"K must satisfy 1 <= K < C = {num_classes} (the number of classes); got K = {self.k}")

    def label_indices(self, class_names) -> list[int] | None:
        """The indices of :attr:`labels` among ``class_names`` (names matched without case, or indices), in the
        given order; ``None`` without a subset.

        Raises:
          XaiJaxError: an unknown or repeated label, or fewer than two.
        """
        if self.labels is None:
            return None
        lookup = {str(n).lower(): i for i, n in enumerate(class_names)}
        indices = []
        for label in self.labels:
            key = str(label).strip()
            if key.lower() in lookup:
                index = lookup[key.lower()]
            elif key.isdigit() and int(key) < len(class_names):
                index = int(key)
            else:
                shown = ", ".join(map(str, list(class_names)[:8])) + (" ..." if len(class_names) > 8 else "")
                raise XaiJaxError(f"labels: {label!r} is not a class (classes: {shown})")
            if index in indices:
                raise XaiJaxError(f"labels: {label!r} is given twice")
            indices.append(index)
        if len(indices) < 2:
            raise XaiJaxError(f"labels: near-miss analysis needs at least 2 labels; got {len(indices)}")
        return indices
