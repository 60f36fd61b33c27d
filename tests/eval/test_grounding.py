"""Grounding metrics against per-item references and a hand-computed upsampling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medalign_lite.eval.grounding import mask_auroc, pointing_game, similarity_maps, upsample_maps


def test_upsample_hand_computed_and_flat_input():
    m = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    # align_corners=False, x2: source coordinate (d + 0.5) / 2 - 0.5, clamped -> weights 0, .25, .75, 1
    w = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = 2 * w[:, None] + w[None, :]
    assert torch.allclose(upsample_maps(m, size=(4, 4))[0], expected)
    flat = torch.arange(6.0)[None]                               # P = 6 patches of a 2 x 3 grid
    assert torch.equal(upsample_maps(flat, grid=(2, 3), size=(4, 6)),
                       upsample_maps(flat.reshape(1, 2, 3), size=(4, 6)))
    with pytest.raises(ValueError, match="grid"):
        upsample_maps(flat, size=(4, 4))
    with pytest.raises(ValueError, match="does not match"):
        upsample_maps(flat, grid=(3, 3), size=(4, 4))


def _random_case(seed, n=12, h=5, w=4, size=(20, 16)):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, h, w, generator=gen)
    masks = torch.zeros(n, *size, dtype=torch.bool)
    for i in range(n):                                           # test data only: random boxes
        y0, x0 = torch.randint(0, size[0] - 4, (2,), generator=gen).tolist()
        masks[i, y0:y0 + 1 + i % 5, x0 % size[1]:x0 % size[1] + 2 + i % 3] = True
    masks[3] = False                                             # an empty mask: skipped
    masks[7] = True                                              # a full mask: a hit, no AUROC
    return maps, masks


def _ref_pointing(maps, masks, tol):
    hits, valid = [], []
    for m, k in zip(maps, masks):
        up = torch.nn.functional.interpolate(m[None, None], size=k.shape, mode="bilinear",
                                             align_corners=False)[0, 0]
        best = up.max()
        r, c = next((r, c) for r in range(k.shape[0]) for c in range(k.shape[1]) if up[r, c] == best)
        ys, xs = np.nonzero(k.numpy())
        valid.append(len(ys) > 0)
        dist = min((math.hypot(r - y, c - x) for y, x in zip(ys, xs)), default=math.inf)
        hits.append(len(ys) > 0 and dist <= tol)
    return hits, valid


@pytest.mark.parametrize("tol", [0, 1, 3])
def test_pointing_game_matches_reference(tol):
    maps, masks = _random_case(0)
    out = pointing_game(maps, masks, tolerance=tol)
    hits, valid = _ref_pointing(maps, masks, tol)
    assert out["hits"].tolist() == hits
    assert out["valid"].tolist() == valid and out["n_skipped"] == 1
    assert out["accuracy"] == pytest.approx(sum(hits) / sum(valid))


def test_pointing_game_hand_cases():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 6:, 6:] = True
    peak = torch.zeros(2, 4, 4)
    peak[0, 3, 3] = 1.0                                          # peak in the mask's corner
    peak[1, 0, 0] = 1.0                                          # peak far away
    out = pointing_game(peak, masks)
    assert out["hits"].tolist() == [True, False] and out["accuracy"] == 0.5
    # a flat map points at the first pixel (row-major), outside the mask, inside with tolerance 9
    flat = torch.zeros(1, 4, 4)
    assert pointing_game(flat, masks[:1])["points"].tolist() == [[0, 0]]
    assert not pointing_game(flat, masks[:1])["hits"][0]
    assert pointing_game(flat, masks[:1], tolerance=9)["hits"][0]


def test_mask_auroc_matches_sklearn_per_item():
    maps, masks = _random_case(1)
    out = mask_auroc(maps, masks)
    per = out["per_item"]
    for i in range(len(maps)):
        k = masks[i].flatten().numpy()
        if k.all() or not k.any():
            assert math.isnan(per[i])
            continue
        up = upsample_maps(maps[i:i + 1], size=masks.shape[1:])[0].flatten().numpy()
        assert per[i].item() == pytest.approx(roc_auc_score(k, up))
    assert out["n_skipped"] == 2
    assert out["mean"] == pytest.approx(float(per[~per.isnan()].mean()))
    chunked = mask_auroc(maps, masks, chunk_size=5)["per_item"]
    assert torch.allclose(chunked, per, equal_nan=True)


def test_mask_auroc_perfect_and_inverted_maps():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    good = torch.nn.functional.avg_pool2d(masks.float()[:, None], 2)[:, 0]   # 8 x 8 map of the mask
    assert mask_auroc(good, masks)["mean"] == pytest.approx(1.0)
    assert mask_auroc(-good, masks)["mean"] == pytest.approx(0.0)
    assert mask_auroc(torch.zeros(2, 8, 8), masks)["mean"] == pytest.approx(0.5)   # all ties


def test_similarity_maps_reference():
    gen = torch.Generator().manual_seed(2)
    patches, text = torch.randn(3, 6, 5, generator=gen), torch.randn(3, 5, generator=gen)
    got = similarity_maps(patches, text, (2, 3))
    ref = torch.stack([torch.nn.functional.cosine_similarity(patches[i], text[i][None], dim=-1)
                       for i in range(3)]).reshape(3, 2, 3)
    assert torch.allclose(got, ref, atol=1e-6)


def test_input_errors():
    with pytest.raises(ValueError):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(3, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        mask_auroc(torch.full((1, 2, 2), float("nan")), torch.ones(1, 4, 4, dtype=torch.bool))
