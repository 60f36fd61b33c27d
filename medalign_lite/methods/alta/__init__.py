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

Modules: :mod:`.adapters` (§1), :mod:`.config` (the knobs, §2's trainable set), :mod:`.vision`
(§3 and the MIM loss), :mod:`.heads` (§4's projection and MLM heads), :mod:`.model` (the model,
§4's losses put together, §5).

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
  CLS carries the image (MRM's ViT-B); the MAE loss never reads the CLS, so a small MAE
  pre-trained for minutes has no reason to put the image there. ``image_pooling="mean"`` (the
  tutorial config) takes the mean of the view's *visible* patch tokens during alignment and of
  all patches at inference, MAE's own global-pool reading. The text side's pooling is the text
  encoder's (``text.pooling``): CLS for CXR-BERT as in the code, the token mean for MiniLM (a
  mean-pooling sentence encoder). Neither pooled vector of the tutorial's MAE (294 steps, 100 s)
  separates the Phantom-5×200 classes before alignment (validation image→image P@5 0.24 CLS, 0.24
  patch mean; 0.39 the flattened patch tokens, 0.40 the pixels; chance 0.20): the classes differ
  in where findings sit, which the adapters must carry into the global vector — at the tutorial's
  150 steps they do not, and the global embeddings collapse towards one point instead (the
  ``cos_image`` / ``cos_text`` monitor of :meth:`ALTA.forward`; notebook 04's last section).
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

from .adapters import Adapter, ParallelAdapter, SerialAdapter, insert_adapters
from .config import TRAINABLE_GROUPS, VIEWS, ALTAConfig, group_of, trainable_groups
from .heads import MLMHead, ProjectionHead, added_to_embeddings, mlm_mask
from .model import ALTA, build_alta, parameter_table, set_trainable
from .vision import ALTAVision, ViewEncoding, masked_patch_mse, patchify, unpatchify

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
