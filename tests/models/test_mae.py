"""models.mae: a random MAE starts from MAE's initialisation (transformers 5.x leaves it at zero)."""
import math

import torch

from medalign_lite.models.mae import build_mae
from medalign_lite.models.vision import VisionConfig
from tests.methods.fakes import TINY_MAE


def _sincos(grid: int, dim: int) -> torch.Tensor:
    """Plain MAE 2-D sin-cos table (L, dim), one half per axis, ω_k = 1 / 10000^(k / (dim/4))."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = []
    for i in range(grid):          # row (h)
        for j in range(grid):      # column (w)
            parts = []
            for pos in (j, i):     # the layout transformers keeps for MAE's checkpoints: w first
                parts += [torch.sin(pos * omega), torch.cos(pos * omega)]
            rows.append(torch.cat(parts))
    return torch.stack(rows).float()


def test_random_mae_has_fixed_sincos_positions_and_random_tokens():
    torch.manual_seed(0)
    mae = build_mae(VisionConfig(name="vit_mae", image_size=16, hf_config=TINY_MAE))
    emb, dec = mae.vit.embeddings, mae.decoder
    grid = 16 // 4
    for table, dim in ((emb.position_embeddings, 16), (dec.decoder_pos_embed, 8)):
        assert not table.requires_grad                       # fixed, as in MAE
        assert torch.all(table[0, 0] == 0)                   # the CLS position
        torch.testing.assert_close(table[0, 1:], _sincos(grid, dim), atol=1e-5, rtol=0)
    for token in (emb.cls_token, dec.mask_token):            # N(0, 0.02), not zero
        assert 0.005 < token.std().item() < 0.05
    w = emb.patch_embeddings.projection.weight               # Xavier-uniform as a Linear
    bound = math.sqrt(6 / (w.shape[0] + w[0].numel()))
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound


def test_random_mae_decoder_tells_masked_patches_apart():
    """The failure this guards against: with zero position embeddings every masked patch gets the
    same decoder input, so the reconstruction of an image with one bright quadrant cannot depend on
    where the masked patch is."""
    torch.manual_seed(0)
    mae = build_mae(VisionConfig(name="vit_mae", image_size=16, hf_config={**TINY_MAE, "mask_ratio": 0.5}))
    x = torch.zeros(1, 1, 16, 16)
    x[..., :8, :8] = 1.0
    noise = torch.rand(1, 16)
    h = mae.vit(pixel_values=x, noise=noise)
    pred = mae.decoder(h.last_hidden_state, h.ids_restore).logits[0]
    masked = h.mask[0].bool()
    assert masked.sum() >= 2
    rows = pred[masked]
    assert (rows - rows[0]).abs().max() > 1e-4   # masked patches at different places get different inputs
