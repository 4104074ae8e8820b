"""What every benchmark script shares: where the data is, and the timing rule of BENCHMARKS.md."""

from __future__ import annotations

import os
import pathlib
import statistics
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


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
