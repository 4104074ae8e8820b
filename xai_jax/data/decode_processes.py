"""Decoding image folders in worker processes that write straight into one shared-memory batch.

Threads stop scaling where the GIL-holding part of an image's work (Pillow's Python-level file parsing, the
array conversion; 6-8 % of it, BENCHMARKS.md "Input pipeline") fills one core: near 12-16 threads. Processes have
no such limit, at about the same CPU per image. Each worker decodes a run of the batch's images and writes them into the batch's
``multiprocessing.shared_memory`` block, so pixels never travel through pickling; the caller copies the finished
batch out once. Workers are started with ``spawn`` (forking a process that runs JAX's threads is unsafe), once per
process and worker count; they import what ``decode`` needs (NumPy, Pillow and this package's data modules).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import multiprocessing
import pathlib
import threading
from multiprocessing import shared_memory

import numpy as np

from xai_jax.malloc import set_thresholds

_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}
_LOCK = threading.Lock()
# Images per task: small enough to balance the workers, large enough that the per-task cost is small.
_RUN = 8


# sizes that keep a decode's large buffers (about 1 MB an image) in the heap
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20


def _keep_buffers_in_the_heap() -> None:
    """Worker initializer: a fresh process's malloc maps and unmaps each buffer above 128 KB anew, page faults
    and all, which made decoding in a worker 40 % dearer than in the parent; raising glibc's thresholds keeps
    them in the heap (measured: the worker's CPU per image then equals the parent's). No-op without glibc."""
    set_thresholds(_MMAP_THRESHOLD, _TRIM_THRESHOLD)


@atexit.register
def _shut_down() -> None:
    # Before the interpreter tears its modules down: a pool collected after that prints an ignored exception.
    with _LOCK:
        for pool in _POOLS.values():
            pool.shutdown(wait=True, cancel_futures=True)
        _POOLS.clear()


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    with _LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_keep_buffers_in_the_heap)
        return _POOLS[workers]


def _decode_run(block: str, shape: tuple[int, ...], first: int, paths: list[str], decode) -> None:
    """In a worker: ``decode(path)`` of each of ``paths`` into rows ``first ..`` of the shared uint8 array
    ``block`` of ``shape``."""
    memory = shared_memory.SharedMemory(name=block)
    try:
        out = np.ndarray(shape, np.uint8, buffer=memory.buf)
        for i, path in enumerate(paths):
            out[first + i] = decode(pathlib.Path(path))
        del out
    finally:
        memory.close()


def decode_into_batch(paths: list[pathlib.Path], decode, shape: tuple[int, ...], workers: int) -> np.ndarray:
    """``np.stack([decode(p) for p in paths])``, decoded by ``workers`` processes.

    Args:
      paths: the image files.
      decode: a picklable function of a path giving uint8 ``shape`` (e.g. a ``functools.partial`` of
        :func:`xai_jax.data.sources.load_folder_image`).
      shape: every image's ``[H, W, C]``.
      workers: worker processes.

    Returns:
      uint8 ``[len(paths), *shape]``.

    Raises:
      whatever ``decode`` raised for the first failing run of images (an :class:`XaiJaxError` naming the file).
    """
    shape = (len(paths), *shape)
    memory = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape))))
    try:
        pool = _pool(workers)
        futures = [pool.submit(_decode_run, memory.name, shape, start, [str(p) for p in paths[start:start + _RUN]],
                               decode)
                   for start in range(0, len(paths), _RUN)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return np.ndarray(shape, np.uint8, buffer=memory.buf).copy()
    finally:
        memory.close()
        memory.unlink()
