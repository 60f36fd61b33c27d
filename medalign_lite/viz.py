"""Figures for the notebooks (their only callers): phantoms with mask contours, galleries,
label statistics. Every function returns its matplotlib Figure, so tests can check it and
notebooks can save it.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib
import matplotlib.lines
import matplotlib.pyplot as plt
import numpy as np

_COLORS = plt.get_cmap("tab10").colors


def overlay_masks(ax, image: np.ndarray, masks: np.ndarray | None = None,
                  names: Sequence[str] | None = None, title: str | None = None,
                  legend: bool = True) -> None:
    """Draw a radiograph with one coloured contour per finding mask (K, H, W)."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
    handles = []
    if masks is not None:
        for k, m in enumerate(np.asarray(masks, dtype=bool)):
            if not m.any():
                continue
            color = _COLORS[k % len(_COLORS)]
            ax.contour(m.astype(float), levels=[0.5], colors=[color], linewidths=1.2)
            if names is not None:
                handles.append(matplotlib.lines.Line2D([], [], color=color, label=names[k]))
    if legend and handles:
        ax.legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.6)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def finding_gallery(renders: Sequence, titles: Sequence[str], ncols: int = 6,
                    panel: float = 2.2) -> plt.Figure:
    """A grid of phantom renders (objects with ``image`` and ``masks``), contours drawn."""
    n = len(renders)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows + 0.3))
    axes = np.atleast_1d(axes).ravel()
    for ax, r, t in zip(axes, renders, titles):
        overlay_masks(ax, r.image, r.masks, title=t, legend=False)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def label_prevalence(counts: dict[str, dict[str, int]], title: str = "") -> plt.Figure:
    """Horizontal stacked bars: for each label, how many rows are 1 / 0 / -1 / blank."""
    labels = list(counts)
    states = ["1", "-1", "0", "blank"]
    colors = {"1": "#c0392b", "-1": "#f39c12", "0": "#95a5a6", "blank": "#ecf0f1"}
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(labels) + 1))
    left = np.zeros(len(labels))
    for s in states:
        vals = np.array([counts[lab].get(s, 0) for lab in labels], dtype=float)
        ax.barh(labels, vals, left=left, color=colors[s], label=s, edgecolor="white", linewidth=0.5)
        left += vals
    ax.invert_yaxis()
    ax.set_xlabel("studies")
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bar_counts(counts: dict[str, int], title: str = "", xlabel: str = "count", top: int = 25,
               color: str = "#2c7fb8") -> plt.Figure:
    """Horizontal bars of the ``top`` largest counts."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items], color=color)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig
