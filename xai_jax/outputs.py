"""Writing results so that a failure leaves nothing half-written: build aside, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Mapping

import numpy as np


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary directory beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then an atomic rename."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_files(directory: str | os.PathLike, files: Mapping[str, bytes] | None) -> None:
    """Writes ``{file name: bytes}`` into ``directory`` (the extra files, e.g. a CLI's summary and figures, that a
    result's ``save`` puts beside its own inside the same atomic directory)."""
    for name, data in (files or {}).items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
