"""The head: §3.2–3.6 on projected embeddings (:class:`AGAHead`), and how its local part is compiled."""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from ...nn import info_nce, l2norm
from .config import AGAConfig
from .groups import ThresholdGate, minmax_normalize_both, patch_grouped_language, text_grouped_visual, threshold_gate
from .losses import BCGA, cross_pair_group_loss, within_pair_infonce

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
        within = c.use_iga and c.iga_scope == "pair"
        if within and c.iga_negatives in ("elements", "both"):      # p_j vs the tokens, q_n vs the patches
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
        if c.use_iga and c.iga_scope == "batch":                     # ours: the groups across pairs
            l_tf, l_vf = cross_pair_group_loss(tokens_n, patches_n, text_mask, sigma_tg, c.tau_cross, c.minmax_eps)
            r.update(loss_tf=l_tf, loss_vf=l_vf)
        elif within:
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
