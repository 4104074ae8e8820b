"""Figures of the activation clustering surrogate (paper figures 3, 4 and 5): PNG bytes, matplotlib, no screen."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xai_jax.viz.figures import plt, to_png


def _show(ax, image, title: str = "", color: str = "black", border: str | None = None) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_color(border)
            spine.set_linewidth(3)
    if title:
        ax.set_title(title, fontsize=7, color=color)


def similar_samples(query: np.ndarray, query_title: str, rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
                    title: str = "") -> bytes:
    """Figures 2 and 3: a query (red border) and its most similar training images, one row per weighting of the
    surrogate's layers and one for the baseline (Euclidean distance of the penultimate features).

    Args:
      query: the query image ``[H, W(, C)]``.
      query_title: its caption (e.g. label and prediction).
      rows: ``(row name, images [m, H, W(, C)], captions [m])`` per row, e.g. equal / low / high layers and
        ``pool features``.
      title: figure title.
    """
    m = max(len(images) for _, images, _ in rows)
    fig, axes = plt.subplots(len(rows), m + 1, figsize=(1.1 * (m + 1), 1.35 * len(rows)), squeeze=False)
    for r, (name, images, captions) in enumerate(rows):
        for ax in axes[r]:
            ax.axis("off")
        axes[r, 0].axis("on")
        _show(axes[r, 0], query, query_title if r == 0 else "", border="red")
        axes[r, 0].set_ylabel(name, fontsize=8)
        for i, (image, caption) in enumerate(zip(images, captions)):
            _show(axes[r, i + 1], image, caption)
    if title:
        fig.suptitle(title, fontsize=9)
    return to_png(fig)


def concept_grid(images: np.ndarray, cluster_titles: Sequence[str], title: str = "") -> bytes:
    """Figures 4 and 5: one row per cluster of a layer, its training images nearest the centroid.

    Args:
      images: ``[k, m, H, W(, C)]``.
      cluster_titles: one caption per cluster (e.g. ``"cluster 3 (412): 80% cat"``).
      title: figure title.
    """
    images = np.asarray(images)
    k, m = images.shape[:2]
    height = 0.95 * k + 0.4
    fig, axes = plt.subplots(k, m, figsize=(0.9 * m + 1.8, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.4 / height, bottom=0.02, wspace=0.05, hspace=0.1)
    for c in range(k):
        for i in range(m):
            _show(axes[c, i], images[c, i])
        axes[c, 0].set_ylabel(cluster_titles[c], fontsize=6, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return to_png(fig)


def convergence(history: dict[str, dict], update_interval: int, tolerance: float) -> bytes:
    """DEC's stopping criterion per layer: the fraction of hard assignments that changed at each refresh of the
    target ``P`` (every ``update_interval`` steps), on a log scale, with the ``tolerance`` it stops below.

    Args:
      history: ``result.history``: per tap, ``changed`` (one fraction per refresh after the first).
      update_interval: ``T``, the DEC steps between refreshes.
      tolerance: the stop, drawn as a dashed line.
    """
    fig, ax = plt.subplots(figsize=(5, 3))
    for tap, h in history.items():
        changed = np.asarray(h.get("changed", ()), float)
        if changed.size:
            ax.plot(update_interval * np.arange(1, changed.size + 1), np.maximum(changed, 1e-6), marker=".",
                    label=tap)
    ax.axhline(tolerance, color="gray", linestyle="--", linewidth=1, label=f"tolerance {tolerance:g}")
    ax.set_yscale("log")
    ax.set_xlabel("DEC steps")
    ax.set_ylabel("assignments changed at refresh")
    ax.legend(fontsize=7)
    return to_png(fig)
