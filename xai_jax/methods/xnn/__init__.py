"""Explanation networks (XNN) with the sparse reconstruction autoencoder (SRAE), paper ``xnn_srae.txt``.

An XNN explains one logit ``yhat`` of a classifier from the activations ``Z[M, S]`` of one of its layers
(``tap``) with a few "x-features": an encoder ``S -> 800 -> 100 -> n`` (ReLU) gives ``E = E_theta(Z)``,
a linear head ``ybar = v.E + b`` reproduces the logit, and a mirrored decoder ``n -> 100 -> 800 -> S``
reconstructs a sparse subset of ``Z`` (:mod:`xai_jax.models.xnn_explainer`). The loss (paper eq. 5,
:func:`xai_jax.kernels.srae.srae_loss`) is faithfulness + ``beta`` * log-penalty sparse reconstruction +
``eta`` * pull-away (orthogonality). Each x-feature is shown with its contribution ``v_i * E_i`` and a
heatmap: the attribution of ``E_i`` to the image through encoder and backbone (Grad-CAM at a convolutional
tap, or contrastive marginal winning probability for sequential backbones, :mod:`xai_jax.kernels.attribution`).
O1/O2 correlate those heatmaps at the input's pixels, each normalised to sum to 1 on its image, as the paper
does (``XNNConfig.orthogonality``, :func:`heatmap_orthogonality`).

Baselines with the same trainer (DESIGN "XNN with SRAE"): ``"nn"`` (faithfulness only), ``"sae"``
(faithfulness + plain reconstruction), ``"cae"`` (reconstruction only; the head is fitted afterwards by
weighted least squares) and ``"lasso"`` (scikit-learn's Lasso path on ``Z``: the ``n`` selected units are
the x-features).

Choices where the paper is silent (documented defaults):

- ``Z`` is centred per feature and divided by one global standard deviation before the explainer sees it
  (one scale keeps the relative sizes of the units, which the reconstruction terms weigh); the affine map
  is part of the explainer, so heatmaps differentiate through it.
- The plain reconstruction of SAE/CAE is summed over the ``S`` features (``srae.reconstruction_loss``);
  to keep ``beta`` on the scale of the SRAE's per-feature mean, SAE uses ``beta / S``.
- One-vs-all balance: positives (``labels == class``) weigh ``#negatives / #positives`` unless
  ``positive_weight`` is given.
- ``C`` one-vs-all explainers train at once, ``vmap``-ped over a stacked class axis (:mod:`.training`).

Public API: :class:`XNNConfig` (:mod:`.config`, no JAX), :class:`XNNResult` and :class:`Explanation`
(:mod:`.result`), :func:`fit_features`, :func:`fit`, :func:`extract_features` and the :class:`XNN` facade
(:mod:`.training`), :func:`explain` and the heatmap functions (:mod:`.heatmaps`), :func:`metrics_table` and
:func:`part_locality` (:mod:`.metrics`), the figures (:mod:`.figures`) and the demo section (:mod:`.demo`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_jax import lazy
from xai_jax.methods.xnn.config import (DEFAULT_BETA, DEFAULT_ETA, DEFAULT_Q, EXPLANATION_KIND, KIND,
                                        ORTHOGONALITY, VARIANTS, X_ACTIVATIONS, XNNConfig)

__getattr__, __dir__, _lazy_all = lazy.attach(__name__, {
    "result": ["XNNResult", "Explanation"],
    "training": ["XNN", "fit", "fit_features", "extract_features", "extract_splits", "check_features", "class_weights", "init_params",
            "make_trainer", "train_explainers", "lasso_explainers", "explainer_loss", "variant_beta"],
    "heatmaps": ["explain", "default_heatmap_tap", "heatmap_tap_of", "heatmap_orthogonality", "gradcam_fn",
                "logit_gradcam_fn", "cmwp_fn", "cmwp_maps_fn", "orthogonality_basis", "BASES", "HEATMAP_METHODS"],
    "metrics": ["metrics_table", "part_locality", "faithfulness", "x_feature_orthogonality", "per_class"],
    "figures": ["explanation_figure", "metrics_bars"],
})
__all__ = sorted({*_lazy_all, "DEFAULT_BETA", "DEFAULT_ETA", "DEFAULT_Q", "EXPLANATION_KIND", "KIND",
                  "ORTHOGONALITY", "VARIANTS", "X_ACTIVATIONS", "XNNConfig"})

if TYPE_CHECKING:
    from xai_jax.methods.xnn.heatmaps import (BASES, HEATMAP_METHODS, cmwp_fn, cmwp_maps_fn, default_heatmap_tap,
                                             explain, gradcam_fn, heatmap_orthogonality, heatmap_tap_of,
                                             logit_gradcam_fn, orthogonality_basis)
    from xai_jax.methods.xnn.figures import explanation_figure, metrics_bars
    from xai_jax.methods.xnn.training import (XNN, check_features, class_weights, explainer_loss, extract_features,
                                             extract_splits, fit, fit_features, init_params, lasso_explainers,
                                             make_trainer, train_explainers, variant_beta)
    from xai_jax.methods.xnn.metrics import (faithfulness, metrics_table, part_locality, per_class,
                                             x_feature_orthogonality)
    from xai_jax.methods.xnn.result import Explanation, XNNResult
