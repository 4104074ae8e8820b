"""Datasets with random access (:class:`Source`), fixed-size prefetched batches, and command-line specs."""

from xai_jax.data.base import ArraySource, Source, Subset, subset
from xai_jax.data.batcher import Batches
from xai_jax.data.sources import (DIGIT_NAMES, FASHION_MNIST_NAMES, DigitsSource, FolderSource, IdxSource,
                                  JpegNpzSource, NpzSource, TfdsSource)
from xai_jax.data.spec import SPEC_FORMS, open_source, spec_path, split_if_any

__all__ = [
    "ArraySource", "Batches", "DIGIT_NAMES", "DigitsSource", "FASHION_MNIST_NAMES", "FolderSource", "IdxSource",
    "JpegNpzSource", "NpzSource", "SPEC_FORMS", "Source", "Subset", "TfdsSource", "open_source", "spec_path", "split_if_any",
    "subset",
]
