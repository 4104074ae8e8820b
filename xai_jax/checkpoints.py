"""Resumable passes: a fold's state and position saved every few batches, and a pass continued from them.

A :class:`Checkpoint` names a folder, how often to save (in batches) and a fingerprint of everything the
pass's result depends on (inputs, options, batch size, number of processes). Every fold of
:func:`xai_jax.engine.run` run while it is active (:func:`checkpointing`, or ``run(checkpoint=...)``) gets
the sub-folder ``fold-<i>`` (``i``: the folds of the command, in order), an orbax checkpoint manager
whose steps are batch positions: step ``n`` holds the state after ``n`` batches and a JSON record of the
position and of the fold (its batches, state shapes and dtypes). orbax writes each step into a temporary
folder and renames it into place, so a process killed at any moment leaves the last whole step; a fold's
last batch is always saved, so a resumed command skips the folds it finished without reading an image.
Resuming restores the state bit for bit and folds the remaining batches in the same order: the result is
the uninterrupted one exactly.

Passes that collect a row per image (:func:`xai_jax.engine.collect_rows`) write their rows into the
checkpoint folder itself, ``rows-<i>``, and a position after every few batches: resuming opens the files
and continues after the last position (:class:`_RowsCheckpoint`).

The folder holds an ``xai_jax_result.json`` marker of kind ``pass-checkpoint`` and ``fingerprint.json``.
It is created at the first save (so a pass with no fold creates nothing), refused when it is not
xai-jax's, refused without ``resume`` when it holds an interrupted pass, refused with ``resume`` when its
fingerprint differs, and removed when the command completes. With several processes (a shared file
system) every process saves and restores its part through orbax; process 0 creates and removes the folder.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Iterator

from xai_jax import distributed
from xai_jax.errors import XaiJaxError

#: the kind in the marker of a checkpoint folder
KIND = "pass-checkpoint"
_MARKER = "xai_jax_result.json"
_FINGERPRINT = "fingerprint.json"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _differences(saved: dict, now: dict, limit: int = 3) -> str:
    keys = sorted(set(saved) | set(now), key=str)
    changed = [f"{k}: {_canonical(saved.get(k))} -> {_canonical(now.get(k))}" for k in keys
               if _canonical(saved.get(k)) != _canonical(now.get(k))]
    return "; ".join(changed[:limit]) + (f"; {len(changed) - limit} more" if len(changed) > limit else "")


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@dataclasses.dataclass
class Checkpoint:
    """Where and how often a pass saves its folds, and what it must match to resume.

    Attributes:
      directory: the checkpoint folder (created at the first save; on a file system every process sees).
      every: save after every ``every`` batches (and after a fold's last batch).
      fingerprint: a JSON-able description of the inputs and options; ``resume`` refuses a folder saved
        with another one.
      resume: continue from the folder's last save (from the beginning when there is none).
    """

    directory: str
    every: int
    fingerprint: dict
    resume: bool = False
    _folds: int = dataclasses.field(default=0, init=False, repr=False)
    _created: bool = dataclasses.field(default=False, init=False, repr=False)
    _checked: bool = dataclasses.field(default=False, init=False, repr=False)

    def __post_init__(self):
        self.directory = os.path.abspath(os.fspath(self.directory))
        if self.every < 1:
            raise XaiJaxError(f"--checkpoint-every must be >= 1 batch, got {self.every}")

    def check(self) -> None:
        """The preflight: refuses a folder that is not xai-jax's, an interrupted pass without ``resume``, and
        a fingerprint other than this one with it. Reads only."""
        path = self.directory
        if not os.path.lexists(path):
            if not os.path.isdir(os.path.dirname(path)):
                raise XaiJaxError(f"cannot write the checkpoint {path}: its folder does not exist")
            self._checked = True
            return
        marker = _read_json(os.path.join(path, _MARKER))
        if os.path.islink(path) or not os.path.isdir(path) or not isinstance(marker, dict) \
                or marker.get("kind") != KIND:
            raise XaiJaxError(f"checkpoint folder {path} exists and is not an xai-jax checkpoint; "
                              f"give another --checkpoint-dir")
        if not self.resume:
            raise XaiJaxError(f"{path} holds the checkpoint of an interrupted pass: add --resume to continue "
                              f"it, or remove the folder to start again")
        saved = _read_json(os.path.join(path, _FINGERPRINT))
        if not isinstance(saved, dict) or _canonical(saved) != _canonical(self.fingerprint):
            raise XaiJaxError(f"cannot resume from {path}: it was made with other inputs or options ("
                              f"{_differences(saved if isinstance(saved, dict) else {}, self.fingerprint)})")
        self._created = self._checked = True

    def _create(self) -> None:
        if self._created:
            return
        if distributed.is_main() and not os.path.isdir(self.directory):
            # Built beside and renamed into place: a kill leaves either no folder or one with both files.
            from xai_jax.outputs import marker
            tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.directory)}.tmp-",
                                   dir=os.path.dirname(self.directory))
            for name, content in ((_FINGERPRINT, self.fingerprint), (_MARKER, marker(KIND))):
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    json.dump(content, f, indent=2, sort_keys=True, default=str)
            os.rename(tmp, self.directory)
        distributed.barrier("xai_jax checkpoint created")
        self._created = True

    def fold(self, state: Any, batches) -> "_FoldCheckpoint":
        """The saver of the next fold of the command (see :func:`xai_jax.engine.run`); the first one checks
        the folder (:meth:`check`) unless :func:`checkpointing` did."""
        if not self._checked:
            self.check()
        index, self._folds = self._folds, self._folds + 1
        return _FoldCheckpoint(self, index, state, batches)

    def rows(self, batches) -> "_RowsCheckpoint":
        """The saver of the next pass of the command that collects a row per image (see
        :func:`xai_jax.engine.collect_rows`); counted with the folds, so each pass keeps its index."""
        if not self._checked:
            self.check()
        index, self._folds = self._folds, self._folds + 1
        return _RowsCheckpoint(self, index, batches)

    def remove(self) -> None:
        """Removes the folder once the command is complete (only a folder with this module's marker)."""
        distributed.barrier("xai_jax checkpoint done")
        marker = _read_json(os.path.join(self.directory, _MARKER))
        if distributed.is_main() and isinstance(marker, dict) and marker.get("kind") == KIND:
            # Renamed aside first, so that a kill during the deletion leaves no half checkpoint to resume from.
            aside = tempfile.mkdtemp(prefix=f".{os.path.basename(self.directory)}.old-",
                                     dir=os.path.dirname(self.directory))
            os.rename(self.directory, aside)
            shutil.rmtree(aside, ignore_errors=True)


def _describe_batches(batches) -> dict:
    return {"batches": len(batches), "batch_size": batches.batch_size, "examples": batches.num_examples,
            "processes": batches.process_count}


def _describe_fold(state: Any, batches) -> dict:
    import jax
    return {**_describe_batches(batches), "state": [[list(a.shape), str(a.dtype)] for a in jax.tree.leaves(state)],
            "structure": str(jax.tree.structure(state))}


def _as_dict(state: Any) -> dict:
    """The state's leaves by position, ``{"0": leaf, ...}``: orbax's standard handler takes any state so, a
    bare array or a NamedTuple included."""
    import jax
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(state))}


class _FoldCheckpoint:
    """One fold's orbax checkpoint manager: ``restore`` at the start, ``after`` each batch, ``done``."""

    def __init__(self, checkpoint: Checkpoint, index: int, state: Any, batches):
        self.checkpoint, self.index, self.total = checkpoint, index, len(batches)
        self.path = os.path.join(checkpoint.directory, f"fold-{index}")
        self.description = _describe_fold(state, batches)
        self.saved = -1
        self._manager = None

    def manager(self):
        if self._manager is None:
            import orbax.checkpoint as ocp
            self.checkpoint._create()
            options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True,
                                                   cleanup_tmp_directories=True)
            self._manager = ocp.CheckpointManager(self.path, options=options)
        return self._manager

    def restore(self, state: Any) -> tuple[Any, int]:
        """The state and position to start from: the last save of this fold when resuming, else ``(state, 0)``."""
        if not (self.checkpoint.resume and os.path.isdir(self.path)):
            return state, 0
        import jax
        import orbax.checkpoint as ocp
        manager = self.manager()
        step = manager.latest_step()
        if step is None:
            return state, 0
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_as_dict(abstract)), position=ocp.args.JsonRestore()))
        record = restored["position"]
        if _canonical(record.get("fold")) != _canonical(self.description):
            raise XaiJaxError(f"cannot resume from {self.checkpoint.directory}: fold {self.index} was saved for "
                              f"other batches or state ({_differences(record.get('fold') or {}, self.description)})")
        self.saved = int(record["position"])
        print(f"xai-jax: resuming fold {self.index} after batch {self.saved} of {self.total}", file=sys.stderr)
        leaves = restored["state"]
        return jax.tree.unflatten(jax.tree.structure(state), [leaves[k] for k in sorted(leaves, key=int)]), self.saved

    def save(self, position: int, state: Any) -> None:
        import orbax.checkpoint as ocp
        record = {"position": position, "fold": self.description}
        self.manager().save(position, args=ocp.args.Composite(state=ocp.args.StandardSave(_as_dict(state)),
                                                              position=ocp.args.JsonSave(record)))
        self.manager().wait_until_finished()
        self.saved = position

    def after(self, position: int, state: Any) -> None:
        """Saves after batch ``position`` (1-based) when it is a multiple of ``every`` or the last one."""
        if position % self.checkpoint.every == 0 or position == self.total:
            self.save(position, state)

    def done(self, state: Any) -> None:
        if self.saved != self.total:  # an empty fold
            self.save(self.total, state)
        if self._manager is not None:
            self._manager.close()


class _RowsCheckpoint:
    """One row-collecting pass's checkpoint: the rows themselves, as :class:`xai_jax.rowstore.DiskRows` files
    in ``rows-<i>/process-<p>/`` (each process holds every row, as the pass gathers them), and
    ``position.json``, the batches whose rows are written, replaced atomically after the files are synced.

    A pass that completed is not saved as such: its last save is at most its second-to-last batch, so a
    resumed command always folds at least one batch and gets the arrays' structure from it.
    """

    def __init__(self, checkpoint: Checkpoint, index: int, batches):
        self.checkpoint, self.index, self.total = checkpoint, index, len(batches)
        self.batch_size, self.examples = batches.batch_size, batches.num_examples
        self.description = _describe_batches(batches)
        self.path = os.path.join(checkpoint.directory, f"rows-{index}", f"process-{distributed.process_index()}")

    def rows_after(self, position: int) -> int:
        """Rows written after ``position`` global batches (every batch but the last is full)."""
        return min(position * self.batch_size, self.examples)

    def directory(self) -> str:
        """The folder of the pass's files, created (with the checkpoint) on first use."""
        self.checkpoint._create()
        os.makedirs(self.path, exist_ok=True)
        return self.path

    def restore(self) -> int:
        """The batch to continue from: 0, or on resume the last position every process saved."""
        position = 0
        record = _read_json(os.path.join(self.path, "position.json")) if self.checkpoint.resume else None
        if isinstance(record, dict):
            if _canonical(record.get("pass")) != _canonical(self.description):
                raise XaiJaxError(f"cannot resume from {self.checkpoint.directory}: pass {self.index} was saved "
                                  f"for other batches ({_differences(record.get('pass') or {}, self.description)})")
            position = int(record["position"])
        # A process killed before its last save has fewer rows: all continue from the smallest position.
        position = distributed.minimum(position)
        if position:
            print(f"xai-jax: resuming pass {self.index} after batch {position} of {self.total}", file=sys.stderr)
        return position

    def after(self, position: int, buffers) -> None:
        """Saves after batch ``position`` (1-based) when it is a multiple of ``every`` and not the last."""
        if position % self.checkpoint.every or position >= self.total:
            return
        for buffer in buffers:
            buffer.flush()
        record = {"position": position, "rows": self.rows_after(position), "pass": self.description}
        tmp = os.path.join(self.path, ".position.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, "position.json"))


class _NoCheckpoint:
    """Saves nothing: the default of :func:`xai_jax.engine.run`."""

    def restore(self, state):
        return state, 0

    def after(self, position, state):
        pass

    def done(self, state):
        pass


_NO_CHECKPOINT = _NoCheckpoint()
_ACTIVE_CHECKPOINT: contextvars.ContextVar[Checkpoint | None] = contextvars.ContextVar("xai_jax_checkpoint",
                                                                                       default=None)


def fold_saver(checkpoint: Checkpoint | None, state: Any, batches):
    """The saver of a fold about to run: ``checkpoint``'s, else the active one's (:func:`checkpointing`), else
    one that saves nothing. It has ``restore(state) -> (state, first batch)``, ``after(position, state)``
    and ``done(state)``."""
    checkpoint = checkpoint or _ACTIVE_CHECKPOINT.get()
    return checkpoint.fold(state, batches) if checkpoint is not None else _NO_CHECKPOINT


def rows_saver(checkpoint: Checkpoint | None, batches) -> _RowsCheckpoint | None:
    """The saver of a row-collecting pass about to run: ``checkpoint``'s, else the active one's, else None."""
    checkpoint = checkpoint or _ACTIVE_CHECKPOINT.get()
    return checkpoint.rows(batches) if checkpoint is not None else None


@contextlib.contextmanager
def checkpointing(checkpoint: Checkpoint | None) -> Iterator[Checkpoint | None]:
    """Makes ``checkpoint`` the one every :func:`xai_jax.engine.run` inside uses; checks it first
    (:meth:`Checkpoint.check`) and removes its folder when the block completes without an exception.
    ``None`` does nothing."""
    if checkpoint is None:
        yield None
        return
    checkpoint.check()
    token = _ACTIVE_CHECKPOINT.set(checkpoint)
    try:
        yield checkpoint
    finally:
        _ACTIVE_CHECKPOINT.reset(token)
    checkpoint.remove()
