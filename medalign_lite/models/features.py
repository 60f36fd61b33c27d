"""Typed encoder outputs shared by every method (shapes with named dims: B batch, P patches,
T tokens, D width)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageFeatures:
    """What an image encoder returns.

    Attributes:
        pooled: (B, Dg) the global image vector (pooled last stage, or CLS).
        patches: (B, P, Dl) local features, one per patch of a ``grid`` = (h, w) map, row-major
            (P = h·w). Dg and Dl may differ (ResNet-50: 2048 global, 1024 from ``layer3``).
        grid: (h, w) of the patch map, to draw a patch vector back onto the image.
    """

    pooled: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]


@dataclass
class TextFeatures:
    """What a text encoder returns.

    Attributes:
        pooled: (B, D) the global text vector (CLS or mean of valid tokens, per encoder).
        tokens: (B, T, D) token (or merged word) embeddings.
        mask: (B, T) bool, True for real tokens (no padding, no [CLS]/[SEP] when the encoder
            drops them for local losses).
        words: optional B lists of the T token strings (after word-piece merging), for plots.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    words: list[list[str]] | None = None
