"""glibc's allocator thresholds, set for the whole process (a no-op where the C library is not glibc).

glibc serves an allocation above ``M_MMAP_THRESHOLD`` with its own memory map, returned to the kernel when
freed, and raises that threshold (up to 32 MiB) each time such a block is freed; below it, freed memory stays
in the heap for reuse. Both defaults are wrong for someone here: a fresh decode worker maps and faults every
image buffer anew (:mod:`xai_jax.data.decode_processes` raises the thresholds), while a pass over rows on disk
(:mod:`xai_jax.rowstore`) frees a gathered minibatch of several MiB every step, which the raised threshold
keeps resident, per thread arena, long after (measured on DEC's refinement over 16,384-wide rows: 470 MiB
more resident at the peak; :func:`xai_jax.rowstore.store` lowers the threshold).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """Fixes glibc's ``M_MMAP_THRESHOLD`` (which also stops its dynamic raising) and ``M_TRIM_THRESHOLD``.

    Returns:
      whether the C library took them (False without glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_bytes))) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, int(trim_bytes)))
    except (OSError, AttributeError):
        return False
