"""One process per host: joining a ``jax.distributed`` cluster, which process writes, and gathering rows.

A pass over many hosts runs the same command on every host. :func:`initialize` joins them into one JAX
cluster (before any backend is used); after it, ``jax.devices()`` spans every host, the engine shards each
global batch over all of them, and every process reads only its own rows of each batch
(:meth:`xai_jax.data.Batches.share`). Fold states are reduced by XLA across processes and come back equal on
every process; per-image outputs are gathered (:func:`gather_rows`). Only process 0 writes (:func:`is_main`,
used by :mod:`xai_jax.outputs`).

This module imports JAX only inside its functions, so that ``xai-jax --help`` stays light.
"""

from __future__ import annotations

import sys
from typing import Any

from xai_jax.errors import XaiJaxError


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
