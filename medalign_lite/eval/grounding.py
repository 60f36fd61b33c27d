"""Grounding metrics against finding masks: pointing game and pixel-level AUROC.

IU-Phantom renders a mask for every finding, so a model's word/phrase-to-patch similarity map
can be scored against ground truth that no real dataset has. Every map is first brought to the
mask resolution by bilinear upsampling (``align_corners=False``, the convention of
``F.interpolate`` / BioViL's heatmaps).

* **Pointing game** (Zhang et al. 2016, used for GLoRIA / BioViL-style grounding): the argmax
  pixel of the upsampled map is a *hit* when it lies inside the mask, or within ``tolerance``
  pixels (Euclidean) of a mask pixel. Ties: the first maximum in row-major order.
* **Mask AUROC**: per item, the AUROC of the map's pixel values as a detector of mask pixels
  (= probability that a random in-mask pixel outscores a random out-of-mask pixel; ties count
  ½). Computed with ranks (no loop over pixels); items chunked for memory.

Items whose mask is empty (no finding drawn) are undefined for both metrics and are skipped
and counted; for mask AUROC a full mask (no background) is skipped too.

Shapes: N items (one map per image–finding pair), P = h·w patches, H×W mask pixels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medalign_lite.eval.zeroshot import auroc

_CHUNK_PIXELS = 1 << 23  # items per chunk in mask_auroc: about 8M pixels


def upsample_maps(sim: torch.Tensor, grid: Sequence[int] | None = None,
                  size: Sequence[int] = (224, 224)) -> torch.Tensor:
    """Bilinearly upsample similarity maps to the mask size.

    Args:
        sim: (N, P) patch scores in row-major order (then ``grid`` = (h, w) is needed, as given
            by ``ImageFeatures.grid``) or (N, h, w) maps.
        grid: (h, w) with h·w = P for flat input.
        size: (H, W) output size.

    Returns:
        (N, H, W) float32 maps (``align_corners=False``).
    """
    if sim.ndim == 2:
        if grid is None:
            raise ValueError("flat (N, P) maps need grid=(h, w)")
        h, w = grid
        if h * w != sim.shape[1]:
            raise ValueError(f"grid {tuple(grid)} does not match P={sim.shape[1]}")
        sim = sim.reshape(sim.shape[0], h, w)
    elif sim.ndim != 3:
        raise ValueError(f"maps must be (N, P) or (N, h, w), got {tuple(sim.shape)}")
    return F.interpolate(sim[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def similarity_maps(patches: torch.Tensor, text: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Cosine similarity of each item's patches with its phrase embedding, as (N, h, w) maps.

    ``m_n[p] = <p̂_np, t̂_n>`` for patches (N, P, D) and phrase/word embeddings (N, D) (one phrase
    per item: repeat an image's patches once per finding).
    """
    s = torch.einsum("npd,nd->np", F.normalize(patches.float(), dim=-1), F.normalize(text.float(), dim=-1))
    return s.reshape(s.shape[0], *grid)


def _check_pair(sim_maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.as_tensor(masks).bool()
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got {tuple(masks.shape)}")
    if sim_maps.ndim != 3 or sim_maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps {tuple(sim_maps.shape)} must be (N, h, w) with N = {masks.shape[0]}")
    if torch.isnan(sim_maps).any():
        raise ValueError("similarity maps contain NaN")
    return sim_maps, masks


def pointing_game(sim_maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> dict:
    """Pointing-game accuracy of similarity maps against finding masks.

    Args:
        sim_maps: (N, h, w) similarity maps (any resolution).
        masks: (N, H, W) bool finding masks.
        tolerance: a hit may miss the mask by up to this many pixels (Euclidean distance from
            the argmax pixel to the nearest mask pixel ≤ tolerance). 0: strictly inside.

    Returns:
        ``{"accuracy": hits / valid items, "hits": (N,) bool, "valid": (N,) bool (non-empty
        mask), "n_skipped": empty masks, "points": (N, 2) long (row, col) argmax pixels}``.
    """
    sim_maps, masks = _check_pair(sim_maps, masks)
    n, height, width = masks.shape
    up = upsample_maps(sim_maps, size=(height, width))                       # (N, H, W)
    flat = up.reshape(n, -1).argmax(dim=1)                                   # first maximum
    rows, cols = flat // width, flat % width
    items = torch.arange(n)
    if tolerance <= 0:
        hits = masks[items, rows, cols]
    else:  # look at the disc of radius `tolerance` around every argmax at once
        r = torch.arange(-tolerance, tolerance + 1)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        disc = (dy**2 + dx**2) <= tolerance**2
        dy, dx = dy[disc], dx[disc]                                          # (K,) offsets
        yy, xx = rows[:, None] + dy, cols[:, None] + dx                      # (N, K)
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        vals = masks[items[:, None], yy.clamp(0, height - 1), xx.clamp(0, width - 1)]
        hits = (vals & inside).any(dim=1)
    valid = masks.flatten(1).any(dim=1)
    hits = hits & valid
    n_valid = int(valid.sum())
    return {"accuracy": float(hits.sum()) / n_valid if n_valid else float("nan"), "hits": hits,
            "valid": valid, "n_skipped": n - n_valid, "points": torch.stack([rows, cols], dim=1)}


def mask_auroc(sim_maps: torch.Tensor, masks: torch.Tensor, chunk_size: int | None = None) -> dict:
    """Pixel-level AUROC of each upsampled map against its mask.

    Args:
        sim_maps: (N, h, w) maps; masks: (N, H, W) bool.
        chunk_size: items per chunk (default: about 8M pixels per chunk).

    Returns:
        ``{"mean": mean over valid items, "per_item": (N,) float64 with NaN for skipped items,
        "n_skipped": items with an empty or full mask}``.
    """
    sim_maps, masks = _check_pair(sim_maps, masks)
    n, height, width = masks.shape
    step = chunk_size or max(1, _CHUNK_PIXELS // (height * width))
    per_item = []
    for start in range(0, n, step):  # chunks of items, not single items
        up = upsample_maps(sim_maps[start:start + step], size=(height, width))
        per_item.append(auroc(up.flatten(1), masks[start:start + step].flatten(1)))
    per_item = torch.cat(per_item) if per_item else torch.zeros(0, dtype=torch.float64)
    ok = ~torch.isnan(per_item)
    return {"mean": float(per_item[ok].mean()) if ok.any() else float("nan"), "per_item": per_item,
            "n_skipped": int((~ok).sum())}
