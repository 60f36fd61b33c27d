"""Small pieces every method uses: InfoNCE, masked reductions and softmax, cross-attention,
GELU MLPs (the LLaVA-style projector of S2D's ablation and ExGra-Med), freezing a pretrained module.

Shapes use named dims: B batch, T tokens, P patches, D width. Masks are bool, True = valid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = -1e4  # large-negative fill that stays finite in fp16/bf16 after scaling


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float, weight_ab: float = 0.5,
             normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch InfoNCE between paired rows of ``a`` (B, D) and ``b`` (B, D).

    L_ab = −1/B Σ_i log exp(s_ii/τ) / Σ_k exp(s_ik/τ),  L_ba the same over columns,
    loss = w·L_ab + (1−w)·L_ba (ConVIRT's λ is ``weight_ab``; CLIP's symmetric loss is w = ½).
    Returns (loss, L_ab, L_ba).
    """
    if normalize:
        a, b = l2norm(a), l2norm(b)
    logits = a @ b.t() / tau
    target = torch.arange(a.shape[0], device=a.device)
    l_ab = F.cross_entropy(logits, target)
    l_ba = F.cross_entropy(logits.t(), target)
    return weight_ab * l_ab + (1 - weight_ab) * l_ba, l_ab, l_ba


def mean_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine between the distinct rows of ``x`` (N, D), N ≥ 2: a collapse monitor for
    contrastive embeddings. Near 1 the batch sits on one point and InfoNCE's logits are uniform
    (loss ln N); spread-out embeddings give values near 0. Computed as (‖Σ x̂‖² − N) / (N² − N)
    from the unit rows x̂, without the (N, N) matrix."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 rows, got {n}")
    u = l2norm(x.float())
    return (u.sum(0).pow(2).sum() - n) / (n * n - n)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int, eps: float = 1e-6) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is True.

    ``mask`` broadcasts against ``x`` after unsqueezing trailing dims (e.g. x (B,T,D), mask (B,T)).
    """
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(eps)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` with masked-out entries at exactly zero; an all-masked slice gives
    zeros (not NaN)."""
    logits = logits.masked_fill(~mask, NEG_INF)
    p = torch.softmax(logits, dim=dim) * mask.to(logits.dtype)
    return p / p.sum(dim, keepdim=True).clamp_min(1e-12)


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log Σ exp(x) over the valid entries of ``dim``."""
    return torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=dim)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries (B, Q, D) attend over keys/values (B, K, D).

    u_q = Σ_k softmax_k(W_q x_q · W_k y_k / √d_h) W_v y_k, heads concatenated and projected.
    ``key_mask`` (B, K) bool hides padding. Returns (output (B, Q, D), attention (B, H, Q, K)).
    """

    def __init__(self, dim: int, heads: int = 1, kdim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        kdim = kdim or dim
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kdim, dim)
        self.v = nn.Linear(kdim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, q_len, _ = x.shape
        k_len = y.shape[1]
        q = self.q(x).view(b, q_len, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(y).view(b, k_len, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(y).view(b, k_len, self.heads, self.head_dim).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / self.head_dim ** 0.5          # (B, H, Q, K)
        if key_mask is not None:
            attn = masked_softmax(logits, key_mask[:, None, None, :], dim=-1)
        else:
            attn = logits.softmax(-1)
        u = (self.dropout(attn) @ v).transpose(1, 2).reshape(b, q_len, -1)
        return self.out(u), attn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    """``layers`` linears in_dim → hidden → … → out_dim with GELU between them."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(nn.GELU())
    return nn.Sequential(*mods)


class MLPProjector(nn.Module):
    """LLaVA's ``mlp2x_gelu`` projector: C = W2 GELU(W1 x + b1) + b2 for every token
    (S2D's MLP-projector ablation, ExGra-Med's projector).

    ``forward(x (B, N, D_in), mask=None)`` → (B, N, H_lm); the mask passes through unchanged
    (handled by the caller)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = mlp(in_dim, out_dim, out_dim, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(x.to(self.mlp[0].weight.dtype))


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad=False`` on every parameter and ``eval()`` (BatchNorm uses its running
    statistics, dropout is off); returns ``module``.

    A parent's ``.train()`` switches the children back to training mode, and a BatchNorm in
    training mode updates its running statistics even without gradients: a model holding a
    frozen encoder must call ``freeze`` (or ``encoder.eval()``) again in its own ``train``.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()

