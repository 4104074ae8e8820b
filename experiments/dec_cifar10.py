"""The activation clustering surrogate in the paper's CIFAR-10 setting (section 5.1, Tables 1 and 2, figures 3-5).

ResNet-56 (../shared/data/cifar10_resnet/resnet56-4bfd9763.th) with the four activations of Table 1: stem,
layer1, layer2, layer3 (32x32x16, 32x32x16, 16x16x32, 8x8x64, the paper's activation, activation_18, _36, _54),
embedding 20, 15 clusters each, alpha 100, radius 8. Fit on (a random subset of) the training JPEGs, evaluate on
the test JPEGs: baseline accuracy, surrogate accuracy and fidelity, next to the paper's 0.869 / 0.8448 / 0.923.

    python experiments/dec_cifar10.py                                  # the full setting (50,000 train)
    python experiments/dec_cifar10.py --train-limit 8000 --pretrain-epochs 8   # what fits a shared 2-core CPU

The training activations are kept on the host as float16 (stem and layer1: 32 KiB per image each). Writes
OUT/summary.json, OUT/surrogate/ (the fitted result with its encoders), OUT/similar_*.png (figures 2 and 3),
OUT/concepts_*.png (figures 4 and 5) and OUT/convergence.png (the assignments changed at each refresh of the
target), and prints a Markdown table and every phase's time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

from xai_jax import models, weights
from xai_jax.data import JpegNpzSource, subset
from xai_jax.methods.dec import ActivationClusteringSurrogate, DECConfig, layer_emphasis
from xai_jax.methods.dec.figures import concept_grid, convergence, similar_samples

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
PAPER = {"baseline_accuracy": 0.8690, "surrogate_accuracy": 0.8448, "fidelity": 0.923}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "experiments" / "out" / "dec_cifar10"))
    parser.add_argument("--taps", default="stem,layer1,layer2,layer3")
    parser.add_argument("--train-limit", type=int, help="random training subset (default: all 50,000)")
    parser.add_argument("--test-limit", type=int, help="random test subset (default: all 10,000)")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--max-dec-steps", type=int, default=2800)
    parser.add_argument("--posterior", default="labels", choices=("labels", "predictions"))
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    timings = {}
    spec = models.get("cifar_resnet56")
    variables = weights.load(spec, DATA / "cifar10_resnet" / "resnet56-4bfd9763.th")
    train_all = JpegNpzSource(DATA / "cifar10" / "cifar10_train_jpeg.npz")
    test_all = JpegNpzSource(DATA / "cifar10" / "cifar10_test_jpeg.npz")
    # The archives are sorted by class: random subsets.
    train = subset(train_all, args.train_limit, args.seed) if args.train_limit else train_all
    test = subset(test_all, args.test_limit, args.seed + 1) if args.test_limit else test_all
    taps = tuple(args.taps.split(","))
    config = DECConfig(taps=taps, embedding_size=20, clusters=15, alpha=100.0, radius=8.0,
                       pretrain_epochs=args.pretrain_epochs, max_dec_steps=args.max_dec_steps,
                       posterior=args.posterior, seed=args.seed)
    method = ActivationClusteringSurrogate(spec.name, variables, config, batch_size=args.batch_size, progress=False)

    start = time.perf_counter()
    activations = method.activations(train)
    timings["training activations (one pass)"] = time.perf_counter() - start
    stored = sum(a.nbytes for a in activations.taps.values())
    print(f"{len(train)} training images, taps stored as float16: {stored / 2**30:.2f} GiB "
          f"({timings['training activations (one pass)']:.1f} s)", flush=True)
    start = time.perf_counter()
    result = method.fit(activations=activations, class_names=train_all.class_names,
                        meta={"train_images": len(train), "weights": "resnet56-4bfd9763.th"})
    timings["fit (all layers)"] = time.perf_counter() - start
    for tap, h in result.history.items():
        timings[f"  {tap}: autoencoder + k-means + DEC ({h['dec_steps']} steps)"] = h["seconds"]
    del activations
    start = time.perf_counter()
    embedded = method.embed(result, test)
    scores = result.scores(embedded["embeddings"], embedded["labels"], embedded["predictions"])
    timings["test evaluation (one pass)"] = time.perf_counter() - start

    os.makedirs(args.out, exist_ok=True)
    result.save(os.path.join(args.out, "surrogate"))
    start = time.perf_counter()
    queries = np.random.default_rng(args.seed + 2).choice(len(test), 3, replace=False)
    for q in queries:
        image, label = test.read(np.array([q]))
        rows = []
        for name, w in (("equal", None), ("low layers", layer_emphasis(len(taps), "low")),
                        ("high layers", layer_emphasis(len(taps), "high"))):
            bank, _ = result.similar(embedded["embeddings"][:, q:q + 1], 10, w)
            images, labels = train.read(result.train_indices[bank[0]])
            rows.append((f"{name}\n{w or 'equal'}", images, [result.class_names[int(y)] for y in labels]))
        # Figure 2's baseline: Euclidean distance of the penultimate features
        bank, _ = result.similar_by_features(embedded["features"][q:q + 1], 10)
        images, labels = train.read(result.train_indices[bank[0]])
        rows.append((f"{result.feature_tap}\nfeatures", images, [result.class_names[int(y)] for y in labels]))
        png = similar_samples(image[0], f"{result.class_names[int(label[0])]} -> "
                              f"{result.class_names[int(embedded['predictions'][q])]}", rows)
        pathlib.Path(args.out, f"similar_{q}.png").write_bytes(png)
    sizes = result.cluster_sizes()
    for tap in (taps[0], taps[-1]):
        j = result.layer_index(tap)
        bank, _ = result.concepts(tap, 10)
        images, _ = train.read(result.train_indices[bank.ravel()])
        top = result.posteriors[j].argmax(-1)
        titles = [f"{k}: n={sizes[j][k]}\n{result.posteriors[j][k, top[k]]:.0%} {result.class_names[top[k]]}"
                  for k in range(config.clusters)]
        pathlib.Path(args.out, f"concepts_{tap}.png").write_bytes(
            concept_grid(images.reshape(bank.shape + images.shape[1:]), titles, title=f"concepts of {tap}"))
    pathlib.Path(args.out, "convergence.png").write_bytes(
        convergence(result.history, config.update_interval, config.tolerance))
    timings["figures"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - started

    summary = {"scores_test": scores, "scores_train": result.metrics["train"], "paper": PAPER,
               "setting": {"taps": list(taps), "train_images": len(train), "test_images": len(test),
                           "pretrain_epochs": args.pretrain_epochs, "max_dec_steps": args.max_dec_steps,
                           "posterior": args.posterior, "activations_dtype": "float16"},
               "history": result.history, "seconds": {k.strip(): round(v, 1) for k, v in timings.items()},
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}"}
    pathlib.Path(args.out, "summary.json").write_text(json.dumps(summary, indent=2))

    print(f"\nResNet-56 on CIFAR-10 (JPEG re-encodings), taps {', '.join(taps)}, e = 20, k = 15; fit on {len(train)} "
          f"training images ({args.pretrain_epochs} autoencoder epochs), evaluated on {len(test)} test images\n")
    print("| | baseline accuracy | surrogate accuracy | fidelity |")
    print("|---|---|---|---|")
    print(f"| paper (original CIFAR-10 pixels) | {PAPER['baseline_accuracy']:.4f} | {PAPER['surrogate_accuracy']:.4f} "
          f"| {PAPER['fidelity']:.3f} |")
    print(f"| xai_jax, all layers (equal weights) | {scores['baseline_accuracy']:.4f} | "
          f"{scores['surrogate_accuracy']:.4f} | {scores['fidelity']:.4f} |")
    for tap, s in scores["layers"].items():
        print(f"| xai_jax, {tap} alone | | {s['surrogate_accuracy']:.4f} | {s['fidelity']:.4f} |")
    train_scores = result.metrics["train"]
    print(f"| xai_jax on its training images | {train_scores['baseline_accuracy']:.4f} | "
          f"{train_scores['surrogate_accuracy']:.4f} | {train_scores['fidelity']:.4f} |")
    print("\n| phase | seconds |\n|---|---|")
    for k, v in timings.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\nmachine: {summary['machine']}; wrote {args.out}")


if __name__ == "__main__":
    main()
