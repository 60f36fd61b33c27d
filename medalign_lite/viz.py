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


# --- similarity matrices and maps ----------------------------------------------------------
def similarity_heatmap(sim: np.ndarray, tokens: Sequence[str], grid: tuple[int, int] | None = None,
                       title: str = "token × patch similarity", ax=None, cmap: str = "magma") -> plt.Figure:
    """A (T, P) token×patch similarity matrix with one labelled row per token.

    With ``grid`` (h, w) the patch axis is annotated with the grid rows, so a row of the matrix
    can be read as the map :func:`similarity_overlay` draws.
    """
    sim = np.asarray(sim, dtype=float)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(12, 2 + sim.shape[1] * 0.03), 0.25 * len(tokens) + 1.5))
    else:
        fig = ax.figure
    im = ax.imshow(sim, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(len(tokens)))
    ax.set_yticklabels(tokens, fontsize=7)
    if grid is not None:
        h, w = grid
        ax.set_xticks(np.arange(0, h * w, w))
        ax.set_xticklabels([f"row {r}" for r in range(h)], fontsize=6, rotation=90)
    ax.set_xlabel("patch (row-major)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    return fig


def upsample_map(values: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A patch vector (P,) or map (h, w) bilinearly resized to the image ``size`` (H, W)."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(1, 1, *grid)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def similarity_overlay(ax, image: np.ndarray, values: np.ndarray, grid: tuple[int, int],
                       mask: np.ndarray | None = None, title: str | None = None, alpha: float = 0.45,
                       cmap: str = "jet") -> None:
    """A patch-similarity map upsampled over the radiograph, with the ground-truth mask's
    contour (white) and the map's argmax (the pointing game's guess, a cross)."""
    up = upsample_map(values, grid, image.shape[:2])
    ax.imshow(image, cmap="gray")
    ax.imshow(up, cmap=cmap, alpha=alpha)
    if mask is not None and np.asarray(mask).any():
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=["white"], linewidths=1.2)
    y, x = np.unravel_index(np.argmax(up), up.shape)
    ax.plot([x], [y], marker="x", color="white", markersize=8, mew=2)
    if title:
        ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def training_curves(history: Sequence[dict], keys: Sequence[str] | None = None, x: str = "global_step",
                    title: str = "training") -> plt.Figure:
    """Loss curves from the trainer's metrics history (rows of ``metrics.jsonl``), one panel
    per key, stage boundaries marked."""
    rows = [r for r in history if x in r]
    if keys is None:
        keys = [k for k in rows[0] if k.startswith("loss")] if rows else []
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3), squeeze=False)
    xs = [r[x] for r in rows]
    stages = [r.get("stage") for r in rows]
    bounds = [xs[i] for i in range(1, len(rows)) if stages[i] != stages[i - 1]]
    for ax, k in zip(axes[0], keys):
        ax.plot(xs, [r.get(k, np.nan) for r in rows], lw=1)
        for b in bounds:
            ax.axvline(b, color="grey", ls="--", lw=0.8)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(x)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
