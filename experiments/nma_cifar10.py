"""Near-miss analysis of the four CIFAR-10 ResNets on the same images, side by side (the paper's comparison).

For ResNet-20/32/44/56 (../shared/data/cifar10_resnet) on the 10,000 CIFAR-10 test JPEGs: one streamed pass
each, the dendrogram with WordNet names, the explanatory score phi(M) against WordNet's tree of the 10 labels,
and which pairs merge first.

    NLTK_DATA=../shared/data/nltk_data python experiments/nma_cifar10.py --out docs/

Writes OUT/nma_cifar10.png and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import matplotlib.pyplot as plt

from xai_jax import models, weights
from xai_jax.data import JpegNpzSource
from xai_jax.methods.nma import NearMissAnalysis, draw_dendrogram

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    parser.add_argument("--depths", default="20,32,44,56")
    args = parser.parse_args()
    os.environ.setdefault("NLTK_DATA", str(DATA / "nltk_data"))
    test = JpegNpzSource(DATA / "cifar10" / "cifar10_test_jpeg.npz")
    depths = [int(d) for d in args.depths.split(",")]
    fig, axes = plt.subplots(1, len(depths), figsize=(5.2 * len(depths), 4.6), squeeze=False)
    print("| model | accuracy | images counted | phi(M) vs WordNet | first three merges (height) | top-level split |")
    print("|---|---|---|---|---|---|")
    for ax, depth in zip(axes[0], depths):
        name = f"cifar_resnet{depth}"
        variables = weights.load(models.get(name), next((DATA / "cifar10_resnet").glob(f"resnet{depth}-*.th")))
        result = NearMissAnalysis().fit(name, variables, test, dataset="cifar10", progress=False)
        _, phi_m = result.score()
        nodes = result.members()[result.num_classes:]
        draw_dendrogram(ax, result.linkage, result.class_names, [result.name_of(m) for m in nodes],
                        title=f"ResNet-{depth}: phi(M) = {phi_m:.3f}")
        merges = "; ".join(f"{a} + {b} ({h:.4f})" for a, b, h in result.merge_order(3))
        top = " / ".join("{" + ", ".join(sorted(result.class_names[i] for i in nodes[-1] if i in result.members()[int(n)]))
                         + "}" for n in result.linkage[-1, :2])
        accuracy = result.counts.sum() / len(test)
        print(f"| ResNet-{depth} | {accuracy:.4f} | {int(result.counts.sum())} | {phi_m:.3f} | {merges} | {top} |",
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "nma_cifar10.png"), dpi=90)
    print(f"\nwrote {os.path.join(args.out, 'nma_cifar10.png')}")


if __name__ == "__main__":
    main()
