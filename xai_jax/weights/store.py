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


def save_variables(path: str | os.PathLike, variables: Any, meta: dict | None = None) -> None:
    """Writes ``variables`` (a pytree of arrays) and a JSON ``meta`` to the directory ``path``.

    The checkpoint is written aside and renamed into place (:func:`xai_jax.outputs.atomic_dir`), so an
    interrupted save never leaves a half-written directory behind; an existing directory is replaced.
    """
    host = jax.tree.map(np.asarray, variables)
    with atomic_dir(path) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(tmp, _ITEM), host)
        with open(os.path.join(tmp, _META), "w") as f:
            json.dump(meta or {}, f, indent=2)


def load_variables(path: str | os.PathLike) -> tuple[Any, dict]:
    """Restores ``(variables, meta)`` written by :func:`save_variables` as NumPy arrays."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(os.path.join(path, _ITEM)):
        raise XaiJaxError(f"{path}: not an xai_jax checkpoint directory (expected {_ITEM}/ and {_META})")
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(os.path.join(path, _ITEM))
    meta_path = os.path.join(path, _META)
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    return jax.tree.map(np.asarray, variables), meta


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    return os.path.isdir(os.path.join(os.fspath(path), _ITEM))
