"""Fixed-size batches with a validity mask, prepared on a background thread.

Every batch has exactly ``batch_size`` rows so that a jitted step compiles once; the last one is padded
by repeating its final valid image and carries ``mask == False`` (and ``index == -1``) in the padding.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from xai_jax.data.base import Source

_DONE = object()


class Batches:
    """An iterable of ``{"images", "labels", "mask", "index"}`` dicts of NumPy arrays over ``source``.

    Args:
      source: the dataset.
      batch_size: rows per batch, padding included.
      indices: which items, in which order (default: all, in dataset order).
      prefetch: batches prepared ahead on a background thread (0: read in the caller's thread).
    """

    def __init__(self, source: Source, batch_size: int, indices: np.ndarray | None = None, prefetch: int = 2):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source, self.batch_size, self.prefetch = source, int(batch_size), int(prefetch)
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _make(self, start: int) -> dict[str, np.ndarray]:
        idx = self.indices[start:start + self.batch_size]
        images, labels = self.source.read(idx)
        valid = len(idx)
        pad = self.batch_size - valid
        mask = np.ones(self.batch_size, bool)
        index = np.full(self.batch_size, -1, np.int64)
        index[:valid] = idx
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            labels = np.concatenate([labels, np.repeat(labels[-1:], pad)])
            mask[valid:] = False
        return {"images": images, "labels": np.asarray(labels, np.int32), "mask": mask, "index": index}

    def _serial(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self._make(start)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.prefetch <= 0:
            yield from self._serial()
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for batch in self._serial():
                    if stop.is_set():
                        return
                    q.put(batch)
                q.put(_DONE)
            except BaseException as err:  # re-raised in the consumer
                q.put(err)

        thread = threading.Thread(target=produce, daemon=True, name="xai_jax-prefetch")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.01)
