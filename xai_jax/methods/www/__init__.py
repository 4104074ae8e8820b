"""WWW: what each neuron means, where it fires and why the prediction (Ahn, Kim and Kim, CVPR 2024).

The paper (``../shared/papers/www_what_where_why.txt``), as specified in DESIGN.md ("WWW"):

1. What (section 3.2): one streamed pass over probe images keeps each neuron's top-n (n = 40) activating images
   (conv activations averaged over space). With CLIP image embeddings ``v`` of those images, text embeddings
   ``t_j`` of "A photo of a {concept}" and ``t_tem`` of the bare template, the adaptive cosine score
   ``s_j = mean_o cos(v_o, t_j) - cos(v_o, t_tem)`` (eq. 1) is one matrix product for all neurons; concepts with
   ``s_j > alpha max s`` (eq. 2) are selected: alpha = 0.95 on the images (major), 0.90 on crops of them around
   the neuron's peak (minor).
2. Where/why (3.3, 3.4): Taylor-Shapley contributions ``w_u = a_u df_c/da_u`` (eq. 3) of the explained layer,
   one ``jax.vjp`` per batch (signed as in the authors' code; ``abs`` as printed is an option); the class-wise
   contribution is the mean over each class's training samples (one streamed pass of segment sums). At test time,
   the top-k (k = 3) neurons of the sample and of the predicted class, their concept maps (activation maps
   upsampled bilinearly and thresholded at the 70th percentile) and the overall heatmaps
   ``sum_topk (w_u / sum w) A_u`` (eq. 4) for sample and class.
3. Trust (4.3.2): the cosine similarity of the sample and class heatmaps; low similarity flags a likely
   misprediction (rejection curve and AUROC against the maximum softmax probability).

The explained layer is a tap of a registered backbone. When it has no spatial extent (a pooled penultimate layer,
as in the paper's ResNet-50 figures), the activation maps come from ``map_tap``, the convolutional tap that is
pooled into it (by default the last spatial tap before it with as many channels).

Public API (imported on first use, so that importing the package or its config loads no JAX):

- :class:`WWWConfig` and the option sets (``config``);
- :class:`WWW`: ``probe``, ``fit_concepts``, ``fit_concepts_from_embeddings``, ``fit_class_contributions``
  (each returns a new :class:`WWWResult`), ``sample_contributions``, ``explain`` (a :class:`WWWExplanation`),
  ``trust_scores`` (``method``);
- :class:`WWWResult`, :class:`WWWExplanation` (``result``);
- :func:`clip_dissect` (the CLIP-Dissect baseline, ``concepts``);
- :func:`rejection_analysis`, :func:`concept_metrics`, :func:`result_metrics`, :func:`lookup_encoder`
  (``metrics``);
- ``figures``: :func:`explanation_panel`, :func:`rejection_curves`; ``demo``: the demo's section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_jax import lazy
from xai_jax.methods.www.config import (CLASS_BY, CONCEPT_FIELDS, CONTRIBUTION_FIELDS, CONTRIBUTION_MODES,
                                        EXPLAIN_FIELDS, EXPLANATION_KIND, KIND, WWWConfig)

if TYPE_CHECKING:
    from xai_jax.methods.www.concepts import clip_dissect
    from xai_jax.methods.www.figures import explanation_panel, rejection_curves
    from xai_jax.methods.www.method import WWW
    from xai_jax.methods.www.metrics import concept_metrics, lookup_encoder, rejection_analysis, result_metrics
    from xai_jax.methods.www.result import WWWExplanation, WWWResult

__getattr__, __dir__, _lazy_all = lazy.attach(__name__, {
    "method": ["WWW"],
    "result": ["WWWResult", "WWWExplanation"],
    "concepts": ["clip_dissect"],
    "metrics": ["rejection_analysis", "concept_metrics", "result_metrics", "lookup_encoder"],
    "figures": ["explanation_panel", "rejection_curves"],
})
__all__ = ["CLASS_BY", "CONCEPT_FIELDS", "CONTRIBUTION_FIELDS", "CONTRIBUTION_MODES", "EXPLAIN_FIELDS",
           "EXPLANATION_KIND", "KIND", "WWWConfig", *_lazy_all]
