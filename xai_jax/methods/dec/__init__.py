"""The activation clustering surrogate: explain a classifier by Deep Embedded Clustering of its layers' activations.

Liu & Arik, "Explaining deep neural networks using unsupervised clustering" (``../shared/papers/
dec_activation_clustering.txt``; DESIGN.md, "DEC activation clustering surrogate"): one DEC (an autoencoder
``d -> 500 -> 500 -> 2000 -> e`` with its embeddings on a sphere, k-means, then ``KL(P || Q)`` refinement) per
selected layer; each layer's surrogate is ``p(y | x) = sum_k p(y | z_k) q_k(x)`` (eq. 3) and the full surrogate
their weighted average. Explanations are the training samples most similar to a query (section 4) and each
cluster's concept (figures 4, 5); fidelity is the surrogate's agreement with the model.

Public API:

- :class:`DECConfig` (``config``), :func:`layer_emphasis`, ``POSTERIORS``, ``KIND``: no JAX;
- :class:`ActivationClusteringSurrogate` and :class:`Activations` (``passes``): the taps pass, ``fit``,
  ``embed``, ``evaluate``; :func:`feature_tap`, the penultimate features of a model;
- :class:`DECResult` (``result``): predictions, scores, ``similar``, Figure 2's Euclidean baseline
  ``similar_by_features``, ``concepts``, ``save``/``load``;
- :func:`dec_refine`, :func:`cluster_posteriors` (``refine``) and :func:`embed_rows`, :func:`embedder`
  (``autoencoder``): the parts, for benchmarks and tests;
- ``figures`` (:func:`similar_samples`, :func:`concept_grid`, :func:`convergence`) and ``demo`` (the ``xai-jax demo`` section).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_jax import lazy
from xai_jax.methods.dec.config import KIND, POSTERIORS, DECConfig, layer_emphasis

__getattr__, __dir__, _lazy_all = lazy.attach(__name__, {
    "passes": ["ActivationClusteringSurrogate", "Activations", "feature_tap"],
    "result": ["DECResult"],
    "refine": ["cluster_posteriors", "dec_refine"],
    "autoencoder": ["embed_rows", "embedder"],
    "figures": ["concept_grid", "convergence", "similar_samples"],
})
__all__ = sorted(["KIND", "POSTERIORS", "DECConfig", "layer_emphasis", *_lazy_all])

if TYPE_CHECKING:
    from xai_jax.methods.dec.autoencoder import embed_rows, embedder
    from xai_jax.methods.dec.figures import concept_grid, convergence, similar_samples
    from xai_jax.methods.dec.passes import ActivationClusteringSurrogate, Activations, feature_tap
    from xai_jax.methods.dec.refine import cluster_posteriors, dec_refine
    from xai_jax.methods.dec.result import DECResult
