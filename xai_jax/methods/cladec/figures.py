"""ClaDec figures: reconstructions across layers (paper figs. 6-9), the alpha sweep (fig. 11), occlusions (fig. 16).

Every function takes images in [0, 1] (``[n, H, W]`` or ``[n, H, W, C]``) and returns PNG bytes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from xai_jax.viz.figures import plt, to_png


def _show(ax, image: np.ndarray, title: str = "") -> None:
    image = np.asarray(image, np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    ax.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def difference_image(refae: np.ndarray, cladec: np.ndarray) -> np.ndarray:
    """``[H, W, 3]``: red where RefAE's reconstruction is brighter than ClaDec's, green where darker (fig. 7),
    scaled by the largest absolute difference of the image."""
    diff = np.asarray(refae, np.float32) - np.asarray(cladec, np.float32)
    if diff.ndim == 3:
        diff = diff.mean(-1)
    scale = max(float(np.abs(diff).max()), 1e-6)
    rgb = np.zeros((*diff.shape, 3), np.float32)
    rgb[..., 0] = np.clip(diff, 0, None) / scale
    rgb[..., 1] = np.clip(-diff, 0, None) / scale
    return rgb


def layer_rows(originals: np.ndarray, refae: Sequence[np.ndarray], cladec: Sequence[np.ndarray],
               layers: Sequence[str], titles: Sequence[str] | None = None,
               gradcam: Sequence[np.ndarray] | None = None) -> bytes:
    """Figs. 6-9: one row per image: the original, then per layer RefAE, ClaDec and their difference
    (and Grad-CAM at that layer when given).

    Args:
      originals: ``[n, H, W(, C)]``.
      refae, cladec: one ``[n, H, W(, C)]`` array per layer (``refae`` entries may be ``None``).
      layers: the layers' names, e.g. ``["-1", "-2"]``.
      titles: one label per image (e.g. "Bag -> Bag").
      gradcam: optional ``[n, H, W]`` maps in [0, 1] per layer.
    """
    n = len(originals)
    per_layer = 3 + (gradcam is not None)
    cols = 1 + per_layer * len(layers)
    fig, axes = plt.subplots(n, cols, figsize=(0.9 * cols, 0.95 * n + 0.3), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], originals[i], "original" if i == 0 else "")
        if titles:  # beside the row: a title above it would sit under the images of the row before
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
        for j, name in enumerate(layers):
            c = 1 + per_layer * j
            head = i == 0
            if refae[j] is not None:
                _show(axes[i, c], refae[j][i], f"RefAE {name}" if head else "")
                axes[i, c + 2].imshow(difference_image(refae[j][i], cladec[j][i]))
            axes[i, c + 2].set_xticks([])
            axes[i, c + 2].set_yticks([])
            if head:
                axes[i, c + 2].set_title(f"diff {name}", fontsize=7)
            _show(axes[i, c + 1], cladec[j][i], f"ClaDec {name}" if head else "")
            if gradcam is not None:
                ax = axes[i, c + 3]
                _show(ax, originals[i])
                ax.imshow(gradcam[j][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
                if head:
                    ax.set_title(f"Grad-CAM {name}", fontsize=7)
    fig.tight_layout(pad=0.2)
    return to_png(fig)


def alpha_sweep(originals: np.ndarray, reconstructions: Sequence[np.ndarray], alphas: Sequence[float]) -> bytes:
    """Fig. 11: the originals in the first row, then ClaDec's reconstructions for each alpha, one row each."""
    n = len(originals)
    rows = 1 + len(alphas)
    fig, axes = plt.subplots(rows, n, figsize=(0.9 * n + 0.8, 0.95 * rows), squeeze=False)
    for j in range(n):
        _show(axes[0, j], originals[j])
        for r, (alpha, rec) in enumerate(zip(alphas, reconstructions), start=1):
            _show(axes[r, j], rec[j])
    axes[0, 0].set_ylabel("original", fontsize=7)
    for r, alpha in enumerate(alphas, start=1):
        axes[r, 0].set_ylabel(f"alpha={alpha:g}", fontsize=7)
    fig.tight_layout(pad=0.2)
    return to_png(fig)


def occlusion_rows(original: np.ndarray, reconstruction: np.ndarray, occluded_min: np.ndarray,
                   reconstruction_min: np.ndarray, occluded_max: np.ndarray, reconstruction_max: np.ndarray,
                   titles: Sequence[str] | None = None) -> bytes:
    """Fig. 16: per image, X, its ClaDec reconstruction, X with the least relevant square occluded and its
    reconstruction, X with the most relevant square occluded and its reconstruction."""
    columns = (("X", original), ("ClaDec(X)", reconstruction), ("X_O,min", occluded_min),
               ("ClaDec(X_O,min)", reconstruction_min), ("X_O,max", occluded_max),
               ("ClaDec(X_O,max)", reconstruction_max))
    n = len(original)
    fig, axes = plt.subplots(n, 6, figsize=(6 * 0.95, 0.95 * n + 0.3), squeeze=False)
    for i in range(n):
        for j, (name, images) in enumerate(columns):
            _show(axes[i, j], images[i], name if i == 0 else "")
        if titles:
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
    fig.tight_layout(pad=0.2)
    return to_png(fig)
