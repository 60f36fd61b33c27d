"""ALTA: efficient alignment by Adapting a masked vision model (Li et al., TMI 2025, arXiv 2506.08990),
in the paper's order.

1. **Adapters** (AIM style): A(x) = W_up · GELU(W_down · x), d → d/4 → d, W_up zero-initialised,
   two per block of *both* encoders: a **serial** adapter on the attention sublayer's output,
   h ← h + A(h), and a **parallel** adapter beside the MLP sublayer, scaled by s = 0.5:
   MLP(x) + s·A(x). They are wrapped around the existing modules of a transformers ViT-MAE, a
   timm ViT or a transformers BERT (:func:`insert_adapters`); no block is re-implemented.
2. **Frozen backbones, a small trainable set** (:data:`TRAINABLE_GROUPS`): adapters, every
   LayerNorm, the projection heads, the CLS token, the view and temporal embeddings, the
   missing-view token, the logit scales, the MAE decoder's input projection, mask token and
   pixel head, and the MLM head; every other weight (both transformers, the patch embedding,
   the decoder blocks, the word embeddings) stays frozen.
3. **Temporal multi-view input** (:class:`ALTAVision`): the current frontal, current lateral,
   prior frontal and prior lateral views of a study each pass the ViT on their own (no
   cross-view attention); a missing view's patch embeddings are replaced by a learned map
   m ∈ R^{L×D}; every token of view v at time t gets e_view[v] + e_time[t]. Masking keeps
   25 % of each view's patches (ratio 0.75) *during alignment*.
4. **Losses**, summed:
   - global: L_g = ½ (CE(s·ĝ_I ĝ_Tᵀ) + CE(s·ĝ_T ĝ_Iᵀ)), ĝ_I = head(mean_v CLS_v), ĝ_T = head(CLS_T),
     s = exp(log s) learnable (start 1/0.07) (:func:`~medalign_lite.nn.info_nce`);
   - local: GLoRIA's word–region alignment of every word against the visible patches of all
     four views, three learnable scales in place of τ1, τ2, τ3, ½(L_i→t + L_t→i)
     (:func:`~medalign_lite.methods.baselines.gloria_local_loss`);
   - masked image modelling: L_mim = Σ_masked ‖x̂_l − norm(x_l)‖² / (|x_l|·#masked), the frozen
     MAE decoder on the *current frontal*'s visible tokens (:func:`masked_patch_mse`);
   - image-conditioned MLM: a copy of the report with each word piece replaced by [MASK] with
     probability 0.5, the image feature W·mean_v CLS_v added to every token embedding,
     cross-entropy on the masked pieces (:func:`mlm_mask`, :class:`MLMHead`).
5. **Inference**: no masking and the current frontal alone (view 0, time 0): ``encode_image``
   is the projected CLS, ``encode_text`` the projected text CLS.

**Our readings** (the paper summary and the official code, ``DopamineLcy/ALTA``, read, not copied;
each a field of :class:`ALTAConfig`):

- Placement on a post-LN BERT follows the official code: the serial adapter acts on the
  attention sublayer's output *after* its residual and LayerNorm, and the parallel adapter's
  s·A(a) is added after the MLP sublayer's LayerNorm; on pre-LN ViTs both act inside the
  residual branch, x + A(Attn(LN x)) and x + MLP(LN x) + s·A(LN x).
- The official trainable set is chosen by name substrings; two of its parameters are left out by
  them: the missing-view map (left at zero) and the projection of the image feature into the
  text width for MLM (a frozen random linear). The issue asks for a *learned* missing-view token
  (``learn_missing_token=True``, default); ``learn_missing_token=False`` and
  ``train_image_to_text=False`` (default) reproduce the code.
- A missing view still passes the ViT and counts in the mean of CLS and among the local loss's
  regions, as in the code; the missing map replaces the patch embeddings before the position
  embeddings are added.
- View and temporal embeddings start at zero (the code), so an untrained ALTA computes exactly
  the frozen MAE.
- The global vector of a view (``image_pooling``): the code's CLS (default) suits an MAE whose
  CLS carries the image (MRM's ViT-B); a small MAE pre-trained for minutes never trains its CLS
  (the MAE loss reads only patches), and its CLS is then nearly the same vector for every image
  (mean pairwise cosine 0.997 over 32 IU-Phantom studies against 0.945 for the patch mean), so the
  global loss starts and stays at chance. ``image_pooling="mean"`` (the tutorial config) takes
  the mean of the view's *visible* patch tokens during alignment and of all patches at inference,
  MAE's own global-pool reading. The text side's pooling is the text encoder's (``text.pooling``):
  CLS for CXR-BERT as in the code, the token mean for MiniLM (a mean-pooling sentence encoder).
  Neither pooled vector of the tiny MAE separates the Phantom-5×200 classes before alignment
  (image→image P@5 0.21 CLS, 0.23 patch mean; 0.38 the flattened patch tokens, 0.49 raw pixels):
  the classes differ in where findings sit, which the adapters must carry into the global vector.
- Logit scales are clamped to [0, ln 100] in the forward (the code clamps the parameters after
  each optimizer step; the same values while inside the range).
- MLM masks each non-special, non-padding token independently with probability 0.5 and
  replaces every masked token by [MASK] (the code's 100 % replacement, no 80/10/10); logits
  are computed at the masked positions only (the same loss, without a (B, T, V) tensor).
  The image feature is added after the embedding LayerNorm (the code's placement). The MLM
  head's output matrix is tied to the (frozen) word embeddings, as BERT's; its transform and
  bias train. Sentence shuffling of the MLM copy (a data augmentation of the code) is not done.
- The local loss reads the text encoder's words (word pieces merged when the encoder merges
  them, as GLoRIA; the code uses the sub-word pieces between [CLS] and [SEP]:
  ``text.merge_wordpieces=false``).
- The pixel target is the current frontal at ``recon_scale`` × the ViT's input size, patchified
  at ``recon_scale`` × p (MRM's 448 px target for a 224 px input is ``recon_scale=2``); the data
  then arrive at the target size and every view is resized to the input size.
- ``mask_ratio=0`` (the ablation without masking during alignment) leaves the alignment views
  unmasked; masked image modelling then runs on its own masked pass of the current frontal at
  ``mim_mask_ratio``, so that the ablation changes what the contrastive losses see and nothing else.
"""
from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.features import ImageFeatures
from ..nn import info_nce, masked_softmax
from . import register_method
from .baselines import gloria_local_loss
from .dual import DualEncoder

#: The views of a study, in the order ALTA stacks them: (view index, time index) of each.
VIEWS: dict[str, tuple[int, int]] = {"frontal": (0, 0), "lateral": (1, 0), "prior_frontal": (0, 1),
                                     "prior_lateral": (1, 1)}


@dataclass
class ALTAConfig:
    """ALTA's knobs (paper / official-code value as default; readings in the module docstring)."""

    embed_dim: int = 128               # width of the global and local projections (code: 128)
    # §1 adapters
    adapters: bool = True              # False: no adapters (the full fine-tuning ablation)
    adapter_ratio: float = 0.25        # bottleneck d/4 (AIM)
    adapter_scale: float = 0.5         # s, scale of the parallel MLP adapter
    # §3 views and masking
    views: tuple[str, ...] = ("frontal", "lateral", "prior_frontal", "prior_lateral")
    image_pooling: str = "cls"         # a view's global vector: its CLS (the code) or the mean of its patches
    mask_ratio: float = 0.75           # masking ratio during alignment (every view)
    mim_mask_ratio: float = 0.75       # masking of the separate MIM pass when mask_ratio = 0
    learn_missing_token: bool = True   # issue: learned; official code: left at zero (see docstring)
    # §4 losses
    logit_scale_init: float = 1 / 0.07  # s = 1/τ of the global scale (the code: 1/0.07)
    local_scale_init: tuple[float, float, float] = (1 / 0.07, 1 / 0.07, 1 / 0.07)  # τ1, τ2, τ3 of the local loss (code: 1/0.07; GLoRIA's fixed 4, 5, 10)
    logit_scale_max: float = 100.0     # clamp of every scale (CLIP, the code)
    use_local: bool = True
    use_mim: bool = True
    use_mlm: bool = True
    norm_pix_loss: bool = True         # MAE's per-patch normalised pixel target
    recon_scale: int = 1               # pixel target at this multiple of the input size (MRM: 2)
    mlm_probability: float = 0.5       # fraction of word pieces masked for MLM
    train_image_to_text: bool = False  # train W of the image feature added to the MLM tokens (code: frozen)
    local_chunk: int | None = None     # reports per chunk in the local loss (memory; same result)

    def __post_init__(self):
        self.views = tuple(self.views)
        if not self.views or self.views[0] != "frontal" or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must start with 'frontal' and not repeat, got {self.views}")
        if self.image_pooling not in ("cls", "mean"):
            raise ValueError(f"image_pooling must be 'cls' or 'mean', got {self.image_pooling!r}")
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; choose from {list(VIEWS)}")
        for name in ("mask_ratio", "mim_mask_ratio", "mlm_probability"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.use_mim and self.mask_ratio == 0 and self.mim_mask_ratio == 0:
            raise ValueError("masked image modelling needs mask_ratio > 0 or mim_mask_ratio > 0")
        if not 0 < self.adapter_ratio <= 1:
            raise ValueError(f"adapter_ratio must be in (0, 1], got {self.adapter_ratio}")
        if self.recon_scale < 1:
            raise ValueError(f"recon_scale must be >= 1, got {self.recon_scale}")
        self.local_scale_init = tuple(float(x) for x in self.local_scale_init)
        for name, values in (("logit_scale_init", (self.logit_scale_init,)), ("local_scale_init", self.local_scale_init)):
            if len(values) != (3 if name == "local_scale_init" else 1) or not all(
                    1.0 <= v <= self.logit_scale_max for v in values):
                raise ValueError(f"{name} must be {'three numbers' if len(values) != 1 else 'a number'} in "
                                 f"[1, {self.logit_scale_max}], got {getattr(self, name)}")


# --- §1 adapters ---------------------------------------------------------------------------
class Adapter(nn.Module):
    """A(x) = W_up·GELU(W_down·x + b_down) + b_up (d → ⌊r·d⌋ → d), W_up and b_up zero at start;
    with ``skip`` the module returns x + A(x) (the serial adapter), else A(x)."""

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True):
        super().__init__()
        self.skip = skip
        self.down = nn.Linear(dim, max(1, int(dim * ratio)))
        self.up = nn.Linear(max(1, int(dim * ratio)), dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(F.gelu(self.down(x)))
        return x + h if self.skip else h


class SerialAdapter(nn.Module):
    """``module`` followed by a skip adapter on its output: y = m(…); y + A(y). A tuple output
    (transformers attention: (output, weights)) is adapted in its first element."""

    def __init__(self, module: nn.Module, dim: int, ratio: float = 0.25):
        super().__init__()
        self.module = module
        self.adapter = Adapter(dim, ratio, skip=True)

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


class ParallelAdapter(nn.Module):
    """``module`` with a scaled adapter beside it: m(…) + s·A(x), x = the argument at
    ``input_index`` (the MLP's input: the first argument of a ViT MLP, the second,
    ``input_tensor``, of BERT's ``BertOutput``)."""

    def __init__(self, module: nn.Module, dim: int, ratio: float = 0.25, scale: float = 0.5, input_index: int = 0):
        super().__init__()
        self.module = module
        self.adapter = Adapter(dim, ratio, skip=False)
        self.scale, self.input_index = scale, input_index

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs) + self.scale * self.adapter(args[self.input_index])


def _blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, str, int]]:
    """(name, block, attention attribute, MLP attribute, MLP input index) of every transformer
    block: timm ``Block`` (attn, mlp), transformers pre-LN ViT-MAE layers (attention, mlp) and
    post-LN BERT layers (attention, output ← its ``input_tensor``)."""
    for name, m in model.named_modules():
        if isinstance(m, (SerialAdapter, ParallelAdapter)):
            continue
        if hasattr(m, "attn") and hasattr(m, "mlp") and hasattr(m, "norm1"):
            yield name, m, "attn", "mlp", 0
        elif hasattr(m, "attention") and hasattr(m, "mlp") and hasattr(m, "layernorm_before"):
            yield name, m, "attention", "mlp", 0
        elif hasattr(m, "attention") and hasattr(m, "intermediate") and hasattr(m, "output"):
            yield name, m, "attention", "output", 1


def insert_adapters(model: nn.Module, dim: int, ratio: float = 0.25, scale: float = 0.5,
                    skip_names: Sequence[str] = ()) -> list[str]:
    """Wrap every transformer block of ``model`` in place: its attention sublayer in a
    :class:`SerialAdapter`, its MLP sublayer in a :class:`ParallelAdapter` (scale ``scale``).
    Blocks under a name starting with one of ``skip_names`` (e.g. an MAE's ``decoder``) are left
    alone. Returns the names of the adapted blocks; a model without a recognised block is an error."""
    done = []
    for name, block, attn, mlp, index in list(_blocks(model)):
        if any(name == s or name.startswith(s + ".") for s in skip_names):
            continue
        if isinstance(getattr(block, attn), SerialAdapter):
            raise ValueError(f"{name}: adapters already inserted")  # noqa: TRY004
        setattr(block, attn, SerialAdapter(getattr(block, attn), dim, ratio))
        setattr(block, mlp, ParallelAdapter(getattr(block, mlp), dim, ratio, scale, index))
        done.append(name)
    if not done:
        raise ValueError(f"{type(model).__name__}: no timm ViT, ViT-MAE or BERT block to adapt")
    return done


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


# --- the trainable set ------------------------------------------------------------------------
#: The official trainable set as named groups of glob patterns over ALTA's parameter names
#: (everything else frozen). A parameter counts in the first group that matches it.
TRAINABLE_GROUPS: dict[str, tuple[str, ...]] = {
    "adapters": ("*.adapter.*",),
    "projection heads": ("img_global.*", "img_local.*", "txt_global.*", "txt_local.*"),
    "MLM head": ("mlm_head.*",),
    "layer norms": ("*norm*", "*Norm*"),
    "CLS token": ("image_encoder.mae.vit.embeddings.cls_token",),
    "view and temporal embeddings": ("image_encoder.view_embedding", "image_encoder.temporal_embedding"),
    "missing-view token": ("image_encoder.missing_token",),
    "logit scales": ("logit_scale_*",),
    "decoder input projection, mask token, pixel head": (
        "image_encoder.mae.decoder.decoder_embed.*", "image_encoder.mae.decoder.mask_token",
        "image_encoder.mae.decoder.decoder_pred.*"),
    "image to text projection": ("image_to_text.*",),
}


def trainable_groups(config: ALTAConfig) -> dict[str, tuple[str, ...]]:
    """The groups of :data:`TRAINABLE_GROUPS` that exist and train under ``config``."""
    c = config
    drop = {"adapters": not c.adapters, "MLM head": not c.use_mlm, "missing-view token": not c.learn_missing_token,
            "decoder input projection, mask token, pixel head": not c.use_mim,
            "image to text projection": not (c.use_mlm and c.train_image_to_text)}
    return {g: p for g, p in TRAINABLE_GROUPS.items() if not drop.get(g, False)}


def group_of(name: str, groups: dict[str, tuple[str, ...]] = TRAINABLE_GROUPS) -> str | None:
    """The first group whose pattern matches parameter ``name`` (None: frozen)."""
    for group, patterns in groups.items():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return group
    return None


# --- the model --------------------------------------------------------------------------------
@register_method("alta", config=ALTAConfig, kind="dual_encoder", paper="ALTA (Li et al., 2025)")
class ALTA(DualEncoder):
    """ALTA around a masked autoencoder and a BERT-family :class:`~medalign_lite.models.text.TextEncoder`.

    ``image_encoder`` is a transformers ``ViTMAEForPreTraining`` (:func:`~medalign_lite.models.mae.build_mae`;
    :attr:`build_vision` tells the experiments layer so); it becomes :class:`ALTAVision`. Adapters
    are inserted into both encoders (unless ``config.adapters`` is False). ``forward(batch)`` →
    ``loss`` (the sum of the terms on), ``loss_global`` (+ ``_i2t``, ``_t2i``), ``loss_local``,
    ``loss_mim``, ``loss_mlm``, the scales (``scale_global``, ``scale_local1..3``), and for plots
    (detached): ``mim_pred`` (B, L, ·) and ``mim_mask`` (B, L) of the current frontal,
    ``attn`` (B, T, V·K) the matched pairs' word→region attention over the visible patches,
    ``view_present`` (B, V). The batch must hold the configured views (``ManifestDataset(views=...)``);
    a view the batch lacks entirely counts as missing for every study.
    """

    @staticmethod
    def build_vision(cfg) -> nn.Module:
        """The image backbone for a VisionConfig: an MAE (used by ``experiments.contrastive.build_model``)."""
        from ..models.mae import build_mae

        return build_mae(cfg)

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, config: ALTAConfig | None = None):
        config = config or ALTAConfig()
        if not isinstance(image_encoder, ALTAVision):
            image_encoder = ALTAVision(image_encoder, config.recon_scale, config.norm_pix_loss, config.image_pooling)
        image_encoder.mae.config.mask_ratio = config.mask_ratio if config.mask_ratio > 0 else config.mim_mask_ratio
        super().__init__(image_encoder, text_encoder, config.embed_dim)
        self.config = c = config
        dv, dt = image_encoder.global_dim, text_encoder.dim
        self.img_global, self.img_local = ProjectionHead(dv, c.embed_dim), ProjectionHead(dv, c.embed_dim)
        self.txt_global, self.txt_local = ProjectionHead(dt, c.embed_dim), ProjectionHead(dt, c.embed_dim)
        start = math.log(c.logit_scale_init)
        self.logit_scale_global = nn.Parameter(torch.tensor(start))
        self.logit_scale_local = (nn.Parameter(torch.tensor([math.log(v) for v in c.local_scale_init]))
                                  if c.use_local else None)
        if c.use_mlm:
            body = _bert_body(text_encoder.model)
            emb = body.embeddings.word_embeddings
            self.image_to_text = nn.Linear(dv, dt)
            self.mlm_head = MLMHead(dt, emb.num_embeddings, eps=body.config.layer_norm_eps)
            self._load_pretrained_mlm_head(text_encoder.model)
            if text_encoder.tokenizer.mask_token_id is None:
                raise ValueError(f"{text_encoder.cfg.name}: the tokenizer has no [MASK] token for MLM")
        self.dataset_views = c.views  # what a ManifestDataset must load for training
        idx = torch.tensor([VIEWS[v] for v in c.views])
        self.register_buffer("view_ids", idx[:, 0].clone(), persistent=False)
        self.register_buffer("time_ids", idx[:, 1].clone(), persistent=False)
        if c.adapters:
            self.adapted_blocks = (insert_adapters(image_encoder.mae, dv, c.adapter_ratio, c.adapter_scale,
                                                   skip_names=("decoder",))
                                   + insert_adapters(text_encoder.model, dt, c.adapter_ratio, c.adapter_scale))

    def _load_pretrained_mlm_head(self, model: nn.Module) -> None:
        """A BertForMaskedLM (CXR-BERT) brings a trained MLM head: copy its transform and bias."""
        pred = getattr(getattr(model, "cls", None), "predictions", None)
        if pred is None:
            return
        self.mlm_head.dense.load_state_dict(pred.transform.dense.state_dict())
        self.mlm_head.LayerNorm.load_state_dict(pred.transform.LayerNorm.state_dict())
        self.mlm_head.bias.data.copy_(pred.bias.data)

    @classmethod
    def trainable_patterns(cls, method_options: dict | None = None) -> list[str]:
        """The official trainable set under these options (``experiments.contrastive.default_trainable``)."""
        cfg = ALTAConfig(**(method_options or {}))
        return [p for patterns in trainable_groups(cfg).values() for p in patterns]

    # -------------------------------------------------------------------------------- views
    def stack_views(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, C, H, W) images of the configured views and (B, V) bool presence; a view the
        batch does not hold is all-missing (zeros, replaced by the missing-view map)."""
        images, present = [batch.images], [torch.ones(len(batch), dtype=torch.bool, device=batch.images.device)]
        for v in self.config.views[1:]:
            x, p = getattr(batch, v, None), getattr(batch, f"{v}_present", None)
            if x is None:
                x, p = torch.zeros_like(batch.images), torch.zeros_like(present[0])
            images.append(x)
            present.append(p.to(present[0].device).bool())
        return torch.stack(images, 1), torch.stack(present, 1)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(s_global, (3,) local scales) = exp of the clamped log-scales."""
        top = math.log(self.config.logit_scale_max)
        g = self.logit_scale_global.clamp(0, top).exp()
        local = self.logit_scale_local.clamp(0, top).exp() if self.logit_scale_local is not None else None
        return g, local

    # -------------------------------------------------------------------------------- forward
    def forward(self, batch, noise: torch.Tensor | None = None) -> dict:
        c = self.config
        if batch.input_ids is None:
            raise ValueError("the batch has no input_ids: build the DataLoader with Collate(tokenizer=model.tokenize)")
        vis = self.image_encoder
        views, present = self.stack_views(batch)                                  # (B, V, C, H, W), (B, V)
        b, v = present.shape
        masked = c.mask_ratio > 0
        enc = vis.encode_views(views.flatten(0, 1), self.view_ids.repeat(b), self.time_ids.repeat(b),
                               present.flatten(), masked=masked, noise=noise)
        hidden = enc.hidden.unflatten(0, (b, v))                                   # (B, V, 1 + K, D)
        img_cls = vis.pool(hidden).mean(1)                                         # mean of the views' CLS
        extras = {"word_ids": batch.word_ids} if getattr(batch, "word_ids", None) is not None else {}
        txt = self.text_encoder(batch.input_ids, batch.attention_mask, **extras)
        words = self.txt_local(txt.tokens)
        s_g, s_l = self.scales()
        l_g, l_i2t, l_t2i = info_nce(self.img_global(img_cls), self.txt_global(txt.pooled), 1.0 / s_g)
        loss = l_g
        out: dict = {"loss_global": l_g.detach(), "loss_global_i2t": l_i2t.detach(), "loss_global_t2i": l_t2i.detach(),
                     "scale_global": s_g.detach(), "view_present": present}
        if c.use_local:
            regions = self.img_local(hidden[:, :, 1:].flatten(1, 2))               # (B, V·K, d)
            li, lt = gloria_local_loss(words, txt.mask, regions, s_l[0], s_l[1], s_l[2], c.local_chunk)
            loss = loss + (li + lt) / 2
            out.update(loss_local=((li + lt) / 2).detach(), scale_local1=s_l[0].detach(),
                       scale_local2=s_l[1].detach(), scale_local3=s_l[2].detach())
            with torch.no_grad():  # matched pairs, for plots: the attention GLoRIA's context uses
                logits = torch.einsum("btd,bpd->btp", words, regions)
                out["attn"] = torch.softmax(s_l[0] * masked_softmax(logits, txt.mask[:, :, None], dim=1), dim=2)
        if c.use_mim:
            if masked:  # the current frontal of the alignment pass
                latent, ids = hidden[:, 0], enc.ids_restore.unflatten(0, (b, v))[:, 0]
                mim_mask = enc.mask.unflatten(0, (b, v))[:, 0]
            else:      # alignment unmasked: MIM on its own masked pass of the current frontal
                zero = torch.zeros(b, dtype=torch.long, device=views.device)
                m = vis.encode_views(batch.images, zero, zero, masked=True)
                latent, ids, mim_mask = m.hidden, m.ids_restore, m.mask
            pred = vis.decode(latent, ids)
            l_mim = masked_patch_mse(pred, vis.pixel_targets(batch.images), mim_mask, c.norm_pix_loss)
            loss = loss + l_mim
            out.update(loss_mim=l_mim.detach(), mim_pred=pred.detach(), mim_mask=mim_mask.detach())
        if c.use_mlm:
            tok = self.text_encoder.tokenizer
            ids_masked, labels = mlm_mask(batch.input_ids, batch.attention_mask, self.text_encoder.special_ids,
                                          tok.mask_token_id, c.mlm_probability)
            body = _bert_body(self.text_encoder.model)
            with added_to_embeddings(body, self.image_to_text(img_cls)[:, None, :]):
                h = body(input_ids=ids_masked, attention_mask=batch.attention_mask).last_hidden_state
            sel = labels != -100
            if sel.any():
                logits = self.mlm_head(h[sel], body.embeddings.word_embeddings.weight)
                l_mlm = F.cross_entropy(logits, labels[sel])
            else:
                l_mlm = h.sum() * 0.0
            loss = loss + l_mlm
            out["loss_mlm"] = l_mlm.detach()
        out["loss"] = loss
        return out

    # -------------------------------------------------------------------------------- plots
    @torch.no_grad()
    def local_attention(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        **extras) -> torch.Tensor:
        """Inference (unmasked current frontal): each word's attention over the patches, the
        softmax over patches of s₁·softmax_words(w·r) that GLoRIA's context uses (B, T, P)."""
        img = self.embed_images(images)
        txt = self.embed_texts(input_ids, attention_mask, **extras)
        logits = torch.einsum("btd,bpd->btp", txt.tokens, img.patches)
        s_l = self.scales()[1]
        s1 = s_l[0] if s_l is not None else torch.tensor(4.0)
        return torch.softmax(s1 * masked_softmax(logits, txt.mask[:, :, None], dim=1), dim=2)


def parameter_table(model: ALTA) -> dict[str, dict[str, int]]:
    """{group: {"params", "trainable"}} for the trainable groups and the frozen rest (the
    ViT, the MAE decoder, the text encoder, other), counted once per tensor."""
    rows: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        group = group_of(name)
        if group is None:
            group = ("frozen: ViT encoder" if name.startswith("image_encoder.mae.vit.") else
                     "frozen: MAE decoder blocks" if name.startswith("image_encoder.mae.decoder.") else
                     "frozen: text encoder" if name.startswith("text_encoder.") else "frozen: other")
        row = rows.setdefault(group, {"params": 0, "trainable": 0})
        row["params"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    return rows


def build_alta(config: str | Path = "alta_tiny", overrides: Sequence[str] = (), vision_pretrained=None) -> ALTA:
    """An :class:`ALTA` from a config file's ``model:``, ``vision:`` and ``text:`` sections
    (``medalign_lite/configs/alta_tiny.yaml``, ``alta_full.yaml`` or a path), its backbones
    frozen except the official trainable set. ``overrides`` are ``section.key=value``
    (``"vision.pretrained=false"``: a random MAE at the config's shape; ``"text.pretrained=false"``
    with ``text.hf_config``: a random BERT). ``vision_pretrained`` replaces the vision section's
    ``pretrained`` (e.g. the tutorial's cached MAE folder)."""
    from dataclasses import replace

    from ..config import load_config, split_overrides
    from ..models.mae import build_mae
    from ..models.text import TextConfig, build_text_encoder
    from ..models.vision import VisionConfig

    per = split_overrides(overrides, ("model", "vision", "text"))
    model_cfg = load_config(ALTAConfig, config, per["model"], section="model")
    vision_cfg = load_config(VisionConfig, config, per["vision"], section="vision")
    if vision_pretrained is not None:
        vision_cfg = replace(vision_cfg, pretrained=vision_pretrained)
    text_cfg = load_config(TextConfig, config, per["text"], section="text")
    return set_trainable(ALTA(build_mae(vision_cfg), build_text_encoder(text_cfg), model_cfg))


def set_trainable(model: nn.Module, patterns: Sequence[str] | None = None) -> nn.Module:
    """``requires_grad`` on exactly the parameters matching ``patterns`` (glob patterns; default:
    the official set of ``model.config``, :meth:`ALTA.trainable_patterns`), as a training stage
    sets it; returns ``model``."""
    if patterns is None:
        patterns = ALTA.trainable_patterns(asdict(model.config))
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
    return model


__all__ = [
    "ALTA",
    "TRAINABLE_GROUPS",
    "VIEWS",
    "ALTAConfig",
    "ALTAVision",
    "Adapter",
    "MLMHead",
    "ParallelAdapter",
    "ProjectionHead",
    "SerialAdapter",
    "ViewEncoding",
    "added_to_embeddings",
    "build_alta",
    "group_of",
    "insert_adapters",
    "masked_patch_mse",
    "mlm_mask",
    "parameter_table",
    "patchify",
    "set_trainable",
    "trainable_groups",
    "unpatchify",
]
