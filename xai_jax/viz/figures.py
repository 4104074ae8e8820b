"""Figures shared by the demo and the methods (matplotlib, no screen needed)."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def to_png(fig) -> bytes:
    """Renders and closes ``fig``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves(train: Sequence[dict], evaluation: Sequence[dict] = ()) -> bytes:
    """Loss and accuracy per epoch (training means, and evaluation values where given)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    epochs = np.arange(1, len(train) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        if train and key in train[0]:
            ax.plot(epochs, [m[key] for m in train], label="train")
        if evaluation and key in evaluation[0]:
            ax.plot(epochs, [m[key] for m in evaluation], label="test")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    return to_png(fig)


def confusion_matrix(counts: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (rows: true label, columns: prediction) with counts in the cells."""
    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 20:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return to_png(fig)


def image_grid(images: np.ndarray, titles: Sequence[str], columns: int = 8, colors: Sequence[str] | None = None):
    """Images (``[n, H, W]`` or ``[n, H, W, C]``, uint8 or [0, 1]) in a grid, one title each."""
    images = np.asarray(images)
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (ax, image) in enumerate(zip(axes.ravel(), images)):
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(titles[k], fontsize=7, color=colors[k] if colors else "black")
    return to_png(fig)
