"""Tiny stand-in encoders for method tests: real shapes, no weights to load, fast."""
from __future__ import annotations

from torch import nn

from medalign_lite.models.features import ImageFeatures, TextFeatures

#: The smallest ViT-MAE config the MAE and ALTA tests build (transformers' ViTMAEConfig as a dict):
#: 16 px images, 4 px patches (L = 16, a quarter visible at ratio 0.75), 16 wide, one block.
TINY_MAE = {"model_type": "vit_mae", "image_size": 16, "patch_size": 4, "num_channels": 1, "hidden_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "decoder_hidden_size": 8,
            "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2, "decoder_intermediate_size": 16,
            "norm_pix_loss": True}


class FakeImageEncoder(nn.Module):
    """A 4×4-stride conv: a 16 px image gives a 4×4 patch grid (P = 16)."""

    global_dim, patch_dim = 12, 10

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, self.patch_dim, 4, stride=4)
        self.head = nn.Linear(self.patch_dim, self.global_dim)

    def forward(self, images):
        f = self.conv(images)                                  # (B, Dl, h, w)
        patches = f.flatten(2).transpose(1, 2)
        return ImageFeatures(self.head(patches.mean(1)), patches, tuple(f.shape[-2:]))


class FakeTextEncoder(nn.Module):
    """An embedding table; the pooled vector is the mean of the valid tokens."""

    dim = 9

    def __init__(self, vocab=50):
        super().__init__()
        self.emb = nn.Embedding(vocab, self.dim)

    def forward(self, input_ids, attention_mask, **_):
        tok = self.emb(input_ids)
        m = attention_mask.bool()
        return TextFeatures((tok * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1), tok, m)
