"""One reader per kind of input file: each returns what it read or raises one :class:`XaiJaxError` line.

Every command reads its inputs through these (and images through :func:`xai_jax.data.sources.decode_rgb` /
``load_folder_image``, checkpoints through :mod:`xai_jax.weights`), so that a missing, empty, truncated,
binary, mis-typed or mis-shaped file is reported the same way everywhere, naming the file and what it should be.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from typing import Iterator, Sequence

import numpy as np

from xai_jax.errors import XaiJaxError

PathLike = str | os.PathLike


def existing_file(path: PathLike | None, what: str) -> str:
    """``path`` as a string, or one line saying it is missing, empty or a folder."""
    if path is None or not os.fspath(path).strip():
        raise XaiJaxError(f"{what}: no file given")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise XaiJaxError(f"{what} {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise XaiJaxError(f"{what} not found: {path}")
    return path


def read_text(path: PathLike | None, what: str) -> str:
    """The whole of a UTF-8 text file."""
    path = existing_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise XaiJaxError(f"{what} {path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise XaiJaxError(f"cannot read {what} {path}: {err.strerror}") from None


def read_lines(path: PathLike | None, what: str) -> list[str]:
    """The non-blank lines of a text file, stripped; at least one."""
    lines = [line.strip() for line in read_text(path, what).splitlines() if line.strip()]
    if not lines:
        raise XaiJaxError(f"{what} {os.fspath(path)} is empty")
    return lines


def read_json(path: PathLike | None, what: str, expect: type | tuple[type, ...] = dict):
    """A JSON file whose top level is of type ``expect`` (an object by default)."""
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise XaiJaxError(f"{what} {os.fspath(path)} is not valid JSON ({err.msg} at line {err.lineno})") from None
    expected = expect if isinstance(expect, tuple) else (expect,)
    if not isinstance(value, expected):
        names = " or ".join({dict: "an object", list: "a list"}.get(t, t.__name__) for t in expected)
        raise XaiJaxError(f"{what} {os.fspath(path)} must hold {names} at its top level, "
                          f"not {_json_type(value)}")
    return value


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_names(path: PathLike | None, what: str) -> list[str]:
    """Names one a line, or a JSON list of strings."""
    text = read_text(path, what)
    if text.lstrip().startswith("["):
        names = read_json(path, what, list)
        if not all(isinstance(n, (str, int)) for n in names):
            raise XaiJaxError(f"{what} {os.fspath(path)} must be a list of names")
        names = [str(n).strip() for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or not all(names):
        raise XaiJaxError(f"{what} {os.fspath(path)} lists no names" if not names else
                          f"{what} {os.fspath(path)} has an empty name")
    return names


def read_npz(path: PathLike | None, what: str, required: Sequence[str] = (), *,
             allow_npy: bool = False, on_disk: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read now (so damage shows here), with ``required`` keys present.

    Args:
      path: the file.
      what: how the message names it (``"--from-probs"``, ``"scores file"``).
      required: keys that must be there.
      allow_npy: also take a ``.npy`` file, returned as ``{required[0]: array}``.
      on_disk: keys whose arrays stay in the file: returned as :class:`xai_jax.rowstore.DiskRows` that read
        rows from it (their header and size are checked now, their data when read), for per-sample arrays
        that need not fit in memory.
    """
    path = existing_file(path, what)
    if not zipfile.is_zipfile(path):
        if allow_npy and required:
            return {required[0]: read_npy(path, what)}
        if _starts_with(path, b"PK\x03\x04"):
            raise XaiJaxError(f"{what} {path} is damaged (a truncated or broken .npz archive)")
        hint = " (a .npy file; save with np.savez)" if _is_npy(path) else ""
        raise XaiJaxError(f"{what} {path} is not an .npz file{hint}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in required if key not in npz.files]
            if missing:
                raise XaiJaxError(f"{what} {path} must hold {', '.join(f'`{k}`' for k in missing)}; it holds "
                                  f"{', '.join(npz.files) or 'nothing'}")
            return {key: _disk_rows(path, key) if key in on_disk else npz[key] for key in npz.files}
    except XaiJaxError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise XaiJaxError(f"{what} {path} holds object arrays (pickled Python objects), which xai-jax does "
                              f"not load; store numbers and strings only") from None
        raise XaiJaxError(f"{what} {path} is damaged ({_first_line(err)})") from None
    except Exception as err:  # zipfile.BadZipFile, EOFError, zlib.error, OSError: a damaged file
        raise XaiJaxError(f"{what} {path} is damaged ({_first_line(err)})") from None


def _disk_rows(path: str, key: str):
    from xai_jax.rowstore import DiskRows
    return DiskRows(path, member=f"{key}.npy")


def _starts_with(path: str, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _is_npy(path: str) -> bool:
    return _starts_with(path, b"\x93NUMPY")


def read_npy(path: PathLike | None, what: str) -> np.ndarray:
    """The array of a ``.npy`` file (or the only array of an ``.npz``)."""
    path = existing_file(path, what)
    if zipfile.is_zipfile(path):
        arrays = read_npz(path, what)
        if len(arrays) != 1:
            raise XaiJaxError(f"{what} {path} holds {len(arrays)} arrays ({', '.join(arrays)}); expected one")
        return next(iter(arrays.values()))
    if not _is_npy(path):
        raise XaiJaxError(f"{what} {path} is not a NumPy .npy or .npz file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise XaiJaxError(f"{what} {path} holds an object array (pickled Python objects), which xai-jax does "
                              f"not load") from None
        raise XaiJaxError(f"{what} {path} is damaged ({_first_line(err)})") from None
    except Exception as err:
        raise XaiJaxError(f"{what} {path} is damaged ({_first_line(err)})") from None


def numeric(array: np.ndarray, path: PathLike, key: str, *, ndim: int | Sequence[int] | None = None,
            integer: bool = False, min_rows: int = 1) -> np.ndarray:
    """Checks one array read from a file: numbers (integers with ``integer``), finite, of ``ndim``, non-empty."""
    name = f"{os.fspath(path)}: `{key}`"
    array = np.asarray(array)
    kinds = "iu" if integer else "iuf"
    if array.dtype.kind not in kinds and not (not integer and array.dtype.kind == "b"):
        raise XaiJaxError(f"{name} must hold {'integers' if integer else 'numbers'}, not {array.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and array.ndim not in dims:
        raise XaiJaxError(f"{name} must have {' or '.join(map(str, dims))} dimensions; its shape is {array.shape}")
    if array.ndim and array.shape[0] < min_rows:
        raise XaiJaxError(f"{name} is empty (shape {array.shape})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise XaiJaxError(f"{name} contains NaN or infinity")
    return array


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:200]


@contextlib.contextmanager
def reading(path: PathLike, what: str) -> Iterator[None]:
    """Turns the errors of picking a saved result apart (a missing key, a wrong type, a bad value) into one
    line naming the folder: results are loaded from files users can edit, move and damage."""
    try:
        yield
    except XaiJaxError:
        raise
    except KeyError as err:
        raise XaiJaxError(f"{os.fspath(path)} is not a readable {what} (missing {err})") from None
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise XaiJaxError(f"{os.fspath(path)} is not a readable {what} ({_first_line(err)})") from None
