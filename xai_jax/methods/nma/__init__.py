"""Near-miss analysis (NMA): the concept hierarchy a classifier's confusions reveal.

The paper (``../shared/papers/nma_near_miss_analysis.txt``), as specified in DESIGN.md:

1. One streamed pass over labelled images accumulates, for every correctly classified image of class ``i``,
   the probabilities of its near misses (labels ``j != i`` among its top ``K`` with ``P[j] >= t``):
   ``p[i, j] = (1 / N_i) sum_x P(j | x) [j is a near miss of x]`` (section 3.1).
2. The undirected connection graph has edge weights ``1 - s[i, j]`` with ``s = (p + p.T) / 2`` where
   ``s >= t`` and no edge otherwise; Floyd–Warshall gives the shortest-path metric, disconnected pairs get
   twice the largest finite distance, and SciPy's ``linkage`` clusters it (``average`` by default) (3.2).
3. Each cluster is named by the lowest common WordNet hypernym of its labels; a human may override any name
   (3.3). A query is explained by walking its label's leaf to the root (3.4), and the explanatory score phi
   compares the concepts on that walk with a human hierarchy (eq. 1, 2).

Steps 1 and 2 run as jitted kernels (:mod:`xai_jax.kernels.near_miss`, :mod:`xai_jax.kernels.floyd_warshall`);
the linkage and the naming run once on the host on a C x C matrix.

The public API:

- :class:`NMAConfig` (``config``) and its option sets;
- :class:`NearMissAnalysis` (``passes``): ``fit(model, variables, source)``, ``fit_scores(probs, labels,
  class_names)``, ``accumulate``/``accumulate_scores`` (the pass alone) and ``from_state`` (the hierarchy from
  its statistics, also read back from a file); :func:`check_scores`;
- :class:`NMAResult` (``result``): ``explain(label)`` (an :class:`Explanation`), ``score()``, ``merge_order()``,
  ``with_overrides()``, ``save``/``load``; :func:`classes_without_images`, :func:`cluster_id`;
- ``graph``: the steps from statistics to the hierarchy, one function each;
- :func:`dendrogram`, :func:`draw_dendrogram` (``figures``); ``demo.section`` for ``xai-jax demo``;
- ``query``: :class:`~xai_jax.methods.nma.query.Classifier` and ``answer`` (an image's prediction, near misses and
  explanation, for ``nma explain --image`` and the explorer); ``server``: the near-miss explorer of
  ``xai-jax nma serve`` (:class:`~xai_jax.methods.nma.server.Explorer`, its JSON API and ``static/`` page).

Importing this package or its config loads no JAX; the other names load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_jax import lazy
from xai_jax.methods.nma.config import (EDGE_WEIGHTS, GRAPHS, HUMAN_ROOTS, KIND, LINKAGE_INPUTS, LINKAGE_METHODS,
                                        SYMMETRIZE, NMAConfig)

if TYPE_CHECKING:
    from xai_jax.methods.nma.explain import Explanation
    from xai_jax.methods.nma.figures import dendrogram, draw_dendrogram, node_positions
    from xai_jax.methods.nma.graph import STATISTICS
    from xai_jax.methods.nma.passes import NearMissAnalysis, check_scores
    from xai_jax.methods.nma.result import NMAResult, classes_without_images, cluster_id, node_members

__getattr__, __dir__, _lazy = lazy.attach(__name__, {
    "result": ["NMAResult", "classes_without_images", "cluster_id", "node_members"],
    "explain": ["Explanation"],
    "passes": ["NearMissAnalysis", "check_scores"],
    "graph": ["STATISTICS"],
    "figures": ["dendrogram", "draw_dendrogram", "node_positions"],
})
__all__ = ["EDGE_WEIGHTS", "GRAPHS", "HUMAN_ROOTS", "KIND", "LINKAGE_INPUTS", "LINKAGE_METHODS", "NMAConfig", "SYMMETRIZE", *_lazy]
