"""The XNN paper's figure 8 layout: per image, the image, its 1-heatmap baseline, and one heatmap per
x-feature with its contribution ``v_i * E_i`` above it (sorted by contribution, largest first)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xai_jax.viz.figures import plt, to_png


def _show_image(ax, image: np.ndarray) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 1)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray")
    else:
        ax.imshow(image)


def explanation_figure(images: np.ndarray, explanation, class_name: str, rows: Sequence[int] | None = None,
                       titles: Sequence[str] | None = None) -> bytes:
    """Figure 8: one row per image (``rows`` selects them), columns image | 1-heatmap | x-features.

    Args:
      images: ``[N, H, W, C]`` the explained images (uint8 or [0, 1]).
      explanation: an :class:`xai_jax.methods.xnn.Explanation` of those images.
      class_name: the explained class.
      rows: which images to show (default all).
      titles: optional per-image titles (default: the logit and its approximation).

    Returns:
      PNG bytes.
    """
    rows = list(range(len(images))) if rows is None else list(rows)
    n = explanation.heatmaps.shape[1]
    fig, axes = plt.subplots(len(rows), n + 2, figsize=(1.6 * (n + 2), 1.75 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        order = np.argsort(-explanation.contributions[i])
        _show_image(axes[r, 0], images[i])
        axes[r, 0].set_title(titles[r] if titles else
                             f"{class_name}: y={explanation.logit[i]:.2f}\nybar={explanation.approximation[i]:.2f}",
                             fontsize=7)
        axes[r, 1].imshow(explanation.baseline[i], cmap="jet", vmin=0, vmax=1)
        axes[r, 1].set_title("1-heatmap", fontsize=7)
        for col, k in enumerate(order):
            ax = axes[r, col + 2]
            _show_image(ax, images[i])
            ax.imshow(explanation.heatmaps[i, k], cmap="jet", alpha=0.55, vmin=0, vmax=1,
                      extent=(-0.5, images.shape[2] - 0.5, images.shape[1] - 0.5, -0.5))
            ax.set_title(f"x{k + 1}: {explanation.contributions[i, k]:+.2f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"x-features of '{class_name}' ({explanation.method}); above each: v_i * E_i", fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def metrics_bars(rows: Sequence[dict], keys: Sequence[str] = ("f_cls_test", "o1")) -> bytes:
    """Bars of the methods' mean metrics (rows of :func:`xai_jax.methods.xnn.metrics_table`).

    Args:
      rows: one dict per method, with ``"method"`` and the metrics.
      keys: the metrics shown, one panel each.

    Returns:
      PNG bytes.
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    names = [row["method"] for row in rows]
    for ax, key in zip(axes[0], keys):
        values = [row.get(key) if row.get(key) is not None else np.nan for row in rows]
        ax.bar(names, values, color="tab:blue")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return to_png(fig)
