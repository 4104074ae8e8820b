"""The activation clustering surrogate's config: hyper-parameters with their bounds, choices and help (no JAX)."""

from __future__ import annotations

import dataclasses

from xai_jax.config import check, option
from xai_jax.errors import XaiJaxError

#: where ``p(y | z_k)`` comes from: the training labels (the paper) or the model's predictions
POSTERIORS = ("labels", "predictions")

#: the kind of output folder a DEC surrogate is (see :mod:`xai_jax.outputs`)
KIND = "dec"


def layer_emphasis(num_layers: int, which: str) -> tuple[float, ...]:
    """The paper's low-/high-layer weightings (figure 12: 2, 1, 0, 0 and 0, 0, 1, 2) for any number of layers.

    Args:
      num_layers: how many clustered layers the surrogate has.
      which: ``"low"`` (weights falling with depth) or ``"high"`` (rising).

    Returns:
      one non-negative weight per layer, not normalised.
    """
    half = -(-num_layers // 2)
    low = tuple(float(max(half - j, 0)) for j in range(num_layers))
    return low if which == "low" else tuple(reversed(low))


@dataclasses.dataclass(frozen=True)
class DECConfig:
    """Hyper-parameters of the surrogate; the defaults are the paper's CIFAR-10 setting (Table 1, footnotes).

    Attributes:
      taps: the model's activations to cluster, in forward order (e.g. ``stem,layer1,layer2,layer3``).
      embedding_size: ``e = dim(V^j)``, the embedding size.
      clusters: ``k = l_j`` clusters per layer.
      alpha: Student-t degrees of freedom of the soft assignment (footnote 3; DEC's default is 1).
      radius: the embeddings' hypersphere radius (footnote 2).
      layer_weights: ``w_j``, one weight per tap of the full surrogate (default: equal).
      hidden: the autoencoder's hidden widths (DEC's).
      pretrain_epochs: epochs of reconstruction pretraining of the autoencoder (Adam).
      pretrain_learning_rate: Adam's step size while pretraining.
      batch_size: examples per step of pretraining and of DEC.
      dec_learning_rate: SGD step size of the DEC refinement (DEC: 0.01, momentum 0.9).
      update_interval: ``T``, DEC steps between two full-training-set refreshes of the target ``P``.
      tolerance: stop when the fraction of changed hard assignments between refreshes is below this.
      max_dec_steps: most DEC steps per layer (rounded up to a multiple of ``update_interval``; 2,800 = 20
        refreshes of ``P``, which the paper does not give: the full CIFAR-10 run has flattened by then).
      kmeans_inits: k-means restarts.
      posterior: ``p(y | cluster)`` from the training ``labels`` (the paper) or the model's ``predictions``.
      seed: all randomness (initialisation, shuffling, k-means) derives from it.
    """

    taps: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3")
    embedding_size: int = option(20, low=1)
    clusters: int = option(15, low=2)
    alpha: float = option(100.0, low=0, low_open=True)
    radius: float = option(8.0, low=0, low_open=True)
    layer_weights: tuple[float, ...] | None = option(None, low=0)
    hidden: tuple[int, ...] = option((500, 500, 2000), low=1)
    pretrain_epochs: int = option(20, low=0)
    pretrain_learning_rate: float = option(1e-3, low=0, low_open=True)
    # the command's own --batch-size is the batch of its passes over the data
    batch_size: int = option(256, low=1, flag="--train-batch-size")
    dec_learning_rate: float = option(0.01, low=0, low_open=True)
    update_interval: int = option(140, low=1)
    tolerance: float = option(0.001, low=0, high=1)
    max_dec_steps: int = option(2800, low=0)
    kmeans_inits: int = option(20, low=1)
    posterior: str = option("labels", choices=POSTERIORS)
    seed: int = option(0, low=0)

    def validate(self, num_samples: int | None = None) -> None:
        """Raises :class:`XaiJaxError` (one line) for a bad value, or too few ``num_samples`` for the clusters."""
        check(self)
        if not self.taps:
            raise XaiJaxError("select at least one tap to cluster")
        if len(set(self.taps)) != len(self.taps):
            raise XaiJaxError(f"taps repeat: {', '.join(self.taps)}")
        if self.layer_weights is not None:
            if len(self.layer_weights) != len(self.taps):
                raise XaiJaxError(f"expected {len(self.taps)} layer weights, got {len(self.layer_weights)}")
            if not any(w > 0 for w in self.layer_weights):
                raise XaiJaxError("layer weights are all zero: at least one layer must count")
        if num_samples is not None and self.clusters > num_samples:
            raise XaiJaxError(f"{self.clusters} clusters need at least as many training samples; got {num_samples}")
