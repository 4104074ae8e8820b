"""The data-source protocol and in-memory arrays, the simplest source."""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np

from xai_jax.errors import XaiJaxError


class Source(abc.ABC):
    """A labelled image dataset with random access by index.

    ``read(indices)`` returns ``(images, labels)``: images ``[n, H, W, C]`` (or ``[n, H, W]``) uint8 in
    [0, 255] or float32 in [0, 1], all of one shape, and int32 labels ``[n]`` in ``[0, len(class_names))``.
    Decoding happens in ``read`` so that the batcher's background thread does it.
    """

    #: one name per label, in label order
    class_names: tuple[str, ...]
    #: how error messages and reports name the source
    description: str = "source"

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image (reads the first)."""
        return tuple(self.read(np.arange(1))[0].shape[1:])

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image and label in one pair of arrays (for datasets that fit in memory)."""
        return self.read(np.arange(len(self)))


class ArraySource(Source):
    """Images and labels already in memory.

    Args:
      images: ``[N, H, W]`` or ``[N, H, W, C]``, uint8 or float in [0, 1].
      labels: ``[N]`` integers in ``[0, C)``.
      class_names: ``C`` names; default ``"0" .. "C-1"`` with ``C = max(labels) + 1``.
    """

    def __init__(self, images, labels, class_names: Sequence[str] | None = None, description: str = "arrays"):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim not in (3, 4):
            raise XaiJaxError(f"{description}: images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
        if labels.shape != (images.shape[0],):
            raise XaiJaxError(f"{description}: {images.shape[0]} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise XaiJaxError(f"{description}: labels must be integers, got {labels.dtype}")
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise XaiJaxError(f"{description}: labels must lie in [0, {len(class_names)}), "
                              f"got [{labels.min()}, {labels.max()}]")
        self.images, self.labels = images, labels.astype(np.int32)
        self.class_names = tuple(class_names)
        self.description = description

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[indices], self.labels[indices]


class Subset(Source):
    """The items of a source at ``indices``, in that order (see :func:`subset` for the usual ways to pick them)."""

    def __init__(self, source: Source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices)
        self.class_names = source.class_names
        self.description = source.description

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.source.read(self.indices[indices])


def subset(source: Source, limit: int, seed: int | None = None) -> Subset:
    """``limit`` items of a source: the first ones, or a seeded random draw.

    Many files are sorted by class (the CIFAR-10 archives, ImageNet folders), so their first N images cover a few
    classes only; a random draw covers them all. The drawn indices are kept in source order so that reads stay
    sequential.

    Args:
      source: the source.
      limit: how many items (at least 1; more than ``len(source)`` keeps them all).
      seed: None for the first ``limit`` items; otherwise the seed of a draw without replacement,
        ``sort(permutation(len(source), rng=default_rng(seed))[:limit])``.

    Returns:
      the subset.
    """
    if int(limit) < 1:
        raise XaiJaxError(f"limit must be at least 1, got {limit}")
    count = min(int(limit), len(source))
    if seed is None:
        return Subset(source, np.arange(count))
    return Subset(source, np.sort(np.random.default_rng(int(seed)).permutation(len(source))[:count]))
