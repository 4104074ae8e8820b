"""Opening a data source from a one-word command-line spec such as ``idx:data/mnist`` or ``tfds:mnist:test``."""

from __future__ import annotations

import pathlib
import re

from xai_jax.data.base import Source, subset
from xai_jax.data.sources import (FASHION_MNIST_NAMES, DigitsSource, FolderSource, IdxSource, JpegNpzSource,
                                  NpzSource, TfdsSource, check_decode_workers)
from xai_jax.errors import XaiJaxError

SPEC_FORMS = ("idx:DIR", "jpeg-npz:FILE", "folder:DIR", "npz:FILE", "tfds:NAME[:SPLIT]", "digits")
_TFDS_VERSION = re.compile(r"\d+\.\d+\.\d+")


def _forms() -> str:
    return "valid forms: " + ", ".join(SPEC_FORMS)


def _existing(path_text: str, kind: str, want_dir: bool) -> pathlib.Path:
    """The path of a spec, which must exist as a folder (``want_dir``) or a file."""
    if not path_text:
        raise XaiJaxError(f"data spec {kind}: needs a path; {_forms()}")
    path = pathlib.Path(path_text).expanduser()
    if not (path.is_dir() if want_dir else path.is_file()):
        what = "folder" if want_dir else "file"
        raise XaiJaxError(f"data spec {kind}:{path_text}: no such {what}; {_forms()}")
    return path


def _no_split(kind: str, split: str | None) -> None:
    if split is not None:
        raise XaiJaxError(f"a split does not apply to {kind} data (the {'folder' if kind == 'folder' else 'file'} "
                          f"is the split), got split {split!r}")


def parse_tfds(rest: str) -> tuple[str, str | None]:
    """Splits ``NAME[:VERSION][:SPLIT]`` into the TFDS name (with its version) and the split.

    The split may itself hold colons (``test[:10%]``), so only a version-shaped field joins the name.
    """
    name, _, split = rest.partition(":")
    version, _, after_version = split.partition(":")
    if _TFDS_VERSION.fullmatch(version):
        name, split = f"{name}:{version}", after_version
    return name, (split or None)


def _idx_class_names(directory: pathlib.Path) -> tuple[str, ...] | None:
    # The IDX files cannot tell Fashion-MNIST from MNIST; a folder named after it can.
    return FASHION_MNIST_NAMES if "fashion" in directory.resolve().name.lower() else None


def split_if_any(spec: str, split: str) -> str | None:
    """``split`` where the spec's source has splits and the spec does not fix one (idx, digits, tfds:NAME), else None.

    Commands that want a training (or test) split by default pass it through this, so that the same default also
    works for npz, jpeg-npz and folder sources, whose file or folder is the split.
    """
    kind, _, rest = spec.strip().partition(":")
    if kind in ("idx", "digits"):
        return split
    if kind == "tfds":
        return None if parse_tfds(rest)[1] else split
    return None


def spec_path(spec: str | None) -> str | None:
    """The file or folder a spec reads (``idx:DIR`` -> ``DIR``), or None for tfds and digits: the path a command
    must never write its output over."""
    if not spec:
        return None
    kind, _, rest = spec.strip().partition(":")
    return rest if kind in ("idx", "jpeg-npz", "npz", "folder") and rest else None


def open_source(spec: str, split: str | None = None, limit: int | None = None, resize: int | None = None,
                crop: tuple[int, int] | None = None, synsets: str | None = None,
                sample_seed: int | None = None, decode_workers: int | None = None, draft: bool = False,
                decode_processes: bool = False) -> Source:
    """Opens the dataset that a command-line spec names.

    Specs: ``idx:DIR`` (MNIST-style IDX files; Fashion-MNIST class names when the folder's name contains
    "fashion"), ``jpeg-npz:FILE``, ``folder:DIR`` (``DIR/<class>/<image>``), ``npz:FILE``,
    ``tfds:NAME[:SPLIT]`` (a prepared TFDS dataset; NAME may carry ``:VERSION``) and ``digits``
    (scikit-learn's 8x8 digits).

    Args:
      spec: the spec.
      split: ``"train"`` or ``"test"`` for idx (default test) and digits (default None: all 1,797), any TFDS
        split for tfds (default the spec's, else test); must be None for npz, jpeg-npz and folder, whose
        file or folder is the split.
      limit: keep only ``limit`` items: the first ones, or a random draw with ``sample_seed``.
      resize, crop: for image folders, torchvision-style ``Resize(resize)`` and ``CenterCrop(crop)``;
        ignored for the other kinds, whose images share one size (models resize them on device).
      synsets: for image folders of WordNet ids, a file listing the ids in label order.
      sample_seed: with ``limit``, draw the items at random with this seed (:func:`xai_jax.data.subset`).
      decode_workers: for image folders and jpeg-npz files, the threads that decode a batch (default: one per
        core); ignored for the other kinds.
      draft: for image folders with ``resize``, faster approximate resizing (:class:`FolderSource`).
      decode_processes: for image folders with a crop, decode in worker processes instead of threads.

    Returns:
      the source (a :class:`Subset` when ``limit`` is given).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise XaiJaxError(f"empty data spec; {_forms()}")
    kind, _, rest = spec.strip().partition(":")
    decode_workers = check_decode_workers(decode_workers)
    if kind == "idx":
        directory = _existing(rest, kind, want_dir=True)
        source = IdxSource(directory, split=split or "test", class_names=_idx_class_names(directory))
    elif kind == "jpeg-npz":
        _no_split(kind, split)
        source = JpegNpzSource(_existing(rest, kind, want_dir=False), decode_workers=decode_workers)
    elif kind == "npz":
        _no_split(kind, split)
        source = NpzSource(_existing(rest, kind, want_dir=False))
    elif kind == "folder":
        _no_split(kind, split)
        source = FolderSource(_existing(rest, kind, want_dir=True), resize=resize, crop=crop, synsets=synsets,
                              decode_workers=decode_workers, draft=draft,
                              decode_processes=decode_processes)
    elif kind == "tfds":
        name, spec_split = parse_tfds(rest)
        if not name:
            raise XaiJaxError(f"data spec {spec!r} names no dataset; {_forms()}")
        if spec_split and split and spec_split != split:
            raise XaiJaxError(f"data spec {spec!r} names split {spec_split!r} but split {split!r} was also given")
        source = TfdsSource(name, split=spec_split or split or "test")
    elif kind == "digits" and not rest:
        source = DigitsSource(split=split)
    else:
        raise XaiJaxError(f"unknown data spec {spec!r}; {_forms()}")
    if len(source) == 0:
        raise XaiJaxError(f"data spec {spec}: holds no images")
    if limit is not None and int(limit) < 1:
        raise XaiJaxError(f"limit must be at least 1, got {limit}")
    if sample_seed is not None and int(sample_seed) < 0:
        raise XaiJaxError(f"sample seed must be >= 0, got {sample_seed}")
    return source if limit is None else subset(source, limit, sample_seed)
