"""The streaming map-reduce that every dataset pass runs through.

A pass is a fold ``state = step(state, batch)``: ``step`` is one pure function, jitted once per batch
shape, that runs a backbone and a kernel on a batch and adds the result into ``state``, a pytree of
device-resident accumulators. The batch axis is sharded over a 1-D mesh of every local device (XLA
inserts the cross-device reductions), the state is replicated and its buffers are donated, and the last
batch is padded with a ``mask`` so nothing recompiles. Host batches are prepared on a background thread
(:class:`xai_jax.data.Batches`) while the device works.

Model weights travel as a separate ``params`` argument (replicated, never donated) rather than in a
closure, so they are not baked into the compiled program as constants and one compiled step serves any
weights of the same shapes.

``batch`` is a dict with ``images``, ``labels``, ``mask`` (bool, False in padding) and ``index`` (dataset
position, -1 in padding); a step must weight every contribution by ``mask``.

Arrays already on the host (stored activations, codes, embeddings) go through :func:`map_arrays` instead: the
same fixed-size, sharded, padded chunks, without a :class:`Source`.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xai_jax.checkpoints import Checkpoint, checkpointing, fold_saver, rows_saver  # noqa: F401 - checkpointing re-exported
from xai_jax.data.base import Source
from xai_jax.data.batcher import Batches
from xai_jax.distributed import gather_rows
from xai_jax.errors import XaiJaxError
from xai_jax.interrupts import raise_if_received
from xai_jax import compiler_options, rowstore

Batch = dict[str, Any]
Step = Callable[[Any, Batch, Any], Any]
DATA_AXIS = "data"


def local_mesh() -> Mesh:
    """A 1-D mesh named ``"data"`` over every device this process can address."""
    return Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))


def global_mesh() -> Mesh:
    """A 1-D mesh named ``"data"`` over the devices of every process, process by process, so that process
    ``p``'s devices hold the ``p``-th block of a batch (the rows :meth:`Batches.share` gives it). With one
    process it is :func:`local_mesh`."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


@functools.lru_cache(maxsize=None)
def _default_mesh() -> Mesh:
    return global_mesh()


@functools.lru_cache(maxsize=None)
def _default_local_mesh() -> Mesh:
    return local_mesh()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def round_batch_size(batch_size: int, mesh: Mesh | None = None) -> int:
    """The smallest multiple of the mesh's device count that is >= ``batch_size``."""
    devices = (mesh or _default_mesh()).size
    return -(-batch_size // devices) * devices


@functools.lru_cache(maxsize=64)
def _jitted_fold(step: Step, mesh: Mesh):
    # Cached on the step function itself: passing the same step again reuses the compiled program.
    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
                   out_shardings=replicated(mesh), donate_argnums=0, **_options(step, mesh))


@functools.lru_cache(maxsize=64)
def _jitted_map(fn: Callable[[Batch, Any], Any], mesh: Mesh, over_images: bool = True):
    return jax.jit(fn, in_shardings=(batch_sharding(mesh), replicated(mesh)), out_shardings=batch_sharding(mesh),
                   **(_options(fn, mesh) if over_images else {}))


def _cpu_collectives(mesh: Mesh) -> bool:
    """Whether a fold over ``mesh`` must wait for each step before dispatching the next: on several CPU devices.

    Each step reduces its state across the devices (an all-reduce). On a CPU the devices' programs share one
    thread pool, and with steps queued ahead, the pool's threads could all be taken by devices waiting in step
    ``k``'s all-reduce and by a later step, while one device's step ``k`` stayed queued: a deadlock (8 forced
    host devices on 2 busy cores: 3 of 6 runs of ``tests/test_engine.py``'s 8-device pass hung, 0 of 14 with
    this wait, and each took the same 7 s). A CPU gains nothing from steps queued ahead, since its cores are
    the host's; accelerators keep them."""
    return mesh.devices.size > 1 and all(device.platform == "cpu" for device in mesh.devices.flat)


def _options(fn: Callable, mesh: Mesh) -> dict:
    """``compiler_options`` of pass step ``fn`` over images on ``mesh`` (:mod:`xai_jax.compiler_options`: a
    backbone's, not the host arrays' of :func:`map_arrays`), as keyword arguments of ``jax.jit``."""
    options = compiler_options.step_options(fn, mesh)
    return {} if options is None else {"compiler_options": options}


def _processes(mesh: Mesh) -> int:
    return len({d.process_index for d in mesh.devices.flat})


def _as_batches(data: Source | Batches, batch_size: int | None, mesh: Mesh) -> Batches:
    if isinstance(data, Batches):
        if data.batch_size % mesh.size:
            raise XaiJaxError(f"batch size {data.batch_size} must be a multiple of the {mesh.size} devices; "
                              f"use {round_batch_size(data.batch_size, mesh)}")
        batches = data
    elif isinstance(data, Source):
        batches = Batches(data, round_batch_size(batch_size or 128, mesh))
    else:
        raise TypeError(f"expected a Source or Batches, got {type(data).__name__}")
    if _processes(mesh) > 1 and batches.process_count == 1:
        # Each process reads only its block of every global batch.
        batches = batches.share(jax.process_index(), jax.process_count())
    return batches


def _to_device(batch: Batch, sharding: NamedSharding) -> Batch:
    # make_array_from_process_local_data is the multi-host-correct form of device_put for a global batch.
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` copied onto every device of ``mesh`` (the same values in every process)."""
    sharding = replicated(mesh)
    if _processes(mesh) == 1:
        return jax.device_put(jax.tree.map(jnp.array, tree), sharding)
    # Across processes each one places its own copy on its own devices.
    return jax.tree.map(lambda leaf: jax.make_array_from_callback(np.shape(leaf), sharding,
                                                                  lambda index, a=np.asarray(leaf): a[index]), tree)


def _local(tree: Any, mesh: Mesh) -> Any:
    """A replicated result as arrays on this process's first device, which it can read without the others."""
    if _processes(mesh) == 1:
        return tree
    return jax.tree.map(lambda a: a.addressable_data(0), tree)


def _progress(total_batches: int, total_images: int, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("XAI_JAX_NO_PROGRESS")
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total_images, desc=desc or "pass", unit="img", unit_scale=True, leave=False,
                dynamic_ncols=True)


class _Meter:
    """Counts valid images and reports images/s through an optional tqdm bar."""

    def __init__(self, batches: Batches, desc: str, progress: bool | None):
        self.bar = _progress(len(batches), batches.num_examples, desc, progress)
        self.images = 0
        self.start = time.perf_counter()

    def update(self, batch: Batch):
        valid = int(np.count_nonzero(batch["mask"]))
        self.images += valid
        if self.bar is not None:
            self.bar.update(valid)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    @property
    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)


def run(step: Step, state: Any, data: Source | Batches, params: Any = None, *,
        batch_size: int | None = None, mesh: Mesh | None = None, desc: str = "", progress: bool | None = None,
        checkpoint: Checkpoint | None = None) -> Any:
    """Folds ``step`` over every batch of ``data`` and returns the final state.

    Args:
      step: ``step(state, batch, params) -> state``, pure and jittable; must ignore rows where
        ``batch["mask"]`` is False. Pass the same function object to reuse its compiled program.
      state: the initial accumulators (a pytree of arrays); copied, so the caller's arrays stay valid.
      data: a :class:`Source` (batched here with ``batch_size`` rounded up to a multiple of the devices) or
        ready :class:`Batches`.
      params: read-only inputs of every step (model variables), replicated on the mesh.
      batch_size: global batch size when ``data`` is a Source (default 128).
      mesh: the devices to shard the batch over (default: every device of every process; each process
        reads only its block of every batch, and XLA reduces the state across processes).
      desc: label of the progress bar.
      progress: show a progress bar with images/s (default: when stderr is a terminal).
      checkpoint: save the state every few batches and resume from it (default: the one
        :func:`checkpointing` made active, if any).

    Returns:
      The state after the last batch, replicated on the mesh (over several processes: this process's copy,
      on its first device).
    """
    mesh = mesh or _default_mesh()
    batches = _as_batches(data, batch_size, mesh)
    fold = _jitted_fold(step, mesh)
    sharding = batch_sharding(mesh)
    # The fold donates its state: copy the caller's arrays so they outlive the pass.
    state = _replicate(state, mesh)
    params = _replicate(params, mesh)
    saver = fold_saver(checkpoint, state, batches)
    state, first = saver.restore(state)
    one_step_at_a_time = _cpu_collectives(mesh)
    meter = _Meter(batches, desc, progress)
    try:
        for position, batch in enumerate(batches.starting_at(first), start=first + 1):
            state = fold(state, _to_device(batch, sharding), params)
            if one_step_at_a_time:
                jax.block_until_ready(state)
            meter.update(batch)
            saver.after(position, state)
        saver.done(state)
        return _local(jax.block_until_ready(state), mesh)
    finally:
        meter.close()


def map_batches(fn: Callable[[Batch, Any], Any], data: Source | Batches, params: Any = None, *,
                batch_size: int | None = None, mesh: Mesh | None = None, desc: str = "", progress: bool | None = None) -> Iterator[Any]:
    """Applies ``fn`` to every batch and yields its outputs for the valid rows, as NumPy, in dataset order.

    For passes whose result has a row per image (predictions, taps to be saved).
    ``fn(batch, params)`` returns a pytree of arrays with a leading batch axis; padding rows are dropped before yielding.
    Over several processes each reads its block of every batch and the outputs are gathered: every process
    gets every row, in dataset order (:func:`xai_jax.distributed.gather_rows`).
    """
    mesh = mesh or _default_mesh()
    batches = _as_batches(data, batch_size, mesh)
    mapped = _jitted_map(fn, mesh)
    sharding = batch_sharding(mesh)
    params = _replicate(params, mesh)
    meter = _Meter(batches, desc, progress)
    pending = None
    try:
        # One batch in flight: the device computes batch i+1 while batch i is copied back to the host.
        for batch in batches:
            out = mapped(_to_device(batch, sharding), params)
            if pending is not None:
                yield _valid_rows(*pending)
            pending = (out, batch["mask"])
            meter.update(batch)
        if pending is not None:
            yield _valid_rows(*pending)
    finally:
        meter.close()


def collect_rows(fn: Callable[[Batch, Any], Any], data: Source | Batches, params: Any = None, *,
                 batch_size: int | None = None, mesh: Mesh | None = None, desc: str = "",
                 progress: bool | None = None, directory: str | None = None,
                 checkpoint: Checkpoint | None = None) -> Any:
    """:func:`map_batches` written into arrays of a row per image (:func:`xai_jax.rowstore.store`), resumable.

    Args:
      fn, data, params, batch_size, mesh, desc, progress: as for :func:`map_batches`.
      directory: an existing folder to write the arrays into as :class:`xai_jax.rowstore.DiskRows`, or None
        to return NumPy arrays.
      checkpoint: save every few batches and resume (default: the one
        :func:`xai_jax.checkpoints.checkpointing` made active, if any). The rows are then written into the
        checkpoint's folder, with the position of the last save: a resumed pass opens them and reads only
        the images after that position, and its arrays equal the uninterrupted pass's, since every batch's
        rows are computed by the same program. With a ``directory`` the arrays returned are those files
        (they live until the checkpoint folder is removed); without one they are read into memory.

    Returns:
      The pytree ``fn`` returns, each leaf ``[n, ...]`` (NumPy, or DiskRows on disk) in dataset order.
    """
    mesh = mesh or _default_mesh()
    batches = _as_batches(data, batch_size, mesh)
    saver = rows_saver(checkpoint, batches)
    if saver is None:
        return rowstore.store(map_batches(fn, batches, params, mesh=mesh, desc=desc, progress=progress),
                              batches.num_examples, directory)
    first = saver.restore()
    chunks = map_batches(fn, batches.starting_at(first), params, mesh=mesh, desc=desc, progress=progress)
    out = rowstore.store(chunks, batches.num_examples, saver.directory(), start=saver.rows_after(first),
                         after=lambda count, buffers: saver.after(first + count, buffers))
    return out if directory is not None else jax.tree.map(np.asarray, out)


def map_arrays(fn: Callable[[Any, Any], Any], arrays: Any, params: Any = None, *, chunk: int = 256,
               mesh: Mesh | None = None, directory: str | None = None) -> Any:
    """Applies a row-wise ``fn`` to host arrays in fixed-size chunks and returns its output for every row, as NumPy.

    The ``n`` rows are cut into chunks of ``c = min(round(chunk), round(n))`` rows, ``round`` being
    :func:`round_batch_size` (up to a multiple of the mesh's devices): a full chunk for large inputs, no more
    than the data for small ones. The last chunk is padded by repeating its final row, so every call has the
    same shapes and ``fn`` compiles once per ``c`` and trailing shapes and dtypes; the padding rows are
    dropped from the output. As in :func:`map_batches`, each chunk's leading axis is sharded over the mesh,
    ``params`` are replicated, and one chunk is in flight: the device computes chunk ``i + 1`` while chunk
    ``i`` is copied back.

    Args:
      fn: ``fn(chunk, params) -> pytree of [c, ...] arrays``, pure, jittable and row-wise (an output row
        depends on its input row alone: padding rows are copies of a real row). ``chunk`` has the structure
        of ``arrays``. It is jitted here, and the compiled program is cached on the function object and the
        mesh: pass the same object every time (a module-level function, or one made by an
        ``functools.lru_cache`` factory) to reuse it; a lambda or closure built per call compiles again on
        every call.
      arrays: a pytree (typically a dict) of host arrays (or :class:`xai_jax.rowstore.DiskRows`) with a common
        leading axis of ``n >= 1`` rows.
      params: read-only inputs of every call (model variables), replicated on the mesh and traced, so new
        values of the same shapes reuse the program.
      chunk: rows per call before the rounding (>= 1).
      mesh: the devices to shard the rows over (default: all local devices: over several processes, each
        one holds the arrays and computes every row itself, with no communication).
      directory: an existing folder to write the outputs into as :class:`xai_jax.rowstore.DiskRows` files
        (:func:`xai_jax.rowstore.store`), or None for NumPy arrays.

    Returns:
      The pytree ``fn`` returns, each leaf a NumPy array (or :class:`xai_jax.rowstore.DiskRows`) ``[n, ...]``
      with the rows in input order.

    Raises:
      XaiJaxError: no arrays, no rows, leading axes of different lengths, or ``chunk < 1``.
    """
    mesh = mesh or _default_local_mesh()
    leaves, treedef = jax.tree.flatten(arrays)
    if not leaves:
        raise XaiJaxError("map_arrays needs at least one array")
    leaves = [rowstore.as_rows(leaf) for leaf in leaves]  # DiskRows stay on disk: only chunks are read
    if any(leaf.ndim == 0 for leaf in leaves):
        raise XaiJaxError("map_arrays needs arrays with a leading row axis; got a scalar")
    lengths = {len(leaf) for leaf in leaves}
    if len(lengths) > 1:
        raise XaiJaxError(f"map_arrays needs arrays with the same number of rows; got shapes "
                          f"{[leaf.shape for leaf in leaves]}")
    n = lengths.pop()
    if n == 0:
        raise XaiJaxError("map_arrays got empty arrays (0 rows): nothing to compute")
    if chunk < 1:
        raise XaiJaxError(f"chunk must be >= 1, got {chunk}")
    size = min(round_batch_size(chunk, mesh), round_batch_size(n, mesh))
    mapped = _jitted_map(fn, mesh, over_images=False)
    sharding = batch_sharding(mesh)
    params = jax.device_put(params, replicated(mesh))

    def rows(start: int) -> Any:
        parts = [leaf[start:start + size] for leaf in leaves]
        pad = size - len(parts[0])
        if pad:
            parts = [np.concatenate([part, np.repeat(part[-1:], pad, axis=0)]) for part in parts]
        return treedef.unflatten([jax.make_array_from_process_local_data(sharding, part) for part in parts])

    def results() -> Iterator[Any]:
        pending = None
        for start in range(0, n, size):
            raise_if_received()
            result = mapped(rows(start), params)
            if pending is not None:
                yield _first_rows(*pending)
            pending = (result, min(size, n - start))
        yield _first_rows(*pending)

    return rowstore.store(results(), n, directory)


def _first_rows(out: Any, valid: int) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[:valid], out)


def _valid_rows(out: Any, mask: np.ndarray) -> Any:
    # gather_rows is the identity on one process; across processes it also orders the mask like the rows.
    out, mask = gather_rows((out, mask))
    return jax.tree.map(lambda a: a[mask], out)


def collect(chunks: Iterable[Any]) -> Any:
    """Concatenates the per-batch outputs of :func:`map_batches` along the batch axis."""
    chunks = list(chunks)
    if not chunks:
        raise XaiJaxError("the dataset is empty")
    return jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
