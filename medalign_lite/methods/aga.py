"""AGA: Adaptive Group Alignment (Li, Gong, Li, Sun, 2025, arXiv 2507.23402), in the paper's order.

1. **Encoders** (§3.1): ResNet-50 patches v_k and BioClinicalBERT tokens t_j, projected to
   d = 128 (:class:`~medalign_lite.methods.dual.DualEncoder`); global vectors for L_g.
2. **Fine-grained similarity** (§3.2): S = φ(t_j, v_k) per pair, (B, T, P); min-max normalised
   over patches for each token (for the text-grouped visual groups, TGV) and over tokens for
   each patch (for the patch-grouped language groups, PGL).
3. **Threshold gates and groups** (§3.2–3.3): ŝ = s where s ≥ σ else 0; two thresholds σ_tg,
   σ_vg follow the similarities by momentum, σ ← γ·σ + (1−γ)·S̄; the group of token j is
   p_j = Σ_k ŝ_jk v_k / Σ_k ŝ_jk (TGV), the group of patch n is q_n = Σ_j ŝ_nj t_j / Σ_j ŝ_nj (PGL).
4. **IGA** (§3.4): InfoNCE *inside one pair*: p_j against the pair's tokens t_k (L_tf), q_n
   against the pair's patches v_m (L_vf), τ2 = 0.3; no other pair is a negative.
5. **BCGA** (§3.5): TGV attends over PGL, u_j = Σ_k softmax_k(Q p_j · K q_k / √d) V q_k, and
   PGL over TGV (w_n); p_j is aligned with u_j against the pair's other u_k (L_gla), q_n with
   w_n against the other w_m (L_gva), τ3 = 0.1.
6. **Objective** (§3.6): L = λ1·L_g + λ2/2·(L_tf + L_vf) + λ3/2·(L_gla + L_gva), L_g the global
   image–report InfoNCE over the batch.

Everything is batched over pairs with a (B, T) token mask; padded tokens never win a min or a
max, never enter a group and are never an anchor or a negative. The per-pair reference loop
that this must equal (losses and gradients) lives in ``tests/methods/test_aga.py``. Cost:
O(B·(T+P)·P·d) (the patch-side losses compare P groups with P patches inside each pair),
against GLoRIA's O(B²·T·P·D) (every report against every image). The work is laid out as few,
large operations: one function normalises S both ways, each modality's groups are projected
once for both attention directions (p by [Q; K'; V'], q by [Q'; K; V]), and on each side the
IGA and BCGA terms that share their anchors (the groups) are one product and one softmax. On a
GPU the eager head is still a few hundred small kernels, bound by launch overhead, so the
local part (§3.2–3.5, :meth:`AGAHead.local_terms`, which reads σ and never writes it) is
compiled with ``torch.compile`` on CUDA by default (``AGAConfig.compile``; a failed compile
warns once and runs eagerly). On a CPU the head is bound by its arithmetic (about 4 GFLOP
forward and backward at B = 8, T = 97, P = 361) and stays eager: compiling takes minutes.

**Our readings** of what the paper summary leaves open (each one a field of :class:`AGAConfig`):

- γ (``gamma_tg``, ``gamma_vg``): the summary gives 0.99 and 0.999 and contradicts itself on
  which dataset gets which (design trade-offs: 0.999 for the small SMTs set, 0.99 for
  MIMIC-CXR; open question 4: the reverse). Default 0.99, the MIMIC-CXR value of the explicit
  statement, and the only one of the two that lets σ move within a CPU-minutes run (time
  constant 1/(1−γ) = 100 steps).
- S̄ is the mean of the *normalised* similarities over the batch's valid entries (the values
  σ is compared with; this matches the reported plateaus, σ ≈ 0.15–0.45).
- σ starts at the first training batch's S̄ (``sigma_init=None``), or at a given value.
- σ moves only on a finite S̄ from a batch with at least one valid (token, patch) entry: a
  batch whose similarities are not finite (a NaN image or embedding) or that has no valid
  token leaves σ as it was (else one NaN batch would make σ NaN for good, every later group
  empty and IGA/BCGA flat at log T / log P, and a batch without tokens would pull σ towards 0).
- Order within a training step: the batch is gated with σ from before the step, then σ is
  updated; evaluation never updates σ (an untrained gate uses the batch's own S̄).
- The fixed variant (``fixed_thresholds``): σ_tg = 1/P and σ_vg = 1/M_i, M_i the number of
  valid tokens of pair i (the paper's 1/97 is 1/T at its padded length; the padded length of
  a batch depends on its longest report, so we use each pair's own count). ``fixed_sigma_tg``
  / ``fixed_sigma_vg`` pin constants instead (e.g. 1/361, 1/97). Under min-max normalisation
  these thresholds keep nearly every element: the fixed variant is almost dense grouping.
- Empty groups: min-max normalisation gives each group's best element s = 1, so with σ ≤ 1 no
  group is empty. When σ > 1 a group keeps its best element(s) (ties: all of them); a row
  whose similarities are all equal (max − min ≤ ``minmax_eps``) normalises to 1 everywhere,
  i.e. a uniform mean. The number of groups that fell back is returned (``empty_groups``).
- Groups average the L2-normalised embeddings (``group_values="normalized"``, every element
  weighs by its similarity only); ``"raw"`` averages the projected vectors (their norms
  weigh in too).
- IGA negatives (``iga_negatives``): the formula L_tf = −1/M Σ_j log exp(φ(p_j,t_j)/τ2) /
  Σ_k exp(φ(p_j,t_k)/τ2) contrasts each group p_j with the pair's *tokens* (``"elements"``,
  default); the prose ("t_j vs all other p_k") reads as the reverse (``"groups"``);
  ``"both"`` averages the two. Each pair's loss is a mean over its M_i valid anchors; the
  batch loss is the mean over pairs with at least one valid token.
- BCGA: one head with Q, K, V and no output projection, as the formula (``bcga_heads``,
  ``bcga_out_proj``); separate weights per direction (``bcga_shared=False``).
- L_g: symmetric InfoNCE (mean of both directions) at τ1 = 0.07 (MGCA's value; the summary
  names τ2 and τ3 only). λ1 = λ2 = λ3 = 1 (not in the summary; MGCA's CLI defaults).
- Under DDP, σ follows rank 0's batches (DDP broadcasts buffers from rank 0 every step).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import NEG_INF, CrossAttention, info_nce, l2norm
from . import register_method
from .dual import DualEncoder


@dataclass
class AGAConfig:
    """AGA's knobs (paper symbol in the comment; see the module docstring for our readings)."""

    embed_dim: int = 128            # d, joint width of patches, tokens and global vectors
    proj: str = "linear"            # projection heads of the dual encoder
    # §3.2–3.3 threshold gates
    gamma_tg: float = 0.99          # γ_tg, momentum of σ_tg (0.99 MIMIC-CXR / 0.999 SMTs, see docstring)
    gamma_vg: float = 0.99          # γ_vg, momentum of σ_vg
    sigma_init: float | None = None  # σ_tg, σ_vg at start (None: the first training batch's S̄)
    fixed_thresholds: bool = False  # ablation: σ_tg = 1/P, σ_vg = 1/T instead of momentum gates
    fixed_sigma_tg: float | None = None  # σ_tg of the fixed variant (None: 1/P)
    fixed_sigma_vg: float | None = None  # σ_vg of the fixed variant (None: 1/M_i, valid tokens of pair i)
    minmax_eps: float = 1e-6        # a row with max − min ≤ eps is "all equal" (normalised to 1)
    group_values: Literal["normalized", "raw"] = "normalized"  # what p_j, q_n average
    # §3.4 IGA
    tau2: float = 0.3               # τ2
    iga_negatives: Literal["elements", "groups", "both"] = "elements"
    # §3.5 BCGA
    tau3: float = 0.1               # τ3
    bcga_heads: int = 1             # attention heads of Q, K, V (formula: one)
    bcga_out_proj: bool = False     # output projection after attention (formula: none)
    bcga_shared: bool = False       # one attention for both directions
    # §3.6 objective
    tau1: float = 0.07              # τ1 of the global InfoNCE L_g (not in the summary: MGCA's)
    lambda1: float = 1.0            # λ1, weight of L_g
    lambda2: float = 1.0            # λ2, weight of (L_tf + L_vf)/2
    lambda3: float = 1.0            # λ3, weight of (L_gla + L_gva)/2
    # ablations
    use_iga: bool = True            # False: drop λ2·(L_tf + L_vf)/2
    use_bcga: bool = True           # False: drop λ3·(L_gla + L_gva)/2 (and the attention weights)
    global_only: bool = False       # True: L = λ1·L_g only
    # speed (ours, no paper knob): torch.compile the local part (§3.2–3.5) on CUDA ("auto"),
    # also on CPU ("always", worth it only for long runs: compiling takes a minute), or never
    compile: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self):
        for name in ("gamma_tg", "gamma_vg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("tau1", "tau2", "tau3"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.group_values not in ("normalized", "raw"):
            raise ValueError(f"group_values must be 'normalized' or 'raw', got {self.group_values!r}")
        if self.iga_negatives not in ("elements", "groups", "both"):
            raise ValueError(f"iga_negatives must be 'elements', 'groups' or 'both', got {self.iga_negatives!r}")
        if self.compile not in ("auto", "always", "never"):
            raise ValueError(f"compile must be 'auto', 'always' or 'never', got {self.compile!r}")
        if self.embed_dim % self.bcga_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by bcga_heads {self.bcga_heads}")


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


# --- §3.4 IGA ------------------------------------------------------------------------------
def within_pair_infonce(anchors: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor | None,
                        tau: float | Sequence[float], pair_mask: torch.Tensor | None = None,
                        normalized: bool = False) -> torch.Tensor:
    """InfoNCE inside each pair: anchor j against the pair's valid candidates, positive k = j.

        L = mean_i −1/M_i Σ_{j valid} log exp(φ(a_ij, c_ij)/τ) / Σ_{k valid} exp(φ(a_ij, c_ik)/τ)

    anchors, candidates (B, N, d) → 0-dim; or candidates (B, K, N, d), K terms with the same
    anchors (IGA's and BCGA's), each with its own ``tau`` (K floats) → (K,), one loss per term,
    from one product of the anchors with every term's candidates and one softmax.
    ``mask`` (B, N) bool or None (all valid); ``pair_mask`` (B,) bool, pairs to leave out when
    False (None: those without a valid element). φ = cosine (``normalized=True``: both inputs
    are already L2-normalised, φ = dot product). The mean is over the pairs kept (0 when
    none); a single valid element gives 0.
    """
    single = candidates.dim() == 3
    if single:
        candidates = candidates[:, None]
    b, k, n, _ = candidates.shape
    if not normalized:
        anchors, candidates = l2norm(anchors), l2norm(candidates)
    if single:
        anchors = anchors / tau
    else:
        inv_tau = torch.tensor(tau, dtype=candidates.dtype, device=candidates.device).reciprocal()
        candidates = candidates * inv_tau[:, None, None]                # φ/τ_k: τ folded into each term
    logits = torch.bmm(anchors, candidates.reshape(b, k * n, -1).transpose(1, 2)).view(b, n, k, n)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], NEG_INF)
    target = torch.arange(n, device=anchors.device).repeat_interleave(k).repeat(b)
    nll = F.cross_entropy(logits.reshape(b * n * k, n), target, reduction="none").view(b, n, k)
    if mask is None:
        per_pair = nll.mean(1)                                                          # (B, K)
        keep = pair_mask if pair_mask is not None else torch.ones(b, dtype=torch.bool, device=nll.device)
    else:
        count = mask.sum(1)
        per_pair = torch.where(mask[:, :, None], nll, 0.0).sum(1) / count.clamp_min(1)[:, None]
        keep = count > 0 if pair_mask is None else pair_mask & (count > 0)
    loss = torch.where(keep[:, None], per_pair, 0.0).sum(0) / keep.sum().clamp_min(1)  # (K,)
    return loss[0] if single else loss


def iga_loss(groups: torch.Tensor, elements: torch.Tensor, mask: torch.Tensor | None, tau: float,
             negatives: str = "elements", pair_mask: torch.Tensor | None = None,
             normalized: bool = False) -> torch.Tensor:
    """L_tf (groups = TGV p, elements = tokens t, mask = valid tokens) or L_vf (groups = PGL q,
    elements = patches v, mask = None, ``pair_mask`` = pairs with a token).

    ``"elements"``: −log exp(φ(p_j,t_j)/τ2) / Σ_k exp(φ(p_j,t_k)/τ2) (the paper's formula);
    ``"groups"``: −log exp(φ(t_j,p_j)/τ2) / Σ_k exp(φ(t_j,p_k)/τ2); ``"both"``: their mean.
    """
    if negatives not in ("elements", "groups", "both"):
        raise ValueError(f"unknown iga_negatives {negatives!r} (elements, groups or both)")
    if not normalized:
        groups, elements = l2norm(groups), l2norm(elements)
    terms = []
    if negatives in ("elements", "both"):
        terms.append(within_pair_infonce(groups, elements, mask, tau, pair_mask, normalized=True))
    if negatives in ("groups", "both"):
        terms.append(within_pair_infonce(elements, groups, mask, tau, pair_mask, normalized=True))
    return sum(terms) / len(terms)


# --- §3.5 BCGA -----------------------------------------------------------------------------
def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, N, H·dh) → (B·H, N, dh): attention heads as batch entries (a view for one head)."""
    return x if h == 1 else x.unflatten(-1, (h, -1)).transpose(1, 2).flatten(0, 1)


class BCGA(nn.Module):
    """Bidirectional cross-modal grouped alignment: each modality's groups attend over the other's.

        u_j = Σ_k softmax_k(Q p_j · K q_k / √d) V q_k      TGV p (B, T, d) over PGL q (B, P, d)
        w_n = Σ_j softmax_j(Q' q_n · K' p_j / √d) V' p_j   PGL q over the valid TGV p

    ``t2v`` and ``v2t`` are :class:`~medalign_lite.nn.CrossAttention` modules (their output
    projection replaced by the identity unless ``out_proj``), whose weights this applies to
    each modality in one product: p by [Q; K'; V'] (t2v's queries, v2t's keys and values), q
    by [Q'; K; V] (the scale 1/√d folded into Q and Q'); both directions then read their
    queries, keys and values as views of those two products. ``forward(p, q, text_mask)`` →
    (u (B, T, d), w (B, P, d), attention t→v (B, T, P), v→t (B, P, T), mean over heads).
    """

    def __init__(self, dim: int, heads: int = 1, out_proj: bool = False, shared: bool = False):
        super().__init__()
        self.t2v = CrossAttention(dim, heads)
        self.v2t = self.t2v if shared else CrossAttention(dim, heads)
        if not out_proj:
            self.t2v.out = nn.Identity()
            self.v2t.out = nn.Identity()

    def forward(self, p: torch.Tensor, q: torch.Tensor, text_mask: torch.Tensor):
        t2v, v2t = self.t2v, self.v2t
        (b, nt, d), n_p = p.shape, q.shape[1]
        h, dh = t2v.heads, t2v.head_dim
        scale = dh ** -0.5
        proj_p = F.linear(p, torch.cat([t2v.q.weight * scale, v2t.k.weight, v2t.v.weight]),
                          torch.cat([t2v.q.bias * scale, v2t.k.bias, v2t.v.bias]))     # (B, T, 3d)
        proj_q = F.linear(q, torch.cat([v2t.q.weight * scale, t2v.k.weight, t2v.v.weight]),
                          torch.cat([v2t.q.bias * scale, t2v.k.bias, t2v.v.bias]))     # (B, P, 3d)

        qp, kp, vp = (_heads(x, h) for x in proj_p.split(d, -1))      # each (B·H, T, dh)
        qq, kq, vq = (_heads(x, h) for x in proj_q.split(d, -1))      # each (B·H, P, dh)
        a_tv = torch.bmm(qp, kq.transpose(1, 2)).softmax(-1)                               # (B·H, T, P)
        logits_vt = torch.bmm(qq, kp.transpose(1, 2))                                      # (B·H, P, T)
        bias = torch.where(text_mask, 0.0, NEG_INF).to(logits_vt.dtype)
        a_vt = (logits_vt.view(b, h, n_p, nt) + bias[:, None, None, :]).softmax(-1).flatten(0, 1)
        u = torch.bmm(t2v.dropout(a_tv), vq)                                               # (B·H, T, dh)
        w = torch.bmm(v2t.dropout(a_vt), vp)                                               # (B·H, P, dh)
        if h > 1:
            u, w = (x.unflatten(0, (b, h)).transpose(1, 2).flatten(2) for x in (u, w))
        a_tv, a_vt = a_tv.view(b, h, nt, n_p).mean(1), a_vt.view(b, h, n_p, nt).mean(1)
        return t2v.out(u), v2t.out(w), a_tv, a_vt


def bcga_loss(groups: torch.Tensor, attended: torch.Tensor, mask: torch.Tensor | None, tau: float,
              pair_mask: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
    """L_gla (groups = p, attended = u, mask = valid tokens) or L_gva (q, w, mask = None,
    ``pair_mask`` = pairs with a token):

        L_gla = −1/M Σ_j log exp(φ(p_j,u_j)/τ3) / Σ_k exp(φ(p_j,u_k)/τ3)   (k inside the pair)
    """
    return within_pair_infonce(groups, attended, mask, tau, pair_mask, normalized)


# --- the head: §3.2–3.6 on projected embeddings ---------------------------------------------
#: ``torch.compile`` options of the head's local part (the tests swap in a quick backend).
COMPILE_OPTIONS: dict = {}
_compiled_local: Callable | None = None
_compile_error: str | None = None


class AGAHead(nn.Module):
    """Everything after the encoders and projections, on (B, ·, d) embeddings: similarity,
    gates, groups, IGA, BCGA, global loss and the objective. Holds σ_tg, σ_vg and BCGA's Q/K/V.

    ``forward(image_local (B, P, d), image_global (B, d), text_local (B, T, d), text_mask (B, T)
    bool, text_global (B, d))`` → dict:

    - ``loss`` = λ1·L_g + λ2/2·(L_tf + L_vf) + λ3/2·(L_gla + L_gva) and its parts
      ``loss_global`` (+ ``loss_global_i2t``, ``loss_global_t2i``), ``loss_tf``, ``loss_vf``,
      ``loss_gla``, ``loss_gva`` (detached; a part switched off is absent);
    - ``sigma_tg``, ``sigma_vg``: the thresholds this step gated with (0-dim; the fixed
      variant's per-pair σ_vg is reported as its mean); ``group_size_tgv`` (mean patches per
      TGV), ``group_size_pgl`` (mean tokens per PGL), ``empty_groups`` (groups that fell back
      to their best element, TGV + PGL; also ``empty_tgv``, ``empty_pgl``); all 0-dim floats;
    - for plots (detached): ``sim`` S (B, T, P); ``sim_tg`` normalised over patches and
      ``gated_tg`` after the gate; ``sim_vg`` normalised over tokens and ``gated_vg``
      (padding at −1 in ``sim_tg``/``sim_vg``, 0 after the gate); ``attn_t2v`` (B, T, P) and
      ``attn_v2t`` (B, P, T) when BCGA is on; ``text_mask``.

    The local part (§3.2–3.5, :meth:`local_terms`) reads σ and never writes it, so that
    ``torch.compile`` can take it whole (``AGAConfig.compile``); σ moves after it.
    """

    def __init__(self, config: AGAConfig | None = None):
        super().__init__()
        self.config = c = config or AGAConfig()
        self.gate_tg = ThresholdGate(c.gamma_tg, c.sigma_init)
        self.gate_vg = ThresholdGate(c.gamma_vg, c.sigma_init)
        use_bcga = c.use_bcga and not c.global_only
        self.bcga = BCGA(c.embed_dim, c.bcga_heads, c.bcga_out_proj, c.bcga_shared) if use_bcga else None

    def forward(self, image_local: torch.Tensor, image_global: torch.Tensor, text_local: torch.Tensor,
                text_mask: torch.Tensor, text_global: torch.Tensor) -> dict:
        c = self.config
        text_mask = text_mask.bool()
        # §3.6 global alignment L_g (batch InfoNCE, both directions)
        l_g, l_i2t, l_t2i = info_nce(image_global, text_global, c.tau1)
        out: dict = {"loss_global": l_g.detach(), "loss_global_i2t": l_i2t.detach(),
                     "loss_global_t2i": l_t2i.detach()}
        loss = c.lambda1 * l_g
        if c.global_only or not (c.use_iga or c.use_bcga):
            out["loss"] = loss
            return out
        local = self._local_fn(text_local.device)(self, image_local, text_local, text_mask)
        if not c.fixed_thresholds:  # the batch was gated with σ from before the step; now σ moves
            self.gate_tg.update(local["s_bar_tg"], local["any_valid"])
            self.gate_vg.update(local["s_bar_vg"], local["any_valid"])
        # §3.6 the objective
        if c.use_iga:
            loss = loss + c.lambda2 / 2 * (local["loss_tf"] + local["loss_vf"])
        if self.bcga is not None:
            loss = loss + c.lambda3 / 2 * (local["loss_gla"] + local["loss_gva"])
        out.update({k: v.detach() for k, v in local.items() if k != "any_valid"})
        out["text_mask"] = text_mask
        out["loss"] = loss
        return out

    def local_terms(self, image_local: torch.Tensor, text_local: torch.Tensor, text_mask: torch.Tensor) -> dict:
        """§3.2–3.5 on one batch: the similarity, both normalisations, the gates, the groups,
        and the IGA and BCGA terms, each side's terms (the tokens' L_tf and L_gla, the
        patches' L_vf and L_gva) as one product and one softmax. Reads σ, never writes it:
        the S̄ that σ moves towards is returned (``s_bar_tg``, ``s_bar_vg``, ``any_valid``)."""
        c = self.config
        b, p = text_local.shape[0], image_local.shape[1]
        # §3.2 similarity of the L2-normalised embeddings, min-max normalised both ways (≥ fp32)
        dtype = torch.promote_types(text_local.dtype, torch.float32)
        tokens_n, patches_n = l2norm(text_local), l2norm(image_local)
        s = torch.bmm(tokens_n, patches_n.transpose(1, 2)).to(dtype)        # S (B, T, P) = token_patch_similarity
        s_tg, s_vg = minmax_normalize_both(s, text_mask, c.minmax_eps, fill=-1.0)
        n_tok = text_mask.sum(1)                                             # M_i (B,)
        pair_mask = n_tok > 0                                                # a pair with a token has PGLs
        n_valid = n_tok.sum() * p                                            # valid (token, patch) entries
        r: dict = {"any_valid": n_valid > 0}

        # §3.2–3.3 thresholds: momentum gates on S̄ (mean over valid entries), or the fixed 1/P, 1/T
        if c.fixed_thresholds:
            sigma_tg = s.new_tensor(c.fixed_sigma_tg if c.fixed_sigma_tg is not None else 1.0 / p)
            if c.fixed_sigma_vg is not None:
                sigma_vg = s.new_tensor(c.fixed_sigma_vg)
            else:
                sigma_vg = (1.0 / n_tok.clamp_min(1).to(dtype))[:, None, None]  # (B, 1, 1)
        else:
            with torch.no_grad():  # padding is −1: clamping it to 0 leaves the sum of valid entries
                n_entries = n_valid.clamp_min(1).to(dtype)
                r["s_bar_tg"] = s_tg.clamp_min(0).sum() / n_entries
                r["s_bar_vg"] = s_vg.clamp_min(0).sum() / n_entries
            sigma_tg = self.gate_tg.threshold(r["s_bar_tg"]).to(dtype)
            sigma_vg = self.gate_vg.threshold(r["s_bar_vg"]).to(dtype)
        g_tg, keep_tg = threshold_gate(s_tg, sigma_tg)
        g_vg, keep_vg = threshold_gate(s_vg, sigma_vg)

        # §3.3 groups: TGV p_j (one per token), PGL q_n (one per patch)
        if c.group_values == "normalized":
            tokens, patches = tokens_n, patches_n
        else:
            tokens, patches = text_local, image_local
        grp_tgv = text_grouped_visual(g_tg.to(patches.dtype), patches)    # (B, T, d)
        grp_pgl = patch_grouped_language(g_vg.to(tokens.dtype), tokens)   # (B, P, d)

        # φ = cosine: every vector a loss compares is L2-normalised once, here.
        # §3.4 IGA and §3.5 BCGA, inside each pair; on each side the terms that share anchors
        # (the groups, with the paper's IGA negatives) are one product and one softmax
        tgv_n, pgl_n = l2norm(grp_tgv), l2norm(grp_pgl)
        tok_c, pat_c, taus = [], [], []
        if c.use_iga and c.iga_negatives in ("elements", "both"):   # p_j vs the tokens, q_n vs the patches
            tok_c.append(tokens_n), pat_c.append(patches_n), taus.append(c.tau2)
        if self.bcga is not None:                                    # p_j vs u, q_n vs w
            u, w, a_tv, a_vt = self.bcga(grp_tgv, grp_pgl, text_mask)
            tok_c.append(l2norm(u)), pat_c.append(l2norm(w)), taus.append(c.tau3)
            r.update(attn_t2v=a_tv, attn_v2t=a_vt)
        if tok_c:
            l_tok = within_pair_infonce(tgv_n, torch.stack(tok_c, 1), text_mask, taus, normalized=True)
            l_pat = within_pair_infonce(pgl_n, torch.stack(pat_c, 1), None, taus, pair_mask, normalized=True)
        if self.bcga is not None:
            r.update(loss_gla=l_tok[-1], loss_gva=l_pat[-1])
        if c.use_iga:
            l_tf, l_vf = [], []
            if c.iga_negatives in ("elements", "both"):
                l_tf.append(l_tok[0]), l_vf.append(l_pat[0])
            if c.iga_negatives in ("groups", "both"):                # t_j vs the groups p, v_m vs q
                l_tf.append(within_pair_infonce(tokens_n, tgv_n, text_mask, c.tau2, normalized=True))
                l_vf.append(within_pair_infonce(patches_n, pgl_n, None, c.tau2, pair_mask, normalized=True))
            r.update(loss_tf=sum(l_tf) / len(l_tf), loss_vf=sum(l_vf) / len(l_vf))

        with torch.no_grad():
            n_groups_tg = n_tok.sum().to(dtype)                              # valid TGVs
            n_groups_vg = pair_mask.sum().to(dtype) * p                      # valid PGLs
            # a group falls back to its best element only when σ > 1 (see threshold_gate)
            over_tg = (sigma_tg > 1).to(dtype).reshape(-1)
            over_vg = (sigma_vg > 1).to(dtype).reshape(-1)
            e_tg = (over_tg * n_tok.to(dtype)).sum() if over_tg.numel() == b else over_tg.sum() * n_groups_tg
            e_vg = ((over_vg * pair_mask.to(dtype)).sum() * p if over_vg.numel() == b
                    else over_vg.sum() * n_groups_vg)
            r.update(
                sigma_tg=sigma_tg.mean(), sigma_vg=sigma_vg.mean(),
                group_size_tgv=keep_tg.sum().to(dtype) / n_groups_tg.clamp_min(1),
                group_size_pgl=keep_vg.sum().to(dtype) / n_groups_vg.clamp_min(1),
                empty_groups=e_tg + e_vg, empty_tgv=e_tg, empty_pgl=e_vg,
                sim=s, sim_tg=s_tg, gated_tg=g_tg, sim_vg=s_vg, gated_vg=g_vg)
        return r

    def _local_fn(self, device: torch.device) -> Callable:
        """:meth:`local_terms`, compiled once per process (shared by every head: the weights are
        its inputs) where ``config.compile`` asks for it and ``torch.compile`` works."""
        global _compiled_local
        mode = self.config.compile
        if mode == "never" or (mode == "auto" and device.type != "cuda") or _compile_error is not None:
            return AGAHead.local_terms
        if _compiled_local is None:
            _compiled_local = torch.compile(AGAHead.local_terms, **COMPILE_OPTIONS)
        return _eager_on_failure


def _eager_on_failure(head: AGAHead, *args) -> dict:
    """The compiled local part; if compiling fails (no compiler, an unsupported Python), say so
    once and run eagerly from then on (the local part is pure: running it again is safe)."""
    global _compile_error
    try:
        _, text_local, text_mask = args  # reports vary in length: one graph for every T
        torch._dynamo.maybe_mark_dynamic(text_local, 1)
        torch._dynamo.maybe_mark_dynamic(text_mask, 1)
        return _compiled_local(head, *args)
    except Exception as e:  # noqa: BLE001 - any compiler failure; a real error recurs eagerly below
        cause = getattr(e, "inner_exception", None) or e.__cause__ or e
        lines = [line for line in str(cause).splitlines() if line.strip()]
        _compile_error = f"{type(e).__name__}: {lines[0] if lines else type(cause).__name__}"[:300]
        warnings.warn(f"AGA head: torch.compile failed ({_compile_error}); running eagerly "
                      "(set model.compile=never to skip compiling)", RuntimeWarning, stacklevel=3)
        return AGAHead.local_terms(head, *args)


# --- the model -----------------------------------------------------------------------------
@register_method("aga", config=AGAConfig, kind="dual_encoder", paper="AGA (Li et al., 2025)")
class AGA(DualEncoder):
    """AGA on a dual encoder: ``forward(batch)`` → :class:`AGAHead`'s dict (loss, parts,
    thresholds, group statistics, maps). ``encode_image`` / ``encode_text`` (global, for
    retrieval) are the dual encoder's."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, config: AGAConfig | None = None):
        config = config or AGAConfig()
        super().__init__(image_encoder, text_encoder, config.embed_dim, config.proj)
        self.config = config
        self.head = AGAHead(config)

    def forward(self, batch) -> dict:
        j = self.joint(batch)
        return self.head(j.image.patches, j.image.pooled, j.text.tokens, j.text.mask, j.text.pooled)


def term_gradient_norms(model: AGA, batch, prefix: str = "image_encoder.") -> dict[str, float]:
    """‖∂L_term/∂θ‖₂ of each term of the objective over the parameters named ``prefix*``.

    Terms: ``"L_g"``, ``"IGA"`` = (L_tf + L_vf)/2 and ``"BCGA"`` = (L_gla + L_gva)/2 (their
    λ = 1, as in the objective), on one batch, gates in eval mode (σ is not updated). The λ weights are
    swapped one term at a time and restored. A diagnostic for ablations: a term whose gradient
    at the encoder is orders of magnitude below the others cannot change what a short run
    learns (BCGA at initialisation: every u_j is nearly the same uniform-attention mean, so
    the contrast of p_j against them is flat).
    """
    c = model.config
    saved = (c.lambda1, c.lambda2, c.lambda3, model.training)
    params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    if not params:
        raise ValueError(f"no parameter starts with {prefix!r}")
    terms = {"L_g": (1.0, 0.0, 0.0)}
    if c.use_iga and not c.global_only:
        terms["IGA"] = (0.0, 1.0, 0.0)
    if model.head.bcga is not None and not c.global_only:
        terms["BCGA"] = (0.0, 0.0, 1.0)
    out = {}
    try:
        model.eval()
        for name, (l1, l2, l3) in terms.items():
            c.lambda1, c.lambda2, c.lambda3 = l1, l2, l3
            grads = torch.autograd.grad(model(batch)["loss"], params, allow_unused=True)
            out[name] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    finally:
        c.lambda1, c.lambda2, c.lambda3 = saved[:3]
        model.train(saved[3])
    return out


def build_aga(config: str | Path = "aga_tiny", overrides: Sequence[str] = ()) -> AGA:
    """An :class:`AGA` with fresh encoders from a config file's ``model:``, ``vision:`` and
    ``text:`` sections (``medalign_lite/configs/aga_tiny.yaml``, ``aga_full.yaml``, or a path).

    ``overrides`` are ``section.key=value`` (``"text.pretrained=false"``,
    ``"vision.pretrained=false"``, ``"model.gamma_tg=0.999"``).
    """
    from ..config import load_config, split_overrides
    from ..models.text import TextConfig, build_text_encoder
    from ..models.vision import VisionConfig, build_image_encoder

    per = split_overrides(overrides, ("model", "vision", "text"))
    model_cfg = load_config(AGAConfig, config, per["model"], section="model")
    vision_cfg = load_config(VisionConfig, config, per["vision"], section="vision")
    text_cfg = load_config(TextConfig, config, per["text"], section="text")
    return AGA(build_image_encoder(vision_cfg), build_text_encoder(text_cfg), model_cfg)


__all__ = [
    "AGA",
    "BCGA",
    "AGAConfig",
    "AGAHead",
    "ThresholdGate",
    "bcga_loss",
    "build_aga",
    "iga_loss",
    "minmax_normalize",
    "minmax_normalize_both",
    "momentum_update",
    "patch_grouped_language",
    "term_gradient_norms",
    "text_grouped_visual",
    "threshold_gate",
    "token_patch_similarity",
    "within_pair_infonce",
]
