"""Ctrl-C and SIGTERM during a pass: the exception is raised when the signal comes, and again between batches.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives. If that is inside a
finalizer, a weakref callback or a garbage-collector callback, CPython prints "Exception ignored in ..." and
carries on: the pass would run to its end, minutes later, and exit 0 as if no one had asked it to stop. Under
:func:`handled` (the command line runs every command in it) the signal is also recorded, and
:func:`raise_if_received`, which the batcher calls before every batch (and training before every step),
raises it again; CPython's report of the swallowed one is dropped, so that the command prints its one line.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

from xai_jax.errors import Terminated

_EXCEPTIONS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}
_received: list[int] = []


def _record_and_raise(signum: int, frame) -> None:
    _received.append(signum)
    raise _EXCEPTIONS[signum]()


def raise_if_received() -> None:
    """Raises ``KeyboardInterrupt`` (SIGINT) or :class:`~xai_jax.errors.Terminated` (SIGTERM) if such a signal
    arrived under :func:`handled`, even if its first exception was swallowed; else does nothing."""
    if _received:
        raise _EXCEPTIONS[_received[0]]()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`~xai_jax.errors.Terminated` (so that every
    ``finally`` and atomic writer cleans up, as for Ctrl-C), and both are recorded for
    :func:`raise_if_received`; ``sys.unraisablehook`` drops the report of such an exception swallowed in a
    finalizer. The previous handlers and hook are restored and the record cleared on exit.

    A signal the process inherited as ignored (a background job of a shell ignores SIGINT) stays ignored.
    Outside the main thread, where Python cannot install handlers, it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _record_and_raise) for signum in _EXCEPTIONS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    previous_hook = sys.unraisablehook

    def drop_recorded_signals(unraisable) -> None:
        # The exception is raised again between batches: CPython's "Exception ignored in ..." and its
        # traceback would only add lines to the command's one.
        if not (_received and unraisable.exc_type in _EXCEPTIONS.values()):
            previous_hook(unraisable)

    sys.unraisablehook = drop_recorded_signals
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()
