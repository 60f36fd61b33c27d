"""Plotting helpers are tested like code: they return figures with the expected content."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medalign_lite import viz  # noqa: E402


def test_heatmap_labels_every_token():
    fig = viz.similarity_heatmap(np.random.rand(4, 12), ["no", "pleural", "effusion", "."], grid=(3, 4))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["no", "pleural", "effusion", "."]
    assert len(ax.get_xticks()) == 3
    plt.close(fig)


def test_overlay_marks_the_argmax_patch():
    values = np.zeros(16)
    values[4 * 1 + 3] = 1.0  # row 1, column 3 of a 4x4 grid
    fig, ax = plt.subplots()
    viz.similarity_overlay(ax, np.zeros((64, 64)), values, (4, 4), mask=np.ones((64, 64), bool))
    (line,) = ax.lines
    x, y = line.get_xdata()[0], line.get_ydata()[0]
    assert 48 <= x < 64 and 16 <= y < 32  # inside the cell of patch (1, 3)
    plt.close(fig)


def test_upsample_keeps_values_and_shape():
    up = viz.upsample_map(np.arange(4.0), (2, 2), (8, 8))
    assert up.shape == (8, 8) and up[0, 0] == 0 and up[-1, -1] == 3


def test_training_curves_one_panel_per_loss_and_stage_marks():
    hist = [{"global_step": i, "stage": "s1" if i < 5 else "s2", "loss": 1 / (i + 1), "loss_local": 0.5}
            for i in range(10)]
    fig = viz.training_curves(hist)
    assert len(fig.axes) == 2
    assert any(len(line.get_xdata()) == 2 and line.get_xdata()[0] == 5 for line in fig.axes[0].lines)
    plt.close(fig)


def test_training_curves_find_the_losses_when_the_first_row_is_a_skipped_step():
    hist = [{"global_step": 1, "stage": "s1", "skipped": "non-finite loss", "study_ids": ["a"]}] + [
        {"global_step": i, "stage": "s1", "loss": 1 / i} for i in range(2, 6)]
    fig = viz.training_curves(hist)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "loss"
    ys = fig.axes[0].lines[0].get_ydata()
    assert np.isnan(ys[0]) and np.allclose(ys[1:], [1 / i for i in range(2, 6)])  # a gap where it skipped
    plt.close(fig)


def test_group_sizes_count_kept_elements_with_a_floor_of_one():
    a = np.array([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0], [np.nan, np.nan, np.nan]])
    sizes = viz.group_sizes(a, [0.0, 0.6, 2.0])
    # σ = 0 keeps everything; 0.6 keeps the 1.0s; above 1 every row keeps its best (floor 1)
    np.testing.assert_allclose(sizes, [3.0, (1 + 3) / 2, 1.0])


def test_aga_figures_have_their_panels():
    rng = np.random.default_rng(0)
    s = rng.random((4, 9))
    fig = viz.gating_panels(s, s, np.where(s > 0.5, s, 0), ["a", "b", "c", "d"], 0.5, grid=(3, 3))
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3
    hist = [{"global_step": i, "sigma_tg": 0.1 * i, "sigma_vg": 0.2} for i in range(5)]
    fig = viz.threshold_curves({"free": hist, "structured": hist[:3]})
    assert [len(ax.lines) for ax in fig.axes[:2]] == [2, 2]
    assert len(viz.group_size_curve({"TGV": s}, marks={"TGV": 0.5}).axes[0].lines) == 2
    import pandas as pd
    table = pd.DataFrame({"i2t_P@5 mean": [0.4, 0.3], "i2t_P@5 std": [0.01, float("nan")]}, index=["full", "gloria"])
    fig = viz.ablation_bars(table, keys=("i2t_P@5",), chance=0.2)
    assert len(fig.axes[0].patches) == 2
    w = viz.threshold_explorer(s, ["a", "b", "c", "d"], 0.4)
    slider, image = w.children
    assert slider.value == 0.4 and image.value[:8] == b"\x89PNG\r\n\x1a\n"
    before = image.value
    slider.value = 0.9  # the slider redraws the picture
    assert image.value != before and image.value[:4] == b"\x89PNG"


def test_memory_attention_grid_one_panel_per_query_and_the_image():
    grid = (4, 4)
    att = np.full((6, 16), 1 / 16)
    att[2] = 0.0
    att[2, 4 * 2 + 1] = 1.0  # query 2 looks at patch (2, 1) only
    fig = viz.memory_attention_grid(np.zeros((64, 64)), att, grid, queries=[0, 2], ncols=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3 and shown[0].get_title() == "radiograph"
    assert "query 0 (H/log P 1.00)" == shown[1].get_title() and "H/log P 0.00" in shown[2].get_title()
    (line,) = shown[2].lines
    assert 16 <= line.get_xdata()[0] < 32 and 32 <= line.get_ydata()[0] < 48  # the cell of patch (2, 1)
    plt.close(fig)
    import pytest

    with pytest.raises(ValueError, match="attention must be"):
        viz.memory_attention_grid(np.zeros((8, 8)), np.ones((2, 5)), grid)


def test_exgramed_figures_draw_what_they_are_given():
    from medalign_lite import viz

    rng = np.random.default_rng(0)
    nodes = rng.normal(size=(4, 6, 5))
    adj = [np.eye(6, k=1) + np.eye(6, k=-1) for _ in range(4)]
    fig = viz.graph_panels(nodes, adj, ["image", "response", "extended", "barycenter"])
    axes = fig.axes
    assert len(axes) == 4 and all(len(ax.lines) == 10 for ax in axes)  # one line per directed edge
    assert "10 edges" in axes[0].get_title() and len(axes[0].texts) == 6
    fig = viz.matching_matrices({"a": np.eye(3), "b": np.eye(3)[[1, 0, 2]]})
    assert "diagonal 1.00" in fig.axes[0].get_title() and "diagonal 0.33" in fig.axes[1].get_title()
    fig = viz.gradient_scatter(np.array([1.0, -1.0, 0.5]), {"λ=1": np.array([2.0, -2.0, 1.0])})
    assert "cosine 1.000" in fig.axes[0].get_title()
    fig = viz.score_curves({"x": ([0.1, 1.0], [0.5, 0.7])}, "fraction", "score", hlines={"floor": 0.4})
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_legend() is not None
    plt.close("all")
def test_alta_figures_draw_what_they_say():
    fig = viz.adapter_block_diagram()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "adapter" in texts and "MLP" in texts and "attention" in texts and "s = 0.5" in texts
    plt.close(fig)
    imgs = [np.random.rand(16, 16) for _ in range(4)]
    masks = [np.r_[np.ones(12), np.zeros(4)] for _ in range(4)]
    fig = viz.study_views(imgs, ["a", "b", "c", "d"], [True, False, True, True], masks=masks, grid=(4, 4))
    assert len(fig.axes) == 8  # the views, then the same views masked
    assert any("missing" in t.get_text() for t in fig.axes[1].texts)
    assert not any("missing" in t.get_text() for t in fig.axes[0].texts)
    shade = fig.axes[4].images[-1].get_array()  # 12 of 16 patches greyed: 3/4 of the pixels
    assert abs((np.asarray(shade)[..., 3] > 0).mean() - 0.75) < 1e-6
    plt.close(fig)
    d = {"target": np.zeros((8, 8)), "masked": np.zeros((8, 8)), "reconstruction": np.ones((8, 8))}
    fig = viz.reconstruction_panels({"MAE": d, "ALTA": d})
    assert len(fig.axes) == 6 and fig.axes[5].get_title() == "ALTA: reconstruction"
    plt.close(fig)


def test_learning_curves_draw_each_seed_their_mean_the_stop_and_the_references():
    curves = {"full": [([100, 200, 300], [0.3, 0.5, 0.6]), ([100, 200, 300], [0.4, 0.5, 0.7])],
              "gloria": [([100, 200, 300], [0.2, 0.3, 0.4])]}
    fig = viz.learning_curves(curves, stop=200, references={"supervised ceiling": 0.8, "untrained": 0.2})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    mean = lines["full (2 seeds)"]
    assert list(mean.get_xdata()) == [100, 200, 300] and np.allclose(mean.get_ydata(), [0.35, 0.5, 0.65])
    assert list(lines["gloria (1 seed)"].get_ydata()) == [0.2, 0.3, 0.4]
    assert list(lines["default run stops (200 steps)"].get_xdata()) == [200, 200]
    assert list(lines["supervised ceiling"].get_ydata()) == [0.8, 0.8]
    assert len(ax.lines) == 3 + 2 + 3  # per-seed lines, two means, the stop and two references
    plt.close(fig)


def test_normalized_similarity_histograms_mark_each_styles_mean_and_sigma():
    rng = np.random.default_rng(0)
    values = {"written": {"tg": rng.beta(1, 3, 500), "vg": rng.beta(1, 3, 500)},
              "structured": {"tg": rng.beta(3, 1, 500), "vg": rng.beta(3, 1, 500)}}
    fig = viz.normalized_similarity_histograms(values, sigmas={"written": {"tg": 0.2, "vg": 0.3}})
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert f"written: S̄ {values['written']['tg'].mean():.2f}" in labels and "written: σ 0.20" in labels
    assert not any(lab.startswith("structured: σ") for lab in labels)  # no σ given for it
    assert len(ax.patches) == 2  # one step histogram per style
    plt.close(fig)


def test_confusion_panels_annotate_every_cell_and_title_the_diagonal():
    m = np.array([[0.8, 0.2], [0.5, 0.5]])
    fig = viz.confusion_panels({"method": (["Edema", "Pleural Effusion"], m), "ceiling": (["Edema", "Pleural Effusion"],
                                                                                         np.eye(2))})
    a, b = fig.axes
    assert "diagonal 0.65" in a.get_title() and "diagonal 1.00" in b.get_title()
    assert [t.get_text() for t in a.texts] == ["0.80", "0.20", "0.50", "0.50"]
    assert [t.get_text() for t in a.get_yticklabels()] == ["Edema", "Pl. Effusion"]
    plt.close("all")
