"""Per-image arrays that a pass writes once and a method reads back a block at a time, in memory or on disk.

A pass over 50,000 CIFAR-10 images yields 1.6 GB of ``layer1`` activations in float16; over ImageNet, terabytes.
:func:`store` puts the rows that :func:`xai_jax.engine.map_batches` yields into arrays allocated once for the
whole dataset: NumPy arrays in memory, or, given a folder, :class:`DiskRows` files, whose host memory does not
grow with the dataset. Each :class:`DiskRows` is a standard ``.npy`` file (``np.load(path, mmap_mode="r")``
reads it anywhere). Whole rows (slices, row numbers) are read with ``preadv``, which copies them out of the
page cache without mapping it; other reads and all writes go through a memory map whose pages are handed
back to the kernel after each (``madvise(MADV_DONTNEED)``). Either way the file's pages stay in the page
cache, which the kernel may drop or write back, and do not count as the process's resident memory.
Everything that reads rows (``engine.map_arrays``, ``train.fit``, DEC's refinement) indexes them the NumPy
way, ``rows[a:b]`` or ``rows[sorted_indices]``.
"""

from __future__ import annotations

import mmap
import os
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.malloc import set_thresholds

# The shared size from which a command keeps a pass's rows on disk rather than in memory.
SPILL_BYTES = 256 << 20
# glibc's thresholds once rows go to disk: blocks of 4 MiB and more are mapped and returned when freed
HEAP_MMAP_BYTES, HEAP_TRIM_BYTES = 4 << 20, 16 << 20


class DiskRows:
    """An array ``[n, ...]`` in a ``.npy`` file, read and written through NumPy indexing of its rows.

    ``rows[key]`` returns a new in-memory array, ``rows[key] = value`` writes through; neither keeps the touched
    pages resident. ``np.asarray(rows)`` reads the whole array (only for arrays that fit in memory).

    Args:
      path: the ``.npy`` file.
      shape, dtype: create (or truncate) the file for an array of this shape and dtype; omit both to open an
        existing one.
      writable: open an existing file for writing too.
      member: read the array stored (uncompressed) as this member of the ``.npz`` archive ``path``, e.g.
        ``"train_features.npy"`` of a saved result, read-only.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...] | None = None, dtype=None, *,
                 writable: bool = False, member: str | None = None):
        self.path, self.member = os.fspath(path), member
        if shape is not None:
            if dtype is None or member is not None:
                raise XaiJaxError("DiskRows creates a .npy file from a shape and a dtype, never an archive member")
            np.lib.format.open_memmap(self.path, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape)).flush()
            writable = True
        if writable and member is not None:
            raise XaiJaxError("an archive member is opened read-only")
        self._file = open(self.path, "r+b" if writable else "rb")  # noqa: SIM115 - closed in close()
        try:
            start = 0 if member is None else _member_start(self._file, self.path, member)
            shape, dtype, offset = _npy_header(self._file, start, f"{self.path}" + (f":{member}" if member else ""))
        except BaseException:
            self._file.close()
            raise
        self.shape, self.dtype = shape, dtype
        self._writable, self._offset = writable, offset
        size = offset + self.nbytes
        if os.fstat(self._file.fileno()).st_size < size:
            self._file.close()
            raise XaiJaxError(f"{self.path} is shorter than its header says (truncated)")
        # An empty array has nothing to map: keep a 1-byte anonymous map so indexing still works.
        self._map = (mmap.mmap(self._file.fileno(), size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
                     if self.nbytes else mmap.mmap(-1, 1))
        self._view = np.ndarray(self.shape, self.dtype, buffer=self._map, offset=offset if self.nbytes else 0)
        if not writable:
            self._view.flags.writeable = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        where = f"{self.path!r}" + (f", member={self.member!r}" if self.member else "")
        return f"DiskRows({where}, shape={self.shape}, dtype={self.dtype})"

    def _release(self) -> None:
        if self.nbytes:
            self._map.madvise(mmap.MADV_DONTNEED)

    def __getitem__(self, key) -> np.ndarray:
        index = self._row_index(key)
        if index is not None:
            return self._read_rows(index)
        try:
            return np.array(self._view[key])
        finally:
            self._release()

    def _row_index(self, key) -> np.ndarray | None:
        """``key`` as the int64 row numbers it selects when it selects whole rows (a slice of step 1, a 1-D
        integer array or list), else None."""
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            return np.arange(start, max(start, stop), dtype=np.int64) if step == 1 else None
        if isinstance(key, (list, np.ndarray)):
            index = np.asarray(key)
            if index.ndim != 1 or not (index.dtype.kind in "iu" or index.size == 0):
                return None
            index = index.astype(np.int64)
            if index.size and (index.min() < -n or index.max() >= n):
                raise IndexError(f"row index out of bounds for {n} rows")
            return np.where(index < 0, index + n, index)
        return None

    def _read_rows(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` copied from the file with ``os.preadv``, one call per run of consecutive rows.

        Not through the memory map: the kernel (6.18 here) keeps a freshly written file's page cache in large
        folios and maps a whole folio on a read fault, so gathering 256 random rows of 32 KiB from a 390 MiB file
        the pass had just written mapped 275 MiB at once (``dec fit``'s peak grew with the dataset by that). A
        read copies from the page cache without mapping it, and is faster: one call per run of rows, 1.4-4.0 ms
        for 256 random rows of 32 KiB against 4.5-5.1 ms through the map (this 2-core VM, busy).
        """
        out = np.empty((len(index),) + self.shape[1:], self.dtype)
        row_bytes = out[:1].nbytes
        if not row_bytes or not len(index):
            return out
        flat = out.reshape(-1).view(np.uint8)
        starts = np.flatnonzero(np.diff(index, prepend=-2) != 1)
        ends = np.append(starts[1:], len(index))
        fd = self._file.fileno()
        for first, last in zip(starts.tolist(), ends.tolist()):
            view = memoryview(flat[first * row_bytes:last * row_bytes])
            where = self._offset + int(index[first]) * row_bytes
            while view.nbytes:
                done = os.preadv(fd, [view], where)
                if not done:
                    raise XaiJaxError(f"{self.path} is shorter than its header says")
                view, where = view[done:], where + done
        return out

    def __setitem__(self, key, value) -> None:
        try:
            self._view[key] = value
        finally:
            self._release()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def flush(self) -> None:
        if self.nbytes and self._writable:
            self._map.flush()

    def write_npy(self, f: BinaryIO, block_bytes: int = 16 << 20) -> None:
        """Writes the array to the open binary file ``f`` as a ``.npy`` file (what ``np.save`` writes), copying
        the data ``block_bytes`` at a time with ``os.pread``: nothing is mapped or held whole in memory."""
        self.flush()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        try:
            np.lib.format.write_array_header_1_0(f, header)
        except ValueError:  # a header over 64 KiB needs format 2.0
            np.lib.format.write_array_header_2_0(f, header)
        fd, where, left = self._file.fileno(), self._offset, self.nbytes
        while left:
            block = os.pread(fd, min(block_bytes, left), where)
            if not block:
                raise XaiJaxError(f"{self.path} is shorter than its header says")
            f.write(block)
            where, left = where + len(block), left - len(block)

    def close(self) -> None:
        """Unmaps the file (the file stays); the object is unusable afterwards."""
        self._view = None
        self._map.close()
        self._file.close()


def _member_start(file: BinaryIO, path: str, member: str) -> int:
    """Where member ``member`` of the zip archive ``file`` starts; it must be stored uncompressed (as ``np.savez``
    and :func:`xai_jax.outputs.save_npz` write), so that its bytes are a ``.npy`` file inside the archive."""
    try:
        info = zipfile.ZipFile(file).getinfo(member)
    except (zipfile.BadZipFile, KeyError) as err:
        raise XaiJaxError(f"{path} holds no readable member {member}: {err}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise XaiJaxError(f"{path}: {member} is compressed (np.savez_compressed); rows are read from stored members")
    file.seek(info.header_offset)
    local = file.read(30)  # the local file header: its name and extra field lengths end it
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise XaiJaxError(f"{path} is damaged (no local header for {member})")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _npy_header(file: BinaryIO, start: int, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of the ``.npy`` data that starts at byte ``start`` of ``file``."""
    file.seek(start)
    try:
        version = np.lib.format.read_magic(file)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"npy format {version[0]}.{version[1]}")
        shape, fortran, dtype = read[version](file)
    except ValueError as err:
        raise XaiJaxError(f"{name} is not a readable .npy array: {err}") from None
    if dtype.hasobject:
        raise XaiJaxError(f"{name} holds Python objects, not rows of numbers")
    if fortran and len(shape) > 1:
        raise XaiJaxError(f"{name}: a Fortran-ordered array cannot be read by rows")
    if not shape:
        raise XaiJaxError(f"{name} holds a scalar, not rows")
    return tuple(shape), np.dtype(dtype), file.tell()


def nbytes(rows: Any) -> int:
    """The size of an in-memory or on-disk array without reading it."""
    return rows.nbytes if isinstance(rows, DiskRows) else np.asarray(rows).nbytes


def as_rows(array: Any) -> np.ndarray | DiskRows:
    """``array`` as something indexable by rows: a :class:`DiskRows` stays on disk, anything else becomes NumPy."""
    return array if isinstance(array, DiskRows) else np.asarray(array)


def _file_name(path: tuple) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return ".".join(parts) or "rows"


def _open_rows(path: str, shape: tuple, dtype) -> DiskRows:
    """An existing file of a resumed pass, checked against the rows the pass now yields."""
    try:
        rows = DiskRows(path, writable=True)
    except (OSError, ValueError, XaiJaxError) as err:
        raise XaiJaxError(f"cannot resume the rows in {path}: {err}") from None
    if rows.shape != shape or rows.dtype != np.dtype(dtype):
        raise XaiJaxError(f"cannot resume the rows in {path}: {rows.shape} {rows.dtype} there, "
                          f"{shape} {np.dtype(dtype)} now")
    return rows


def store(chunks: Iterable[Any], n: int, directory: str | os.PathLike | None = None, *, start: int = 0,
          after: Callable[[int, list], None] | None = None) -> Any:
    """Writes per-batch outputs (pytrees of ``[b, ...]`` arrays, in row order) into arrays of ``n`` rows.

    Args:
      chunks: e.g. :func:`xai_jax.engine.map_batches`'s outputs; the first fixes every leaf's trailing shape
        and dtype.
      n: the total number of rows (the dataset's length).
      directory: an existing folder to hold one ``.npy`` :class:`DiskRows` per leaf (named by its path in the
        pytree, e.g. ``taps.layer1.npy``), or None to keep the arrays in memory. Given a folder, the process's
        allocator also returns freed blocks of 4 MiB and more to the kernel (:mod:`xai_jax.malloc`), so that
        the minibatches later read from the files do not stay resident.
      start: the rows already written (a resumed pass): the files in ``directory`` are opened, not created,
        and the chunks fill them from row ``start``.
      after: called as ``after(chunks_written, buffers)`` once each chunk is written (a checkpoint's save).

    Returns:
      The pytree of the chunks' structure with ``[n, ...]`` NumPy arrays or :class:`DiskRows` as leaves.

    Raises:
      XaiJaxError: no chunks, rows other than ``n`` in all, or files of a resumed pass that do not fit.
    """
    import jax
    if directory is not None:
        # freed minibatches go back to the kernel rather than stay in glibc's heap (xai_jax.malloc)
        set_thresholds(HEAP_MMAP_BYTES, HEAP_TRIM_BYTES)
    elif start:
        raise XaiJaxError("a resumed pass needs the folder of its rows")
    out, filled = None, start
    for count, chunk in enumerate(chunks, start=1):
        leaves, treedef = jax.tree.flatten(chunk)
        rows = len(leaves[0])
        if filled + rows > n:
            raise XaiJaxError(f"the pass yielded more than the {n} rows expected")
        if out is None:
            paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(chunk)[0]]
            shapes = [((n,) + leaf.shape[1:], leaf.dtype) for leaf in leaves]
            if directory is None:
                buffers = [np.empty(shape, dtype) for shape, dtype in shapes]
            else:
                files = [os.path.join(directory, _file_name(p) + ".npy") for p in paths]
                buffers = [_open_rows(f, shape, dtype) if start else DiskRows(f, shape, dtype)
                           for f, (shape, dtype) in zip(files, shapes)]
            out = (treedef, buffers)
        for buffer, leaf in zip(out[1], leaves):
            buffer[filled:filled + rows] = leaf
        filled += rows
        if after is not None:
            after(count, out[1])
    if out is None:
        raise XaiJaxError("the dataset is empty")
    if filled != n:
        raise XaiJaxError(f"the pass yielded {filled} rows, not the {n} expected")
    return out[0].unflatten(out[1])
