"""One way to save and load a method's result: arrays to ``.npz``, the rest to JSON, trained networks with orbax.

A result is a dataclass that subclasses :class:`Result` and names its output ``KIND`` (see
:mod:`xai_jax.outputs`), its file ``STEM`` and what it is (``WHAT``, for messages). Its fields are stored by
what they hold:

- NumPy (or JAX) arrays, and mappings whose leaves are all arrays (``{"indices": ..., "scores": ...}``), go to
  ``STEM.npz`` (nested keys joined by ``/``), and come back as the same arrays;
- fields declared with :func:`rows` (per-sample arrays as large as the dataset) go to ``STEM.npz`` too, copied
  from their file when they are on disk, and come back as :class:`xai_jax.rowstore.DiskRows` reading from it;
- fields declared with :func:`trained` (Flax variables of a trained network) go to an orbax checkpoint folder
  named after the field (:func:`xai_jax.weights.save_variables`);
- config dataclasses (:mod:`xai_jax.config`) and everything else (names, metrics, provenance) go to
  ``STEM.json``, with the format version :data:`FORMAT_VERSION`; tuples come back as tuples where the field's
  annotation says so.

Loading checks the format version and the files, then builds the result and runs its :meth:`Result.check`
(shapes that must agree), all inside :func:`xai_jax.readers.reading`: a damaged or foreign folder gives one
line naming it, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, ClassVar, Mapping

import numpy as np

from xai_jax import config as C
from xai_jax.errors import XaiJaxError
from xai_jax.outputs import NPZ_MARKER, atomic_dir, replace_file, save_npz, write_files
from xai_jax.readers import read_json, read_npz, reading
from xai_jax.rowstore import as_rows

#: the version of this layout, written as ``xai_jax_format`` into every result's JSON
FORMAT_VERSION = 1
FORMAT_KEY = "xai_jax_format"
_TRAINED = "xai_jax.trained"
_ROWS = "xai_jax.rows"
_SEP = "/"


def trained(**kwargs):
    """A result field holding Flax variables of a trained network, stored as an orbax checkpoint folder."""
    return dataclasses.field(metadata={_TRAINED: True}, **kwargs)


def rows(**kwargs):
    """A result field holding one row per sample of a dataset, which need not fit in memory: saved into
    ``STEM.npz`` from its file if it is a :class:`xai_jax.rowstore.DiskRows` (never read whole), and loaded as
    a :class:`~xai_jax.rowstore.DiskRows` reading rows from ``STEM.npz``."""
    return dataclasses.field(metadata={_ROWS: True}, **kwargs)


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype")
                                             and hasattr(value, "__array__"))


def _array_leaves(value, prefix: str) -> dict[str, np.ndarray] | None:
    """``{"prefix/a/b": array}`` when every leaf of the mapping ``value`` is an array, else ``None``; a
    :class:`xai_jax.rowstore.DiskRows` stays on disk."""
    if _is_array(value):
        return {prefix: as_rows(value)}
    if not isinstance(value, Mapping) or not value:
        return None
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or _SEP in key:
            return None
        leaves = _array_leaves(item, f"{prefix}{_SEP}{key}")
        if leaves is None:
            return None
        out.update(leaves)
    return out


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return C.to_json(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if _is_array(value):
        return np.asarray(value).tolist()
    return value


def _nest(flat: Mapping[str, np.ndarray], name: str) -> dict | None:
    nested: dict = {}
    for key, array in flat.items():
        if not key.startswith(name + _SEP):
            continue
        parts = key[len(name) + 1:].split(_SEP)
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = array
    return nested or None


def _from_json(value, annotation):
    inner, _ = C.split_optional(annotation)
    if value is None:
        return None
    if dataclasses.is_dataclass(inner):
        return C.from_json(inner, value)
    if typing.get_origin(inner) is tuple:
        return tuple(value)
    return value


class Result:
    """Base of every method's result dataclass: ``save``/``load`` in the layout of this module.

    Subclasses set ``KIND``, ``STEM`` and ``WHAT`` and may override :meth:`check`.
    """

    KIND: ClassVar[str]
    STEM: ClassVar[str]
    WHAT: ClassVar[str]

    def check(self) -> None:
        """Raises ``ValueError`` when the loaded parts disagree (shapes, counts); the default checks nothing."""

    def save(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None,
             notes: Mapping[str, Any] | None = None) -> None:
        """Writes the result into ``directory``, atomically (:func:`xai_jax.outputs.atomic_dir`: a new folder,
        or an earlier result of the same kind).

        Args:
          directory: the output folder.
          extra_files: ``{relative name: bytes}`` written beside (figures, tables).
          notes: JSON-ready numbers for people (a score, a summary), stored under ``notes``, not read back.
        """
        with atomic_dir(directory, self.KIND) as tmp:
            self.write(tmp, extra_files, notes)

    def write(self, directory: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None,
              notes: Mapping[str, Any] | None = None) -> None:
        """Writes the result's files into ``directory``, a folder being built by :func:`atomic_dir` (so that a
        command can put more beside them)."""
        from xai_jax.weights import save_variables
        directory = os.fspath(directory)
        arrays: dict[str, np.ndarray] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get(_TRAINED):
                if value is not None:
                    save_variables(os.path.join(directory, field.name), value, {"field": field.name})
                continue
            leaves = None if dataclasses.is_dataclass(value) else _array_leaves(value, field.name)
            if leaves is not None:
                arrays.update(leaves)
        with open(os.path.join(directory, f"{self.STEM}.json"), "wb") as f:
            f.write(self._summary_json(notes))
        if arrays:
            save_npz(os.path.join(directory, f"{self.STEM}.npz"), arrays)
        write_files(directory, extra_files)

    def rewrite_summary(self, directory: str | os.PathLike, notes: Mapping[str, Any] | None = None) -> None:
        """Replaces only ``STEM.json`` of this result saved in ``directory``, atomically
        (:func:`xai_jax.outputs.replace_file`): for edits that change no array and no trained network, such as
        a concept's human name. ``notes`` replace the stored ones."""
        replace_file(directory, f"{self.STEM}.json", self._summary_json(notes), self.KIND)

    def _summary_json(self, notes: Mapping[str, Any] | None) -> bytes:
        """``STEM.json``: the format version, the kind, every field that is neither arrays nor a trained network,
        and the notes."""
        summary: dict[str, Any] = {FORMAT_KEY: FORMAT_VERSION, "kind": self.KIND}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get(_TRAINED):
                continue
            if dataclasses.is_dataclass(value) or _array_leaves(value, field.name) is None:
                summary[field.name] = _jsonable(value)
        if notes:
            summary["notes"] = _jsonable(dict(notes))
        return json.dumps(summary, indent=2, allow_nan=True).encode()

    @classmethod
    def load(cls, directory: str | os.PathLike):
        """The result saved in ``directory``.

        Raises:
          XaiJaxError: one line when ``directory`` holds no such result, another format, or damaged files.
        """
        from xai_jax.weights import load_variables
        directory = os.fspath(directory)
        path = os.path.join(directory, f"{cls.STEM}.json")
        if not os.path.isfile(path):
            raise XaiJaxError(f"{directory} is not a {cls.WHAT} (no {cls.STEM}.json)")
        summary = read_json(path, f"{cls.WHAT} file")
        version = summary.get(FORMAT_KEY, 0)
        if version != FORMAT_VERSION:
            raise XaiJaxError(f"{directory} holds a {cls.WHAT} in result format {version}; this xai-jax reads "
                              f"format {FORMAT_VERSION}: fit it again")
        npz = os.path.join(directory, f"{cls.STEM}.npz")
        on_disk = [field.name for field in dataclasses.fields(cls) if field.metadata.get(_ROWS)]
        arrays = read_npz(npz, f"{cls.WHAT} file", on_disk=on_disk) if os.path.isfile(npz) else {}
        arrays.pop(NPZ_MARKER, None)
        types_ = typing.get_type_hints(cls)
        values = {}
        with reading(directory, cls.WHAT):
            for field in dataclasses.fields(cls):
                name = field.name
                if field.metadata.get(_TRAINED):
                    folder = os.path.join(directory, name)
                    if os.path.isdir(folder):
                        values[name] = load_variables(folder)[0]
                    elif _required(field):
                        raise XaiJaxError(f"{directory} is not a readable {cls.WHAT} (missing {name}/)")
                    continue
                if name in arrays:
                    values[name] = arrays[name]
                elif (nested := _nest(arrays, name)) is not None:
                    values[name] = nested
                elif name in summary:
                    values[name] = _from_json(summary[name], types_[name])
                elif _required(field):
                    raise KeyError(name)
            result = cls(**values)
            result.check()
        return result


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
