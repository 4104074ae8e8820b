"""What every ``xai-jax`` subcommand shares: the model, data and output argument groups, opening a pass's model
and data, the paths a command reads, and where a result's images came from."""

from __future__ import annotations

import argparse
import contextlib
import os

from xai_jax.cli.options import non_negative_int, positive_int
from xai_jax.errors import XaiJaxError

DATA_HELP = ("data source KIND:PATH: idx:DIR (MNIST/Fashion-MNIST), jpeg-npz:FILE, folder:DIR (one folder per "
             "class), npz:FILE (arrays images, labels), tfds:NAME[:SPLIT], digits")


def add_sample_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-seed", type=non_negative_int, metavar="S",
                   help="with --limit (and the command's other limits): a random draw of N images with seed S "
                        "instead of the first N; files sorted by class, like the CIFAR-10 archives, need it")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, metavar="SPEC", help=DATA_HELP)
    p.add_argument("--split", help="split where the source has several (train/test; tfds split names)")
    p.add_argument("--limit", type=positive_int, help="use only the first N images (a random N with --sample-seed)")
    add_sample_seed(p)
    p.add_argument("--synsets", metavar="FILE", help="for folder: sources named by WordNet id, the label order "
                   "(one wnid a line, e.g. the 1,000 ILSVRC-2012 wnids)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="global batch size (default 128)")
    add_decoding_args(p)
    add_pass_args(p)


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """How image folders and JPEG files are decoded (:func:`decoding_of` hands them to ``open_source``)."""
    p.add_argument("--decode-workers", type=positive_int, metavar="N",
                   help="threads that decode and resize images (folder, jpeg-npz; default: one per core)")
    p.add_argument("--decode-draft", action="store_true",
                   help="for folder: decode JPEGs at a reduced scale and resize only the centre crop: faster, "
                        "pixels differ slightly from torchvision's (BENCHMARKS.md, Input pipeline)")
    p.add_argument("--decode-processes", action="store_true",
                   help="for folder: decode in --decode-workers processes instead of threads (no shared GIL: "
                        "for hosts with more than about 12 cores)")


def decoding_of(args) -> dict:
    """The ``open_source`` keywords of :func:`add_decoding_args`'s flags (none where a command lacks them)."""
    return {"decode_workers": getattr(args, "decode_workers", None), "draft": getattr(args, "decode_draft", False),
            "decode_processes": getattr(args, "decode_processes", False)}


def add_pass_args(p: argparse.ArgumentParser) -> None:
    """The flags of every dataset pass: the processes it runs on, and its checkpoints (:func:`pass_context`)."""
    g = p.add_argument_group("many hosts", "one process per host; without these flags JAX detects a cluster "
                             "(SLURM, Open MPI, TPU pods) of more than one process, else the pass runs in this "
                             "one process")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same on every host")
    g.add_argument("--num-processes", type=positive_int, metavar="P", help="how many processes (hosts)")
    g.add_argument("--process-id", type=non_negative_int, metavar="I", help="this process's rank, 0 .. P-1")
    g = p.add_argument_group("resumable passes")
    g.add_argument("--checkpoint-every", type=positive_int, metavar="N",
                   help="save the pass every N batches: each fold's state, and the rows a per-image pass has "
                        "written (default: no checkpoints)")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="where (default: .OUT.checkpoint beside --out; "
                   "removed when the command completes)")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir "
                   "(refused if it was made with other inputs or options)")


def add_scratch_arg(p: argparse.ArgumentParser) -> None:
    """``--scratch-dir``, for the commands that keep every image's activations (:func:`rows_dir`)."""
    p.add_argument("--scratch-dir", metavar="DIR",
                   help="an existing folder on a fast disk for the per-image activations of a pass when they "
                        "exceed 256 MiB (kept there as .npy files read back in blocks, so host memory does "
                        "not grow with the dataset; default: beside --out; removed when the command ends)")


@contextlib.contextmanager
def rows_dir(args, nbytes: int):
    """The folder for a pass's per-image rows of ``nbytes`` in all: None (in memory) up to
    :data:`xai_jax.rowstore.SPILL_BYTES` unless ``--scratch-dir`` is given, else a temporary folder
    (:func:`xai_jax.outputs.scratch_dir`, checked for free space before any work)."""
    from xai_jax import outputs
    from xai_jax.rowstore import SPILL_BYTES
    where = getattr(args, "scratch_dir", None)
    if nbytes <= SPILL_BYTES and not where:
        yield None
        return
    with outputs.scratch_dir(args.out, where, nbytes) as directory:
        yield directory


#: flags that do not change a pass's result, left out of its checkpoint's fingerprint
_NOT_FINGERPRINTED = {"quiet", "func", "config_fields", "coordinator", "process_id", "checkpoint_every",
                      "checkpoint_dir", "resume", "scratch_dir", "decode_workers", "decode_processes"}


def _fingerprint(args, process_count: int) -> dict:
    """Every flag that shapes the result, and the size and time of each input file it names."""
    found = {"processes": process_count}
    for name, value in sorted(vars(args).items()):
        if name in _NOT_FINGERPRINTED or callable(value):
            continue
        found[name] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if isinstance(value, str) and name != "out":
            from xai_jax.data import spec_path
            path = spec_path(value) if name.endswith("data") else value
            if path and os.path.exists(path):
                stat = os.stat(path)
                found[f"{name} (file)"] = [os.path.realpath(path), stat.st_size, stat.st_mtime_ns]
    return found


def checkpoint_of(args, process_count: int = 1):
    """The :class:`xai_jax.checkpoints.Checkpoint` that a command's flags ask for, or None."""
    every, directory = getattr(args, "checkpoint_every", None), getattr(args, "checkpoint_dir", None)
    if every is None:
        if directory or getattr(args, "resume", False):
            raise XaiJaxError("--checkpoint-dir and --resume need --checkpoint-every N")
        return None
    from xai_jax.checkpoints import Checkpoint
    if not directory:
        out = getattr(args, "out", None)
        if not out:
            raise XaiJaxError("--checkpoint-every needs --checkpoint-dir DIR (this command has no --out)")
        out = os.path.abspath(out).rstrip(os.sep)
        directory = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.checkpoint")
    return Checkpoint(directory, every, _fingerprint(args, process_count), resume=args.resume)


@contextlib.contextmanager
def pass_context(args):
    """Runs a pass command on the processes its flags name and with the checkpoints they ask for.

    Joins the cluster (:func:`xai_jax.distributed.initialize`, before any JAX backend is used), checks the
    checkpoint folder before any work, and removes it when the command completes.
    """
    if getattr(args, "checkpoint_every", None) is None:  # flag errors first, before JAX starts
        checkpoint_of(args)
    from xai_jax import distributed
    from xai_jax.checkpoints import checkpointing
    _, count = distributed.initialize_from_args(args)
    with checkpointing(checkpoint_of(args, count)):
        yield


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="backbone name (see `xai-jax info`)")
    p.add_argument("--weights", required=True, metavar="PATH",
                   help="PyTorch (.pt/.pth/.th), safetensors, or xai_jax checkpoint directory")
    add_num_classes(p)
    add_bf16(p)


def add_bf16(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bf16", action="store_true",
                   help="run the backbone in bfloat16 (outputs, sums and the method's own arithmetic stay float32)")


def compute_dtype(args) -> str | None:
    """The backbone's dtype of a pass command: ``"bfloat16"`` with ``--bf16``, else None (float32)."""
    return "bfloat16" if getattr(args, "bf16", False) else None


def add_num_classes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=positive_int, help="outputs of the head if not the model's default")


def load_model_and_data(args):
    """The model spec, its weights (shapes checked against the model) and the data source of a pass command.

    The source is opened first: opening checks the files, decoding waits for the pass.
    """
    from xai_jax import data, models, weights
    spec = models.get(args.model)
    if not args.weights:
        raise XaiJaxError(f"--weights is required with --model {args.model}")
    if not args.data:
        raise XaiJaxError("--data is required with --model")
    source = data.open_source(args.data, split=args.split, limit=args.limit, resize=spec.resize,
                              crop=spec.input_shape[:2] if spec.resize else None, synsets=args.synsets,
                              sample_seed=args.sample_seed, **decoding_of(args))
    variables = weights.load(spec, args.weights, num_classes=getattr(args, "num_classes", None))
    return spec, variables, source


def inputs_of(args, *names: str) -> list[str | None]:
    """The paths a command reads, from its flags (data specs reduced to their path): ``--out`` may be none."""
    from xai_jax.data import spec_path
    found = []
    for name in names:
        value = getattr(args, name, None)
        found.append(spec_path(value) if name.endswith("data") else value)
    return found


def data_meta(args) -> dict:
    """Where a result's images came from, so that a later command can reopen the same ones."""
    return {"data": args.data, "split": args.split, "limit": args.limit, "sample_seed": args.sample_seed}


def model_and_weights(args, meta: dict, model: str | None = None, fitted_from: str = "saved arrays"):
    """The model spec and weights path of a command that reads a result: the flags, else what the result names.

    Args:
      args: the parsed flags (``--model``, ``--weights``; either may be absent from the command).
      meta: the result's provenance (``model``, ``weights``).
      model: the result's model where it keeps it outside ``meta``.
      fitted_from: what the result was fitted from when it names no model, for the message.
    """
    from xai_jax import models
    name = getattr(args, "model", None) or model or meta.get("model")
    weights_path = getattr(args, "weights", None) or meta.get("weights")
    if not name or not weights_path:
        raise XaiJaxError(f"this needs the model: --model NAME --weights PATH (the result was fitted from "
                          f"{fitted_from} and names none)")
    return models.get(name), weights_path
