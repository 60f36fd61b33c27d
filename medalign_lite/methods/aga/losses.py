"""§3.4–3.5: IGA and BCGA, the pair-internal contrasts, and (ours) the cross-pair group loss."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import NEG_INF, CrossAttention, l2norm, masked_mean
from .groups import minmax_normalize, text_grouped_visual, threshold_gate


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


# --- ours: the groups contrasted across pairs -------------------------------------------------
def cross_pair_group_loss(tokens: torch.Tensor, patches: torch.Tensor, text_mask: torch.Tensor,
                          sigma: torch.Tensor | float, tau: float, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """IGA's groups contrasted *across* pairs (``AGAConfig.iga_scope="batch"``; not in the paper,
    whose §3.4 keeps every negative inside the pair — its open question on sample-level groups).

    Report i's tokens are gated over the patches of *every* image k of the batch exactly as
    within a pair (min-max over patches, ŝ ≥ σ_tg), giving the groups p_j^(i←k); the report–image
    score is the mean over report i's valid tokens of φ(p_j^(i←k), t_ij), and the loss is
    GLoRIA's contrast of those scores over the batch, reports against images (the ``tf`` side)
    and images against reports (the ``vf`` side):

        Z_ik = 1/M_i Σ_j φ(p_j^(i←k), t_ij),   L_tf = CE_k(Z_i·/τ, i),   L_vf = CE_i(Z_·k/τ, k)

    tokens (B, T, d), patches (B, P, d), both L2-normalised; text_mask (B, T) bool; σ a scalar.
    Cost O(B²·T·P·d), as GLoRIA's. Returns (L_tf, L_vf).
    """
    b, t, d = tokens.shape
    p = patches.shape[1]
    s = torch.einsum("itd,kpd->iktp", tokens, patches).reshape(b * b, t, p)    # report i × image k
    mask = text_mask[:, None, :].expand(b, b, t).reshape(b * b, t, 1)
    gated, _ = threshold_gate(minmax_normalize(s, mask, dim=2, eps=eps, fill=-1.0)[0], sigma)
    groups = text_grouped_visual(gated, patches[None].expand(b, b, p, d).reshape(b * b, p, d))
    cos = (l2norm(groups).view(b, b, t, d) * tokens[:, None]).sum(-1)            # (B, B, T)
    z = masked_mean(cos, text_mask[:, None, :], dim=-1) / tau                    # (B reports, B images)
    target = torch.arange(b, device=z.device)
    return F.cross_entropy(z, target), F.cross_entropy(z.T, target)
