"""XNN on ResNet-56 / CIFAR-10: each class logit explained from the penultimate `pool` features and from an
earlier layer (`layer3`, 8x8x64 flattened), one-vs-all, SRAE vs NN, SAE, CAE and Lasso (the paper's tables
1-2: F_reg and F_cls on train and test, orthogonality O1/O2 of the x-features' heatmaps), plus a figure-8 panel.
O1/O2 are measured both ways from the same explainers: the paper's (heatmaps at the 32x32 pixels, each
normalised to sum to 1 on its image; Grad-CAM at `layer3` upsampled, since ResNet-56 has no c-MWP) and the
raw Grad-CAM maps at `layer3`'s 8x8 (`XNNConfig(orthogonality="tap")`).

    python experiments/xnn_cifar10.py --out experiments/out/xnn            # full (long on a CPU)
    python experiments/xnn_cifar10.py --quick                              # small subsets

Backbone features are computed once (one `engine.map_batches` pass with both taps) and cached in OUT;
every variant trains on the same arrays. Train and test images are random subsets (the npz files are
sorted by class). Prints Markdown tables and writes OUT/xnn_cifar10.json (with the command, commit, date, seed, epochs and
seconds) and OUT/xnn_figure8.png.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import commit  # noqa: E402

from xai_jax import data, evaluation, models, weights  # noqa: E402
from xai_jax.methods.xnn import (XNNConfig, explain, explanation_figure, fit,  # noqa: E402
                                 heatmap_orthogonality, metrics_table)
from xai_jax.methods.xnn.metrics import number  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = "cifar_resnet56"
VARIANTS = ("srae", "nn", "sae", "cae", "lasso")


def cached_features(out: pathlib.Path, split: str, count: int, variables, batch_size: int):
    path = out / f"features_{split}_{count}.npz"
    source = data.JpegNpzSource(DATA / "cifar10" / f"cifar10_{split}_jpeg.npz")
    subset = data.subset(source, count, seed=0 if split == "train" else 1)
    if not path.exists():
        arrays = evaluation.predict(MODEL, variables, subset, ("pool", "layer3"), batch_size=250)
        np.savez(path, **arrays)
    arrays = dict(np.load(path))
    return subset, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "experiments" / "out" / "xnn"))
    parser.add_argument("--train", type=int, default=10000, help="training images (random subset)")
    parser.add_argument("--test", type=int, default=2000, help="held-out test images (random subset)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--earlier-train", type=int, default=3000, help="training images for layer3 (4096 dims)")
    parser.add_argument("--earlier-epochs", type=int, default=10)
    parser.add_argument("--orthogonality-images", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--taps", default="pool,layer3")
    parser.add_argument("--quick", action="store_true", help="1,500/500 images, 8 epochs")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.epochs, args.earlier_train, args.earlier_epochs = 1500, 500, 8, 1000, 4
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = models.get(MODEL)
    variables = weights.load(spec, DATA / "cifar10_resnet" / "resnet56-4bfd9763.th")
    start = time.perf_counter()
    train_source, train = cached_features(out, "train", args.train, variables, 250)
    test_source, test = cached_features(out, "test", args.test, variables, 250)
    print(f"features: {args.train} train / {args.test} test images in {time.perf_counter() - start:.0f} s; "
          f"ResNet-56 accuracy {np.mean(train['logits'].argmax(1) == train['labels']):.3f} / "
          f"{np.mean(test['logits'].argmax(1) == test['labels']):.3f}")
    summary = {"command": " ".join(sys.argv), "commit": commit(),
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "seed": XNNConfig().seed,
               "machine": platform.platform(), "train": args.train, "test": args.test,
               "epochs": {"pool": args.epochs, "other taps": args.earlier_epochs}, "taps": {}}
    results_pool = {}
    for tap in args.taps.split(","):
        count = args.train if tap == "pool" else args.earlier_train
        epochs = args.epochs if tap == "pool" else args.earlier_epochs
        features = {"features": train[tap][:count].reshape(count, -1), "logits": train["logits"][:count],
                    "labels": train["labels"][:count]}
        test_features = {"features": test[tap].reshape(len(test[tap]), -1), "logits": test["logits"],
                         "labels": test["labels"]}
        results, seconds = {}, {}
        for variant in args.variants.split(","):
            tic = time.perf_counter()
            config = XNNConfig(tap=tap, variant=variant, epochs=epochs)
            results[variant] = fit(
                config, MODEL, variables, data.Subset(train_source, np.arange(count)), test_source=test_source,
                orthogonality_images=args.orthogonality_images, progress=False, features=features,
                test_features=test_features, batch_size=128)
            seconds[variant] = time.perf_counter() - tic
            result = results[variant]
            ortho = data.Subset(test_source, np.arange(args.orthogonality_images))
            tap_basis = heatmap_orthogonality(result, MODEL, variables, ortho, result.meta["heatmap_tap"],
                                              batch_size=128, progress=False, basis="gradcam-tap")
            for position, name in enumerate(result.metrics):
                result.metrics[name].update({f"{k}_tap": number(v[position]) for k, v in tap_basis.items()})
            print(f"  {tap} {variant}: {seconds[variant]:.0f} s", flush=True)
        table = metrics_table(results)
        summary["taps"][tap] = {"train_images": count, "epochs": epochs, "mean": table,
                                "per_class": {v: r.metrics for v, r in results.items()}, "seconds": seconds}
        print(f"\n### ResNet-56 `{tap}` ({int(np.prod(train[tap].shape[1:]))} features), {count} train / "
              f"{args.test} test images, {epochs} epochs, mean over the 10 one-vs-all explainers\n")
        print("| method | F_reg train | F_reg test | F_cls train | F_cls test | O1 | O2 | O1 at the tap | O2 at the tap |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in table:
            print(f"| {row['method'].upper()} | {row['f_reg_train']:.3f} | {row['f_reg_test']:.3f} | "
                  f"{row['f_cls_train']:.4f} | {row['f_cls_test']:.4f} | {row['o1']:.3f} | {row['o2']:.3f} | "
                  f"{row['o1_tap']:.3f} | {row['o2_tap']:.3f} |")
        if tap == "pool":
            results_pool = results
    if "srae" in results_pool:
        label = "cat"
        index = test_source.class_names.index(label)
        images, labels = test_source.read(np.arange(len(test_source)))
        shown = np.flatnonzero(labels == index)[:4]
        explanation = explain(results_pool["srae"], MODEL, variables, images[shown], label)
        (out / "xnn_figure8.png").write_bytes(explanation_figure(images[shown], explanation, label))
        print(f"\nwrote {out / 'xnn_figure8.png'}")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (out / "xnn_cifar10.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'xnn_cifar10.json'} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
