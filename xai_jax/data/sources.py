"""Data sources that read real datasets from disk (or from TFDS / scikit-learn) with random access.

Every source returns images as NHWC ``[n, H, W, C]`` uint8 in [0, 255] — grey datasets (MNIST, digits)
with ``C == 1`` — and int32 labels, so the rest of the library can assume one layout. Files are opened
and checked when the source is built; images are decoded in ``read``, which the batcher calls on its
background thread. Any missing, truncated or corrupt file raises :class:`XaiJaxError` naming the file.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gzip
import io
import os
import pathlib
import re
import threading
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from xai_jax.data.base import Source
from xai_jax.data.decode_processes import decode_into_batch
from xai_jax.errors import XaiJaxError
from xai_jax.readers import existing_file, read_npz

PathLike = str | os.PathLike

DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: file name endings that image folders read (torchvision's ImageFolder list)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_WNID = re.compile(r"n\d{8}")
# Below this many images a thread pool costs more than it saves.
_PARALLEL_DECODE_MIN = 64
_DECODE_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_DECODE_POOL_LOCK = threading.Lock()
# Draft decoding stops at a JPEG scale (1/2, 1/4, 1/8) that keeps this many times the resized size, so that the
# antialiased resize still does the last 2x or more: at 1x the pixels moved by 3 grey levels on average and flipped
# 1 of 20 EfficientNet-Lite0 predictions; at 2x they move by under 1 (experiments/draft_accuracy.py).
_DRAFT_GAP = 2
# Pillow raises these for unreadable, truncated or malformed image data.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------------------
# Image decoding shared by the JPEG-npz and folder sources


def default_decode_workers() -> int:
    """Decode threads when none are asked for: the cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_decode_workers(workers: int | None) -> int | None:
    """``workers`` as an int, or None for :func:`default_decode_workers`; one clear error below 1."""
    if workers is None:
        return None
    if isinstance(workers, bool) or int(workers) != workers or workers < 1:
        raise XaiJaxError(f"decode workers must be a whole number of at least 1, got {workers!r}")
    return int(workers)


def _decode_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide pool of ``workers`` decoding threads (made once per size): Pillow releases the GIL
    while it decodes and resizes, which is most of an image's time (BENCHMARKS.md, "Input pipeline")."""
    with _DECODE_POOL_LOCK:
        if workers not in _DECODE_POOLS:
            _DECODE_POOLS[workers] = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix=f"xai_jax-decode{workers}")
        return _DECODE_POOLS[workers]


def decode_rgb(data: bytes | PathLike, name: str) -> np.ndarray:
    """Decodes one image file or encoded buffer to RGB.

    Args:
      data: encoded bytes or a path.
      name: how an error names the image (a path, or ``file[index]``).

    Returns:
      uint8 ``[H, W, 3]``.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return np.asarray(image.convert("RGB"))
    except _IMAGE_ERRORS as err:
        # PIL names the in-memory file it was given ("<_io.BytesIO object at 0x...>"); the name above says more
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err)) or type(err).__name__
        raise XaiJaxError(f"cannot decode image {name}: {reason}") from None


def _decode_many(count: int, decode_one: Callable[[int], np.ndarray],
                 workers: int | None = None) -> list[np.ndarray]:
    """``[decode_one(i) for i in range(count)]``, in ``workers`` threads (default: one per core) for large
    batches."""
    workers = default_decode_workers() if workers is None else workers
    if workers == 1 or count < _PARALLEL_DECODE_MIN:
        return [decode_one(i) for i in range(count)]
    return list(_decode_pool(workers).map(decode_one, range(count)))


def _stack_same_shape(images: Sequence[np.ndarray], names: Callable[[int], str], hint: str = "") -> np.ndarray:
    """Stacks images that must share one shape; names the first one that does not."""
    first = images[0].shape
    for i, image in enumerate(images):
        if image.shape != first:
            raise XaiJaxError(f"image {names(i)} is {image.shape[1]}x{image.shape[0]} but {names(0)} is "
                              f"{first[1]}x{first[0]}; all images must share one size{hint}")
    return np.stack(images)


def _index_array(indices, count: int) -> np.ndarray:
    """``indices`` as non-negative int64 positions, checked against ``count`` items (NumPy's rules)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < -count or indices.max() >= count):
        raise IndexError(f"index out of range for {count} items: [{indices.min()}, {indices.max()}]")
    return np.where(indices < 0, indices + count, indices)


# ---------------------------------------------------------------------------------------------------------
# MNIST-style IDX files

_IDX_UBYTE = 0x08


def _open_maybe_gzip(path: pathlib.Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_header(path: pathlib.Path, ndim: int) -> tuple[tuple[int, ...], int]:
    """Reads and checks an IDX header (magic ``00 00 08 ndim``, then big-endian int32 dimensions).

    Args:
      path: the ``.idx?-ubyte`` file, gzipped if its name ends in ``.gz``.
      ndim: the number of dimensions it must have (3 for images, 1 for labels).

    Returns:
      the dimensions and the header's length in bytes.
    """
    length = 4 + 4 * ndim
    try:
        with _open_maybe_gzip(path) as f:
            header = f.read(length)
    except (OSError, EOFError) as err:
        raise XaiJaxError(f"cannot read IDX file {path}: {err}") from None
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] != _IDX_UBYTE or header[3] != ndim:
        raise XaiJaxError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions "
                          f"(magic number {header[:4].hex() or 'missing'}, expected 000008{ndim:02x})")
    if len(header) < length:
        raise XaiJaxError(f"IDX file {path} is truncated inside its header")
    return tuple(int(d) for d in np.frombuffer(header[4:], ">i4")), length


def read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
    """The whole array of an IDX file of unsigned bytes (memory-mapped when not gzipped).

    Args:
      path: the file.
      ndim: its number of dimensions.

    Returns:
      uint8 array of the header's shape.
    """
    dims, offset = read_idx_header(path, ndim)
    expected = offset + int(np.prod(dims))
    if path.suffix != ".gz":
        size = path.stat().st_size
        if size != expected:
            raise XaiJaxError(f"IDX file {path} holds {size} bytes, its header {dims} implies {expected}")
        return np.memmap(path, np.uint8, "r", offset=offset, shape=dims)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise XaiJaxError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) != expected:
        raise XaiJaxError(f"IDX file {path} holds {len(raw)} bytes, its header {dims} implies {expected}")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _find_idx_file(directory: pathlib.Path, prefix: str, kind: str, ndim: int) -> pathlib.Path:
    """``{prefix}-{kind}-idx{ndim}-ubyte`` in ``directory``, gzipped or not (also with ``.idx``)."""
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise XaiJaxError(f"no {stems[0]}[.gz] in {directory}")


class IdxSource(Source):
    """MNIST or Fashion-MNIST (or any dataset in their IDX format) with images ``[N, 28, 28, 1]`` uint8.

    The files cannot tell MNIST from Fashion-MNIST, so the class names are an argument
    (:func:`xai_jax.data.open_source` picks Fashion-MNIST names when the folder name says "fashion").

    Args:
      directory_or_files: a folder holding ``{train,t10k}-images-idx3-ubyte[.gz]`` and
        ``{train,t10k}-labels-idx1-ubyte[.gz]``, or an ``(images_file, labels_file)`` pair.
      split: ``"test"`` (the ``t10k`` files) or ``"train"``; ignored when files are given.
      class_names: one name per label; default the digits ``"0" .. "9"``.
    """

    def __init__(self, directory_or_files: PathLike | tuple[PathLike, PathLike], split: str = "test",
                 class_names: Sequence[str] | None = None):
        if isinstance(directory_or_files, (tuple, list)):
            images_path, labels_path = (pathlib.Path(p) for p in directory_or_files)
            for path in (images_path, labels_path):
                if not path.is_file():
                    raise XaiJaxError(f"IDX file {path} does not exist")
            self.description = f"idx:{images_path}"
        else:
            directory = pathlib.Path(directory_or_files)
            if not directory.is_dir():
                raise XaiJaxError(f"IDX folder {directory} does not exist")
            if split not in ("test", "train"):
                raise XaiJaxError(f"IDX split must be 'test' or 'train', got {split!r}")
            prefix = "t10k" if split == "test" else "train"
            images_path = _find_idx_file(directory, prefix, "images", 3)
            labels_path = _find_idx_file(directory, prefix, "labels", 1)
            self.description = f"idx:{directory} ({split})"
        self.images_path = images_path
        self.image_dims, _ = read_idx_header(images_path, 3)
        self.labels = read_idx(labels_path, 1).astype(np.int32)
        if len(self.labels) != self.image_dims[0]:
            raise XaiJaxError(f"{images_path} holds {self.image_dims[0]} images but {labels_path} "
                              f"holds {len(self.labels)} labels")
        self.class_names = tuple(DIGIT_NAMES if class_names is None else class_names)
        if self.labels.size and self.labels.max() >= len(self.class_names):
            raise XaiJaxError(f"{labels_path} has label {self.labels.max()} but only "
                              f"{len(self.class_names)} class names")
        self._images: np.ndarray | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.labels)

    def _all_images(self) -> np.ndarray:
        # Loaded on first read (often on the batcher's thread), once: a gzip stream has no random access.
        with self._lock:
            if self._images is None:
                self._images = read_idx(self.images_path, 3)[..., None]
            return self._images

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _index_array(indices, len(self))
        return np.ascontiguousarray(self._all_images()[indices]), self.labels[indices]


# ---------------------------------------------------------------------------------------------------------
# JPEG bytes in an npz (the shared CIFAR-10 files)


def _load_npz(path: pathlib.Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    """All arrays of an npz file, checking that ``required`` keys are there (:func:`xai_jax.readers.read_npz`)."""
    return read_npz(path, "npz file", required)


def _class_names_from(arrays: dict[str, np.ndarray], labels: np.ndarray, path: pathlib.Path) -> tuple[str, ...]:
    """The ``class_names`` array of an npz, or ``"0" .. "C-1"``; checks the labels fit."""
    if "class_names" in arrays:
        names = tuple(str(n) for n in np.asarray(arrays["class_names"]).reshape(-1))
    else:
        names = tuple(str(i) for i in range(int(labels.max(initial=-1)) + 1))
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise XaiJaxError(f"{path}: labels must lie in [0, {len(names)}), got [{labels.min()}, {labels.max()}]")
    return names


def _integer_labels(labels: np.ndarray, count: int, path: pathlib.Path) -> np.ndarray:
    if labels.shape != (count,):
        raise XaiJaxError(f"{path}: expected {count} labels, got an array of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise XaiJaxError(f"{path}: labels must be integers, got {labels.dtype}")
    return labels.astype(np.int32)


class JpegNpzSource(Source):
    """Images stored as encoded bytes in one npz, decoded with Pillow to RGB uint8 ``[n, H, W, 3]``.

    The npz holds ``jpeg_bytes`` (uint8, all files concatenated), ``offsets`` (``N + 1`` integers: image
    ``i`` is ``jpeg_bytes[offsets[i]:offsets[i + 1]]``), ``labels`` and optionally ``class_names`` — the
    layout of the shared CIFAR-10 files. The whole file is read once, when the source is built.

    Args:
      file: the npz.
      decode_workers: threads that decode a batch's images (default: one per core this process may use).
    """

    REQUIRED = ("jpeg_bytes", "offsets", "labels")

    def __init__(self, file: PathLike, decode_workers: int | None = None):
        path = pathlib.Path(file)
        self.decode_workers = check_decode_workers(decode_workers)
        arrays = _load_npz(path, self.REQUIRED)
        self.path, self.description = path, f"jpeg-npz:{path}"
        self.jpeg_bytes = np.asarray(arrays["jpeg_bytes"]).reshape(-1)
        self.offsets = np.asarray(arrays["offsets"]).astype(np.int64).reshape(-1)
        if self.jpeg_bytes.dtype != np.uint8:
            raise XaiJaxError(f"{path}: jpeg_bytes must be uint8, got {self.jpeg_bytes.dtype}")
        count = len(self.offsets) - 1
        if (count < 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.jpeg_bytes)
                or np.any(np.diff(self.offsets) <= 0)):
            raise XaiJaxError(f"{path}: offsets must rise from 0 to len(jpeg_bytes) = {len(self.jpeg_bytes)}")
        self.labels = _integer_labels(np.asarray(arrays["labels"]), count, path)
        self.class_names = _class_names_from(arrays, self.labels, path)

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, index: int) -> np.ndarray:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return decode_rgb(self.jpeg_bytes[start:stop].tobytes(), f"{self.path}[{index}]")

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _index_array(indices, len(self))
        labels = self.labels[indices]
        images = _decode_many(len(indices), lambda i: self._decode(int(indices[i])), self.decode_workers)
        if not images:
            return np.zeros((0, 0, 0, 3), np.uint8), labels
        return _stack_same_shape(images, lambda i: f"{self.path}[{indices[i]}]"), labels


# ---------------------------------------------------------------------------------------------------------
# Image folders (ImageNet layout)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """The ``(width, height)`` torchvision's ``Resize(shorter)`` gives: the shorter side becomes
    ``shorter``, the longer one keeps the aspect ratio, truncated to an integer."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of torchvision's ``CenterCrop((crop_h, crop_w))``."""
    crop_h, crop_w = crop
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return left, top, left + crop_w, top + crop_h


def load_folder_image(path: pathlib.Path | io.BytesIO, resize: int | None, crop: tuple[int, int] | None,
                      name: str | None = None, max_pixels: int | None = None, draft: bool = False) -> np.ndarray:
    """Decodes one image to RGB and applies torchvision-style ``Resize(resize)`` then ``CenterCrop(crop)``.

    Args:
      path: the image file, or its encoded bytes in a ``BytesIO``.
      resize: shorter side after a bilinear resize (Pillow's, as torchvision uses for PIL images), or None.
      crop: ``(height, width)`` of the centre crop, or None.
      name: how an error names the image (default: ``image PATH``).
      max_pixels: refuse, before decoding, an image of more pixels than this (Pillow's own decompression-bomb
        guard still applies without it).
      draft: trade exact torchvision pixels for speed (with ``resize``): only the centre crop's region is
        resized (``resize(box=...)``), and a JPEG at least four times the resized size is decoded already
        scaled by 1/2, 1/4 or 1/8 in the DCT domain (Pillow's ``draft``), keeping at least twice the resized
        size. The geometry is torchvision's; pixels differ by at most 1 without the DCT scaling, by under 1 grey
        level on average with it (measured in BENCHMARKS.md, "Input pipeline").

    Returns:
      uint8 ``[H, W, 3]``.
    """
    name = f"image {path}" if name is None else name
    try:
        with Image.open(path) as image:
            width, height = image.size  # read from the header: nothing is decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise XaiJaxError(f"{name} is {width}x{height}, more than the {max_pixels:,} pixels allowed")
            size = (width, height) if resize is None else resized_size(width, height, resize)
            if crop is not None and (crop[0] > size[1] or crop[1] > size[0]):
                raise XaiJaxError(f"{name} is {size[0]}x{size[1]} after resizing, smaller than the "
                                  f"{crop[1]}x{crop[0]} crop")
            box = None if crop is None else center_crop_box(*size, crop)
            if draft and resize is not None:
                return np.asarray(_resize_draft(image, size, box))
            if image.mode != "RGB":
                image = image.convert("RGB")  # (an RGB image's convert would only copy it)
            if resize is not None:
                image = image.resize(size, Image.BILINEAR)
            if box is not None:
                image = image.crop(box)
            return np.asarray(image)
    except _IMAGE_ERRORS as err:
        detail = str(err).split(" <_io.BytesIO")[0]  # Pillow names a buffer by its repr
        raise XaiJaxError(f"cannot decode {name}: {detail}") from None


def _resize_draft(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None) -> Image.Image:
    """``image`` resized to ``size`` and cut to ``box`` (in resized pixels) the fast way: decoded at a reduced
    JPEG scale that keeps ``_DRAFT_GAP`` times ``size``, then only the box's region resampled (``resize(box=...)``:
    its filter positions differ from the whole image's by float rounding, hence the odd difference of 1)."""
    if image.format == "JPEG":
        image.draft("RGB", (size[0] * _DRAFT_GAP, size[1] * _DRAFT_GAP))  # changes image.size to the decoded one
    if image.mode != "RGB":
        image = image.convert("RGB")
    if box is None:
        return image.resize(size, Image.BILINEAR)
    scale_x, scale_y = image.size[0] / size[0], image.size[1] / size[1]
    source_box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
    return image.resize((box[2] - box[0], box[3] - box[1]), Image.BILINEAR, box=source_box)


def read_image(path: PathLike | None, spec=None, what: str = "image") -> np.ndarray:
    """A query image file decoded to uint8 ``[H, W, C]``, made ready for a model when ``spec`` is given.

    With ``spec`` (a :class:`xai_jax.models.ModelSpec`): resized and centre-cropped as the model's image-folder
    preprocessing does (models with ``spec.resize``), its channels matched to the model's (grey: the rounded mean
    of the decoded RGB; RGB from grey: repeated), and its shape checked against ``spec.input_shape``.
    """
    path = existing_file(path, what)
    return _query_image(pathlib.Path(path), f"{what} {path}", spec)


def decode_image(data: bytes, spec=None, what: str = "the uploaded image",
                 max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_image` for an image's encoded bytes (an upload), with an optional pixel limit checked
    before decoding.

    Args:
      data: the encoded image (any format Pillow reads).
      spec: the model to prepare it for, as :func:`read_image` does.
      what: how errors name it.
      max_pixels: the most pixels (width x height) the encoded image may declare.

    Returns:
      uint8 ``[H, W, C]``.
    """
    if not data:
        raise XaiJaxError(f"{what} is empty")
    return _query_image(io.BytesIO(data), what, spec, max_pixels)


def _query_image(path, name: str, spec, max_pixels: int | None = None) -> np.ndarray:
    if spec is None:
        return load_folder_image(path, None, None, name, max_pixels)
    image = load_folder_image(path, spec.resize, tuple(spec.input_shape[:2]) if spec.resize else None, name,
                              max_pixels)
    channels = spec.input_shape[-1]
    if channels == 1:
        image = np.round(image.mean(-1, keepdims=True)).astype(np.uint8)
    elif image.shape[-1] != channels:
        image = np.repeat(image[..., :1], channels, -1)
    if tuple(image.shape) != tuple(spec.input_shape):
        raise XaiJaxError(f"{name} is {image.shape[1]}x{image.shape[0]}; {spec.name} takes "
                          f"{spec.input_shape[1]}x{spec.input_shape[0]} images")
    return image


def read_synsets(path: PathLike) -> tuple[str, ...]:
    """WordNet ids, one a line (e.g. the 1,000 ILSVRC-2012 classes in their standard index order)."""
    path = pathlib.Path(path)
    try:
        wnids = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as err:
        raise XaiJaxError(f"cannot read synsets file {path}: {err}") from None
    bad = [w for w in wnids if not _WNID.fullmatch(w)]
    if bad or not wnids:
        raise XaiJaxError(f"synsets file {path} must hold one WordNet id (n########) a line; "
                          f"found {bad[0] if bad else 'nothing'}")
    return wnids


def _scan_images(folder: pathlib.Path) -> list[pathlib.Path]:
    """Image files under ``folder`` (recursively, sorted, hidden entries and other extensions skipped)."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [pathlib.Path(directory, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _normalise_crop(crop) -> tuple[int, int] | None:
    if crop is None:
        return None
    crop = (int(crop), int(crop)) if np.isscalar(crop) else tuple(int(c) for c in crop)
    if len(crop) != 2 or min(crop) < 1:
        raise XaiJaxError(f"crop must be a positive size or (height, width), got {crop}")
    return crop


class FolderSource(Source):
    """Images in class folders, ``root/<class>/<image>`` (the ImageNet layout), decoded to RGB uint8.

    Labels are the sorted folder names' indices, or, given ``synsets``, each WordNet-id folder's index in
    that list — so that a folder of some ImageNet validation classes gets the standard class indices.

    Args:
      root: the folder of class folders.
      resize: resize each image so its shorter side has this length (bilinear, like torchvision's
        ``Resize(resize)``), keeping the aspect ratio.
      crop: then cut the centre ``(height, width)`` (or ``crop x crop``), like ``CenterCrop``. Without
        resize and crop every image must have the same size.
      class_names: display names, one per label (default: the folder names, or the synsets list).
      synsets: a file with one WordNet id a line, in label order (e.g. ``imagenet_synsets.txt``).
      decode_workers: threads (or processes) that decode a batch's images (default: one per core this process
        may use).
      draft: faster, approximate resizing (:func:`load_folder_image`); the default gives torchvision's pixels.
      decode_processes: decode in ``decode_workers`` worker processes that write into shared memory
        (:mod:`xai_jax.data.decode_processes`) instead of threads; needs ``crop``. About as much CPU per image
        as threads, without their shared GIL, which stops one process's threads near 12-16 busy cores
        (BENCHMARKS.md, "Input pipeline"); a script using it needs the ``__main__`` guard (workers are spawned).
    """

    def __init__(self, root: PathLike, resize: int | None = None, crop=None,
                 class_names: Sequence[str] | None = None, synsets: PathLike | None = None,
                 decode_workers: int | None = None, draft: bool = False, decode_processes: bool = False):
        root = pathlib.Path(root)
        if not root.is_dir():
            raise XaiJaxError(f"image folder {root} does not exist")
        if resize is not None and int(resize) < 1:
            raise XaiJaxError(f"resize must be a positive length, got {resize}")
        self.root, self.description = root, f"folder:{root}"
        self.resize, self.crop = (None if resize is None else int(resize)), _normalise_crop(crop)
        self.decode_workers, self.draft = check_decode_workers(decode_workers), bool(draft)
        if decode_processes and self.crop is None:
            raise XaiJaxError("decoding in processes needs a crop size (every image of a batch the same shape)")
        self.decode_processes = bool(decode_processes)
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if synsets is not None:
            names = read_synsets(synsets)
            position = {wnid: i for i, wnid in enumerate(names)}
            unknown = [f for f in folders if f not in position]
            if unknown:
                raise XaiJaxError(f"folder {root / unknown[0]} is not a WordNet id listed in {synsets}")
        else:
            names = tuple(folders)
            position = {name: i for i, name in enumerate(names)}
        self.paths, labels = [], []
        for folder in folders:
            images = _scan_images(root / folder)
            self.paths += images
            labels += [position[folder]] * len(images)
        if not self.paths:
            raise XaiJaxError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {root}")
        self.labels = np.asarray(labels, np.int32)
        if class_names is not None:
            if len(class_names) != len(names):
                raise XaiJaxError(f"{root}: {len(class_names)} class names given for {len(names)} classes")
            names = tuple(class_names)
        self.class_names = tuple(names)

    def __len__(self) -> int:
        return len(self.paths)

    def _workers(self) -> int:
        return default_decode_workers() if self.decode_workers is None else self.decode_workers

    def _in_processes(self, count: int) -> bool:
        """Whether a read of ``count`` images decodes in processes (see ``decode_processes``)."""
        return self.decode_processes and count >= _PARALLEL_DECODE_MIN

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _index_array(indices, len(self))
        labels = self.labels[indices]
        paths = [self.paths[i] for i in indices]
        if self._in_processes(len(paths)):
            decode = functools.partial(load_folder_image, resize=self.resize, crop=self.crop, draft=self.draft)
            return decode_into_batch(paths, decode, (*self.crop, 3), self._workers()), labels
        images = _decode_many(len(paths), lambda i: load_folder_image(paths[i], self.resize, self.crop,
                                                                      draft=self.draft), self.decode_workers)
        if not images:
            return np.zeros((0, 0, 0, 3), np.uint8), labels
        hint = "" if self.crop else " (give a crop size, or resize and crop)"
        return _stack_same_shape(images, lambda i: str(paths[i]), hint), labels


# ---------------------------------------------------------------------------------------------------------
# Plain arrays in an npz


class NpzSource(Source):
    """Images and labels as arrays in an npz file: ``images``, ``labels`` and optionally ``class_names``.

    ``images`` is ``[N, H, W]`` or ``[N, H, W, C]`` (C = 1, 3 or 4), uint8 or float in [0, 1]; grey
    ``[N, H, W]`` gains a channel axis. The arrays are loaded once, when the source is built.

    Args:
      file: the npz.
    """

    REQUIRED = ("images", "labels")

    def __init__(self, file: PathLike):
        path = pathlib.Path(file)
        arrays = _load_npz(path, self.REQUIRED)
        images = np.asarray(arrays["images"])
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise XaiJaxError(f"{path}: images must be [N, H, W] or [N, H, W, C] with C in (1, 3, 4), "
                              f"got shape {arrays['images'].shape}")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise XaiJaxError(f"{path}: images must be uint8 or float in [0, 1], got {images.dtype}")
        if np.issubdtype(images.dtype, np.floating) and images.size:
            low, high = float(np.min(images)), float(np.max(images))
            if not (0.0 <= low and high <= 1.0):  # also rejects NaN
                raise XaiJaxError(f"{path}: float images must lie in [0, 1], got [{low}, {high}]")
        self.path, self.description = path, f"npz:{path}"
        self.images = images
        self.labels = _integer_labels(np.asarray(arrays["labels"]), len(images), path)
        self.class_names = _class_names_from(arrays, self.labels, path)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _index_array(indices, len(self))
        return self.images[indices], self.labels[indices]


# ---------------------------------------------------------------------------------------------------------
# scikit-learn's bundled digits


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 ``[1797, 8, 8, 1]`` and int32 labels, parsed once per process."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    images.flags.writeable = labels.flags.writeable = False  # shared by every DigitsSource
    return images, labels


class DigitsSource(Source):
    """scikit-learn's 1,797 bundled 8x8 handwritten digits as uint8 ``[N, 8, 8, 1]``.

    The original pixel values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``) so the images look
    like any other uint8 dataset to the models' preprocessing.

    Args:
      split: None for all images in their original order, or ``"train"`` / ``"test"``: a stratified split
        with ``test_fraction`` of each class in test, fixed by ``seed`` (disjoint, reproducible, each in
        original order).
      test_fraction: share of the test split.
      seed: the split's random state.
    """

    def __init__(self, split: str | None = None, test_fraction: float = 0.2, seed: int = 0):
        from sklearn.model_selection import train_test_split

        if split not in (None, "train", "test"):
            raise XaiJaxError(f"digits split must be 'train', 'test' or None (all), got {split!r}")
        images, labels = _load_digits()
        keep = np.arange(len(labels))
        if split is not None:
            train, test = train_test_split(keep, test_size=test_fraction, random_state=seed, stratify=labels)
            keep = np.sort(test if split == "test" else train)
        self.images, self.labels, self.source_indices = images[keep], labels[keep], keep
        self.class_names = DIGIT_NAMES
        self.description = "digits" if split is None else f"digits ({split})"

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _index_array(indices, len(self))
        return self.images[indices], self.labels[indices]


# ---------------------------------------------------------------------------------------------------------
# TensorFlow Datasets' random-access data sources (no TensorFlow needed)


class TfdsSource(Source):
    """A prepared TFDS dataset read through ``tfds.data_source`` (ArrayRecord files, random access).

    The dataset must already be prepared in ``array_record`` format under ``data_dir`` (nothing is
    downloaded). Images come back as the dataset stores them (uint8 ``[H, W, C]``), stacked per read.

    Args:
      name: the TFDS name, optionally with config and version (``"mnist"``, ``"cifar10:3.0.2"``).
      split: a TFDS split, slices included (``"test"``, ``"train[:10%]"``).
      data_dir: where the prepared data lives (TFDS's default when None).
      image_key, label_key: the example's image and label features; the label must be a ``ClassLabel``.
    """

    def __init__(self, name: str, split: str = "test", data_dir: PathLike | None = None,
                 image_key: str = "image", label_key: str = "label"):
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise XaiJaxError("tfds sources need tensorflow-datasets: pip install 'xai-jax[tfds]'") from None
        try:
            self.data_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as err:  # TFDS raises many types for "not found" / "not prepared"
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise XaiJaxError(f"cannot open TFDS dataset {name!r} split {split!r}: {first_line}") from None
        features = self.data_source.dataset_info.features
        for key in (image_key, label_key):
            if key not in features:
                raise XaiJaxError(f"TFDS dataset {name!r} has no feature {key!r}; it has "
                                  f"{', '.join(features.keys())}")
        label_names = getattr(features[label_key], "names", None)
        if not label_names:
            raise XaiJaxError(f"TFDS feature {name}/{label_key} is not a ClassLabel with names")
        self.image_key, self.label_key = image_key, label_key
        self.class_names = tuple(label_names)
        self.description = f"tfds:{name}:{split}"

    def __len__(self) -> int:
        return len(self.data_source)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        indices = _index_array(indices, len(self))
        # Item by item: __getitems__ would batch the record reads, but tfds' own mock breaks it.
        examples = [self.data_source[int(i)] for i in indices]
        labels = np.asarray([int(ex[self.label_key]) for ex in examples], np.int32)
        images = [np.asarray(ex[self.image_key]) for ex in examples]
        if not images:
            return np.zeros((0, 0, 0, 1), np.uint8), labels
        images = [im[..., None] if im.ndim == 2 else im for im in images]
        return _stack_same_shape(images, lambda i: f"{self.description}[{indices[i]}]"), labels
