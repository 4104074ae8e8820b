"""ClaDec's hyper-parameters (no JAX: the command line builds its flags from them)."""

from __future__ import annotations

import dataclasses

from xai_jax import config as C
from xai_jax.errors import XaiJaxError

#: reductions of eq. (1)'s reconstruction term (:func:`xai_jax.kernels.cladec.reconstruction_loss`)
REDUCTIONS = ("sum", "mean")
#: the kinds of output folder a ClaDec result and an occlusion analysis are (see :mod:`xai_jax.outputs`)
KIND, OCCLUSION_KIND = "cladec", "cladec.occlusion"


@dataclasses.dataclass(frozen=True)
class ClaDecConfig:
    """Hyper-parameters of ClaDec; the defaults are the paper's (64 epochs, Adam 3e-4, alpha 0).

    Attributes:
      layer: ``-1 .. -5`` counted from the output (see :data:`xai_jax.models.cladec.LAYER_TAPS`) or a tap name.
      neurons: explain only channels ``[start, stop)`` of the layer (nested or disjoint ranges, section 6.4);
        ``None``: the whole layer. RefAE then decodes the same channel range of its own encoder.
      alpha: weight of the classification loss in eq. (1); the authors' code uses 0.001, the paper sweeps 0.9-1.
      decoder_base: channels of the decoder's last hidden transposed convolution (earlier ones double it).
      decoder_widths: explicit hidden widths of the decoder (input side first), overriding ``decoder_base``.
      epochs: decoder (and RefAE) epochs.
      batch_size: decoder (and RefAE) batch size.
      learning_rate: Adam's; ``weight_decay`` is added to the gradient as in PyTorch's Adam (authors: 1e-5).
      weight_decay: the decay added to Adam's gradient (see ``learning_rate``).
      reduction: of eq. (1)'s reconstruction term, ``"sum"`` (paper) or ``"mean"`` (authors' code).
      refae: also train RefAE (needed for dRec, dAcc); ``--no-refae`` skips it.
      eval_epochs: epochs of the evaluation classifiers (0: skip the fidelity evaluation).
      eval_batch_size: their batch size.
      seed: all randomness (initialisation, shuffling) derives from it.
    """

    layer: int | str = C.option(-2, metavar="LAYER")
    neurons: tuple[int, int] | None = C.option(None, low=0)
    alpha: float = C.option(0.0, low=0.0, high=1.0)
    decoder_base: int = C.option(64, low=1)
    decoder_widths: tuple[int, ...] | None = C.option(None, low=1)
    epochs: int = C.option(64, low=1)
    batch_size: int = C.option(128, low=1)
    learning_rate: float = C.option(3e-4, low=0.0, low_open=True)
    weight_decay: float = C.option(1e-5, low=0.0)
    reduction: str = C.option("sum", choices=REDUCTIONS)
    refae: bool = C.option(True, negative="--no-refae")
    eval_epochs: int = C.option(64, low=0)
    eval_batch_size: int = C.option(128, low=1)
    seed: int = C.option(0, low=0)

    def validate(self) -> None:
        """Raises :class:`XaiJaxError` for a value outside its declared bounds or choices, or a neuron range
        that is empty."""
        C.check(self)
        if self.neurons is not None:
            start, stop = self.neurons
            if not 0 <= start < stop:
                raise XaiJaxError(f"neurons must be a range start:stop with 0 <= start < stop, got {start}:{stop}")
