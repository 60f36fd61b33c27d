"""Figures for the notebooks (their only callers): phantoms with mask contours, galleries,
label statistics. Every function returns its matplotlib Figure, so tests can check it and
notebooks can save it.
"""
from __future__ import annotations

from collections.abc import Sequence

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
    per key, stage boundaries marked. Rows without the key (a step the trainer skipped for a
    non-finite loss, an evaluation row) leave a gap; the default keys are every ``loss*`` key of
    any row, in first-seen order."""
    rows = [r for r in history if x in r]
    if keys is None:
        keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("loss")))
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


# --- report generation -----------------------------------------------------------------------
def ce_bars(per_observation: dict[str, dict[str, float]], title: str = "CE F1 per observation",
            ylabel: str = "F1", support: dict[str, int] | None = None) -> plt.Figure:
    """Grouped bars: F1 per CheXpert observation (x) for each system (one colour each).

    ``per_observation`` is ``{system: {observation: F1}}`` (``score_reports(...)["per_observation"]``
    per system); observations follow the first system's order, a value a system lacks is drawn
    as 0 height with no bar. ``support`` (reference positives per observation) is appended to
    the tick labels when given.
    """
    systems = list(per_observation)
    observations = list(next(iter(per_observation.values()), {}))
    for s in systems[1:]:
        observations += [o for o in per_observation[s] if o not in observations]
    n_sys = max(1, len(systems))
    width = 0.8 / n_sys
    x = np.arange(len(observations))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(observations) * max(1.0, n_sys / 2)), 3.6))
    for k, s in enumerate(systems):
        vals = np.array([per_observation[s].get(o, np.nan) for o in observations], dtype=float)
        ax.bar(x + (k - (n_sys - 1) / 2) * width, np.nan_to_num(vals), width, label=s,
               color=_COLORS[k % len(_COLORS)])
    labels = [f"{o} ({support[o]})" if support and o in support else o for o in observations]
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if systems:
        ax.legend(fontsize=7, ncol=min(4, n_sys))
    fig.tight_layout()
    return fig


# --- AGA: gates, groups, thresholds, ablations ----------------------------------------------
def gating_panels(sim: np.ndarray, normalized: np.ndarray, gated: np.ndarray, words: Sequence[str],
                  sigma: float, grid: tuple[int, int] | None = None, title: str = "") -> plt.Figure:
    """Three (T, P) heatmaps side by side: the raw token×patch cosine S, its min-max
    normalisation over patches (each row spans [0, 1]) and the gated ŝ (entries below σ set
    to 0; a row's non-zeros are its token's text-grouped visual group)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.22 * len(words) + 2), sharey=True)
    for ax, m, t in zip(axes, (sim, normalized, gated),
                        ("S = cos(t_j, v_k)", "min-max over patches", f"gated: ŝ = s if s ≥ σ_tg = {sigma:.2f}")):
        similarity_heatmap(np.asarray(m)[: len(words)], words, grid=grid, title=t, ax=ax)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def group_sizes(normalized: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Mean group size (elements kept per row, at least the row's best) of a (…, P)
    normalised similarity array at each threshold in ``sigmas``; NaN rows (padding) ignored."""
    a = np.asarray(normalized, dtype=float).reshape(-1, np.shape(normalized)[-1])
    a = a[np.isfinite(a).all(1)]
    return np.array([np.maximum((a >= s).sum(1), 1).mean() for s in sigmas])


def group_size_curve(normalized: dict[str, np.ndarray], marks: dict[str, float] | None = None,
                     title: str = "group size against the threshold") -> plt.Figure:
    """Mean group size against σ ∈ [0, 1] for each named normalised similarity array
    (e.g. TGV rows over patches, PGL columns over tokens), with trained thresholds marked."""
    sigmas = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for k, (name, arr) in enumerate(normalized.items()):
        c = _COLORS[k % len(_COLORS)]
        ax.plot(sigmas, group_sizes(arr, sigmas), color=c, label=name)
        if marks and name in marks:
            ax.axvline(marks[name], color=c, ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("threshold σ")
    ax.set_ylabel("mean group size")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def threshold_curves(histories: dict[str, Sequence[dict]], keys: Sequence[str] = ("sigma_tg", "sigma_vg"),
                     x: str = "global_step", title: str = "momentum thresholds") -> plt.Figure:
    """σ over training, one panel per threshold, one line per run (the trainer's logged
    rows; rows without the key are skipped)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for k, (name, hist) in enumerate(histories.items()):
            rows = [r for r in hist if key in r and x in r]
            ax.plot([r[x] for r in rows], [r[key] for r in rows], color=_COLORS[k % len(_COLORS)], label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def learning_curves(curves: dict[str, Sequence[tuple[Sequence[int], Sequence[float]]]], ylabel: str = "validation P@5",
                    stop: int | None = None, references: dict[str, float] | None = None,
                    title: str = "learning curves") -> plt.Figure:
    """Validation score against optimizer steps: for each system, one thin line per seed and
    their mean in bold (seeds evaluated at the same steps). ``stop``: where the default run
    stops (a dashed vertical line; a longer run shows what lies beyond it); ``references``:
    horizontal lines, e.g. ``{"supervised ceiling": 0.8, "untrained": 0.2}``."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for k, (name, runs) in enumerate(curves.items()):
        color = _COLORS[k % len(_COLORS)]
        runs = [(np.asarray(x), np.asarray(y, dtype=float)) for x, y in runs if len(x)]
        for x, y in runs:
            ax.plot(x, y, color=color, lw=0.6, alpha=0.45)
        if runs:
            n = min(len(x) for x, _ in runs)
            mean = np.mean([y[:n] for _, y in runs], axis=0)
            label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            ax.plot(runs[0][0][:n], mean, color=color, lw=1.8, marker="o", ms=3, label=label)
    for k, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color=("black", "grey", "darkgrey")[k % 3], ls=(":", "--", "-.")[k % 3], lw=0.9, label=name)
    if stop is not None:
        ax.axvline(stop, color="red", ls="--", lw=0.8, label=f"default run stops ({stop} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def normalized_similarity_histograms(values: dict[str, dict[str, np.ndarray]],
                                     sigmas: dict[str, dict[str, float]] | None = None, bins: int = 40,
                                     title: str = "min-max normalised similarities") -> plt.Figure:
    """One panel per gate (``"tg"``: each token's similarities normalised over patches; ``"vg"``:
    each patch's over tokens): for every report style, the histogram (a density) of the
    normalised values, their mean S̄ (dashed: what σ follows) and the trained σ (solid).
    ``values``: style → {"tg": array, "vg": array}; ``sigmas``: style → {"tg": σ, "vg": σ}."""
    gates = ("tg", "vg")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
    for ax, gate in zip(axes[0], gates):
        for k, (style, v) in enumerate(values.items()):
            color = _COLORS[k % len(_COLORS)]
            x = np.asarray(v[gate], dtype=float)
            ax.hist(x, bins=bins, range=(0, 1), density=True, histtype="step", color=color, lw=1.4, label=style)
            ax.axvline(x.mean(), color=color, ls="--", lw=1, label=f"{style}: S̄ {x.mean():.2f}")
            if sigmas and style in sigmas:
                ax.axvline(sigmas[style][gate], color=color, ls="-", lw=1.8, alpha=0.6,
                           label=f"{style}: σ {sigmas[style][gate]:.2f}")
        ax.set_title({"tg": "TGV gate: each token over the patches", "vg": "PGL gate: each patch over the tokens"}[gate],
                     fontsize=9)
        ax.set_xlabel("normalised similarity")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def ablation_bars(table, keys: Sequence[str] = ("i2t_P@1", "i2t_P@5", "i2t_P@10"), chance: float | None = None,
                  title: str = "ablations") -> plt.Figure:
    """Grouped bars of ``<key> mean`` with ``<key> std`` error bars, one group per variant
    (a :func:`~medalign_lite.experiments.variants.summary_table` table)."""
    variants = list(table.index)
    x = np.arange(len(variants))
    width = 0.8 / max(1, len(keys))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants)), 3.4))
    for k, key in enumerate(keys):
        std = np.nan_to_num(table[f"{key} std"].to_numpy(dtype=float)) if f"{key} std" in table else None
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, table[f"{key} mean"].to_numpy(dtype=float), width,
               yerr=std, capsize=2, label=key, color=_COLORS[k % len(_COLORS)])
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=0.8, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(variants, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def threshold_explorer(normalized: np.ndarray, words: Sequence[str], sigma: float = 0.5):
    """An ipywidgets slider over σ that redraws the gated matrix and the group sizes of one
    pair's normalised (T, P) similarities. Returns the widget (None without ipywidgets); it
    does nothing headless, so notebooks draw a static figure first.

    The picture is a PNG in an ``Image`` widget that the slider replaces, not an ``Output``
    widget around ``plt.show()`` (``ipywidgets.interactive``): headless executors capture an
    Output widget's messages specially, and nbclient can wait for ever on such a cell
    (jupyter/nbclient#312, nteract/papermill#723 — it hung notebook 02 here)."""
    try:
        import ipywidgets as widgets
    except ImportError:  # pragma: no cover - the notebooks extra installs it
        return None
    import io

    a = np.asarray(normalized, dtype=float)[: len(words)]

    def render(s: float) -> bytes:
        gated = np.where(a >= s, a, 0.0)
        sizes = np.maximum((a >= s).sum(1), 1)
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 0.22 * len(words) + 1.5),
                                       gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
        similarity_heatmap(gated, words, title=f"gated at σ = {s:.2f}", ax=ax0)
        ax1.barh(range(len(words)), sizes, color=_COLORS[0])
        ax1.set_xlabel("patches kept")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return buf.getvalue()

    slider = widgets.FloatSlider(value=float(sigma), min=0.0, max=1.0, step=0.01, description="σ_tg",
                                 continuous_update=False)
    image = widgets.Image(value=render(float(sigma)), format="png")
    slider.observe(lambda change: setattr(image, "value", render(float(change["new"]))), names="value")
    return widgets.VBox([slider, image])


# --- S2D-ALIGN: where the memory queries look -----------------------------------------------
def memory_attention_grid(image: np.ndarray, attention: np.ndarray, grid: tuple[int, int],
                          queries: Sequence[int] | None = None, ncols: int = 4, panel: float = 2.4,
                          title: str = "", mask: np.ndarray | None = None) -> plt.Figure:
    """The radiograph, then one panel per memory query of S2D's SMA_v: the query's attention
    over the patch grid (a row of ``S2D.memory_attention``, (M, P), rows summing to 1) upsampled
    bilinearly over the image (:func:`similarity_overlay`; the cross marks its maximum).

    ``queries``: which rows to draw (default: all). Each panel's title gives the query index
    and its attention entropy relative to uniform, H / log P (1: looks everywhere alike).
    ``mask``: an optional (H, W) contour drawn on every panel (e.g. the study's findings).
    """
    att = np.asarray(attention, dtype=float)
    if att.ndim != 2 or att.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"attention must be (M, {grid[0] * grid[1]}) for grid {tuple(grid)}, got {att.shape}")
    qs = list(range(att.shape[0])) if queries is None else [int(q) for q in queries]
    n = len(qs) + 1
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows + 0.4), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(image, cmap="gray")
    if mask is not None and np.asarray(mask).any():
        axes[0].contour(np.asarray(mask, dtype=float), levels=[0.5], colors=["white"], linewidths=1.0)
    axes[0].set_title("radiograph", fontsize=8)
    axes[0].set_axis_off()
    log_p = np.log(att.shape[1]) if att.shape[1] > 1 else 1.0
    for ax, q in zip(axes[1:], qs):
        row = att[q]
        p = row / max(row.sum(), 1e-12)
        h = max(0.0, float(-(p * np.log(np.clip(p, 1e-12, None))).sum() / log_p))
        similarity_overlay(ax, image, row, grid, mask, title=f"query {q} (H/log P {h:.2f})")
    for ax in axes[n:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- ExGra-Med: graphs, matchings, gradients, data efficiency ---------------------------------
def graph_panels(nodes: np.ndarray, adjacency: Sequence[np.ndarray], names: Sequence[str],
                 title: str = "") -> plt.Figure:
    """One panel per graph: its N nodes in a common 2-D projection (PCA of all graphs' nodes
    together, each graph's features L2-normalised first), its directed kNN edges as lines, node
    i coloured and numbered by sample i, so that a sample's nodes can be followed across panels.
    ``nodes`` (G, N, D), ``adjacency`` G (N, N) 0/1 arrays, ``names`` G titles."""
    x = np.asarray(nodes, dtype=float)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    flat = x.reshape(-1, x.shape[-1])
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = (centred @ vt[:2].T).reshape(x.shape[0], x.shape[1], 2)
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(names), figsize=(3.1 * len(names), 3.1), squeeze=False)
    lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
    pad = 0.08 * np.maximum(hi - lo, 1e-6)
    for g, (ax, name) in enumerate(zip(axes[0], names)):
        a = np.asarray(adjacency[g])
        for i, j in zip(*np.nonzero(a)):
            ax.plot(xy[g, [i, j], 0], xy[g, [i, j], 1], color="grey", lw=0.6, alpha=0.6, zorder=1)
        ax.scatter(xy[g, :, 0], xy[g, :, 1], c=[cmap(i % 20) for i in range(x.shape[1])], s=36, zorder=2,
                   edgecolors="black", linewidths=0.4)
        for i in range(x.shape[1]):
            ax.annotate(str(i), xy[g, i], fontsize=6, ha="center", va="center", zorder=3)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(f"{name} ({int(a.sum())} edges)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def matching_matrices(matrices: dict[str, np.ndarray], title: str = "", ncols: int = 6) -> plt.Figure:
    """Heatmaps of (N, N) matchings (rows: the first graph's nodes, columns: the second's), one
    panel per entry, with the fraction of the diagonal matched (the matching accuracy)."""
    n = len(matrices)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    for ax, (name, m) in zip(axes.flat, matrices.items()):
        m = np.asarray(m, dtype=float)
        ax.imshow(m, cmap="Greys", vmin=0, vmax=1)
        ax.set_title(f"{name}\ndiagonal {np.trace(m) / m.shape[0]:.2f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def gradient_scatter(reference: np.ndarray, estimates: dict[str, np.ndarray], cosines: dict[str, float] | None = None,
                     title: str = "", xlabel: str = "finite differences", ylabel: str = "estimate") -> plt.Figure:
    """One panel per estimate: its entries against the reference gradient's (a scale-free
    comparison: each vector divided by its norm), the diagonal, and the cosine in the title."""
    ref = np.asarray(reference, dtype=float).ravel()
    ref = ref / max(np.linalg.norm(ref), 1e-12)
    fig, axes = plt.subplots(1, len(estimates), figsize=(3.0 * len(estimates), 3.0), squeeze=False)
    for ax, (name, est) in zip(axes[0], estimates.items()):
        e = np.asarray(est, dtype=float).ravel()
        e = e / max(np.linalg.norm(e), 1e-12)
        lim = 1.05 * max(np.abs(ref).max(), np.abs(e).max(), 1e-6)
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
        ax.scatter(ref, e, s=14)
        cos = cosines.get(name) if cosines else float(ref @ e)
        ax.set_title(f"{name}: cosine {cos:.3f}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def score_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
                 title: str = "", hlines: dict[str, float] | None = None, ylim: tuple[float, float] | None = None,
                 xscale: str = "linear") -> plt.Figure:
    """Lines of y against x, one per entry ``name: (xs, ys)`` (markers at the points), with
    dashed horizontal reference lines ``hlines`` (a floor, a ceiling)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for k, (name, (xs, ys)) in enumerate(curves.items()):
        ax.plot(list(xs), list(ys), marker="o", lw=1.4, label=name, color=_COLORS[k % len(_COLORS)])
    for k, (name, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, ls="--", lw=0.9, color=_COLORS[(len(curves) + k) % len(_COLORS)], label=name)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
# --------------------------------------------------------------------------- ALTA (notebook 04)


def adapter_block_diagram(title: str = "one transformer block with ALTA's adapters") -> plt.Figure:
    """A schematic of a pre-LN ViT block with AIM's two adapters: the serial adapter on the
    attention output, h ← h + A(h), and the parallel one beside the MLP, + s·A(LN x). Frozen
    boxes grey, trained boxes orange."""
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    frozen, trained = "#d9d9d9", "#f4a259"
    boxes = {  # name: (x, y, w, h, colour, label)
        "ln1": (0.4, 0.1, 1.3, 0.55, trained, "LayerNorm"),
        "attn": (2.1, 0.1, 1.6, 0.55, frozen, "multi-head\nattention"),
        "sa": (4.1, 0.1, 1.6, 0.55, trained, "adapter\nd→d/4→d"),
        "ln2": (0.4, 1.6, 1.3, 0.55, trained, "LayerNorm"),
        "mlp": (2.1, 1.6, 1.6, 0.55, frozen, "MLP\nd→4d→d"),
        "pa": (2.1, 2.55, 1.6, 0.55, trained, "adapter × s\n(s = 0.5)"),
    }
    for x, y, w, h, colour, label in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=colour, ec="black", lw=0.8))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=8)

    def arrow(x0, y0, x1, y1, **kw):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=0.9, **kw))

    arrow(-0.4, 0.375, 0.4, 0.375)
    arrow(1.7, 0.375, 2.1, 0.375)
    arrow(3.7, 0.375, 4.1, 0.375)
    arrow(5.7, 0.375, 6.3, 0.375)
    ax.text(6.45, 0.375, "⊕", fontsize=14, ha="center", va="center")
    arrow(-0.2, 0.375, -0.2, -0.25)
    ax.plot([-0.2, 6.45], [-0.25, -0.25], color="black", lw=0.9)
    arrow(6.45, -0.25, 6.45, 0.25)
    ax.text(3.0, -0.45, "residual: x + A(Attn(LN x)), A(h) = h + W_up GELU(W_down h), W_up = 0 at start",
            ha="center", fontsize=7.5)
    arrow(6.45, 0.5, 6.45, 1.1)
    ax.plot([6.45, -0.2], [1.1, 1.1], color="black", lw=0.9)
    arrow(-0.2, 1.1, -0.2, 1.875)
    arrow(-0.2, 1.875, 0.4, 1.875)
    arrow(1.7, 1.875, 2.1, 1.875)
    arrow(1.85, 1.875, 1.85, 2.825)
    arrow(1.85, 2.825, 2.1, 2.825)
    arrow(3.7, 1.875, 6.3, 1.875)
    arrow(3.7, 2.825, 6.45, 2.0)
    ax.text(6.45, 1.875, "⊕", fontsize=14, ha="center", va="center")
    arrow(6.6, 1.875, 7.3, 1.875)
    ax.text(3.0, 3.35, "x + MLP(LN x) + s·A(LN x)", ha="center", fontsize=8)
    ax.add_patch(FancyBboxPatch((4.3, 2.6), 0.3, 0.2, boxstyle="round,pad=0.02", fc=frozen, ec="black", lw=0.6))
    ax.text(4.7, 2.7, "frozen", fontsize=7, va="center")
    ax.add_patch(FancyBboxPatch((4.3, 2.95), 0.3, 0.2, boxstyle="round,pad=0.02", fc=trained, ec="black", lw=0.6))
    ax.text(4.7, 3.05, "trained", fontsize=7, va="center")
    ax.set_xlim(-0.6, 7.5)
    ax.set_ylim(-0.7, 3.6)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def study_views(images: Sequence[np.ndarray], titles: Sequence[str], present: Sequence[bool],
                masks: Sequence[np.ndarray] | None = None, grid: tuple[int, int] | None = None,
                title: str = "") -> plt.Figure:
    """The views of a study side by side; a missing view is drawn as the hatched slot the
    missing-view map fills; ``masks`` (one (P,) 0/1 vector per view, 1 = masked): the patches
    the encoder does not see are greyed out on a second row."""
    n = len(images)
    rows = 2 if masks is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(2.3 * n, 2.4 * rows), squeeze=False)
    for j, (img, name, ok) in enumerate(zip(images, titles, present)):
        for r in range(rows):
            ax = axes[r, j]
            if not ok:
                ax.imshow(np.zeros_like(img), cmap="gray", vmin=0, vmax=1)
                ax.text(0.5, 0.5, "missing:\nlearned map\nm ∈ R^{L×D}", ha="center", va="center", fontsize=8,
                        color="white", transform=ax.transAxes)
            else:
                ax.imshow(img, cmap="gray")
                if r == 1 and masks is not None and grid is not None:
                    up = upsample_map(np.asarray(masks[j], dtype=np.float32), grid, img.shape[:2])
                    shade = np.zeros((*img.shape[:2], 4))
                    shade[..., 3] = 0.85 * (np.kron(np.asarray(masks[j]).reshape(grid),
                                                    np.ones((img.shape[0] // grid[0], img.shape[1] // grid[1])))
                                            if img.shape[0] % grid[0] == 0 else up > 0.5)
                    ax.imshow(shade)
            ax.set_title(name if r == 0 else f"{name}: 25 % visible", fontsize=8)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstruction_panels(rows: dict[str, dict], title: str = "masked image modelling") -> plt.Figure:
    """One row per model: the current frontal, what the encoder sees (masked patches black),
    the decoder's reconstruction (visible patches pasted back). ``rows`` maps a label to
    ``{"target", "masked", "reconstruction"}`` (H, W) arrays."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.3 * len(rows)), squeeze=False)
    for r, (label, d) in enumerate(rows.items()):
        vmin, vmax = float(np.min(d["target"])), float(np.max(d["target"]))
        for c, key in enumerate(("target", "masked", "reconstruction")):
            axes[r, c].imshow(d[key], cmap="gray", vmin=vmin, vmax=vmax)
            axes[r, c].set_title(f"{label}: {key}" if c else key, fontsize=8)
            axes[r, c].set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig




def seed_points(frame, metrics: Sequence[str], intervals: dict | None = None, refs: dict | None = None,
                title: str = "", ylabel: str = "score", log: bool = False) -> plt.Figure:
    """One panel per metric: every seed of every system as a point (seaborn ``stripplot``), the
    seed mean as a bar outline, and, where given, an interval as a black error bar
    (``intervals[(system, metric)] = (low, high)``: a bootstrap interval over test items) and
    reference lines (``refs[metric] = {label: value}``: floors and ceilings).

    ``frame``: a long DataFrame with columns ``system``, ``metric``, ``seed``, ``value``
    (:meth:`~medalign_lite.experiments.benchmark.BenchmarkResults.long_frame`)."""
    import seaborn as sns

    metrics = [m for m in metrics if (frame["metric"] == m).any()]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(max(4.0, 3.6 * len(metrics)), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = frame[frame["metric"] == metric]
        order = list(dict.fromkeys(sub["system"]))
        means = sub.groupby("system", sort=False)["value"].mean().reindex(order)
        ax.bar(range(len(order)), means.to_numpy(), color="none", edgecolor="0.4", lw=1)
        sns.stripplot(data=sub, x="system", y="value", order=order, hue="system", hue_order=order, ax=ax,
                      size=5, jitter=0.15, legend=False, palette="tab10")
        for i, system in enumerate(order):
            iv = (intervals or {}).get((system, metric))
            if iv is not None and np.all(np.isfinite(iv)):
                m = float(means[system])
                ax.errorbar(i, m, yerr=[[max(0.0, m - iv[0])], [max(0.0, iv[1] - m)]], color="k", capsize=3, lw=1)
        for k, (label, value) in enumerate(((refs or {}).get(metric) or {}).items()):
            if value is not None and np.isfinite(value):
                ax.axhline(value, color=_COLORS[(k + 3) % len(_COLORS)], ls="--", lw=0.9, label=label)
        if (refs or {}).get(metric):
            ax.legend(fontsize=6, loc="best")
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("")
        ax.set_ylabel(ylabel if ax is axes[0][0] else "")
        ax.set_title(metric, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_panels(panels: dict[str, tuple[Sequence[str], np.ndarray]], title: str = "") -> plt.Figure:
    """Row-normalised class confusions side by side, each ``(classes, C)`` (rows: the true class,
    e.g. :func:`~medalign_lite.eval.retrieval.class_confusion_at_k`), annotated, with the mean
    of the diagonal in the panel's title."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels) + 0.6, 3.2), squeeze=False)
    for ax, (name, (classes, m)) in zip(axes[0], panels.items()):
        m = np.asarray(m, dtype=float)
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        for (a, b), v in np.ndenumerate(m):
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.6 else "black")
        short = [c.replace("Pleural ", "Pl. ")[:13] for c in classes]
        ax.set_xticks(range(len(classes)), short, rotation=45, ha="right", fontsize=6)
        ax.set_yticks(range(len(classes)), short if ax is axes[0, 0] else [], fontsize=6)
        ax.set_title(f"{name}\ndiagonal {np.nanmean(np.diag(m)):.2f}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def task_heatmap(table, title: str = "", center: float = 1.0) -> plt.Figure:
    """A systems × tasks heatmap of a DataFrame of numbers (e.g. each score over its task's
    reference), annotated with the values; NaN cells stay blank (seaborn ``heatmap``)."""
    import seaborn as sns

    data = table.astype(float)
    fig, ax = plt.subplots(figsize=(1.2 * data.shape[1] + 3, 0.42 * data.shape[0] + 1.6))
    sns.heatmap(data, annot=True, fmt=".2f", cmap="vlag", center=center, ax=ax, cbar_kws={"shrink": 0.7},
                annot_kws={"fontsize": 7})
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
