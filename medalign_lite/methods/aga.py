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
that this must equal lives in ``tests/methods/test_aga.py``. Cost: O(B·(T+P)·P·d) (the
patch-side losses compare P groups with P patches inside each pair), against GLoRIA's
O(B²·T·P·D) (every report against every image). In eager mode the head is a few hundred small
kernels, so on a GPU it is bound by launch overhead, not arithmetic: ``torch.compile`` (CUDA
graphs) brings it to the cost of its matrix products (``medalign bench aga --compile``).

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

from collections.abc import Sequence
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
        if self.embed_dim % self.bcga_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by bcga_heads {self.bcga_heads}")


# --- §3.2 fine-grained similarity ----------------------------------------------------------
def token_patch_similarity(tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """S_{b,jk} = φ(t_bj, v_bk) = cos(t_bj, v_bk) within each pair.

    tokens (B, T, d), patches (B, P, d) → S (B, T, P).
    """
    return torch.bmm(l2norm(tokens), l2norm(patches).transpose(1, 2))


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
    lo, hi = torch.where(any_valid, lo, 0.0), torch.where(any_valid, hi, 0.0)
    rng = hi - lo
    flat = (rng <= eps) & any_valid
    # per-slice constants, so that the full-size work is one subtraction, division and addition:
    # a flat or empty slice divides by ∞ (→ 0) and adds 1 (flat) or ``fill`` (no valid entry)
    den = torch.where(flat | ~any_valid, float("inf"), rng)
    offset = torch.where(flat, 1.0, torch.where(any_valid, 0.0, fill)).to(s.dtype)
    out = (s - lo) / den + offset
    if varies:
        out = torch.where(mask, out, fill)
    return out, flat


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

    ``forward(s_bar, valid=True)`` returns the σ this step gates with (0-dim): the stored σ
    (before the update) once initialised, else the batch's own S̄. In training mode it then
    stores γ·σ + (1−γ)·S̄ (or S̄ itself on the first step when ``init`` is None), but only when
    S̄ is finite and ``valid`` (0-dim bool: the batch had a valid token–patch entry); otherwise
    σ (and whether it is initialised) stays as it was. No host sync.
    """

    def __init__(self, gamma: float, init: float | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("sigma", torch.tensor(float(init) if init is not None else 0.0))
        self.register_buffer("initialized", torch.tensor(init is not None))

    def forward(self, s_bar: torch.Tensor, valid: torch.Tensor | bool = True) -> torch.Tensor:
        s_bar = s_bar.detach().to(self.sigma.dtype)
        used = torch.where(self.initialized, self.sigma, s_bar)
        if self.training:
            with torch.no_grad():
                ok = torch.isfinite(s_bar) & torch.as_tensor(valid, dtype=torch.bool, device=s_bar.device)
                # an uninitialised gate's σ is S̄ only where it may move: where(ok, ·, σ) keeps the old one
                start = torch.where(self.initialized, self.sigma, torch.where(ok, s_bar, self.sigma))
                self.sigma.copy_(momentum_update(start, s_bar, self.gamma, ok))
                self.initialized.logical_or_(ok)
        return used.clone()


# --- §3.4 IGA ------------------------------------------------------------------------------
def within_pair_infonce(anchors: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor | None,
                        tau: float, pair_mask: torch.Tensor | None = None, normalized: bool = False
                        ) -> torch.Tensor:
    """InfoNCE inside each pair: anchor j against the pair's valid candidates, positive k = j.

        L = mean_i −1/M_i Σ_{j valid} log exp(φ(a_ij, c_ij)/τ) / Σ_{k valid} exp(φ(a_ij, c_ik)/τ)

    anchors, candidates (B, N, d); ``mask`` (B, N) bool or None (all valid); ``pair_mask``
    (B,) bool, pairs to leave out when False (None: those without a valid element) → 0-dim.
    φ = cosine (``normalized=True``: both inputs are already L2-normalised, φ = dot product).
    The mean is over the pairs kept (0 when none); a single valid element gives 0.
    """
    b, n, _ = anchors.shape
    if not normalized:
        anchors, candidates = l2norm(anchors), l2norm(candidates)
    logits = torch.bmm(anchors / tau, candidates.transpose(1, 2))                   # (B, N, N)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :], NEG_INF)
    target = torch.arange(n, device=anchors.device).repeat(b)
    nll = F.cross_entropy(logits.reshape(b * n, n), target, reduction="none").view(b, n)
    if mask is None:
        per_pair = nll.mean(1)
        keep = pair_mask if pair_mask is not None else torch.ones(b, dtype=torch.bool, device=nll.device)
    else:
        count = mask.sum(1)
        per_pair = torch.where(mask, nll, 0.0).sum(1) / count.clamp_min(1)
        keep = count > 0 if pair_mask is None else pair_mask & (count > 0)
    return torch.where(keep, per_pair, 0.0).sum() / keep.sum().clamp_min(1)


def iga_loss(groups: torch.Tensor, elements: torch.Tensor, mask: torch.Tensor | None, tau: float,
             negatives: str = "elements", pair_mask: torch.Tensor | None = None,
             normalized: bool = False) -> torch.Tensor:
    """L_tf (groups = TGV p, elements = tokens t, mask = valid tokens) or L_vf (groups = PGL q,
    elements = patches v, mask = None, ``pair_mask`` = pairs with a token).

    ``"elements"``: −log exp(φ(p_j,t_j)/τ2) / Σ_k exp(φ(p_j,t_k)/τ2) (the paper's formula);
    ``"groups"``: −log exp(φ(t_j,p_j)/τ2) / Σ_k exp(φ(t_j,p_k)/τ2); ``"both"``: their mean.
    """
    if not normalized:
        groups, elements = l2norm(groups), l2norm(elements)
    if negatives == "elements":
        return within_pair_infonce(groups, elements, mask, tau, pair_mask, normalized=True)
    if negatives == "groups":
        return within_pair_infonce(elements, groups, mask, tau, pair_mask, normalized=True)
    if negatives == "both":
        return 0.5 * (within_pair_infonce(groups, elements, mask, tau, pair_mask, normalized=True)
                      + within_pair_infonce(elements, groups, mask, tau, pair_mask, normalized=True))
    raise ValueError(f"unknown iga_negatives {negatives!r} (elements, groups or both)")


# --- §3.5 BCGA -----------------------------------------------------------------------------
def _attend(att: CrossAttention, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None):
    """``att``'s weights, computed with the scale folded into Q and padding as an additive
    bias (fewer full-size passes than ``CrossAttention.forward``, same result for every query
    with a valid key). → (output (B, Q, D), attention (B, Q, K) averaged over heads)."""
    b, nq, _ = x.shape
    nk = y.shape[1]
    h, dh = att.heads, att.head_dim
    q = (att.q(x) * dh ** -0.5).view(b, nq, h, dh).transpose(1, 2)
    k = att.k(y).view(b, nk, h, dh).transpose(1, 2)
    v = att.v(y).view(b, nk, h, dh).transpose(1, 2)
    logits = q @ k.transpose(-1, -2)                                        # (B, H, Q, K)
    if key_mask is not None:
        bias = torch.where(key_mask, 0.0, NEG_INF).to(logits.dtype)
        logits = logits + bias[:, None, None, :]
    attn = logits.softmax(-1)
    if att.dropout.p > 0:
        attn = att.dropout(attn)
    u = (attn @ v).transpose(1, 2).reshape(b, nq, h * dh)
    return att.out(u), attn.mean(1) if h > 1 else attn[:, 0]


class BCGA(nn.Module):
    """Bidirectional cross-modal grouped alignment: each modality's groups attend over the other's.

        u_j = Σ_k softmax_k(Q p_j · K q_k / √d) V q_k      TGV p (B, T, d) over PGL q (B, P, d)
        w_n = Σ_j softmax_j(Q' q_n · K' p_j / √d) V' p_j   PGL q over the valid TGV p

    ``t2v`` and ``v2t`` are :class:`~medalign_lite.nn.CrossAttention` modules (their output
    projection replaced by the identity unless ``out_proj``). ``forward(p, q, text_mask)`` →
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
        u, a_tv = _attend(self.t2v, p, q, None)
        w, a_vt = _attend(self.v2t, q, p, text_mask)
        return u, w, a_tv, a_vt


def bcga_loss(groups: torch.Tensor, attended: torch.Tensor, mask: torch.Tensor | None, tau: float,
              pair_mask: torch.Tensor | None = None, normalized: bool = False) -> torch.Tensor:
    """L_gla (groups = p, attended = u, mask = valid tokens) or L_gva (q, w, mask = None,
    ``pair_mask`` = pairs with a token):

        L_gla = −1/M Σ_j log exp(φ(p_j,u_j)/τ3) / Σ_k exp(φ(p_j,u_k)/τ3)   (k inside the pair)
    """
    return within_pair_infonce(groups, attended, mask, tau, pair_mask, normalized)


# --- the head: §3.2–3.6 on projected embeddings ---------------------------------------------
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

        # §3.2 similarity of the L2-normalised embeddings, min-max normalised both ways (≥ fp32)
        b, p = text_local.shape[0], image_local.shape[1]
        dtype = torch.promote_types(text_local.dtype, torch.float32)
        tokens_n, patches_n = l2norm(text_local), l2norm(image_local)
        s = torch.bmm(tokens_n, patches_n.transpose(1, 2)).to(dtype)        # S (B, T, P) = token_patch_similarity
        valid = text_mask[:, :, None]                                        # (B, T, 1)
        s_tg, _ = minmax_normalize(s, valid, dim=2, eps=c.minmax_eps, fill=-1.0)  # over patches per token
        s_vg, _ = minmax_normalize(s, valid, dim=1, eps=c.minmax_eps, fill=-1.0)  # over tokens per patch
        n_tok = text_mask.sum(1)                                             # M_i (B,)
        pair_mask = n_tok > 0                                                # a pair with a token has PGLs
        n_valid = n_tok.sum() * p                                            # valid (token, patch) entries
        n_entries = n_valid.clamp_min(1).to(dtype)

        # §3.2–3.3 thresholds: momentum gates on S̄ (mean over valid entries), or the fixed 1/P, 1/T
        if c.fixed_thresholds:
            sigma_tg = s.new_tensor(c.fixed_sigma_tg if c.fixed_sigma_tg is not None else 1.0 / p)
            if c.fixed_sigma_vg is not None:
                sigma_vg = s.new_tensor(c.fixed_sigma_vg)
            else:
                sigma_vg = (1.0 / n_tok.clamp_min(1).to(dtype))[:, None, None]  # (B, 1, 1)
        else:
            with torch.no_grad():  # padding is −1: clamping it to 0 leaves the sum of valid entries
                s_bar_tg = s_tg.clamp_min(0).sum() / n_entries
                s_bar_vg = s_vg.clamp_min(0).sum() / n_entries
            # σ moves only on a finite S̄ of a batch with a valid entry (the gate checks both)
            sigma_tg = self.gate_tg(s_bar_tg, n_valid > 0).to(dtype)
            sigma_vg = self.gate_vg(s_bar_vg, n_valid > 0).to(dtype)
            out.update(s_bar_tg=s_bar_tg, s_bar_vg=s_bar_vg)  # what σ moves towards
        g_tg, keep_tg = threshold_gate(s_tg, sigma_tg)
        g_vg, keep_vg = threshold_gate(s_vg, sigma_vg)

        # §3.3 groups: TGV p_j (one per token), PGL q_n (one per patch)
        if c.group_values == "normalized":
            tokens, patches = tokens_n, patches_n
        else:
            tokens, patches = text_local, image_local
        grp_tgv = text_grouped_visual(g_tg.to(patches.dtype), patches)    # (B, T, d)
        grp_pgl = patch_grouped_language(g_vg.to(tokens.dtype), tokens)   # (B, P, d)

        # φ = cosine: every vector a loss compares is L2-normalised once, here
        tgv_n, pgl_n = l2norm(grp_tgv), l2norm(grp_pgl)
        # §3.4 IGA: inside each pair
        if c.use_iga:
            l_tf = iga_loss(tgv_n, tokens_n, text_mask, c.tau2, c.iga_negatives, normalized=True)
            l_vf = iga_loss(pgl_n, patches_n, None, c.tau2, c.iga_negatives, pair_mask, normalized=True)
            loss = loss + c.lambda2 / 2 * (l_tf + l_vf)
            out.update(loss_tf=l_tf.detach(), loss_vf=l_vf.detach())
        # §3.5 BCGA: cross-attention between the groups, then alignment inside each pair
        if self.bcga is not None:
            u, w, a_tv, a_vt = self.bcga(grp_tgv, grp_pgl, text_mask)
            l_gla = bcga_loss(tgv_n, l2norm(u), text_mask, c.tau3, normalized=True)
            l_gva = bcga_loss(pgl_n, l2norm(w), None, c.tau3, pair_mask, normalized=True)
            loss = loss + c.lambda3 / 2 * (l_gla + l_gva)
            out.update(loss_gla=l_gla.detach(), loss_gva=l_gva.detach(),
                       attn_t2v=a_tv.detach(), attn_v2t=a_vt.detach())

        with torch.no_grad():
            n_groups_tg = n_tok.sum().to(dtype)                              # valid TGVs
            n_groups_vg = pair_mask.sum().to(dtype) * p                      # valid PGLs
            # a group falls back to its best element only when σ > 1 (see threshold_gate)
            over_tg = (sigma_tg > 1).to(dtype).reshape(-1)
            over_vg = (sigma_vg > 1).to(dtype).reshape(-1)
            e_tg = (over_tg * n_tok.to(dtype)).sum() if over_tg.numel() == b else over_tg.sum() * n_groups_tg
            e_vg = ((over_vg * pair_mask.to(dtype)).sum() * p if over_vg.numel() == b
                    else over_vg.sum() * n_groups_vg)
            out.update(
                sigma_tg=sigma_tg.detach().mean(), sigma_vg=sigma_vg.detach().mean(),
                group_size_tgv=keep_tg.sum().to(dtype) / n_groups_tg.clamp_min(1),
                group_size_pgl=keep_vg.sum().to(dtype) / n_groups_vg.clamp_min(1),
                empty_groups=e_tg + e_vg, empty_tgv=e_tg, empty_pgl=e_vg,
                sim=s.detach(), sim_tg=s_tg.detach(), gated_tg=g_tg.detach(),
                sim_vg=s_vg.detach(), gated_vg=g_vg.detach(), text_mask=text_mask)
        out["loss"] = loss
        return out


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
    "momentum_update",
    "patch_grouped_language",
    "term_gradient_norms",
    "text_grouped_visual",
    "threshold_gate",
    "token_patch_similarity",
    "within_pair_infonce",
]
