"""§4 the projection heads, the image-conditioned MLM (mask, head, the image feature added to the
token embeddings)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


# --- §4 losses: heads, MLM ------------------------------------------------------------------
class ProjectionHead(nn.Module):
    """The code's projection head (BERT's prediction-head transform): Linear → GELU → LayerNorm →
    Linear, din → dout → dout."""

    def __init__(self, din: int, dout: int):
        super().__init__()
        self.dense_to_hidden = nn.Linear(din, dout)
        self.LayerNorm = nn.LayerNorm(dout, eps=1e-12)
        self.dense_to_output = nn.Linear(dout, dout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


class MLMHead(nn.Module):
    """BERT's MLM head with the output matrix tied to the word embeddings E (V, D):
    logits = LN(GELU(W h + b)) Eᵀ + b_vocab. E is passed in (it belongs to the text encoder)."""

    def __init__(self, dim: int, vocab: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.LayerNorm(F.gelu(self.dense(hidden))), embeddings, self.bias)


def mlm_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor, mask_id: int,
             probability: float = 0.5, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each attended, non-special token with probability ``probability`` (all → [MASK]).
    Returns (masked ids (B, T), labels (B, T): the original id where masked, −100 elsewhere)."""
    candidate = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    masked = candidate & (draw < probability)
    return torch.where(masked, mask_id, input_ids), torch.where(masked, input_ids, -100)


def _bert_body(model: nn.Module) -> nn.Module:
    """The BertModel inside a text model (the model itself, or ``.bert`` of a BertForMaskedLM)."""
    if hasattr(model, "embeddings"):
        return model
    if hasattr(model, "bert"):
        return model.bert
    raise ValueError(f"{type(model).__name__}: image-conditioned MLM needs a BERT-family text encoder")


@contextlib.contextmanager
def added_to_embeddings(body: nn.Module, shift: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``body.embeddings``' output (after its LayerNorm) gets ``shift`` added
    ((B, 1, D): one image feature per report, as the code's MLM conditioning)."""
    handle = body.embeddings.register_forward_hook(lambda module, args, out: out + shift)
    try:
        yield
    finally:
        handle.remove()
