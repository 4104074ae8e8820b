"""A plain multi-layer perceptron: the encoder and decoder of DEC's autoencoder (``d -> 500 -> 500 -> 2000 -> e``).

Not a registered backbone (it explains nothing by itself): :mod:`xai_jax.methods.dec` builds one per clustered
layer, with the widths its config gives.
"""

from __future__ import annotations

import flax.linen as nn


class MLP(nn.Module):
    """Dense layers with ReLU between them and a linear output (DEC's encoder and decoder).

    Attributes:
      features: the output width of each dense layer, input side first; the last one is the output size.
    """

    features: tuple[int, ...]

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense{i}")(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x
