"""The xai-jax command: explain image classifiers with the concept-based methods of xai_jax.

``info``, ``predict``, ``convert``, ``demo``, ``setup``, and one subcommand per method of
:data:`xai_jax.methods.METHODS`.

Bad input ends with one line, ``xai-jax: error: ...``, and exit status 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import traceback

from xai_jax.cli.common import (add_scratch_arg, rows_dir, add_data_args, add_model_args, add_num_classes, compute_dtype, inputs_of,
                               load_model_and_data, pass_context)
from xai_jax.cli.options import Parser, non_negative_int, positive_int
from xai_jax import interrupts
from xai_jax.errors import Terminated, XaiJaxError
from xai_jax.methods import METHODS

def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="xai-jax", description=__doc__.splitlines()[0],
                    epilog="Outputs: --out is written only if it is new or holds an earlier xai-jax output of the "
                           "same kind; nothing else is ever replaced or deleted (see the README).")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, devices and models; with --model, its taps and their shapes")
    p.add_argument("--model", help="list this model's taps")

    p = sub.add_parser("predict", help="logits, labels and chosen taps for every image, in dataset order")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--taps", default="", help="comma-separated tap names to save next to the logits")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    add_scratch_arg(p)

    p = sub.add_parser("convert", help="convert a PyTorch/safetensors checkpoint to an xai_jax (orbax) directory")
    p.add_argument("--model", required=True, help="backbone name (see `xai-jax info`)")
    p.add_argument("--weights", required=True, metavar="PATH", help="PyTorch (.pt/.pth/.th) or safetensors file")
    add_num_classes(p)
    p.add_argument("--out", required=True, metavar="DIR")

    # Each method's module `xai_jax.cli.<name>` adds its subcommand with `register(subparsers)`; its commands
    # import the method inside `func`, so that `xai-jax --help` does not load JAX.
    for method in METHODS.values():
        method.cli.register(sub)

    p = sub.add_parser("demo", help="train a small CNN on scikit-learn's digits and explain it")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--seed", type=non_negative_int, default=0)

    p = sub.add_parser("setup", help="install resources the methods need")
    p.add_argument("resource", choices=["wordnet"])
    p.add_argument("--target", help="nltk_data folder to install into (default: the first private, writable one nltk searches)")
    return parser


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("xai-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "nltk",
                 "torch", "tensorflow-datasets"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cmd_info(args) -> None:
    import jax

    from xai_jax import models
    if args.model:
        spec = models.get(args.model)
        print(f"{spec.name}: {spec.description}")
        print(f"input {' x '.join(map(str, spec.input_shape))}, {spec.num_classes} classes, "
              f"mean {spec.mean}, std {spec.std}" + (f", resize {spec.resize}" if spec.resize else ""))
        print("taps:")
        shapes = models.tap_shapes(spec.name)
        width = max(map(len, shapes))
        for name, shape in shapes.items():
            print(f"  {name:<{width}}  {' x '.join(map(str, shape))}")
        return
    for name, version in _versions().items():
        print(f"{name:<20} {version}")
    print(f"{'devices':<20} {', '.join(str(d) for d in jax.devices())}")
    print(f"{'models':<20} {', '.join(models.names())}")


def cmd_predict(args) -> None:
    import numpy as np
    from xai_jax import evaluation, models, outputs
    if not args.out.endswith(".npz"):
        raise XaiJaxError(f"--out must name a .npz file, got {args.out}")
    taps = tuple(t.strip() for t in args.taps.split(",") if t.strip())
    evaluation.check_taps(args.model, taps, args.num_classes)
    outputs.check_output(args.out, "predict", file=True, inputs=inputs_of(args, "weights", "data", "synsets"))
    spec, variables, source = load_model_and_data(args)
    shapes = models.tap_shapes(spec.name, args.num_classes)
    with rows_dir(args, len(source) * sum(math.prod(shapes[t]) for t in taps) * 4) as directory:  # float32
        result = evaluation.predict(spec.name, variables, source, taps, num_classes=args.num_classes,
                                    batch_size=args.batch_size, compute_dtype=compute_dtype(args),
                                    progress=None if not args.quiet else False, directory=directory)
        result["class_names"] = np.asarray(source.class_names)
        outputs.save_npz(args.out, result, "predict", inputs=inputs_of(args, "weights", "data", "synsets"))
        accuracy = float((np.asarray(result["logits"]).argmax(-1) == np.asarray(result["labels"])).mean())
    print(f"wrote {args.out}: {len(result['labels'])} images, accuracy {accuracy:.4f}"
          + (f", taps {', '.join(taps)}" if taps else ""))


def cmd_convert(args) -> None:
    from xai_jax import models, outputs, weights
    from xai_jax.weights.store import KIND
    spec = models.get(args.model)
    outputs.check_output(args.out, KIND, inputs=[args.weights])
    variables = weights.load(spec, args.weights, num_classes=args.num_classes)
    meta = {"model": spec.name, "source": os.path.abspath(args.weights)}
    if args.num_classes:
        meta["num_classes"] = args.num_classes
    weights.save_variables(args.out, variables, meta)
    count = sum(v.size for v in __import__("jax").tree.leaves(variables))
    print(f"wrote {args.out}: {spec.name}, {count:,} values")


def cmd_demo(args) -> None:
    from xai_jax import outputs
    from xai_jax.demo import run_demo
    outputs.check_output(args.out, "demo")
    summary = run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=None if not args.quiet else False)
    print(json.dumps({k: summary[k] for k in ("test_accuracy", "seconds")}))
    print(f"wrote {os.path.join(args.out, 'report.html')} and {os.path.join(args.out, 'summary.json')}")


def cmd_setup(args) -> None:
    from xai_jax.naming.wordnet import setup_wordnet
    path = setup_wordnet(args.target, quiet=args.quiet)
    print(f"WordNet 3.0 is ready under {path}; nltk finds it there (or set NLTK_DATA={path})")


COMMANDS = {"info": cmd_info, "predict": cmd_predict, "convert": cmd_convert, "demo": cmd_demo, "setup": cmd_setup}


def _in_cluster() -> bool:
    from xai_jax import distributed
    return distributed.process_count() > 1


def _failed(message: str, code: int, report) -> int:
    """Reports a failure (``report()`` prints it) and returns ``code``. In a cluster, a failure another process
    reported first is the cause (its exit breaks this process's collectives) and is printed instead, with
    code 2; otherwise the others are told of this one and this process exits now
    (:func:`xai_jax.distributed.abandon`), since they would wait for it in their next collective."""
    from xai_jax import distributed
    elsewhere = distributed.failure_elsewhere()
    if elsewhere is not None:
        print(f"xai-jax: error: {elsewhere}", file=sys.stderr)
        distributed.abandon(elsewhere, 2)
        return 2
    report()
    distributed.abandon(message, code)
    return code


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so that every `finally` and atomic writer cleans up before the exit, and
    # either is raised again between batches if a finalizer swallowed it (xai_jax.interrupts).
    with interrupts.handled():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # --help (0) or a bad option (2, one line already printed)
            return stop.code if isinstance(stop.code, int) else 2
        if args.quiet:
            os.environ["XAI_JAX_NO_PROGRESS"] = "1"
        command = getattr(args, "func", None) or COMMANDS[args.command]
        if hasattr(args, "checkpoint_every"):  # a dataset pass: its processes and checkpoints
            with pass_context(args):
                command(args)
        else:
            command(args)
    except XaiJaxError as err:
        message = ' '.join(str(err).split())
        return _failed(message, 2, lambda: print(f"xai-jax: error: {message}", file=sys.stderr))
    except KeyboardInterrupt:
        return _failed("interrupted", 130, lambda: print("xai-jax: interrupted", file=sys.stderr))
    except Terminated:
        return _failed("terminated", 143, lambda: print("xai-jax: terminated", file=sys.stderr))
    except Exception as err:
        if _in_cluster():
            _failed(f"{type(err).__name__}: {' '.join(str(err).split())[:500]}", 1, traceback.print_exc)
        raise
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
