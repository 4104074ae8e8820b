"""The ``xai-jax`` command: ``info``, ``predict``, ``convert``, ``demo``, ``setup``; one per method as they land.

Bad input ends with one line, ``xai-jax: error: ...``, and exit status 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import signal
import sys
import threading

from xai_jax.cli_options import (Parser, non_negative_int, number_in, positive_int, probability)
from xai_jax.errors import Terminated, XaiJaxError

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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="backbone name (see `xai-jax info`)")
    p.add_argument("--weights", required=True, metavar="PATH",
                   help="PyTorch (.pt/.pth/.th), safetensors, or xai_jax checkpoint directory")
    add_num_classes(p)
    p.add_argument("--bf16", action="store_true", help="run the backbone in bfloat16")


def add_num_classes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=positive_int, help="outputs of the head if not the model's default")


# Method subcommands that live in their own modules. Each module has ``register(subparsers)``, which adds its
# parser(s) with ``set_defaults(func=...)``; ``func(args)`` runs the command. Imports inside ``func`` stay lazy
# so that ``xai-jax --help`` does not load JAX.
METHOD_CLIS: tuple[str, ...] = ("xai_jax.cladec_cli", "xai_jax.dec_cli", "xai_jax.www_cli", "xai_jax.xnn_cli")


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

    p = sub.add_parser("convert", help="convert a PyTorch/safetensors checkpoint to an xai_jax (orbax) directory")
    p.add_argument("--model", required=True, help="backbone name (see `xai-jax info`)")
    p.add_argument("--weights", required=True, metavar="PATH", help="PyTorch (.pt/.pth/.th) or safetensors file")
    add_num_classes(p)
    p.add_argument("--out", required=True, metavar="DIR")

    p = sub.add_parser("nma", help="near-miss analysis: the concept hierarchy of a model's confusions",
                       description="Fit: --model/--weights/--data or --from-probs, with --out. "
                                   "Explain: `xai-jax nma explain --result DIR --label NAME | --image FILE`.")
    p.add_argument("action", nargs="?", choices=["explain"], help="explain a label or an image with a result")
    p.add_argument("--model", help="backbone name (fit from images, or explain --image)")
    p.add_argument("--weights", metavar="PATH", help="checkpoint of --model")
    add_num_classes(p)
    p.add_argument("--bf16", action="store_true", help="run the backbone in bfloat16")
    p.add_argument("--data", metavar="SPEC", help=DATA_HELP)
    p.add_argument("--split")
    p.add_argument("--limit", type=positive_int, help="use only the first N images (a random N with --sample-seed)")
    add_sample_seed(p)
    p.add_argument("--synsets", metavar="FILE", help="folder data: wnid order file")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--from-probs", metavar="FILE.npz", help="precomputed `probs` (or `logits`) and `labels`")
    p.add_argument("--class-names", metavar="FILE", help="one class name a line (or a JSON list)")
    p.add_argument("--dataset", choices=["cifar10", "cifar100", "mnist", "fashion_mnist", "imagenet"],
                   help="names and WordNet synsets of a known label set")
    p.add_argument("--synset-table", metavar="FILE.json", help="class name -> WordNet synset (or wnid)")
    p.add_argument("--no-names", action="store_true", help="skip WordNet naming")
    p.add_argument("--k", type=positive_int, default=3, help="near misses among the top K (default 3)")
    p.add_argument("--t", type=number_in(0.0, 1.0, high_open=True), default=1e-6,
                   help="probability cutoff (default 1e-6)")
    p.add_argument("--min-confidence", type=probability, default=0.0)
    p.add_argument("--symmetrize", choices=["mean", "max"], default="mean")
    p.add_argument("--edge-weight", choices=["probability", "summed", "count"], default="probability")
    p.add_argument("--linkage", choices=["average", "single", "complete", "weighted", "ward"], default="average")
    p.add_argument("--linkage-input", choices=["condensed", "rows"], default="condensed")
    p.add_argument("--block-size", type=positive_int, help="Floyd-Warshall tile size (default: blocked by 32 from 256 labels on, unblocked below)")
    p.add_argument("--names", metavar="FILE.json", help="human overrides: cluster (ids or class names, "
                   "comma-separated) -> name")
    p.add_argument("--human", default="wordnet", metavar="REF",
                   help="reference of the explanatory score: wordnet, cifar100-superclasses, or a JSON file "
                        "{group name: [class names]}")
    p.add_argument("--out", metavar="DIR", help="output folder (fit)")
    p.add_argument("--result", metavar="DIR", help="a fitted result (explain)")
    p.add_argument("--label", help="explain this label")
    p.add_argument("--image", metavar="FILE", help="classify this image with the model and explain it")

    for module in METHOD_CLIS:
        importlib.import_module(module).register(sub)

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
                              sample_seed=args.sample_seed)
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


def cmd_predict(args) -> None:
    from xai_jax import evaluation, outputs
    if not args.out.endswith(".npz"):
        raise XaiJaxError(f"--out must name a .npz file, got {args.out}")
    taps = tuple(t.strip() for t in args.taps.split(",") if t.strip())
    evaluation.check_taps(args.model, taps, args.num_classes)
    outputs.check_output(args.out, "predict", file=True, inputs=inputs_of(args, "weights", "data", "synsets"))
    spec, variables, source = load_model_and_data(args)
    result = evaluation.predict(spec.name, variables, source, taps, num_classes=args.num_classes,
                                batch_size=args.batch_size, compute_dtype="bfloat16" if args.bf16 else None,
                                progress=None if not args.quiet else False)
    result["class_names"] = __import__("numpy").asarray(source.class_names)
    outputs.save_npz(args.out, result, "predict", inputs=inputs_of(args, "weights", "data", "synsets"))
    accuracy = float((result["logits"].argmax(-1) == result["labels"]).mean())
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


def cmd_nma(args) -> None:
    from xai_jax import nma_cli
    if args.action == "explain":
        nma_cli.explain(args)
    else:
        nma_cli.fit(args)


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


COMMANDS = {"info": cmd_info, "predict": cmd_predict, "convert": cmd_convert, "nma": cmd_nma, "demo": cmd_demo, "setup": cmd_setup}


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so that every `finally` and atomic writer cleans up before the exit.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # --help (0) or a bad option (2, one line already printed)
            return stop.code if isinstance(stop.code, int) else 2
        if args.quiet:
            os.environ["XAI_JAX_NO_PROGRESS"] = "1"
        (getattr(args, "func", None) or COMMANDS[args.command])(args)
    except XaiJaxError as err:
        print(f"xai-jax: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xai-jax: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("xai-jax: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
