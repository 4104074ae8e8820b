"""One process per host: joining a ``jax.distributed`` cluster, which process writes, and gathering rows.

A pass over many hosts runs the same command on every host. :func:`initialize` joins them into one JAX
cluster (before any backend is used); after it, ``jax.devices()`` spans every host, the engine shards each
global batch over all of them, and every process reads only its own rows of each batch
(:meth:`xai_jax.data.Batches.share`). Fold states are reduced by XLA across processes and come back equal on
every process; per-image outputs are gathered (:func:`gather_rows`). Only process 0 writes (:func:`is_main`,
used by :mod:`xai_jax.outputs`).

A process that fails stops the others (:func:`abandon`, :func:`watch_for_failure`): otherwise they would wait
in the pass's next collective for a process that is gone, for ever. The failing process writes its error into
the cluster's key-value store and exits; every other process has a thread waiting for that key, which
prints the error, runs the :func:`on_abandon` hooks (temporary folders are removed) and exits with code 2.

This module imports JAX only inside its functions, so that ``xai-jax --help`` stays light.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

from xai_jax.errors import XaiJaxError

#: the key-value store's key that holds the first failure of a cluster, and the folder of its acknowledgements
_FAILED_KEY, _SEEN_PREFIX = "xai_jax/failed", "xai_jax/failure_seen/"
#: how long the failing process 0, which holds the key-value store, waits for the others to read the failure
FAILURE_GRACE_SECONDS = 20.0
_abandon_hooks: list[Callable[[], None]] = []
_abandoning = threading.Event()


def detected_process_count() -> int:
    """How many processes the cluster environment that JAX's own detection finds here runs (SLURM, Open MPI,
    TPU pods; like JAX, it skips the opt-in ones such as Kubernetes); 1 without one."""
    try:
        from jax._src import clusters
        for env in clusters.ClusterEnv._cluster_types:
            if not getattr(env, "opt_in_only_method", False) and env.is_env_present():
                return int(env.get_process_count())
    except Exception:  # noqa: BLE001 - a private API: when it moves, fall back to one process
        pass
    return 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """Joins this process to a multi-process JAX cluster, or stays a single process.

    With all three arguments, ``jax.distributed.initialize`` gets them; with none, JAX's own cluster
    detection runs when :func:`detected_process_count` sees a cluster of more than one process, and
    otherwise this stays one process (so that commands in a one-task SLURM job do not each start a
    coordinator on the job's port). On CPU the cross-process collectives go through gloo. Call it before
    anything uses a JAX backend (``jax.devices()``, any computation); calling it again is a no-op.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service.
      num_processes: how many processes (hosts) take part.
      process_id: this process's rank, ``0 <= process_id < num_processes``.

    Returns:
      ``(process_index, process_count)``.

    Raises:
      XaiJaxError: only some of the three given, or a rank outside ``[0, num_processes)``.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise XaiJaxError("give all of --coordinator HOST:PORT, --num-processes P and --process-id I, or none "
                          "(then JAX detects a cluster: SLURM, Open MPI, TPU pods)")
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise XaiJaxError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        if ":" not in coordinator:
            raise XaiJaxError(f"--coordinator must be HOST:PORT, got {coordinator}")
    import jax
    from jax._src import distributed
    if distributed.global_state.client is not None:  # already joined
        return jax.process_index(), jax.process_count()
    if not all(given) and detected_process_count() <= 1:
        return 0, 1
    if all(given) and num_processes == 1:
        return 0, 1
    # gloo gives CPU processes their cross-process all-reduce; GPU and TPU use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XaiJaxError(f"cannot join the cluster: {first}") from None
    watch_for_failure()
    return jax.process_index(), jax.process_count()


def initialize_from_args(args) -> tuple[int, int]:
    """:func:`initialize` with a command's ``--coordinator``, ``--num-processes`` and ``--process-id``."""
    return initialize(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                      getattr(args, "process_id", None))


def process_index() -> int:
    """This process's rank (0 when JAX is not loaded or no cluster was joined), without starting a backend."""
    if "jax" not in sys.modules:
        return 0
    try:
        from jax._src import distributed
        return int(distributed.global_state.process_id or 0)
    except Exception:  # noqa: BLE001 - a private API: fall back to the public one
        import jax
        return jax.process_index()


def process_count() -> int:
    """How many processes take part (1 when JAX is not loaded or no cluster was joined)."""
    if "jax" not in sys.modules:
        return 1
    try:
        from jax._src import distributed
        return int(distributed.global_state.num_processes or 1)
    except Exception:  # noqa: BLE001
        import jax
        return jax.process_count()


def is_main() -> bool:
    """Whether this process writes the outputs (process 0)."""
    return process_index() == 0


def gather_rows(tree: Any) -> Any:
    """Every process's rows of a global batch, concatenated in process order, as NumPy on every process.

    Args:
      tree: a pytree of ``jax.Array`` sharded over a mesh that spans the processes (the global batch), or
        of host arrays holding this process's rows.

    Returns:
      The same pytree of NumPy arrays with all rows (for one process: the arrays themselves).
    """
    import jax
    import numpy as np
    if process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing with one process)."""
    if process_count() == 1:
        return
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)



def minimum(value: int) -> int:
    """The smallest of every process's ``value`` (``value`` itself with one process)."""
    if process_count() == 1:
        return int(value)
    import numpy as np
    from jax.experimental import multihost_utils
    return int(np.min(multihost_utils.process_allgather(np.asarray([value], np.int64))))


def on_abandon(hook: Callable[[], None]) -> None:
    """Registers ``hook`` to run before this process exits because of a failure (its own or another's):
    :func:`os._exit` skips every ``finally``, so whatever must not be left behind is removed here."""
    _abandon_hooks.append(hook)


def _client():
    from jax._src import distributed
    return distributed.global_state.client


def _run_hooks() -> None:
    for hook in _abandon_hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001 - exiting anyway: one failed clean-up must not stop the next
            pass


def watch_for_failure(poll_seconds: float = 0.25) -> None:
    """Starts the thread that watches for another process's failure (once, after joining a cluster): it prints
    that failure as this process's error, runs the :func:`on_abandon` hooks and exits with code 2.

    It polls the key-value store rather than block in it: a thread blocked in a C++ call when the interpreter
    exits aborts the process, so an ``atexit`` handler (run before JAX's own shutdown) stops and joins it."""
    import atexit
    client = _client()
    if client is None or getattr(watch_for_failure, "started", False):
        return
    watch_for_failure.started = True
    rank = process_index()
    stop = threading.Event()

    def watch():
        while not stop.wait(poll_seconds):
            try:
                message = client.key_value_try_get(_FAILED_KEY)
            except Exception:  # noqa: BLE001 - not set: all is well
                continue
            if _abandoning.is_set():  # this process's own failure
                return
            print(f"xai-jax: error: {message}", file=sys.stderr, flush=True)
            _exit(client, rank, 2)

    thread = threading.Thread(target=watch, name="xai_jax failure watcher", daemon=True)
    thread.start()

    def join():
        stop.set()
        thread.join()

    atexit.register(join)


def failure_elsewhere() -> str | None:
    """The failure another process of the cluster reported (``process I of P failed: ...``), or None."""
    client = _client() if "jax" in sys.modules else None
    if client is None or process_count() == 1:
        return None
    try:
        message = client.key_value_try_get(_FAILED_KEY)
    except Exception:  # noqa: BLE001 - not set
        return None
    return None if message.startswith(f"process {process_index()} of ") else message


def abandon(message: str, code: int) -> None:
    """In a cluster, stops every process because this one failed with ``message`` (already printed here):
    the others print ``process I of P failed: message`` and exit 2, this one exits with ``code`` at once,
    skipping JAX's shutdown barrier, which would wait for them. Process 0 holds the key-value store, so it
    first waits up to :data:`FAILURE_GRACE_SECONDS` until every other process has read the failure. Returns
    (does nothing) outside a cluster."""
    client = _client() if "jax" in sys.modules else None
    count = process_count()
    if client is None or count == 1:
        return
    _abandoning.set()
    rank = process_index()
    try:
        client.key_value_set(_FAILED_KEY, f"process {rank} of {count} failed: {message}")
    except Exception:  # noqa: BLE001 - another process failed first: its error is the cluster's
        pass
    _exit(client, rank, code)


def _exit(client, rank: int, code: int) -> None:
    """Runs the hooks, records that this process has seen the failure and exits with ``code``; process 0,
    which holds the key-value store the others read, first waits until every process has seen it."""
    _run_hooks()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        client.key_value_set(f"{_SEEN_PREFIX}{rank}", "1")
    except Exception:  # noqa: BLE001 - the store is gone with process 0: nobody is left to wait for this
        pass
    if rank == 0:
        deadline = time.monotonic() + FAILURE_GRACE_SECONDS
        while time.monotonic() < deadline:
            try:
                if len(client.key_value_dir_get(_SEEN_PREFIX)) >= process_count():
                    break
            except Exception:  # noqa: BLE001
                break
            time.sleep(0.05)
    os._exit(code)
