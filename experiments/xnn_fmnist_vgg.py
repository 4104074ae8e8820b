"""XNN on a sequential backbone with the paper's own heatmaps: the VGG-style classifier (`cladec_vgg`) trained on
Fashion-MNIST, each class logit explained one-vs-all from `block8` (1x1x512) and `block6` (2x2x256), SRAE vs NN,
SAE, CAE and Lasso (the paper's tables 1-2). O1/O2 correlate c-MWP heatmaps at the 32x32 pixels, normalised to
sum to 1 on each image, for every method (Lasso's x-features are units of the tap: their c-MWP is the unit's
MWP), and, from the same explainers, Grad-CAM at `block5` (4x4) upsampled and normalised the same way.

    python experiments/xnn_fmnist_vgg.py --out experiments/out/xnn_fmnist_vgg
    python experiments/xnn_fmnist_vgg.py --quick

The classifier (seeded random training subset, SGD as in ClaDec's paper) is trained once and kept in OUT;
features come from one backbone pass per split. Prints Markdown tables; writes OUT/xnn_fmnist_vgg.json and
OUT/xnn_fmnist_cmwp_{srae,lasso}.png (figure 8 with c-MWP heatmaps).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from benchutil import commit  # noqa: E402
from cladec_tables import load_dataset  # noqa: E402

from xai_jax import data, evaluation  # noqa: E402
from xai_jax.errors import XaiJaxError  # noqa: E402
from xai_jax.methods.cladec import train_classifier  # noqa: E402
from xai_jax.methods.xnn import XNNConfig, explain, explanation_figure, fit, heatmap_orthogonality  # noqa: E402
from xai_jax.methods.xnn import metrics_table  # noqa: E402
from xai_jax.methods.xnn.metrics import number  # noqa: E402
from xai_jax.weights import load_variables, save_variables  # noqa: E402

MODEL = "cladec_vgg"
VARIANTS = ("srae", "nn", "sae", "cae", "lasso")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def classifier(out: pathlib.Path, train_set, test_set, epochs: int):
    """The explained classifier, trained once (seed 0) and restored from OUT afterwards."""
    path = out / f"classifier_{len(train_set)}_{epochs}"
    try:
        variables, meta = load_variables(path)
        return variables, meta["test_accuracy"]
    except XaiJaxError:
        pass
    variables, info = train_classifier(MODEL, *train_set.all(), epochs=epochs, key=jax.random.key(0),
                                       test=test_set.all(), progress=False)
    save_variables(path, variables, {"model": MODEL, "test_accuracy": info["test_accuracy"]})
    return variables, info["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/xnn_fmnist_vgg")
    parser.add_argument("--train", type=int, default=10000, help="training images (random subset)")
    parser.add_argument("--test", type=int, default=2000, help="held-out test images (random subset)")
    parser.add_argument("--classifier-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=30, help="explainer epochs")
    parser.add_argument("--orthogonality-images", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--taps", default="block8,block6")
    parser.add_argument("--quick", action="store_true", help="2,000/500 images, classifier 3 epochs, explainers 8")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.classifier_epochs, args.epochs = 2000, 500, 3, 8
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_set, test_set = load_dataset("fashion_mnist", args.train, args.test)
    variables, accuracy = classifier(out, train_set, test_set, args.classifier_epochs)
    print(f"# XNN on {MODEL} / Fashion-MNIST (commit {commit()}): classifier test accuracy {accuracy:.4f}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    taps = args.taps.split(",")
    arrays = {split: evaluation.predict(MODEL, variables, source, tuple(taps), batch_size=256, progress=False)
              for split, source in (("train", train_set), ("test", test_set))}
    ortho = data.Subset(test_set, np.arange(min(args.orthogonality_images, len(test_set))))
    summary = {"commit": commit(), "train": len(train_set), "test": len(test_set), "classifier_accuracy": accuracy,
               "classifier_epochs": args.classifier_epochs, "epochs": args.epochs, "taps": {}}
    for tap in taps:
        features = {split: {"features": a[tap].reshape(len(a[tap]), -1), "logits": a["logits"],
                            "labels": a["labels"]} for split, a in arrays.items()}
        results, seconds = {}, {}
        for variant in args.variants.split(","):
            tic = time.perf_counter()
            config = XNNConfig(tap=tap, variant=variant, epochs=args.epochs, heatmap_tap="block5")
            result = fit(config, MODEL, variables, train_set, test_source=test_set, orthogonality_images=len(ortho),
                         progress=False, features=features["train"], test_features=features["test"], batch_size=128)
            gradcam = heatmap_orthogonality(result, MODEL, variables, ortho, "block5", batch_size=128,
                                            progress=False, basis="gradcam-pixels")
            for position, name in enumerate(result.metrics):
                result.metrics[name].update({f"{k}_gradcam": number(v[position]) for k, v in gradcam.items()})
            results[variant], seconds[variant] = result, time.perf_counter() - tic
            print(f"  {tap} {variant}: {seconds[variant]:.0f} s ({result.orthogonality_basis})", flush=True)
        table = metrics_table(results)
        summary["taps"][tap] = {"mean": table, "per_class": {v: r.metrics for v, r in results.items()},
                                "seconds": seconds}
        print(f"\n### `{MODEL}` `{tap}` ({features['train']['features'].shape[1]} features), {len(train_set)} "
              f"train / {len(test_set)} test images, {args.epochs} epochs, mean over the 10 one-vs-all explainers\n")
        print("| method | F_reg train | F_reg test | F_cls train | F_cls test | O1 (c-MWP) | O2 (c-MWP) | "
              "O1 (Grad-CAM) | O2 (Grad-CAM) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in table:
            print(f"| {row['method'].upper()} | {row['f_reg_train']:.3f} | {row['f_reg_test']:.3f} | "
                  f"{row['f_cls_train']:.4f} | {row['f_cls_test']:.4f} | {row['o1']:.3f} | {row['o2']:.3f} | "
                  f"{row['o1_gradcam']:.3f} | {row['o2_gradcam']:.3f} |", flush=True)
        if tap == taps[0] and {"srae", "lasso"} <= set(results):
            images, labels = test_set.all()
            label = 7  # sneaker: the parts (sole, toe, heel) are apart
            shown = np.flatnonzero(labels == label)[:3]
            panels = [explanation_figure(images[shown], explain(results[v], MODEL, variables, images[shown], label,
                                                                method="cmwp"), f"{CLASSES[label]} ({v})")
                      for v in ("srae", "lasso")]
            for v, png in zip(("srae", "lasso"), panels):
                (out / f"xnn_fmnist_cmwp_{v}.png").write_bytes(png)
    summary["seconds"] = time.perf_counter() - start
    (out / "xnn_fmnist_vgg.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {out / 'xnn_fmnist_vgg.json'} ({summary['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
