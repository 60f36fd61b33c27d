"""Linear probe: closed-form training step vs autograd + torch AdamW, label conventions, protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medalign_lite.eval.probe import (
    ProbeConfig,
    adamw_step,
    bce_grad,
    linear_probe,
    masked_bce,
    prepare_labels,
    subset_indices,
)
from medalign_lite.utils import torch_threads


def test_closed_form_step_matches_autograd_and_torch_adamw():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 7, generator=gen)
    t = (torch.rand(20, 3, generator=gen) < 0.4).float()
    valid = torch.rand(20, 3, generator=gen) < 0.7
    w0, b0 = torch.randn(3, 7, generator=gen), torch.randn(3, generator=gen)

    w_ref, b_ref = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = torch.optim.AdamW([w_ref, b_ref], lr=0.05, weight_decay=0.01)
    w, b = w0.clone(), b0.clone()
    state = [torch.zeros_like(p) for p in (w, w, b, b)]
    for step in range(1, 8):
        idx = torch.arange(step, step + 10) % 20
        loss = masked_bce(F.linear(x[idx], w_ref, b_ref), t[idx], valid[idx].float())
        opt.zero_grad()
        loss.backward()
        g_w, g_b = bce_grad(x[idx], F.linear(x[idx], w, b), t[idx], valid[idx].float())
        assert torch.allclose(g_w, w_ref.grad, atol=1e-6) and torch.allclose(g_b, b_ref.grad, atol=1e-6)
        opt.step()
        adamw_step(w, g_w, state[0], state[1], step, 0.05, 0.01)
        adamw_step(b, g_b, state[2], state[3], step, 0.05, 0.01)
        assert torch.allclose(w, w_ref.detach(), atol=1e-5) and torch.allclose(b, b_ref.detach(), atol=1e-5)


def test_prepare_labels_mgca_convention():
    nan = float("nan")
    y = np.array([[1, 0, -1, nan], [-1, -1, 0, 1], [nan, 1, 1, -1]])
    names = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Consolidation"]
    t, v = prepare_labels(y, names)                    # defaults: blank -> 0, MGCA U-ones/U-zeros
    assert t.tolist() == [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]]
    assert v.all()
    t, v = prepare_labels(y, names, blank="ignore", uncertain="ignore")
    assert v.tolist() == [[True, True, False, False], [False, False, True, True], [False, True, True, False]]
    assert prepare_labels(y, names, uncertain="ones")[0][1].tolist() == [1, 1, 0, 1]
    assert prepare_labels(y, names, uncertain="zeros")[0][1].tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="class names"):
        prepare_labels(y)
    with pytest.raises(ValueError, match="must be"):
        prepare_labels(np.array([[2.0]]))
    t, v = prepare_labels(np.array([1, 0, 1]))         # 1-D binary labels become one column
    assert t.shape == (3, 1)


def test_subsets_nested_seeded_and_sized():
    a = subset_indices(1000, (0.01, 0.1, 1.0), seed=42)
    assert [len(a[f]) for f in (0.01, 0.1, 1.0)] == [10, 100, 1000]
    assert set(a[0.01].tolist()) <= set(a[0.1].tolist())
    assert all(torch.equal(a[f], subset_indices(1000, (0.01, 0.1, 1.0), seed=42)[f]) for f in a)
    assert not torch.equal(a[0.1], subset_indices(1000, (0.1,), seed=0)[0.1])
    assert len(subset_indices(30, (0.01,), 0)[0.01]) == 1
    with pytest.raises(ValueError):
        subset_indices(10, (0.0,), 0)


def _data(seed=0, n=600, d=16, c=3):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=gen)
    x = torch.randn(n, d, generator=gen)
    y = ((x @ w) + 0.5 * torch.randn(n, c, generator=gen) > 0).double()
    return x, y


def test_linear_probe_learns_and_is_deterministic():
    x, y = _data()
    cfg = ProbeConfig(max_epochs=15, batch_size=32, lr=1e-2)
    res = linear_probe(x[:400], y[:400], x[400:], y[400:], fractions=(0.05, 1.0), config=cfg)
    assert list(res) == [0.05, 1.0]
    assert res[1.0]["n_train"] == 360 and res[1.0]["n_val"] == 40 and res[0.05]["n_train"] == 18
    assert res[1.0]["auroc"] > 0.9
    assert res[1.0]["auroc"] >= res[0.05]["auroc"]
    again = linear_probe(x[:400], y[:400], x[400:], y[400:], fractions=(0.05, 1.0), config=cfg)
    assert all(res[f]["per_class"] == again[f]["per_class"] for f in res)
    other_seed = linear_probe(x[:400], y[:400], x[400:], y[400:], fractions=(0.05,), seed=1, config=cfg)
    assert other_seed[0.05]["per_class"] != res[0.05]["per_class"]
    # the reported AUROC is sklearn's on the returned test probabilities
    probs = res[1.0]["probs"].numpy()
    assert res[1.0]["per_class"] == pytest.approx([roc_auc_score(y[400:, k], probs[:, k]) for k in range(3)])


def test_early_stopping_and_explicit_val_set():
    x, y = _data(1)
    # a validation set whose labels are flipped: its loss only rises, so training stops early
    res = linear_probe(x[:300], y[:300], x[400:], y[400:], fractions=(1.0,), val_x=x[300:400],
                       val_y=1 - y[300:400], config=ProbeConfig(max_epochs=200, patience=3, lr=1e-2))
    r = res[1.0]
    assert r["n_train"] == 300 and r["n_val"] == 100
    assert r["epochs"] == r["best_epoch"] + 3 < 200


def test_blank_ignore_drops_entries_from_auroc():
    x, y = _data(2)
    y_test = y[400:].clone()
    y_test[:100, 0] = float("nan")
    y_test[:, 2] = 1.0                                  # a class with no negatives in test
    res = linear_probe(x[:400], y[:400], x[400:], y_test, fractions=(1.0,),
                       config=ProbeConfig(max_epochs=5, blank="ignore"))[1.0]
    p = res["probs"].numpy()
    assert res["per_class"][0] == pytest.approx(roc_auc_score(y_test[100:, 0], p[100:, 0]))
    assert math.isnan(res["per_class"][2])
    assert res["auroc"] == pytest.approx(np.mean(res["per_class"][:2]))


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
