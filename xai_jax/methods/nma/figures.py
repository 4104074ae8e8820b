"""The near-miss dendrogram: concept names on internal nodes, leaves coloured by a human grouping."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.cluster.hierarchy as sch  # noqa: E402

from xai_jax.viz.figures import to_png  # noqa: E402


def node_positions(linkage: np.ndarray, leaves_order: Sequence[int]) -> np.ndarray:
    """Coordinate along the leaf axis of every node, as scipy draws it: leaves at 5 + 10 * position, an internal
    node at the midpoint of its children."""
    num_leaves = len(leaves_order)
    pos = np.zeros(2 * num_leaves - 1)
    pos[np.asarray(leaves_order)] = 5 + 10 * np.arange(num_leaves)
    for i, (a, b) in enumerate(linkage[:, :2].astype(int)):
        pos[num_leaves + i] = (pos[a] + pos[b]) / 2
    return pos


def dendrogram(linkage: np.ndarray, labels: Sequence[str], node_names: Sequence[str | None] = (),
               leaf_groups: Mapping[int, str] | None = None, title: str = "") -> bytes:
    """Renders :func:`draw_dendrogram` alone in a figure sized for the number of labels, as PNG bytes."""
    num_leaves = len(labels)
    horizontal = num_leaves > 24
    size = (10, max(4, 0.22 * num_leaves)) if horizontal else (max(6, 0.6 * num_leaves), 5)
    fig, ax = plt.subplots(figsize=size)
    draw_dendrogram(ax, linkage, labels, node_names, leaf_groups, title)
    return to_png(fig)


def draw_dendrogram(ax, linkage: np.ndarray, labels: Sequence[str], node_names: Sequence[str | None] = (),
                    leaf_groups: Mapping[int, str] | None = None, title: str = "") -> None:
    """Draws the dendrogram on ``ax`` (more than 24 labels: sideways, labels down the side).

    Args:
      linkage: SciPy linkage matrix of C labels.
      labels: leaf names.
      node_names: name of internal node ``C + i`` at index ``i`` (``None`` or "" to leave it unnamed); a name is
        drawn only where it first appears on the way up, so a concept is written once.
      leaf_groups: label index -> human group, to colour the leaf labels (legend by group).
      title: figure title.
    """
    num_leaves = len(labels)
    horizontal = num_leaves > 24  # many labels read better down the side
    tree = sch.dendrogram(linkage, labels=list(labels), ax=ax, orientation="right" if horizontal else "top",
                          color_threshold=0, above_threshold_color="#555555",
                          leaf_font_size=8 if horizontal else 9)
    positions = node_positions(linkage, tree["leaves"])
    children_names: dict[int, set] = {}
    for i, (a, b) in enumerate(linkage[:, :2].astype(int)):
        name = node_names[i] if i < len(node_names) else None
        below = children_names.get(a, set()) | children_names.get(b, set())
        children_names[num_leaves + i] = below | ({name} if name else set())
        if not name or name in below:
            continue
        height, along = linkage[i, 2], positions[num_leaves + i]
        xy = (height, along) if horizontal else (along, height)
        ax.annotate(name, xy, xytext=(3, 3), textcoords="offset points", fontsize=7, color="#1f4e9c",
                    rotation=0 if horizontal else 30)
        ax.plot(*xy, "o", ms=3, color="#1f4e9c")
    if leaf_groups:
        groups = sorted(set(leaf_groups.values()))
        colours = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
        colour_of = {g: colours(k % colours.N) for k, g in enumerate(groups)}
        ticks = ax.get_yticklabels() if horizontal else ax.get_xticklabels()
        for tick, leaf in zip(ticks, tree["leaves"]):
            if leaf in leaf_groups:
                tick.set_color(colour_of[leaf_groups[leaf]])
        handles = [plt.Line2D([], [], ls="", marker="s", color=colour_of[g], label=g) for g in groups]
        ax.legend(handles=handles, fontsize=7, loc="best", title="human group", title_fontsize=7)
    # Near-miss distances crowd just below 1: show the range the merges span, not [0, max].
    low, high = float(linkage[:, 2].min()), float(linkage[:, 2].max())
    margin = 0.08 * (high - low) if high > low else 0.05 * max(high, 1e-6)
    (ax.set_xlim if horizontal else ax.set_ylim)(low - margin, high + 2 * margin)
    if horizontal:
        ax.set_xlabel("merge height")
    else:
        ax.set_ylabel("merge height")
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(title)
