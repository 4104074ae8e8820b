"""Fixed-size batches with a validity mask, prepared on a background thread.

Every batch has exactly ``batch_size`` rows so that a jitted step compiles once; the last one is padded
by repeating its final valid image and carries ``mask == False`` (and ``index == -1``) in the padding.

Over several processes (:meth:`Batches.share`) a batch is a global one: process ``p`` of ``P`` reads rows
``[p * b / P, (p + 1) * b / P)`` of every global batch of ``b`` rows, so the processes read disjoint images,
together all of them, with the same number of batches each, and the global batches are those of one process.
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
from typing import Iterator

import numpy as np

from xai_jax.data.base import Source
from xai_jax.interrupts import raise_if_received

_DONE = object()


class Batches:
    """An iterable of ``{"images", "labels", "mask", "index"}`` dicts of NumPy arrays over ``source``.

    Args:
      source: the dataset.
      batch_size: rows per batch, padding included.
      indices: which items, in which order (default: all, in dataset order).
      prefetch: batches prepared ahead on a background thread (0: read in the caller's thread).

    Attributes:
      process_index, process_count: this process's share (see :meth:`share`); ``0, 1`` reads every row.
      first: the global batch iteration starts at (see :meth:`starting_at`).
    """

    def __init__(self, source: Source, batch_size: int, indices: np.ndarray | None = None, prefetch: int = 2):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source, self.batch_size, self.prefetch = source, int(batch_size), int(prefetch)
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, np.int64)
        self.process_index, self.process_count, self.first = 0, 1, 0

    def share(self, process_index: int, process_count: int) -> "Batches":
        """The same global batches, of which this process reads only its rows (``batch_size / process_count``
        a batch, the ``process_index``-th block of each global batch).

        Raises:
          ValueError: ``batch_size`` is not a multiple of ``process_count``, or the index is out of range.
        """
        if self.batch_size % process_count:
            raise ValueError(f"batch size {self.batch_size} is not a multiple of the {process_count} processes")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process index {process_index} outside [0, {process_count})")
        shared = copy.copy(self)
        shared.process_index, shared.process_count = int(process_index), int(process_count)
        return shared

    def starting_at(self, first: int) -> "Batches":
        """The same batches from global batch ``first`` on (resuming a pass)."""
        if not 0 <= first <= len(self):
            raise ValueError(f"batch {first} outside [0, {len(self)}]")
        later = copy.copy(self)
        later.first = int(first)
        return later

    @property
    def local_batch_size(self) -> int:
        """Rows of each batch this process reads."""
        return self.batch_size // self.process_count

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _make(self, start: int) -> dict[str, np.ndarray]:
        size = self.local_batch_size
        idx = self.indices[start:start + size]
        valid = len(idx)
        # A process whose share of the last batch is empty reads one image to pad with, masked out.
        images, labels = self.source.read(idx if valid else self.indices[-1:])
        pad = size - valid
        mask = np.ones(size, bool)
        index = np.full(size, -1, np.int64)
        index[:valid] = idx
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            labels = np.concatenate([labels, np.repeat(labels[-1:], pad)])
            mask[valid:] = False
        if not valid:
            images, labels = images[:size], labels[:size]
        return {"images": images, "labels": np.asarray(labels, np.int32), "mask": mask, "index": index}

    def _serial(self) -> Iterator[dict[str, np.ndarray]]:
        offset = self.process_index * self.local_batch_size
        for start in range(self.first * self.batch_size, len(self.indices), self.batch_size):
            yield self._make(start + offset)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """The batches; before each, a Ctrl-C or SIGTERM whose exception was swallowed is raised again
        (:func:`xai_jax.interrupts.raise_if_received`)."""
        with contextlib.closing(self._prefetched()) as batches:  # stops the producer thread at once
            for batch in batches:
                raise_if_received()
                yield batch

    def _prefetched(self) -> Iterator[dict[str, np.ndarray]]:
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
