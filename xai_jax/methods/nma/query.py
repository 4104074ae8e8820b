"""A query of a near-miss result (paper section 3.4): classify one image with the result's model, list its near
misses, and explain the prediction in words. ``xai-jax nma explain --image`` and the explorer's query both
answer through :func:`answer`, so the two say the same."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.methods.nma.result import NMAResult


@dataclasses.dataclass
class Classifier:
    """A backbone with its weights, ready to classify single images (the forward is compiled once).

    Attributes:
      spec: the model's :class:`xai_jax.models.ModelSpec` (input shape, preprocessing).
      variables: its Flax variables.
      num_classes: outputs of its head.
    """

    spec: Any
    variables: Any
    num_classes: int

    @classmethod
    def load(cls, spec, weights_path: str, result: NMAResult, num_classes: int | None = None) -> "Classifier":
        """The model of ``spec`` with the weights at ``weights_path``, its head sized for ``result``'s labels
        where the model's default differs; one clear line where the two disagree."""
        from xai_jax import weights
        classes = num_classes or (result.num_classes if result.num_classes != spec.num_classes else None)
        variables = weights.load(spec, weights_path, num_classes=classes)
        classifier = cls(spec, variables, classes or spec.num_classes)
        if classifier.num_classes != result.num_classes:
            raise XaiJaxError(f"{spec.name} has {classifier.num_classes} outputs but the result has "
                              f"{result.num_classes} labels")
        return classifier

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Softmax of the logits of one image ``[H, W, C]`` (uint8, as :func:`~xai_jax.data.sources.read_image`
        prepares it): float64 ``[num_classes]``."""
        import jax

        from xai_jax import models
        forward = models.make_forward(self.spec.name, (), None if self.num_classes == self.spec.num_classes
                                      else self.num_classes)
        logits = forward(np.asarray(image)[None], self.variables)["logits"]
        return np.asarray(jax.nn.softmax(logits[0]), np.float64)


def near_misses(probs: np.ndarray, label: int, k: int, t: float) -> list[tuple[int, float]]:
    """The near misses of one image predicted as ``label`` (section 3.1): the other labels among its top ``k``
    with ``P >= t``, most probable first, as ``(label index, probability)``."""
    top = np.argsort(-probs, kind="stable")[:k]
    return [(int(j), float(probs[j])) for j in top if j != label and probs[j] >= t]


def answer(result: NMAResult, probs: np.ndarray) -> dict:
    """What a query of ``result`` with one image's probabilities shows.

    Args:
      result: the near-miss result.
      probs: the model's probabilities of the image, ``[C]``.

    Returns:
      ``{"label": index, "name": class name, "p": probability, "near_misses": [{"index", "name", "p"}],
      "explanation": the text of :meth:`NMAResult.explain`, "printed": the lines ``nma explain --image``
      prints}``.
    """
    probs = np.asarray(probs, np.float64)
    if probs.shape != (result.num_classes,):
        raise XaiJaxError(f"{probs.shape[-1]} probabilities for a result of {result.num_classes} labels")
    label = int(probs.argmax())
    text = result.explain(label).text()
    return {"label": label, "name": result.class_names[label], "p": float(probs[label]),
            "near_misses": [{"index": j, "name": result.class_names[j], "p": p}
                            for j, p in near_misses(probs, label, result.config.k, result.config.t)],
            "explanation": text,
            "printed": [f"classified as {result.class_names[label]} (p = {probs[label]:.3f})", text]}
