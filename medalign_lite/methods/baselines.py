"""Baselines: ConVIRT (global contrastive) and GLoRIA (global + attention-based local).

ConVIRT (Zhang et al., 2020) aligns one image vector with one report vector:

    L = λ·L_{v→u} + (1−λ)·L_{u→v},   L_{v→u} = −log exp(⟨v_i,u_i⟩/τ) / Σ_k exp(⟨v_i,u_k⟩/τ)

with τ = 0.1, λ = 0.75 and 2-layer MLP heads.

GLoRIA (Huang et al., 2021) adds a *local* loss. Every word t of report i attends over the P
regions of **every** image j of the batch (the ControlGAN attention GLoRIA inherits: a
softmax over words for each region, then a softmax over regions sharpened by τ1 = 4)::

    a_{ij,tp} = softmax_p( τ1 · softmax_t( w_{it} · r_{jp} ) )         (B, B, T, P)
    c_{ij,t}  = Σ_p a_{ij,tp} r_{jp}                                     (B, B, T, D)
    Z_{ij}    = log Σ_t exp( τ2 · cos(w_{it}, c_{ij,t}) )                 (B, B), τ2 = 5

and trains Z·τ3 (τ3 = 10) with cross-entropy in both directions; the global loss is cosine·τ3
with cross-entropy both ways; total = λ_local·(L_l0 + L_l1) + λ_global·(L_g0 + L_g1).
Written here as one batched computation (cost O(B²·T·P·D), memory O(B²·T·(P+D))) instead of
GLoRIA's Python loop over reports; ``tests/methods/test_baselines.py`` keeps a per-pair
reference that must agree within 1e-5. ``chunk`` bounds the memory of the forward pass by
processing reports in chunks (identical result).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import info_nce, l2norm, masked_logsumexp, masked_softmax
from . import register_method
from .dual import DualEncoder


# --- ConVIRT -------------------------------------------------------------------------------
@dataclass
class ConVIRTConfig:
    embed_dim: int = 512       # ConVIRT projection width
    tau: float = 0.1           # τ
    lam: float = 0.75          # λ, weight of the image→text direction
    proj: str = "mlp"          # ConVIRT's non-linear heads


@register_method("convirt", config=ConVIRTConfig, kind="dual_encoder", paper="ConVIRT (Zhang et al., 2020)")
class ConVIRT(DualEncoder):
    """Global image–report InfoNCE (``forward(batch)`` → loss, loss_i2t, loss_t2i)."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, config: ConVIRTConfig | None = None):
        config = config or ConVIRTConfig()
        super().__init__(image_encoder, text_encoder, config.embed_dim, config.proj)
        self.config = config

    def forward(self, batch) -> dict:
        j = self.joint(batch)
        loss, l_i2t, l_t2i = info_nce(j.image.pooled, j.text.pooled, self.config.tau, self.config.lam)
        return {"loss": loss, "loss_i2t": l_i2t.detach(), "loss_t2i": l_t2i.detach()}


# --- GLoRIA --------------------------------------------------------------------------------
@dataclass
class GLoRIAConfig:
    embed_dim: int = 768       # GLoRIA projects to BERT's width
    temp1: float = 4.0         # τ1, attention sharpness over regions
    temp2: float = 5.0         # τ2, word-level aggregation
    temp3: float = 10.0        # τ3, logit scale of both losses
    local_weight: float = 1.0  # λ_local
    global_weight: float = 1.0 # λ_global
    agg: str = "sum"           # word aggregation in training ("sum"); GLoRIA uses "max" at inference
    chunk: int | None = None   # reports per chunk in the local loss (None: all at once)
    proj: str = "linear"


def gloria_attention(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                     temp1: float) -> torch.Tensor:
    """ControlGAN/GLoRIA attention of every report's words over every image's regions.

    words (Bt, T, D), word_mask (Bt, T), regions (Bi, P, D) → attention (Bt, Bi, T, P):
    a softmax over the valid words for each region, then softmax over regions of τ1·that.
    """
    logits = torch.einsum("itd,jpd->ijtp", words, regions)
    over_words = masked_softmax(logits, word_mask[:, None, :, None], dim=2)
    return torch.softmax(temp1 * over_words, dim=3)


def gloria_local_similarity(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                            temp1: float = 4.0, temp2: float = 5.0, agg: str = "sum",
                            chunk: int | None = None, route: str = "auto") -> torch.Tensor:
    """Z (Bt, Bi): report i vs image j, log Σ_t exp(τ2·cos(w_it, c_ij,t)) over valid words
    (``agg="max"``: max_t cos, GLoRIA's inference score).

    The cosine needs w·c and |c| of the attended context c_ij,t = Σ_p a_ij,tp r_jp. ``route``
    picks how (the same numbers up to float rounding, tested):

    - ``"context"``: build c (Bt, Bi, T, D), then the cosine — O(Bt·Bi·T·P·D);
    - ``"gram"``: never build c. w_it·c_ij,t = Σ_p a_ij,tp (w_it·r_jp) reuses the attention
      logits, and |c_ij,t|² = a_ij,tᵀ G_j a_ij,t with G_j = R_j R_jᵀ the (P, P) Gram matrix of
      image j's regions — O(Bt·Bi·T·P²), cheaper whenever P < D (ResNet-50 layer3 at 299 px:
      P = 361 against D = 768; the tiny CNN: 36 against 128);
    - ``"auto"``: ``"gram"`` when P < D, else ``"context"``.
    """
    if route not in ("auto", "gram", "context"):
        raise ValueError(f"unknown route {route!r} (auto, gram or context)")
    if agg not in ("sum", "max"):
        raise ValueError(f"unknown agg {agg!r} (sum or max)")
    if route == "auto":
        route = "gram" if regions.shape[1] < regions.shape[2] else "context"
    bt = words.shape[0]
    step = chunk or bt
    gram = regions @ regions.transpose(1, 2) if route == "gram" else None   # (Bi, P, P)
    rows = []
    for s in range(0, bt, step):  # chunks of reports bound memory; each chunk is fully batched
        w, m = words[s:s + step], word_mask[s:s + step]
        logits = torch.einsum("itd,jpd->ijtp", w, regions)                 # (b, Bi, T, P)
        attn = torch.softmax(temp1 * masked_softmax(logits, m[:, None, :, None], dim=2), dim=3)
        if route == "context":
            context = torch.einsum("ijtp,jpd->ijtd", attn, regions)        # (b, Bi, T, D)
            cos = F.cosine_similarity(w[:, None], context, dim=-1, eps=1e-8)  # (b, Bi, T)
        else:
            dot = (attn * logits).sum(-1)                                  # w·c, (b, Bi, T)
            c_sq = (torch.einsum("ijtp,jpq->ijtq", attn, gram) * attn).sum(-1)   # |c|²
            w_norm = w.norm(dim=-1)[:, None, :]                            # (b, 1, T)
            # as F.cosine_similarity: x·y / (max(|x|, eps) · max(|y|, eps))
            cos = dot / (w_norm.clamp_min(1e-8) * c_sq.clamp_min(0).sqrt().clamp_min(1e-8))
        mm = m[:, None, :].expand_as(cos)
        if agg == "sum":
            rows.append(masked_logsumexp(temp2 * cos, mm, dim=-1))
        else:
            rows.append(cos.masked_fill(~mm, float("-inf")).amax(-1))
    return torch.cat(rows, 0)


def gloria_local_loss(words: torch.Tensor, word_mask: torch.Tensor, regions: torch.Tensor,
                      temp1: float = 4.0, temp2: float = 5.0, temp3: float = 10.0,
                      chunk: int | None = None, route: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(L_image→text, L_text→image) of GLoRIA's local alignment for paired batches."""
    z = gloria_local_similarity(words, word_mask, regions, temp1, temp2, "sum", chunk, route) * temp3
    target = torch.arange(z.shape[0], device=z.device)
    return F.cross_entropy(z.t(), target), F.cross_entropy(z, target)


def gloria_global_loss(img: torch.Tensor, txt: torch.Tensor, temp3: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_image→text, L_text→image): cosine similarity × τ3, cross-entropy both ways."""
    logits = l2norm(img) @ l2norm(txt).t() * temp3
    target = torch.arange(img.shape[0], device=img.device)
    return F.cross_entropy(logits, target), F.cross_entropy(logits.t(), target)


@register_method("gloria", config=GLoRIAConfig, kind="dual_encoder", paper="GLoRIA (Huang et al., 2021)")
class GLoRIA(DualEncoder):
    """GLoRIA: ``forward(batch)`` → loss, its four parts, and the matched pairs' word→region
    attention ``attn`` (B, T, P) for plots."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, config: GLoRIAConfig | None = None):
        config = config or GLoRIAConfig()
        super().__init__(image_encoder, text_encoder, config.embed_dim, config.proj)
        self.config = config

    def forward(self, batch) -> dict:
        c = self.config
        j = self.joint(batch)
        words, mask, regions = j.text.tokens, j.text.mask, j.image.patches
        l_l0, l_l1 = gloria_local_loss(words, mask, regions, c.temp1, c.temp2, c.temp3, c.chunk)
        l_g0, l_g1 = gloria_global_loss(j.image.pooled, j.text.pooled, c.temp3)
        loss = c.local_weight * (l_l0 + l_l1) + c.global_weight * (l_g0 + l_g1)
        with torch.no_grad():  # matched pairs only, for the notebook's maps
            logits = torch.einsum("btd,bpd->btp", words, regions)
            attn = torch.softmax(c.temp1 * masked_softmax(logits, mask[:, :, None], dim=1), dim=2)
        return {"loss": loss, "loss_local_i2t": l_l0.detach(), "loss_local_t2i": l_l1.detach(),
                "loss_global_i2t": l_g0.detach(), "loss_global_t2i": l_g1.detach(), "attn": attn}

    @torch.no_grad()
    def local_similarity(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         **extras) -> torch.Tensor:
        """GLoRIA's inference local score (reports × images), words aggregated with max."""
        img = self.embed_images(images)
        txt = self.embed_texts(input_ids, attention_mask, **extras)
        return gloria_local_similarity(txt.tokens, txt.mask, img.patches, self.config.temp1,
                                       self.config.temp2, "max", self.config.chunk)
