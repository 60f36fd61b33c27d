"""§3.2–3.3: the token×patch similarity, its min-max normalisations, the threshold gates and the
groups they form (TGV, PGL)."""
from __future__ import annotations

import torch
from torch import nn

from ...nn import l2norm


# --- §3.2 fine-grained similarity ----------------------------------------------------------
def token_patch_similarity(tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """S_{b,jk} = φ(t_bj, v_bk) = cos(t_bj, v_bk) within each pair.

    tokens (B, T, d), patches (B, P, d) → S (B, T, P).
    """
    return torch.bmm(l2norm(tokens), l2norm(patches).transpose(1, 2))


def _minmax_scale(s: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, any_valid: torch.Tensor, eps: float,
                  fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s − lo) / (hi − lo) with per-slice ``lo``, ``hi`` and ``any_valid`` (broadcastable to s).

    The per-slice constants make the full-size work one subtraction, division and addition: a
    flat slice (range ≤ eps) divides by ∞ and adds 1, a slice without a valid entry divides by
    ∞ and adds ``fill``. Returns (ŝ, flat)."""
    lo, hi = torch.where(any_valid, lo, 0.0), torch.where(any_valid, hi, 0.0)
    rng = hi - lo
    flat = (rng <= eps) & any_valid
    den = torch.where(flat | ~any_valid, float("inf"), rng)
    offset = torch.where(flat, 1.0, torch.where(any_valid, 0.0, fill)).to(s.dtype)
    return (s - lo) / den + offset, flat


def minmax_normalize(s: torch.Tensor, mask: torch.Tensor, dim: int, eps: float = 1e-6,
                     fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max normalisation of ``s`` along ``dim`` over valid entries only.

        ŝ = (s − min_valid s) / (max_valid s − min_valid s)      in [0, 1]

    s (B, T, P); ``mask`` bool, broadcastable to s: the (B, T, 1) token mask, or a full
    (B, T, P) one. ``dim=2`` normalises over patches for each token (TGV), ``dim=1`` over
    tokens for each patch (PGL). Masked entries never win the min or max and come out
    ``fill``. Each valid slice's best element comes out exactly 1 (a division, not a
    reciprocal), which :func:`threshold_gate` relies on. A slice whose valid values are all
    equal (range ≤ ``eps``) comes out 1 on its valid entries.
    Returns (ŝ (B, T, P), flat: bool, s's shape with ``dim`` kept as 1, True for such slices).
    """
    varies = mask.shape[dim] != 1  # validity varies along dim: masked entries must not win
    if varies:
        lo = s.masked_fill(~mask, float("inf")).amin(dim, keepdim=True)
        hi = s.masked_fill(~mask, float("-inf")).amax(dim, keepdim=True)
        any_valid = mask.any(dim, keepdim=True)
    else:
        lo, hi, any_valid = s.amin(dim, keepdim=True), s.amax(dim, keepdim=True), mask
    out, flat = _minmax_scale(s, lo, hi, any_valid, eps, fill)
    if varies:
        out = torch.where(mask, out, fill)
    return out, flat


def minmax_normalize_both(s: torch.Tensor, token_mask: torch.Tensor, eps: float = 1e-6,
                          fill: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Both normalisations of S that AGA groups with, in one pass over its valid entries:

        ŝ^tg_jk = (s_jk − min_k s_jk) / (max_k s_jk − min_k s_jk)      over the patches of token j (TGV)
        ŝ^vg_jk = (s_jk − min_j s_jk) / (max_j s_jk − min_j s_jk)      over the valid tokens of patch k (PGL)

    s (B, T, P), ``token_mask`` (B, T) bool → (ŝ^tg, ŝ^vg), both (B, T, P) with padded tokens
    at ``fill``; otherwise as :func:`minmax_normalize` with ``dim=2`` and ``dim=1`` (each
    group's best element exactly 1, a flat group 1 everywhere). A padded token is a whole row
    of S: the row minima and maxima read S as it is, and one masked copy for the minima and
    one for the maxima serve the column direction.
    """
    valid = token_mask[:, :, None]                                   # (B, T, 1)
    s_tg, _ = _minmax_scale(s, s.amin(2, keepdim=True), s.amax(2, keepdim=True), valid, eps, fill)
    lo = s.masked_fill(~valid, float("inf")).amin(1, keepdim=True)     # (B, 1, P)
    hi = s.masked_fill(~valid, float("-inf")).amax(1, keepdim=True)
    s_vg, _ = _minmax_scale(s, lo, hi, token_mask.any(1)[:, None, None], eps, fill)
    return s_tg, torch.where(valid, s_vg, fill)


# --- §3.2–3.3 threshold gates and groups ---------------------------------------------------
def momentum_update(sigma: torch.Tensor, s_bar: torch.Tensor, gamma: float,
                    valid: torch.Tensor | bool = True) -> torch.Tensor:
    """σ ← γ·σ + (1 − γ)·S̄ (the threshold gate's update), only where S̄ is finite and ``valid``
    (the batch had a valid token–patch entry); elsewhere σ stays. No host sync."""
    s_bar = torch.as_tensor(s_bar)
    ok = torch.isfinite(s_bar) & torch.as_tensor(valid, dtype=torch.bool, device=s_bar.device)
    return torch.where(ok, gamma * sigma + (1.0 - gamma) * s_bar, sigma)


def threshold_gate(s: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparsify min-max normalised similarities:

        ŝ_jk = s_jk if s_jk ≥ σ else 0

    ``s`` (B, T, P) comes from :func:`minmax_normalize` with ``fill=-1``: valid entries in
    [0, 1] with each group's best element exactly 1, padding at −1. σ is a scalar or
    broadcastable to s (e.g. (B, 1, 1) per pair). A group with no element ≥ σ (only possible
    for σ > 1) keeps its best element(s) instead (those at 1): never an empty group, never
    0/0. Both rules together are one comparison with min(max(σ, 0), 1) (σ < 0 keeps every
    valid element, as σ = 0 does, and never the padding).
    Returns (ŝ (B, T, P), kept (B, T, P) bool).
    """
    sigma = torch.as_tensor(sigma, dtype=s.dtype, device=s.device).clamp(0.0, 1.0)
    keep = s >= sigma
    return torch.where(keep, s, 0.0), keep


def text_grouped_visual(gated: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """TGV: p_j = Σ_k ŝ_jk v_k / Σ_k ŝ_jk, the visual group of each token.

    gated ŝ (B, T, P) (normalised over patches), patches v (B, P, d) → p (B, T, d); a padded
    token's row is all zero and gives p = 0 (it is masked everywhere downstream).
    """
    return torch.bmm(gated, patches) / gated.sum(2, keepdim=True).clamp_min(1e-12)


def patch_grouped_language(gated: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """PGL: q_n = Σ_j ŝ_nj t_j / Σ_j ŝ_nj, the language group of each patch.

    gated ŝ (B, T, P) (normalised over tokens), tokens t (B, T, d) → q (B, P, d).
    """
    return torch.bmm(gated.transpose(1, 2), tokens) / gated.sum(1).unsqueeze(-1).clamp_min(1e-12)


class ThresholdGate(nn.Module):
    """One adaptive threshold σ, a buffer updated by momentum in training mode only.

    :meth:`threshold` is the σ a step gates with (0-dim): the stored σ once initialised, else
    the batch's own S̄. :meth:`update` (training mode only) then stores γ·σ + (1−γ)·S̄ (or S̄
    itself on the first step when ``init`` is None), but only when S̄ is finite and ``valid``
    (0-dim bool: the batch had a valid token–patch entry); otherwise σ (and whether it is
    initialised) stays as it was. ``forward(s_bar, valid=True)`` is both: the σ from before
    the update. No host sync.
    """

    def __init__(self, gamma: float, init: float | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("sigma", torch.tensor(float(init) if init is not None else 0.0))
        self.register_buffer("initialized", torch.tensor(init is not None))

    def threshold(self, s_bar: torch.Tensor) -> torch.Tensor:
        return torch.where(self.initialized, self.sigma, s_bar.detach().to(self.sigma.dtype))

    @torch.no_grad()
    def update(self, s_bar: torch.Tensor, valid: torch.Tensor | bool = True) -> None:
        if not self.training:
            return
        s_bar = s_bar.detach().to(self.sigma.dtype)
        ok = torch.isfinite(s_bar) & torch.as_tensor(valid, dtype=torch.bool, device=s_bar.device)
        # an uninitialised gate starts from S̄; σ moves (momentum_update's formula) only where ok
        start = torch.where(self.initialized, self.sigma, s_bar)
        self.sigma.copy_(torch.where(ok, self.gamma * start + (1.0 - self.gamma) * s_bar, self.sigma))
        self.initialized.logical_or_(ok)

    def forward(self, s_bar: torch.Tensor, valid: torch.Tensor | bool = True) -> torch.Tensor:
        used = self.threshold(s_bar)
        self.update(s_bar, valid)
        return used
