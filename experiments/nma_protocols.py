"""Near-miss analysis of the four CIFAR-10 ResNets under both readings of the paper's graph and both roots of its
human hierarchy, side by side (issue 18).

For ResNet-20/32/44/56 (../shared/data/cifar10_resnet) on the 10,000 CIFAR-10 test JPEGs, one pass each (its state
holds the statistics of both graphs), then the hierarchy of each configuration:

- ``near_misses`` (the library's default): p[i, j] over the correctly classified images of i whose top 3 hold j,
  divided by their number; edges where (p + p.T) / 2 >= t, weight 1 - (p + p.T) / 2;
- ``paper, max`` (section 3.1 literally): p[i, j] = mean P(j | x) over all images of i; an undirected edge for each
  ordered pair with p[i, j] >= t (parallel edges: the shortest path keeps the lighter, 1 - max(p[i, j], p[j, i]));
- ``paper, mean``: the paper's p with the default's symmetric mean, to separate the two changes.

Each is scored against WordNet's tree of the ten labels (phi, eq. 1-2) rooted at the label set's common hypernym
("whole", the default) and at "entity" (the paper's paths), in total and per group (animals, vehicles: Table 2's
columns).

    NLTK_DATA=../shared/data/nltk_data python experiments/nma_protocols.py [--logits DIR]

``--logits DIR`` reads ``DIR/r{20,32,44,56}.npz`` written by ``xai-jax predict`` (``logits``, ``labels``) instead
of running the models. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np

from xai_jax.kernels.near_miss import connection_weights
from xai_jax.methods.nma import NearMissAnalysis, NMAConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
GROUPS = {"animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
          "vehicles": ["airplane", "automobile", "ship", "truck"]}
READINGS = {"near_misses": NMAConfig(), "paper, max": NMAConfig(graph="paper", symmetrize="max"),
            "paper, mean": NMAConfig(graph="paper")}


def statistics(depth: int, logits_dir: str | None):
    from xai_jax.naming.hierarchy import packaged_table
    names = list(packaged_table("cifar10"))
    if logits_dir:
        saved = np.load(os.path.join(logits_dir, f"r{depth}.npz"))
        return NearMissAnalysis().accumulate_scores(saved["logits"], saved["labels"], from_logits=True,
                                                    progress=False), names
    from xai_jax import models, weights
    from xai_jax.data import JpegNpzSource
    name = f"cifar_resnet{depth}"
    variables = weights.load(models.get(name), next((DATA / "cifar10_resnet").glob(f"resnet{depth}-*.th")))
    test = JpegNpzSource(DATA / "cifar10" / "cifar10_test_jpeg.npz")
    return NearMissAnalysis().accumulate(name, variables, test, progress=False), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logits", metavar="DIR", help="saved logits r{depth}.npz of `xai-jax predict`")
    parser.add_argument("--depths", default="20,32,44,56")
    args = parser.parse_args()
    os.environ.setdefault("NLTK_DATA", str(DATA / "nltk_data"))
    print("| model | graph | edges of 45 | phi(M), root: labels | animals | vehicles | phi(M), root: entity | "
          "animals | vehicles | top-level split | first three merges (height) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for depth in (int(d) for d in args.depths.split(",")):
        state, names = statistics(depth, args.logits)
        for reading, config in READINGS.items():
            result = NearMissAnalysis(config).from_state(state, names, dataset="cifar10")
            weights = np.asarray(connection_weights(result.p, result.events, t=config.t,
                                                    symmetrize=config.symmetrize))
            edges = int(np.isfinite(weights[np.triu_indices(10, 1)]).sum())
            scores = {root: result.group_scores(GROUPS, root=root) for root in ("labels", "entity")}
            nodes = result.members()
            top = " / ".join("{" + ", ".join(sorted(names[i] for i in nodes[int(n)])) + "}"
                             for n in result.linkage[-1, :2])
            merges = "; ".join(f"{a} + {b} ({h:.3f})" for a, b, h in result.merge_order(3))
            cells = " | ".join(f"{scores[root]['total']:.3f} | {scores[root]['animals']:.3f} | "
                               f"{scores[root]['vehicles']:.3f}" for root in ("labels", "entity"))
            print(f"| ResNet-{depth} | {reading} | {edges} | {cells} | {top} | {merges} |", flush=True)


if __name__ == "__main__":
    main()
