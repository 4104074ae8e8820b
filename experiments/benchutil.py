"""What every benchmark script shares: where the data is, and the timing rule of BENCHMARKS.md."""

from __future__ import annotations

import os
import pathlib
import resource
import statistics
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def commit() -> str:
    """The checkout's commit, short, with ``+changes`` if tracked files differ from it: what a table names."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def malloc_settings() -> str:
    """How this process's malloc was set up: ``LD_PRELOAD`` and glibc's ``MALLOC_*`` variables, or ``"glibc
    defaults"``. It changes the ratios (BENCHMARKS "ClaDec": page faults), so every table names it."""
    found = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k == "LD_PRELOAD" or k.startswith("MALLOC_")]
    return " ".join(found) or "glibc defaults"


def median_seconds(fn, repeats: int = 3, warm_up: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one untimed call (compilation, caches).

    ``fn`` must block on its results (``block_until_ready``) so that the time covers the work.
    """
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_costs(fn, repeats: int = 5) -> dict:
    """Where the wall time of ``fn()`` goes, per call after one warm-up: medians of the wall time, of the process's
    user and system CPU time, and of its minor page faults (pages the kernel mapped and zeroed afresh).

    A program whose buffers are mapped anew each call shows one fault per 4 KiB page of them, and system time to
    match; see BENCHMARKS "ClaDec" for the step where this is the difference.

    Returns:
      ``{"wall_s", "user_s", "system_s", "minor_faults"}``.
    """
    fn()
    rows = []
    for _ in range(repeats):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        rows.append((wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime,
                     after.ru_minflt - before.ru_minflt))
    return {key: statistics.median(column) for key, column in
            zip(("wall_s", "user_s", "system_s", "minor_faults"), zip(*rows))}


def peer_row(name: str, xai_jax_s: float, peer_s: float, peer: str, sizes: str, **details) -> dict:
    """One peer comparison as ``bench_all.py`` tabulates it: the same work timed on xai_jax's path and on the peer's.

    Args:
      name: what was compared (unique within its benchmark).
      xai_jax_s: seconds of xai_jax's path for the work.
      peer_s: seconds of the peer (PyTorch, scikit-learn, NumPy, SciPy, ...) for the same work.
      peer: who the peer is, e.g. ``"PyTorch (1 thread)"``.
      sizes: the sizes the work had, as a short string.
      details: what the script's own table prints besides the two times (accuracies, differences, ...).

    Returns:
      a dict with these keys and ``ratio`` = ``peer_s / xai_jax_s`` (above 1: xai_jax is faster).
    """
    return {"name": name, "xai_jax_s": xai_jax_s, "peer": peer, "peer_s": peer_s,
            "ratio": peer_s / xai_jax_s, "sizes": sizes, **details}


def skipped_row(name: str, reason: str) -> dict:
    """A comparison that could not run here (a peer not installed, data missing): a row that says why."""
    return {"name": name, "skipped": reason}
