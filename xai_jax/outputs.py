"""The one output writer: results go only where xai-jax may write, whole or not at all.

Rules (the README's "Where results go"):

- An output path is written if it is new, or if it holds an earlier xai-jax output of the same kind: a folder
  with a ``xai_jax_result.json`` marker, a ``.npz`` with an ``xai_jax_result`` entry, a ``.png`` with an
  ``xai-jax`` text chunk. Anything else is refused before any work starts, with a suggested free path.
- A command never replaces a path it reads from (or a folder that holds one).
- A folder is built beside its destination and renamed into place; an earlier result is first renamed aside,
  then deleted, so concurrent writers into one path each end with a whole result or one error line.
  A file is written beside its destination and renamed over it. An interruption (an error, Ctrl-C, SIGTERM)
  removes what was being built.
- New folders and files follow the user's umask.
- Over several processes (:mod:`xai_jax.distributed`) only process 0 writes: the others run the same checks,
  build into a private temporary folder that is then dropped, and create nothing beside the output.

:func:`check_output` is the preflight a command runs before its expensive work; :func:`atomic_dir` and
:func:`write_file` / :func:`save_npz` check again when they commit.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from typing import Iterator, Mapping, Sequence

import numpy as np

from xai_jax import distributed
from xai_jax.errors import XaiJaxError

#: the marker file of a result folder
MARKER = "xai_jax_result.json"
#: the marker entry of an ``.npz`` output
NPZ_MARKER = "xai_jax_result"
#: the keyword of the marker text chunk of a ``.png`` output
PNG_MARKER = "xai-jax"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXISTS = (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR)

PathLike = str | os.PathLike


def _version() -> str:
    from xai_jax import __version__
    return __version__


def marker(kind: str) -> dict:
    """What an output records about itself: its kind, the command that wrote it, the version and the time."""
    return {"kind": kind, "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
            "version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask's set-and-restore is racy across threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(path: str, is_dir: bool) -> None:
    # mkdtemp and mkstemp create 0700 / 0600; a result should be as readable as any file the user creates.
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


# --- what is at a path ---------------------------------------------------------------------------------------

def _read_marker_dir(path: str) -> dict | None:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _read_marker_npz(path: str) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if NPZ_MARKER not in npz.files:
                return None
            found = json.loads(str(npz[NPZ_MARKER]))
    except Exception:  # not an npz, damaged, object arrays: not ours
        return None
    return found if isinstance(found, dict) else None


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        yield kind, data[position + 8:position + 8 + length]
        if kind == b"IEND":
            return
        position += 12 + length


def _read_marker_png(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)  # the marker sits right after IHDR
    except OSError:
        return None
    if not head.startswith(_PNG_SIGNATURE):
        return None
    for kind, body in _png_chunks(head):
        if kind == b"tEXt" and body.startswith(PNG_MARKER.encode() + b"\0"):
            try:
                found = json.loads(body[len(PNG_MARKER) + 1:].decode("latin-1"))
            except ValueError:
                return None
            return found if isinstance(found, dict) else None
        if kind == b"IDAT":
            return None
    return None


def existing_kind(path: PathLike) -> str | None:
    """The kind of the xai-jax output at ``path``, or None when nothing there was written by xai-jax."""
    path = os.fspath(path)
    if os.path.islink(path):
        return None
    if os.path.isdir(path):
        found = _read_marker_dir(path)
    elif path.endswith(".npz"):
        found = _read_marker_npz(path)
    elif path.endswith(".png"):
        found = _read_marker_png(path)
    else:
        found = None
    kind = found.get("kind") if found else None
    return kind if isinstance(kind, str) else None


def _free_path(path: str, file: bool) -> str:
    """A path beside ``path`` that does not exist yet (``out-2``, ``out-3.npz`` ...), spelled as the user did."""
    path = path.rstrip(os.sep) or path
    if path in (".", "..", os.sep) or not os.path.basename(path):
        path = os.path.join(path, "xai-jax-out")
        if not os.path.lexists(path):
            return path
    stem, ext = os.path.splitext(path) if file else (path, "")
    for n in range(2, 1000):
        candidate = f"{stem}-{n}{ext}"
        if not os.path.lexists(candidate):
            return candidate
    return f"{stem}-new{ext}"


def _describe(kind: str) -> str:
    return f"an xai-jax {kind} output"


# --- the preflight -------------------------------------------------------------------------------------------

def check_output(path: PathLike | None, kind: str, *, file: bool = False, inputs: Sequence[PathLike | None] = (),
                 flag: str = "--out") -> str:
    """Checks, before any work, that ``path`` may receive an output of ``kind``; returns its absolute path.

    Args:
      path: the output path the user gave.
      kind: the kind of output (``"nma"``, ``"checkpoint"``, ``"predict"`` ...): an existing output is
        replaced only if it is of the same kind.
      file: the output is one file (``.npz``, ``.png``), not a folder.
      inputs: paths the command reads; the output may be none of them nor a folder holding one.
      flag: how error messages name the option.

    Raises:
      XaiJaxError: one line saying what is there and which path to use instead.
    """
    if path is None or not os.fspath(path).strip():
        raise XaiJaxError(f"{flag} needs a path")
    text = os.fspath(path)
    target = os.path.abspath(text)
    parent = os.path.dirname(target)
    if os.path.islink(target):
        raise XaiJaxError(f"{flag} {text} is a symbolic link; give the path it points to, or a new one")
    if not os.path.exists(parent):
        raise XaiJaxError(f"cannot write {flag} {text}: its folder {parent} does not exist")
    if not os.path.isdir(parent):
        raise XaiJaxError(f"cannot write {flag} {text}: {parent} is a file, not a folder")
    real = os.path.realpath(target)
    for given in inputs:
        if not given or not os.path.exists(os.fspath(given)):
            continue
        source = os.path.realpath(os.fspath(given))
        if source == real or source.startswith(real.rstrip(os.sep) + os.sep):
            raise XaiJaxError(f"{flag} {text} would replace {os.fspath(given)}, which this command reads; "
                              f"choose another path, e.g. {_free_path(text, file)}")
    if os.path.lexists(target):
        if file and os.path.isdir(target):
            raise XaiJaxError(f"{flag} {text} is a folder; give a file name, e.g. {os.path.join(text, 'out')}"
                              f"{os.path.splitext(text)[1] or ''}")
        if not file and not os.path.isdir(target):
            raise XaiJaxError(f"{flag} {text} is a file; give a new folder, e.g. {_free_path(text, False)}")
        found = existing_kind(target)
        if found != kind:
            what = _describe(found) if found else "not written by xai-jax"
            raise XaiJaxError(f"{flag} {text} exists and is {what}; xai-jax replaces only its own {kind} "
                              f"outputs: choose a new path, e.g. {_free_path(text, file)}")
    if _writes():
        _probe_writable(parent, flag, text)
    return target


def _writes() -> bool:
    """Whether this process writes outputs: process 0 of a multi-process pass, or the only one."""
    from xai_jax.distributed import is_main
    return is_main()


def _probe_writable(parent: str, flag: str, text: str) -> None:
    """Creates and removes a temporary folder in ``parent``: the only test that /proc, read-only mounts,
    permissions and full disks all answer truthfully."""
    try:
        probe = tempfile.mkdtemp(prefix=".xai-jax-probe-", dir=parent)
    except OSError as err:
        raise XaiJaxError(f"cannot write {flag} {text}: {parent} takes no new files ({err.strerror or err})") from None
    os.rmdir(probe)


# --- what is being built ------------------------------------------------------------------------------------

#: the temporary folders and files this process is building now
_temporaries: set[str] = set()


@contextlib.contextmanager
def _building(path: str) -> Iterator[str]:
    """Tracks ``path`` while the block runs, so that :func:`remove_temporaries` can remove it."""
    _temporaries.add(path)
    try:
        yield path
    finally:
        _temporaries.discard(path)


def remove_temporaries() -> None:
    """Removes every temporary folder and file being built: a process that a cluster abandons exits without
    running its ``finally`` blocks (:func:`xai_jax.distributed.abandon`), so nothing half-written stays."""
    for path in list(_temporaries):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        _temporaries.discard(path)


distributed.on_abandon(remove_temporaries)


# --- folders -------------------------------------------------------------------------------------------------

def _commit_dir(tmp: str, target: str, kind: str) -> None:
    """Renames ``tmp`` to ``target``, first moving an earlier result of the same kind aside."""
    parent = os.path.dirname(target)
    for _ in range(16):
        try:
            os.rename(tmp, target)
            return
        except OSError as err:
            if err.errno not in _EXISTS:
                raise XaiJaxError(f"cannot write {target}: {err.strerror}") from None
        if not os.path.isdir(target) or os.path.islink(target) or existing_kind(target) != kind:
            raise XaiJaxError(f"{target} appeared while xai-jax was working and is not its {kind} output; "
                              f"nothing was replaced")
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
        try:
            os.rename(target, aside)  # replaces the empty ``aside``
        except FileNotFoundError:  # another writer moved it first: try again
            os.rmdir(aside)
            continue
        except OSError:
            os.rmdir(aside)
            raise
        try:
            os.rename(tmp, target)
        except OSError as err:
            if err.errno in _EXISTS:  # a concurrent writer's result arrived in between: move it aside in turn
                shutil.rmtree(aside, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):  # put the earlier result back
                os.rename(aside, target)
            raise XaiJaxError(f"cannot write {target}: {err.strerror}") from None
        shutil.rmtree(aside, ignore_errors=True)
        return
    raise XaiJaxError(f"{target}: gave up after 16 concurrent replacements")


@contextlib.contextmanager
def atomic_dir(path: PathLike, kind: str, *, inputs: Sequence[PathLike | None] = ()) -> Iterator[str]:
    """Yields a temporary folder beside ``path`` to build an output of ``kind`` in, then renames it into place.

    The rules of :func:`check_output` are checked before the yield and again at the rename; on any exception
    (KeyboardInterrupt and SIGTERM included) the temporary folder is removed and ``path`` is untouched.
    The folder gets a ``xai_jax_result.json`` marker (kind, command, version, time).
    """
    target = check_output(path, kind, inputs=inputs)
    if not _writes():  # another process writes the result: build it aside and drop it
        discard = tempfile.mkdtemp(prefix="xai-jax-discard-")
        try:
            with _building(discard):
                yield discard
        finally:
            shutil.rmtree(discard, ignore_errors=True)
        return
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=os.path.dirname(target))
    try:
        with _building(tmp):
            yield tmp
            with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
                json.dump(marker(kind), f, indent=2)
            _follow_umask(tmp, is_dir=True)
            _commit_dir(tmp, target, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files(directory: PathLike, files: Mapping[str, bytes] | None) -> None:
    """Writes ``{relative name: bytes}`` into ``directory`` (a folder being built by :func:`atomic_dir`);
    names may hold ``/`` for sub-folders but never leave ``directory``."""
    root = os.path.realpath(os.fspath(directory))
    for name, data in (files or {}).items():
        target = os.path.realpath(os.path.join(root, name))
        if not target.startswith(root + os.sep):
            raise XaiJaxError(f"output file name {name!r} leaves its folder")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


def replace_file(directory: PathLike, name: str, data: bytes, kind: str) -> str:
    """Replaces one file of an existing xai-jax output folder of ``kind`` atomically: written beside it in the
    same folder, flushed, then renamed over it, so that a reader sees the old file or the new one, never a part.

    For edits of a result in place (a renamed concept); everything else goes through :func:`atomic_dir`.

    Args:
      directory: the output folder; it must carry the marker of ``kind``.
      name: a plain file name inside it (no folder part, not hidden, not the marker).
      data: the new contents.
      kind: the folder's kind.

    Returns:
      the path written.

    Raises:
      XaiJaxError: the folder is not an xai-jax ``kind`` output, or ``name`` is not a plain file name in it.
    """
    directory = os.fspath(directory)
    if os.path.basename(name) != name or name in ("", ".", "..", MARKER) or name.startswith("."):
        raise XaiJaxError(f"{name!r} is not a file name an output may replace")
    found = existing_kind(directory)
    if found != kind:
        what = _describe(found) if found else "not written by xai-jax"
        raise XaiJaxError(f"{directory} is {what}; xai-jax edits only its own {kind} outputs")
    target = os.path.join(directory, name)
    if os.path.islink(target) or os.path.isdir(target):
        raise XaiJaxError(f"{target} is a link or a folder; xai-jax replaces only its own files")
    with _replacing(target) as f:
        f.write(data)
    return target


@contextlib.contextmanager
def _replacing(target: str):
    """A new binary file whose contents replace ``target`` in one rename when the block ends (written beside it,
    synced first, the umask's mode); on an error the temporary file is removed and ``target`` is untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(target)))
    try:
        with _building(tmp), os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            _follow_umask(tmp, is_dir=False)
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


# --- single files --------------------------------------------------------------------------------------------

def _png_with_marker(data: bytes, kind: str) -> bytes:
    """``data`` (a PNG) with a ``tEXt`` chunk ``xai-jax`` holding the marker, right after ``IHDR``."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not PNG data")
    ihdr_end = len(_PNG_SIGNATURE) + 12 + struct.unpack(">I", data[8:12])[0]
    body = PNG_MARKER.encode() + b"\0" + json.dumps(marker(kind)).encode("latin-1", "replace")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def _commit_file(tmp: str, target: str, kind: str) -> None:
    if os.path.lexists(target) and (os.path.isdir(target) or existing_kind(target) != kind):
        raise XaiJaxError(f"{target} appeared while xai-jax was working and is not its {kind} output; "
                          f"nothing was replaced")
    os.replace(tmp, target)


@contextlib.contextmanager
def _atomic_file(path: PathLike, kind: str,
                 inputs: Sequence[PathLike | None]) -> Iterator[tuple[str, io.BufferedWriter]]:
    target = check_output(path, kind, file=True, inputs=inputs)
    if not _writes():  # another process writes the file
        with open(os.devnull, "wb") as f:
            yield target, f
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with _building(tmp):
            with os.fdopen(fd, "wb") as f:
                yield target, f
            _follow_umask(tmp, is_dir=False)
            _commit_file(tmp, target, kind)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_file(path: PathLike, data: bytes, kind: str, *, inputs: Sequence[PathLike | None] = ()) -> None:
    """Writes one output file atomically under the rules of :func:`check_output`; a ``.png`` is marked."""
    if os.fspath(path).endswith(".png"):
        data = _png_with_marker(data, kind)
    with _atomic_file(path, kind, inputs) as (_, f):
        f.write(data)


def save_npz(path: PathLike, arrays: Mapping[str, np.ndarray], kind: str | None = None, *,
             inputs: Sequence[PathLike | None] = ()) -> None:
    """``np.savez`` atomically. With ``kind``, ``path`` is an output under the rules of :func:`check_output`
    and is marked; without it, ``path`` is a file inside a folder being built by :func:`atomic_dir`."""
    if kind is None:
        with _replacing(os.fspath(path)) as f:
            _write_npz(f, arrays)
        return
    with _atomic_file(path, kind, inputs) as (_, f):
        _write_npz(f, {**arrays, NPZ_MARKER: np.asarray(json.dumps(marker(kind)))})


def _write_npz(f, arrays: Mapping[str, np.ndarray]) -> None:
    """What ``np.savez`` writes (uncompressed ``.npy`` members of a zip), with
    :class:`xai_jax.rowstore.DiskRows` copied from their files in blocks rather than read into memory."""
    import zipfile
    from xai_jax.rowstore import DiskRows
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(value, DiskRows):
                    value.write_npy(member)  # plain reads: nothing is mapped into this process
                else:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)


@contextlib.contextmanager
def scratch_dir(beside: PathLike, where: PathLike | None = None, needed: int = 0) -> Iterator[str]:
    """A new temporary folder for a pass's per-image rows, removed with its contents when the block ends.

    Args:
      beside: the command's output: the folder goes into its parent by default.
      where: the folder to create it in instead (``--scratch-dir``; it must exist and is never removed).
      needed: bytes the rows will take: refused before any work if the disk has less free.
    """
    parent = os.path.abspath(where if where else os.path.dirname(os.path.abspath(os.fspath(beside))))
    flag = "--scratch-dir" if where else "the folder of --out"
    if not os.path.isdir(parent):
        raise XaiJaxError(f"{flag} {parent} is not a folder")
    free = shutil.disk_usage(parent).free
    if needed > free:
        raise XaiJaxError(f"the activations need {needed / 2**30:.1f} GiB on disk and {parent} has "
                          f"{free / 2**30:.1f} GiB free; give --scratch-dir a folder with more")
    try:
        tmp = tempfile.mkdtemp(prefix=".xai-jax-rows-", dir=parent)
    except OSError as err:
        raise XaiJaxError(f"cannot keep the activations in {parent} ({flag}): {err.strerror or err}") from None
    try:
        with _building(tmp):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
