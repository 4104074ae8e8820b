"""Counting XLA compilations, so that tests (and users) can assert that a pass compiles once per shape.

A recompilation leak (a jit built per call, a hyper-parameter baked into a closure) costs seconds per call and
shows in no result, only in time. XLA reports every backend compilation through :mod:`jax.monitoring`; these
helpers listen to it.

    with debug.assert_max_compiles(0):           # the second call must reuse the first one's programs
        method.fit(...)
"""

from __future__ import annotations

import collections
import contextlib
from typing import Iterator

import jax

#: the event XLA records once per backend compilation (``jax._src.dispatch.BACKEND_COMPILE_EVENT``)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compiles() -> Iterator[collections.Counter]:
    """Counts the XLA compilations inside the block, by the name of the function compiled.

    Yields:
      a ``Counter`` ``{function name: compilations}``, filled as the block runs.
    """
    counter: collections.Counter = collections.Counter()

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            counter[str(kwargs.get("fun_name", "?"))] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@contextlib.contextmanager
def assert_max_compiles(limit: int, what: str = "the block") -> Iterator[collections.Counter]:
    """Raises ``AssertionError`` when the block compiles more than ``limit`` XLA programs (naming them)."""
    with compiles() as counter:
        yield counter
    total = sum(counter.values())
    if total > limit:
        raise AssertionError(f"{what} compiled {total} XLA programs, at most {limit} expected: {dict(counter)}")
