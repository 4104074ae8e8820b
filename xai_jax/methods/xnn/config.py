"""The XNN's hyper-parameters (no JAX: the command line builds its flags from them).

The option sets and defaults are literals here; ``tests/test_xnn.py`` checks them equal to those of
:mod:`xai_jax.kernels.srae` (which imports JAX, so this module cannot import it).
"""

from __future__ import annotations

import dataclasses

from xai_jax import config as C

#: the network explainers' losses (:data:`xai_jax.kernels.srae.VARIANTS`), then the Lasso baseline
VARIANTS = ("srae", "nn", "sae", "cae", "lasso")
#: the x-layer's activation
X_ACTIVATIONS = ("linear", "relu")
#: the authors' code's log-penalty sparsity ``q`` and the weights ``beta``, ``eta`` of eq. 5
#: (:data:`xai_jax.kernels.srae.DEFAULT_Q` etc.)
DEFAULT_Q, DEFAULT_BETA, DEFAULT_ETA = 100.0, 10.0, 10.0
#: how ``fit`` measures O1/O2 (:func:`xai_jax.methods.xnn.heatmap_orthogonality`): ``pixels``, the paper's
#: per-image normalised heatmaps at the input's resolution, or ``tap``, raw Grad-CAM at the heatmap tap
ORTHOGONALITY = ("pixels", "tap")
#: the kinds of output folder an XNN result and an explanation are (see :mod:`xai_jax.outputs`)
KIND, EXPLANATION_KIND = "xnn", "xnn.explanation"


@dataclasses.dataclass(frozen=True)
class XNNConfig:
    """Hyper-parameters of an explanation network (defaults: the paper and the authors' code).

    Attributes:
      tap: the explained layer (a model tap; flattened to ``S`` features).
      num_x_features: ``n``, the x-features per explainer (5 in the paper).
      hidden: encoder widths before the x-layer (decoder mirrors them); (800, 100) in the paper.
      variant: ``srae`` (eq. 5), ``nn``, ``sae``, ``cae`` or ``lasso``.
      q: the log penalty's sparsity (eq. 5).
      beta, eta: the weights of the sparse reconstruction and pull-away terms of eq. 5.
      positive_weight: weight of a positive sample in one-vs-all training; None: #negatives / #positives.
      learning_rate: Adam's step size.
      epochs: passes over the training features.
      batch_size: explainer minibatch (capped at the number of samples).
      seed: initialisation and minibatch order.
      heatmap_tap: convolutional tap where heatmaps are computed; None: ``tap`` if it is convolutional,
        else the last convolutional tap before it.
      orthogonality: the heatmaps whose correlation gives O1/O2 in ``fit``: ``pixels`` (the paper's): each
        x-feature's heatmap at the input's resolution, normalised to sum to 1 on each image, from c-MWP
        for sequential backbones with a network explainer, else Grad-CAM at ``heatmap_tap`` upsampled
        bilinearly; ``tap``: raw Grad-CAM maps at ``heatmap_tap``'s resolution.
      x_activation: ``linear`` (default) or ``relu`` x-layer; hidden layers are always ReLU. The
        paper is silent. With ReLU x-features die (constant 0, which the pull-away term scores as
        orthogonal and cannot revive): 27 of 50 on ResNet-56 CIFAR-10 pool features, 0 with linear.
    """

    tap: str = "pool"
    num_x_features: int = C.option(5, low=1, flag="--x-features")
    hidden: tuple[int, ...] = C.option((800, 100), low=1)
    variant: str = C.option("srae", choices=VARIANTS, command_line=False)  # xai-jax xnn fit --variants A,B
    q: float = C.option(DEFAULT_Q, low=0.0, low_open=True)
    beta: float = C.option(DEFAULT_BETA, low=0.0)
    eta: float = C.option(DEFAULT_ETA, low=0.0)
    positive_weight: float | None = C.option(None, low=0.0, low_open=True)
    learning_rate: float = C.option(1e-3, low=0.0, low_open=True, flag="--lr")
    epochs: int = C.option(30, low=1)
    batch_size: int = C.option(256, low=1, flag="--train-batch-size")
    seed: int = C.option(0, low=0)
    heatmap_tap: str | None = None
    orthogonality: str = C.option("pixels", choices=ORTHOGONALITY)
    x_activation: str = C.option("linear", choices=X_ACTIVATIONS)

    def validate(self) -> None:
        """Raises :class:`xai_jax.errors.XaiJaxError` (one line) for a field outside its choices or bounds."""
        C.check(self)
