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
