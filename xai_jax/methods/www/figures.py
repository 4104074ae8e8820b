"""WWW figures: the explanation panel of the paper's figure 5, and the rejection curves of figure 4 (right)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from xai_jax.viz.figures import plt, to_png


def _show(ax, image):
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.axis("off")


def _overlay(ax, image, heat, alpha=0.55, cmap="jet"):
    _show(ax, image)
    ax.imshow(heat, cmap=cmap, alpha=alpha, interpolation="bilinear")


def explanation_panel(explanation, index: int, class_names: Sequence[str] | None = None,
                      examples: Mapping[int, np.ndarray] | None = None, true_label: int | None = None,
                      max_examples: int = 3) -> bytes:
    """Figure 5 for one image: class explanation (left) and sample explanation (right).

    Each row is one of the top-k neurons in order of importance: its index, contribution and concepts, up to
    ``max_examples`` of its most activating probe images (``examples[neuron]``, when given), and its concept
    region on the image. The bottom row shows both overall heatmaps with their cosine similarity (the trust score).

    Args:
      explanation: a :class:`xai_jax.methods.www.WWWExplanation`.
      index: which image of it.
      class_names: names of the outputs.
      examples: neuron -> ``[n, H, W, C]`` probe images (its top-n), optional.
      true_label: adds the ground truth to the title when known.
    """
    e, i = explanation, index
    k = e.sample_neurons.shape[1]
    shown = max_examples if examples else 0
    cols = 2 * (shown + 1)
    fig, axes = plt.subplots(k + 1, cols, figsize=(1.7 * cols + 0.6, 1.75 * (k + 1) + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    image = e.images[i]
    name = (lambda c: class_names[int(c)] if class_names else str(int(c)))
    for side, (neurons, weights, concepts, regions, maps) in enumerate((
            (e.class_neurons, e.class_contributions, e.class_concepts, e.class_regions, e.class_maps),
            (e.sample_neurons, e.sample_contributions, e.sample_concepts, e.sample_regions, e.sample_maps))):
        offset = side * (shown + 1)
        for r in range(k):
            u = int(neurons[i, r])
            for j in range(shown):
                pool = examples.get(u) if examples else None
                if pool is not None and j < len(pool):
                    _show(axes[r, offset + j], pool[j])
            ax = axes[r, offset + shown]
            _overlay(ax, image, np.where(regions[i, r], maps[i, r], np.nan), alpha=0.6)
            ax.set_title(f"neuron {u} (w={weights[i, r]:.3g})\n{concepts[i][r]}", fontsize=7)
        heat = e.class_heatmap[i] if side == 0 else e.sample_heatmap[i]
        ax = axes[k, offset + shown]
        _overlay(ax, image, heat)
        ax.set_title(("class" if side == 0 else "sample") + " heatmap", fontsize=8)
        fig.text(0.27 + 0.5 * side, 0.995, ("Class explanation (predicted: " + name(e.predicted[i]) + ")") if side == 0
                 else "Sample explanation", ha="center", va="top", fontsize=9, weight="bold")
    truth = "" if true_label is None else f", true: {name(true_label)}"
    fig.suptitle(f"prediction {name(e.predicted[i])} (p = {e.probabilities[i, e.predicted[i]]:.2f}{truth}); "
                 f"heatmap similarity {e.trust[i]:.2f}", y=0.02, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return to_png(fig)


def rejection_curves(analysis: Mapping[str, np.ndarray], title: str = "") -> bytes:
    """Mispredictions caught against the share of images rejected, by heatmap similarity and by MSP.

    ``analysis`` is :func:`xai_jax.methods.www.rejection_analysis`'s output.
    """
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    rejected = np.asarray(analysis["rejected"])
    total = max(int(analysis["mispredictions"]), 1)
    ax.plot(rejected, analysis["caught_similarity"],
            label=f"heatmap similarity (AUROC {analysis['auroc_similarity']:.3f})")
    ax.plot(rejected, analysis["caught_msp"], label=f"max softmax prob. (AUROC {analysis['auroc_msp']:.3f})")
    n = len(rejected) - 1
    ax.plot(rejected, np.minimum(np.arange(n + 1), total), "k:", lw=1, label="oracle")
    ax.plot(rejected, rejected * total, color="grey", lw=1, ls="--", label="random")
    ax.set_xlabel("share of test images rejected (least confident first)")
    ax.set_ylabel("# of hit (mispredictions caught)")
    ax.set_title(title or "rejection test", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return to_png(fig)
