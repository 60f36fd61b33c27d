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
- IGA across pairs (``iga_scope="batch"``, ours, off by default): the paper keeps every IGA
  negative inside the pair (§3.4) and leaves extending the groups to the sample level open. With
  ``"batch"`` each report's tokens are gated over every image of the batch by the same σ_tg, and
  the report–image scores (the tokens' mean cosine with their groups) are contrasted across the
  batch as GLoRIA does (:func:`~.losses.cross_pair_group_loss`, τ = ``tau_cross``). Notebook 02
  uses it to ask whether where IGA's negatives come from decides whether its maps ground.
- BCGA: one head with Q, K, V and no output projection, as the formula (``bcga_heads``,
  ``bcga_out_proj``); separate weights per direction (``bcga_shared=False``).
- L_g: symmetric InfoNCE (mean of both directions) at τ1 = 0.07 (MGCA's value; the summary
  names τ2 and τ3 only). λ1 = λ2 = λ3 = 1 (not in the summary; MGCA's CLI defaults).
- Under DDP, σ follows rank 0's batches (DDP broadcasts buffers from rank 0 every step).

Modules: :mod:`.config` (the knobs), :mod:`.groups` (§3.2–3.3: similarity, normalisation, gates,
groups), :mod:`.losses` (§3.4–3.5: IGA, BCGA, and the cross-pair variant), :mod:`.head` (the
objective on projected embeddings, §3.6), :mod:`.model` (the dual-encoder model, its builder, a
gradient diagnostic).
"""
from __future__ import annotations

from .config import AGAConfig
from .groups import (
    ThresholdGate,
    minmax_normalize,
    minmax_normalize_both,
    momentum_update,
    patch_grouped_language,
    text_grouped_visual,
    threshold_gate,
    token_patch_similarity,
)
from .head import AGAHead
from .losses import BCGA, bcga_loss, cross_pair_group_loss, iga_loss, within_pair_infonce
from .model import AGA, build_aga, term_gradient_norms

__all__ = [
    "AGA",
    "BCGA",
    "AGAConfig",
    "AGAHead",
    "ThresholdGate",
    "bcga_loss",
    "build_aga",
    "cross_pair_group_loss",
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
