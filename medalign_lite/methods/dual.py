"""The dual encoder every contrastive method starts from: image and text encoders plus global
and local projections into one joint space of width d.

GLoRIA projects ``layer3`` patches with a bias-free 1×1 convolution (a per-patch Linear) and
the pooled ``layer4`` vector with a Linear; MGCA and AGA use the same layout at d = 128. The
projections here are Linear by default, or a 2-layer MLP (``proj="mlp"``, ConVIRT's head).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.features import ImageFeatures, TextFeatures
from ..nn import l2norm


def projection(din: int, dout: int, kind: str = "linear", bias: bool = True) -> nn.Module:
    if kind == "linear":
        return nn.Linear(din, dout, bias=bias)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(din, din), nn.ReLU(inplace=True), nn.Linear(din, dout))
    raise ValueError(f"unknown projection {kind!r} (linear or mlp)")


@dataclass
class Joint:
    """Both modalities in the joint space: global (B, d) and local (B, P|T, d) embeddings."""

    image: ImageFeatures
    text: TextFeatures


class DualEncoder(nn.Module):
    """Image encoder + text encoder + four projections (global/local × image/text).

    ``image_encoder(images) -> ImageFeatures`` and ``text_encoder(input_ids, attention_mask,
    **extras) -> TextFeatures`` are any modules with those signatures and the attributes
    ``global_dim``/``patch_dim`` (image) and ``dim`` (text).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int,
                 proj: str = "linear"):
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.embed_dim = embed_dim
        self.img_global = projection(image_encoder.global_dim, embed_dim, proj)
        self.img_local = projection(image_encoder.patch_dim, embed_dim, proj, bias=False)
        self.txt_global = projection(text_encoder.dim, embed_dim, proj)
        self.txt_local = projection(text_encoder.dim, embed_dim, proj, bias=False)

    def embed_images(self, images: torch.Tensor) -> ImageFeatures:
        f = self.image_encoder(images)
        return ImageFeatures(self.img_global(f.pooled), self.img_local(f.patches), f.grid)

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extras) -> TextFeatures:
        f = self.text_encoder(input_ids, attention_mask, **extras)
        return TextFeatures(self.txt_global(f.pooled), self.txt_local(f.tokens), f.mask, f.words)

    def joint(self, batch) -> Joint:
        if batch.input_ids is None:
            raise ValueError("the batch has no input_ids: build the DataLoader with "
                             "Collate(tokenizer=model.tokenize)")
        extras = {"word_ids": batch.word_ids} if getattr(batch, "word_ids", None) is not None else {}
        return Joint(self.embed_images(batch.images),
                     self.embed_texts(batch.input_ids, batch.attention_mask, **extras))

    # --- retrieval interface -------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> dict:
        return self.text_encoder.tokenize(texts)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, d) L2-normalised global image embeddings."""
        return l2norm(self.embed_images(images).pooled)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extras) -> torch.Tensor:
        """(B, d) L2-normalised global text embeddings."""
        return l2norm(self.embed_texts(input_ids, attention_mask, **extras).pooled)
