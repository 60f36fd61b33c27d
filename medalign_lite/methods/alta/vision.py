"""§3 the masked vision model read view by view (:class:`ALTAVision`), patches and the MIM loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...models.features import ImageFeatures


# --- §3 the masked vision model and its views -----------------------------------------------
def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) → (N, L, p·p·C), patches row-major and each patch's pixels in (row, column,
    channel) order, the layout of MAE's pixel head."""
    n, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible into {patch}-pixel patches")
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (N, L, p·p·C) → (N, C, h·p, w·p)."""
    n = patches.shape[0]
    h, w = grid
    x = patches.reshape(n, h, w, patch, patch, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, channels, h * patch, w * patch)


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """MAE's reconstruction loss on the masked patches only:

        t̃_l = (t_l − mean(t_l)) / √(var(t_l) + ε)   (per patch, ``norm_pix``; unbiased var, as MAE)
        L = Σ_l m_l · mean_j (x̂_lj − t̃_lj)² / Σ_l m_l

    pred, target (N, L, K); mask (N, L), 1 = masked (reconstructed), 0 = visible.
    """
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class ViewEncoding:
    """The ViT's output for N view images: ``hidden`` (N, 1 + K, D) with the CLS first and the K
    visible patches after (K = L unmasked); ``mask`` (N, L) 1 = masked and ``ids_restore``
    (N, L) when masked, else None."""

    hidden: torch.Tensor
    mask: torch.Tensor | None
    ids_restore: torch.Tensor | None


class ALTAVision(nn.Module):
    """A masked autoencoder (transformers ``ViTMAEForPreTraining``) read view by view.

    Owns the view embeddings e_view (2, D), the temporal embeddings e_time (2, D) and the
    missing-view map m (L, D), all zero at start. ``forward(images)`` is the inference path
    (no masking, current frontal: view 0, time 0) returning :class:`ImageFeatures`;
    :meth:`encode_views` is the training path. Attributes ``global_dim = patch_dim = D``,
    ``grid`` (h, w), ``patch_size`` p, ``input_size`` (the ViT's), ``channels`` (its C).
    """

    def __init__(self, mae: nn.Module, recon_scale: int = 1, norm_pix: bool = True, pooling: str = "cls"):
        super().__init__()
        self.mae = mae
        self.norm_pix, self.pooling = norm_pix, pooling
        conf = mae.config
        d = int(conf.hidden_size)
        size = conf.image_size if isinstance(conf.image_size, int) else conf.image_size[0]
        patch = conf.patch_size if isinstance(conf.patch_size, int) else conf.patch_size[0]
        self.patch_size, self.input_size, self.channels = int(patch), int(size), int(conf.num_channels)
        self.grid = (self.input_size // self.patch_size,) * 2
        n_patches = self.grid[0] * self.grid[1]
        self.global_dim = self.patch_dim = d
        self.recon_scale = int(recon_scale)
        self.view_embedding = nn.Parameter(torch.zeros(2, d))
        self.temporal_embedding = nn.Parameter(torch.zeros(2, d))
        self.missing_token = nn.Parameter(torch.zeros(n_patches, d))
        out = (self.patch_size * self.recon_scale) ** 2 * self.channels
        pred = mae.decoder.decoder_pred
        if pred.out_features != out:  # a pixel head for another target size: a fresh one (it trains)
            mae.decoder.decoder_pred = nn.Linear(pred.in_features, out)

    @property
    def mask_ratio(self) -> float:
        return float(self.mae.config.mask_ratio)

    def pixels(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Images as the ViT reads them: resized to ``size`` (default its input size), a gray
        channel repeated to its channels."""
        size = size or self.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        if images.shape[1] != self.channels:
            if images.shape[1] != 1:
                raise ValueError(f"images have {images.shape[1]} channels, the MAE {self.channels}")
            images = images.expand(-1, self.channels, -1, -1)
        return images

    def encode_views(self, images: torch.Tensor, view: torch.Tensor, time: torch.Tensor,
                     present: torch.Tensor | None = None, masked: bool = True,
                     noise: torch.Tensor | None = None) -> ViewEncoding:
        """images (N, C, H, W); view, time (N,) long indices; present (N,) bool (False: the
        missing-view map replaces the patch embeddings). ``masked``: keep ⌊L·(1 − ratio)⌋ patches
        per image (the MAE's own ``random_masking``; ``noise`` (N, L) fixes the draw)."""
        emb = self.mae.vit.embeddings
        tokens = emb.patch_embeddings(self.pixels(images))                          # (N, L, D)
        if present is not None:
            tokens = torch.where(present[:, None, None], tokens, self.missing_token.to(tokens.dtype))
        pos = emb.position_embeddings
        tokens = tokens + pos[:, 1:]
        mask = ids_restore = None
        if masked:
            tokens, mask, ids_restore = emb.random_masking(tokens, noise)            # (N, K, D)
        cls = (emb.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], 1) + (self.view_embedding[view] + self.temporal_embedding[time])[:, None]
        for layer in self.mae.vit.layers:
            h = layer(h)
        return ViewEncoding(self.mae.vit.layernorm(h), mask, ids_restore)

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        """Inference: the current frontal, unmasked → ImageFeatures(pooled = CLS (N, D),
        patches (N, L, D) row-major, grid)."""
        n = images.shape[0]
        zero = torch.zeros(n, dtype=torch.long, device=images.device)
        h = self.encode_views(images, zero, zero, masked=False).hidden
        return ImageFeatures(pooled=self.pool(h), patches=h[:, 1:], grid=self.grid)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """A view's global vector from its encoding (…, 1 + K, D): the CLS, or the mean of its
        (visible) patches (``pooling="mean"``)."""
        return hidden[..., 0, :] if self.pooling == "cls" else hidden[..., 1:, :].mean(-2)

    def decode(self, hidden: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The MAE decoder on an encoder output (N, 1 + K, D) → pixel predictions (N, L, (p·r)²·C)."""
        return self.mae.decoder(hidden, ids_restore).logits

    def pixel_targets(self, images: torch.Tensor) -> torch.Tensor:
        """(N, L, (p·r)²·C): the images at r × the input size, patchified at r·p."""
        r = self.recon_scale
        return patchify(self.pixels(images, self.input_size * r), self.patch_size * r)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
        """For plots: the current frontal masked at the MAE's ratio and decoded. Returns
        ``target``, ``masked`` (visible patches only, masked ones 0), ``reconstruction`` (the
        prediction, de-normalised with each patch's own mean and std when the loss is norm-pix, with
        the visible patches pasted back), all (N, C, H·r, W·r), and ``mask`` (N, L)."""
        n = images.shape[0]
        zero = torch.zeros(n, dtype=torch.long, device=images.device)
        enc = self.encode_views(images, zero, zero, masked=True, noise=noise)
        pred = self.decode(enc.hidden, enc.ids_restore)
        target = self.pixel_targets(images)
        if self.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        m = enc.mask[..., None]
        size, patch = self.patch_size * self.recon_scale, self.grid
        return {"target": unpatchify(target, size, patch, self.channels),
                "masked": unpatchify(target * (1 - m), size, patch, self.channels),
                "reconstruction": unpatchify(pred * m + target * (1 - m), size, patch, self.channels),
                "mask": enc.mask}
