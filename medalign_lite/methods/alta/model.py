"""The ALTA model (§2–§5 put together), its parameter table and builders."""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import info_nce, masked_softmax, mean_pairwise_cosine
from .. import register_method
from ..baselines import gloria_local_loss
from ..dual import DualEncoder
from .adapters import insert_adapters
from .config import VIEWS, ALTAConfig, group_of, trainable_groups
from .heads import MLMHead, ProjectionHead, _bert_body, added_to_embeddings, mlm_mask
from .vision import ALTAVision, masked_patch_mse


# --- the model --------------------------------------------------------------------------------
@register_method("alta", config=ALTAConfig, kind="dual_encoder", paper="ALTA (Li et al., 2025)")
class ALTA(DualEncoder):
    """ALTA around a masked autoencoder and a BERT-family :class:`~medalign_lite.models.text.TextEncoder`.

    ``image_encoder`` is a transformers ``ViTMAEForPreTraining`` (:func:`~medalign_lite.models.mae.build_mae`;
    :attr:`build_vision` tells the experiments layer so); it becomes :class:`ALTAVision`. Adapters
    are inserted into both encoders (unless ``config.adapters`` is False). ``forward(batch)`` →
    ``loss`` (the sum of the terms on), ``loss_global`` (+ ``_i2t``, ``_t2i``), ``loss_local``,
    ``loss_mim``, ``loss_mlm``, the scales (``scale_global``, ``scale_local1..3``), the collapse
    monitor ``cos_image`` / ``cos_text`` (mean pairwise cosine of the batch's projected global
    embeddings, :func:`~medalign_lite.nn.mean_pairwise_cosine`; batches of 2 or more), and for plots
    (detached): ``mim_pred`` (B, L, ·) and ``mim_mask`` (B, L) of the current frontal,
    ``attn`` (B, T, V·K) the matched pairs' word→region attention over the visible patches,
    ``view_present`` (B, V). The batch must hold the configured views (``ManifestDataset(views=...)``);
    a view the batch lacks entirely counts as missing for every study.
    """

    @staticmethod
    def build_vision(cfg) -> nn.Module:
        """The image backbone for a VisionConfig: an MAE (used by ``experiments.contrastive.build_model``)."""
        from ...models.mae import build_mae

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
        g_img, g_txt = self.img_global(img_cls), self.txt_global(txt.pooled)
        l_g, l_i2t, l_t2i = info_nce(g_img, g_txt, 1.0 / s_g)
        loss = l_g
        out: dict = {"loss_global": l_g.detach(), "loss_global_i2t": l_i2t.detach(), "loss_global_t2i": l_t2i.detach(),
                     "scale_global": s_g.detach(), "view_present": present}
        if b > 1:  # the collapse monitor: near 1, every study has the same global embedding
            with torch.no_grad():
                out.update(cos_image=mean_pairwise_cosine(g_img), cos_text=mean_pairwise_cosine(g_txt))
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

    from ...config import load_config, split_overrides
    from ...models.mae import build_mae
    from ...models.text import TextConfig, build_text_encoder
    from ...models.vision import VisionConfig

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
