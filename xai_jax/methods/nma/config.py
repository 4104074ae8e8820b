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
    """

    k: int = C.option(3, low=1)
    t: float = C.option(1e-6, low=0.0, high=1.0, high_open=True)
    min_confidence: float = C.option(0.0, low=0.0, high=1.0)
    symmetrize: str = C.option("mean", choices=SYMMETRIZE)
    edge_weight: str = C.option("probability", choices=EDGE_WEIGHTS)
    linkage: str = C.option("average", choices=LINKAGE_METHODS)
    linkage_input: str = C.option("condensed", choices=LINKAGE_INPUTS)
    block_size: int | None = C.option(None, low=1)

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
