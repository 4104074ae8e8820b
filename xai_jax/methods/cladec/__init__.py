"""ClaDec and RefAE: what a layer keeps of the input, decoded back to an image and compared with an autoencoder.

The paper (Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts",
``../shared/papers/cladec.txt``), as specified in DESIGN.md:

1. The classifier ``C`` is frozen. One pass (:func:`layer_activations`) stores the activations of the explained
   layer ``L`` (or a consecutive range of its channels, section 6.4) for the training and test sets.
2. A decoder (:class:`xai_jax.models.cladec.Decoder`) learns ``Xhat_E = D(L(X))`` with eq. (1),
   ``(1 - alpha) sum (X - Xhat_E)^2 + alpha CE(C(Xhat_E), Y)`` (Adam 3e-4, as the authors' code).
3. RefAE, the same encoder architecture freshly initialised plus the same decoder, learns ``Xhat_R`` jointly on
   reconstruction only.
4. Comprehensibility is the reconstruction loss (lower is more familiar), ``dRec = mean ||X - Xhat_E|| -
   ||X - Xhat_R||``; fidelity is the test accuracy of an evaluation classifier of the classifier's architecture
   trained on ClaDec's reconstructions minus that of one trained on RefAE's (``dAcc``, section 5).
5. Occlusion analysis (section 6.6): the 16 occlusions of every image, their ClaDec relevance and the Grad-CAM
   relevance at the same layer, in one ``vmap``; accuracy of ``C`` with the least / most relevant square occluded.

Kernels: :mod:`xai_jax.kernels.cladec`, :func:`xai_jax.kernels.attribution.grad_cam`. Reported reconstruction
losses are per-pixel mean squared errors (the authors' ``nn.MSELoss``, the scale of tables 2-3); the training
loss uses the reduction of :attr:`ClaDecConfig.reduction` (default the paper's sum).

Public API: :class:`ClaDecConfig` (``config``), :class:`ClaDec` (``method``: ``check``, ``fit``),
:class:`ClaDecResult` and :class:`OcclusionResult` (``result``), :func:`layer_activations`,
:func:`reconstruct_codes`, :func:`classifier_accuracy`, :func:`to_unit` (``passes``), :func:`train_classifier`
(``training``), :func:`evaluate` (``metrics``), :func:`occlusion_analysis`, :func:`occlusion_step`
(``occlusion``), :func:`nested_ranges`, :func:`disjoint_ranges` (``ranges``); figures in ``figures``, the
demo's section in ``demo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_jax import lazy
from xai_jax.methods.cladec.config import KIND, OCCLUSION_KIND, REDUCTIONS, ClaDecConfig

__getattr__, __dir__, _lazy_all = lazy.attach(__name__, {
    "method": ["ClaDec"],
    "result": ["ClaDecResult", "OcclusionResult"],
    "passes": ["classifier_accuracy", "layer_activations", "reconstruct_codes", "to_unit"],
    "training": ["sgd_schedule", "train_classifier"],
    "metrics": ["evaluate"],
    "occlusion": ["occlusion_analysis", "occlusion_step"],
    "ranges": ["disjoint_ranges", "nested_ranges"],
})
__all__ = ["KIND", "OCCLUSION_KIND", "REDUCTIONS", "ClaDecConfig", *_lazy_all]

if TYPE_CHECKING:
    from xai_jax.methods.cladec.method import ClaDec
    from xai_jax.methods.cladec.metrics import evaluate
    from xai_jax.methods.cladec.occlusion import occlusion_analysis, occlusion_step
    from xai_jax.methods.cladec.passes import classifier_accuracy, layer_activations, reconstruct_codes, to_unit
    from xai_jax.methods.cladec.ranges import disjoint_ranges, nested_ranges
    from xai_jax.methods.cladec.result import ClaDecResult, OcclusionResult
    from xai_jax.methods.cladec.training import sgd_schedule, train_classifier
