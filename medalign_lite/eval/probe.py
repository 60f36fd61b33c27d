"""Linear probe on frozen features (the MGCA / GLoRIA data-efficiency protocol).

One linear layer ``z = W x + b`` is trained on frozen image features with a binary
cross-entropy per class, AdamW and early stopping on the validation loss, for 1 %, 10 % and
100 % of the training set; the score is macro AUROC on the test set (``research/aga-and-peers.md``
§3, MGCA ``ssl_finetuner.py``: lr 5e-4, weight decay 1e-6, batch 48, ≤ 50 epochs, patience 10,
subsets drawn with seed 42).

Label convention (MGCA's CheXpert preprocessing, stated once and applied to train, val and test):

* **blank** (NaN) → 0 (MGCA fills NaN with 0); ``blank="ignore"`` instead drops those entries from
  the loss and the AUROC of that class only.
* **uncertain** (−1) → MGCA's per-class U-mapping: 1 for Atelectasis, Edema and Pleural Effusion,
  0 for every other class (needs ``class_names``); alternatives ``"ones"``, ``"zeros"``,
  ``"ignore"`` (masked like a blank).

Choices where MGCA leaves room:

* Subsets are **nested**: one seeded permutation of the training set, the first
  ``max(1, round(f·N))`` items form fraction ``f``; so 1 % ⊂ 10 % ⊂ 100 % and runs differ only by
  the data added.
* Without an explicit validation set, a seeded ``val_fraction`` (10 %) of the training set is held
  out first (like MGCA's separate full-size validation split, it is the same for every fraction).
* Everything random (init, holdout, subsets, shuffles) comes from generators seeded with
  ``seed``; the global torch RNG is not touched.

Shapes: N samples, D feature width, C classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medalign_lite.eval.zeroshot import auroc
from medalign_lite.utils import torch_threads

MGCA_U_ONES: tuple[str, ...] = ("Atelectasis", "Edema", "Pleural Effusion")
"""Classes whose uncertain (−1) label MGCA / CheXpert's U-Ones policy maps to 1; the rest → 0."""


@dataclass
class ProbeConfig:
    """Linear-probe hyper-parameters; defaults are MGCA's."""

    lr: float = 5e-4                 # MGCA linear-probe learning rate
    weight_decay: float = 1e-6       # MGCA
    batch_size: int = 48             # MGCA
    max_epochs: int = 50             # MGCA; scale down for CPU demos / smoke runs
    patience: int = 10               # early-stopping patience on validation loss (MGCA)
    blank: Literal["zero", "ignore"] = "zero"
    uncertain: Literal["mgca", "ones", "zeros", "ignore"] = "mgca"
    u_ones: tuple[str, ...] = field(default=MGCA_U_ONES)
    val_fraction: float = 0.1        # held out of train when no validation set is given
    standardize: bool = False        # z-score features with train statistics (not in MGCA)
    threads: int | None = 1          # torch threads while training: tiny matmuls run best on 1


def prepare_labels(y: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None,
                   blank: str = "zero", uncertain: str = "mgca",
                   u_ones: Sequence[str] = MGCA_U_ONES) -> tuple[torch.Tensor, torch.Tensor]:
    """Map CheXpert-style labels {1, 0, −1, NaN} to BCE targets and a validity mask.

    Args:
        y: (N, C) or (N,) labels.
        class_names: C names, needed by ``uncertain="mgca"`` when −1 occurs.

    Returns:
        targets (N, C) float32 in {0, 1} and valid (N, C) bool (False = ignored entry).
    """
    y = torch.as_tensor(np.asarray(y, dtype=np.float64) if not isinstance(y, torch.Tensor) else y).double()
    if y.ndim == 1:
        y = y[:, None]
    blank_m = torch.isnan(y)
    unc_m = y == -1
    other = ~blank_m & ~unc_m & (y != 0) & (y != 1)
    if other.any():
        raise ValueError(f"labels must be 1, 0, -1 or NaN, found {sorted(set(y[other].tolist()))[:5]}")
    targets = (y == 1).float()
    valid = torch.ones_like(targets, dtype=torch.bool)
    if blank == "ignore":
        valid &= ~blank_m
    elif blank != "zero":
        raise ValueError(f"blank must be 'zero' or 'ignore', got {blank!r}")
    if unc_m.any():
        if uncertain == "mgca":
            if class_names is None or len(class_names) != y.shape[1]:
                raise ValueError("uncertain='mgca' needs the C class names to pick U-ones / U-zeros")
            ones = torch.tensor([c in u_ones for c in class_names])
            targets = torch.where(unc_m & ones, torch.ones_like(targets), targets)
        elif uncertain == "ones":
            targets = torch.where(unc_m, torch.ones_like(targets), targets)
        elif uncertain == "ignore":
            valid &= ~unc_m
        elif uncertain != "zeros":
            raise ValueError(f"unknown uncertain policy {uncertain!r}")
    return targets, valid


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the valid entries of (B, C) logits."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def subset_indices(n: int, fractions: Sequence[float], seed: int) -> dict[float, torch.Tensor]:
    """Nested seeded subsets: fraction f → the first ``max(1, round(f·n))`` of one permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
        out[f] = perm[: max(1, round(f * n))].sort().values
    return out


def adamw_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
               step: int, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8) -> None:
    """One in-place AdamW update (Loshchilov & Hutter; the arithmetic of ``torch.optim.AdamW``)::

        θ ← θ (1 − lr·λ)                       decoupled weight decay
        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
        θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    """
    b1, b2 = betas
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - b1)
    exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (exp_avg_sq.sqrt() / (1 - b2 ** step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - b1 ** step))


def bce_grad(x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
             valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`masked_bce` for a linear layer ``z = x Wᵀ + b`` (closed form)::

        ∂L/∂z = (σ(z) − y) ⊙ valid / #valid,   ∂L/∂W = (∂L/∂z)ᵀ x,   ∂L/∂b = Σ_batch ∂L/∂z

    Shapes: x (B, D), logits / targets / valid (B, C) → (C, D), (C,).
    """
    g = (torch.sigmoid(logits) - targets) * valid / valid.sum().clamp_min(1)
    return g.T @ x, g.sum(0)


def train_linear(x: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, val_x: torch.Tensor,
                 val_targets: torch.Tensor, val_valid: torch.Tensor, config: ProbeConfig,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Fit ``z = x Wᵀ + b`` with masked BCE, AdamW and early stopping on validation loss.

    The gradient is the closed form of :func:`bce_grad` and the update :func:`adamw_step`
    (identical to autograd + ``torch.optim.AdamW``, which the tests check, but ~4× cheaper on
    these tiny matrices). Runs with ``config.threads`` torch threads.

    Args:
        x: (N, D) training features; targets, valid: (N, C).
        val_x: (M, D); val_targets, val_valid: (M, C).

    Returns:
        the best-validation-loss weight (C, D), bias (C,) and a log
        ``{"epochs", "best_epoch", "best_val_loss"}``.
    """
    gen = torch.Generator().manual_seed(seed)
    n, d = x.shape
    c = targets.shape[1]
    bound = 1 / d ** 0.5                                       # nn.Linear's default init range
    weight = (torch.rand(c, d, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(c, generator=gen) * 2 - 1) * bound
    state = [torch.zeros_like(p) for p in (weight, weight, bias, bias)]  # m_W, v_W, m_b, v_b
    valid_f, val_valid_f = valid.float(), val_valid.float()
    best = (float("inf"), weight.clone(), bias.clone(), 0)
    stale, epoch, step = 0, 0, 0
    with torch_threads(config.threads), torch.no_grad():
        for epoch in range(1, config.max_epochs + 1):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch_size):      # mini-batches, not samples
                idx = perm[start:start + config.batch_size]
                xb = x[idx]
                g_w, g_b = bce_grad(xb, torch.addmm(bias, xb, weight.T), targets[idx], valid_f[idx])
                step += 1
                adamw_step(weight, g_w, state[0], state[1], step, config.lr, config.weight_decay)
                adamw_step(bias, g_b, state[2], state[3], step, config.lr, config.weight_decay)
            val_loss = float(masked_bce(torch.addmm(bias, val_x, weight.T), val_targets, val_valid_f))
            if val_loss < best[0]:
                best = (val_loss, weight.clone(), bias.clone(), epoch)
                stale = 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    return best[1], best[2], {"epochs": epoch, "best_epoch": best[3], "best_val_loss": best[0]}


def linear_probe(train_x: torch.Tensor | np.ndarray, train_y: torch.Tensor | np.ndarray,
                 test_x: torch.Tensor | np.ndarray, test_y: torch.Tensor | np.ndarray,
                 fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 42,
                 val_x: torch.Tensor | np.ndarray | None = None, val_y: torch.Tensor | np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, config: ProbeConfig | None = None) -> dict[float, dict]:
    """Data-efficiency linear probe: macro test AUROC for each training fraction.

    Args:
        train_x: (N, D) frozen features; train_y: (N, C) or (N,) labels in {1, 0, −1, NaN}.
        test_x: (M, D); test_y: (M, C) or (M,).
        fractions: training-set fractions (MGCA: 1 %, 10 %, 100 %).
        seed: seeds holdout, subsets, init and shuffling (MGCA: 42).
        val_x, val_y: optional validation set for early stopping; default: a seeded
            ``config.val_fraction`` of the training set, held out before subsampling.
        class_names: C names (for the MGCA uncertain mapping).
        config: hyper-parameters (:class:`ProbeConfig`, MGCA defaults).

    Runs on CPU (features are moved there): a linear layer on cached features needs no GPU.

    Returns:
        ``{fraction: {"auroc": macro AUROC over classes with both labels in test,
        "per_class": [C AUROCs, NaN where undefined], "n_train", "n_val", "epochs",
        "best_epoch", "best_val_loss", "probs": (M, C) test probabilities}}``.
    """
    cfg = config or ProbeConfig()
    as_t = lambda a: torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).float().cpu()
    x_all, x_test = as_t(train_x), as_t(test_x)
    labels = lambda y: prepare_labels(y, class_names, cfg.blank, cfg.uncertain, cfg.u_ones)
    t_all, v_all = labels(train_y)
    t_test, v_test = labels(test_y)
    if len(x_all) != len(t_all) or len(x_test) != len(t_test):
        raise ValueError("features and labels differ in length")
    if val_x is None:
        if val_y is not None:
            raise ValueError("val_y given without val_x")
        perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed + 1))
        n_val = max(1, round(cfg.val_fraction * len(x_all)))
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        x_val, t_val, v_val = x_all[val_idx], t_all[val_idx], v_all[val_idx]
        x_tr, t_tr, v_tr = x_all[train_idx], t_all[train_idx], v_all[train_idx]
    else:
        x_val = as_t(val_x)
        t_val, v_val = labels(val_y)
        x_tr, t_tr, v_tr = x_all, t_all, v_all
    results: dict[float, dict] = {}
    for frac, idx in subset_indices(len(x_tr), fractions, seed).items():
        x, t, v = x_tr[idx], t_tr[idx], v_tr[idx]
        xv, xt = x_val, x_test
        if cfg.standardize:
            mu, sd = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
            x, xv, xt = (x - mu) / sd, (xv - mu) / sd, (xt - mu) / sd
        weight, bias, log = train_linear(x, t, v, xv, t_val, v_val, cfg, seed)
        with torch.no_grad():
            prob = torch.sigmoid(F.linear(xt, weight, bias))                    # (M, C)
        per_class = auroc(prob.T, t_test.T.bool(), v_test.T)
        ok = ~torch.isnan(per_class)
        results[frac] = {"auroc": float(per_class[ok].mean()) if ok.any() else float("nan"),
                         "per_class": per_class.tolist(), "n_train": len(idx), "n_val": len(x_val), **log,
                         "probs": prob}
    return results


def bench_probe(n_train: int = 3000, n_test: int = 1000, dim: int = 512, n_classes: int = 5,
                max_epochs: int = 50, seed: int = 0) -> dict[str, float]:
    """Seconds for a full 1 % / 10 % / 100 % probe on random linearly-separable-ish features."""
    import time

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, n_classes, generator=gen)
    x = torch.randn(n_train + n_test, dim, generator=gen)
    y = ((x @ w) / dim ** 0.5 + torch.randn(n_train + n_test, n_classes, generator=gen) > 0.5).float()
    t0 = time.perf_counter()
    res = linear_probe(x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                       config=ProbeConfig(max_epochs=max_epochs))
    return {"seconds": time.perf_counter() - t0, "n_train": n_train, "dim": dim,
            **{f"auroc@{f}": r["auroc"] for f, r in res.items()},
            **{f"epochs@{f}": r["epochs"] for f, r in res.items()}}
