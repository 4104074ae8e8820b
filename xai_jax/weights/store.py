"""Saving and restoring converted or trained Flax variables with orbax."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from xai_jax.errors import XaiJaxError
from xai_jax.outputs import atomic_dir

_META = "xai_jax_meta.json"
_ITEM = "variables"
#: the kind of output folder a checkpoint is (see :mod:`xai_jax.outputs`)
KIND = "checkpoint"


def save_variables(path: str | os.PathLike, variables: Any, meta: dict | None = None) -> None:
    """Writes ``variables`` (a pytree of arrays) and a JSON ``meta`` to the directory ``path``.

    The checkpoint is written aside and renamed into place (:func:`xai_jax.outputs.atomic_dir`), so an
    interrupted save never leaves a half-written directory behind; an existing directory is replaced only if it is an earlier xai_jax checkpoint.
    """
    host = jax.tree.map(np.asarray, variables)
    with atomic_dir(path, KIND) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, _ITEM), host)
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump(meta or {}, f, indent=2)


def load_variables(path: str | os.PathLike) -> tuple[Any, dict]:
    """Restores ``(variables, meta)`` written by :func:`save_variables` as NumPy arrays.

    Raises:
      XaiJaxError: ``path`` is not a checkpoint directory, or one line ``PATH: damaged xai_jax checkpoint
        (...)`` when its meta file is not a UTF-8 JSON object or orbax cannot restore ``variables/``
        (missing or corrupt ``_METADATA``, truncated or removed array files).
    """
    path = os.path.abspath(os.fspath(path))
    item = os.path.join(path, _ITEM)
    if not os.path.isdir(item):
        raise XaiJaxError(f"{path}: not an xai_jax checkpoint directory (expected {_ITEM}/ and {_META})")
    meta = _read_meta(path)  # cheap, so before the arrays
    try:
        with ocp.StandardCheckpointer() as ckptr:
            variables = ckptr.restore(item)
    except Exception as err:  # noqa: BLE001 - orbax and tensorstore raise ValueError, OSError, KeyError ...
        _quiet_closed_loop_callbacks()
        raise _damaged(path, _restore_failure(path, err)) from None
    return jax.tree.map(np.asarray, variables), meta


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}
_MAX_REASON = 200  # characters of orbax's own message kept


def _damaged(path: str, reason: str) -> XaiJaxError:
    return XaiJaxError(f"{path}: damaged xai_jax checkpoint ({reason})")


def _read_meta(path: str) -> dict:
    """The checkpoint's meta as a dict (``{}`` when the file is absent, as in checkpoints saved without)."""
    meta_path = os.path.join(path, _META)
    if not os.path.exists(meta_path):
        return {}
    try:
        with open(meta_path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _damaged(path, f"{_META} is not UTF-8 text") from None
    except OSError as err:
        raise _damaged(path, f"{_META} cannot be read: {err.strerror or err}") from None
    try:
        meta = json.loads(text)
    except ValueError as err:
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise _damaged(path, f"{_META} is not valid JSON: {getattr(err, 'msg', err)}{where}") from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"{_META} holds {_JSON_TYPES.get(type(meta), 'a value')}, not a JSON object")
    return meta


def _restore_failure(path: str, err: Exception) -> str:
    """Why orbax could not restore ``variables/``: a file this module knows is broken, else orbax's first line."""
    metadata = os.path.join(_ITEM, "_METADATA")
    if not os.path.isfile(os.path.join(path, metadata)):
        return f"{metadata} is missing"
    try:
        with open(os.path.join(path, metadata), "rb") as f:
            tree = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"{metadata} is not valid JSON"
    if not isinstance(tree, dict) or not isinstance(tree.get("tree_metadata", {}), dict):
        return f"{metadata} is not an orbax tree description"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    text = text.split(" [tensorstore_spec=")[0]  # tensorstore appends its whole JSON spec
    text = text.replace(path + os.sep, "").replace(path, ".")  # file names relative to the checkpoint
    for wordy in ('Error opening "zarr" driver: ', ' in OCDBT database at local file "variables/"'):
        text = text.replace(wordy, "")  # tensorstore's context, the same for every array
    text = " ".join(text.split())
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    return f"cannot restore {_ITEM}/: {text}"


def _quiet_closed_loop_callbacks() -> None:
    """Silences the stray traceback a failed restore can leave behind.

    When one array read fails, orbax closes its event loop while tensorstore still completes the other
    reads; their callbacks then raise ``RuntimeError('Event loop is closed')`` in a tensorstore thread, which
    Python prints as an "Exception ignored" traceback after the clean error line. Exactly those are dropped;
    every other unraisable exception reaches the previous hook.
    """
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_xai_jax_quiet_closed_loop", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._xai_jax_quiet_closed_loop = True
    sys.unraisablehook = hook


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    return os.path.isdir(os.path.join(os.fspath(path), _ITEM))
