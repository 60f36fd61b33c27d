"""Finding masks on disk: one 16-bit PNG per image, bit ``k`` set where finding ``k`` is.

The finding order is the order of the manifest's ``findings_json`` column, so mask ``k``
and the ``k``-th finding (and the report writer's spans for finding ``k``) belong together.
16 bits hold up to 16 findings; a study with more keeps its first 16 masks (the builders
cap and count such studies).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

MAX_MASKS = 16


def save_masks(path: str | Path, masks: np.ndarray) -> None:
    """Write ``masks`` (K, H, W) bool, K <= 16, as a 16-bit PNG bitfield."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] > MAX_MASKS:
        raise ValueError(f"masks must be (K<={MAX_MASKS}, H, W), got {masks.shape}")
    bits = np.zeros(masks.shape[1:], dtype=np.uint16)
    for k in range(masks.shape[0]):  # K <= 16 bit planes, not a per-pixel loop
        bits |= masks[k].astype(np.uint16) << np.uint16(k)
    Image.fromarray(bits).save(path, compress_level=1)


def load_masks(path: str | Path, k: int) -> np.ndarray:
    """Read ``k`` masks (K, H, W) bool from a bitfield PNG written by :func:`save_masks`."""
    bits = np.asarray(Image.open(path), dtype=np.uint32)
    k = min(int(k), MAX_MASKS)
    shifts = np.arange(k, dtype=np.uint32)[:, None, None]
    return ((bits[None] >> shifts) & 1).astype(bool)
