"""What every demo section receives."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DemoContext:
    """The trained demo model and its data, handed to each section's ``section(report, context)``.

    Attributes:
      variables: Flax variables of the trained ``small_cnn`` (8x8x1 digits, 10 classes).
      train_set, test_set: :class:`xai_jax.data.DigitsSource` splits (1,437 and 360 images).
      seed: the demo's seed; sections derive their keys from it.
      progress: passed on to long passes (``None``: automatic, ``False``: off).
      model: the registry name of the demo model.
    """

    variables: Any
    train_set: Any
    test_set: Any
    seed: int = 0
    progress: bool | None = None
    model: str = "small_cnn"
