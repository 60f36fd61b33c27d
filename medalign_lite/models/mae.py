"""Masked autoencoders (MAE, He et al. 2022) as backbones: transformers' ``ViTMAEForPreTraining``,
offline-first.

ALTA adapts a *pretrained masked-image model* and keeps its decoder, so the backbone here is a
whole MAE: the ViT encoder, random masking (``embeddings.random_masking``), the decoder (input
projection, mask token, blocks, pixel head) and the norm-pix loss. We use transformers' model
rather than timm's ViT plus a decoder of our own because it ships every one of those pieces,
tested, with ``save_pretrained`` / ``from_pretrained`` folders for the cache; timm has the MAE
*encoder* weights (``vit_base_patch16_224.mae``) but no decoder.

:func:`build_mae` reads a :class:`~medalign_lite.models.vision.VisionConfig`:

* ``hf_config`` (a ``vit_mae`` config as a dict) and ``pretrained=False``: random weights (the
  tutorial's tiny MAE before its pre-training, tests, benchmarks at paper shapes);
* ``pretrained`` a local folder written by ``save_pretrained`` (the tutorial's cached MAE), or
  ``True`` with ``name="hf:<id>"`` (``facebook/vit-mae-base``), through
  :func:`~medalign_lite.models.loading.resolve_pretrained` (local path, then the Hugging Face
  cache; downloads only when allowed);
* ``pretrained`` a checkpoint *file* in the MAE repository's layout (MRM's ``MRM.pth``: keys
  ``blocks.{i}.attn.qkv``, ``decoder_blocks.{i}...``): its keys are converted by
  :func:`convert_mae_checkpoint` onto a model built from ``hf_config`` (read with
  ``torch.load(weights_only=True)``, or safetensors).

Shapes: N images, C channels, H×W pixels, p patch side, L = (H/p)·(W/p) patches, D width.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .loading import load_state_dict, quiet_hub_progress, resolve_pretrained

__all__ = ["build_mae", "convert_mae_checkpoint", "init_random_mae", "mae_config"]


def mae_config(hf_config: dict, image_size: int | None = None):
    """A ``ViTMAEConfig`` from a dict (``model_type`` optional); ``image_size`` fills it when the
    dict has none."""
    from transformers import ViTMAEConfig

    conf = {k: v for k, v in hf_config.items() if k != "model_type"}
    if hf_config.get("model_type", "vit_mae") != "vit_mae":
        raise ValueError(f"an MAE backbone needs model_type 'vit_mae', got {hf_config['model_type']!r}")
    if image_size is not None:
        conf.setdefault("image_size", image_size)
    return ViTMAEConfig(**conf)


def convert_mae_checkpoint(state_dict: dict[str, torch.Tensor], num_layers: int | None = None
                           ) -> dict[str, torch.Tensor]:
    """Keys of the MAE repository's checkpoints (MAE, MRM) → transformers' ``ViTMAEForPreTraining``.

    The fused ``attn.qkv`` (3D, D) of each block is split into ``q_proj``, ``k_proj``, ``v_proj``
    (D, D) in that order; ``norm1``/``norm2`` → ``layernorm_before``/``layernorm_after``;
    ``attn.proj`` → ``attention.o_proj``; encoder and decoder alike. Keys of neither model
    (a classification head, ``bert_*`` weights of a combined checkpoint) are dropped; a state
    dict already in transformers' layout (``vit.``/``decoder.`` keys) is returned as it is.
    """
    if any(k.startswith(("vit.", "decoder.")) for k in state_dict):
        return dict(state_dict)
    top = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
           "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
           "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
           "mask_token": "decoder.mask_token", "decoder_pos_embed": "decoder.decoder_pos_embed"}
    for name in ("decoder_embed", "decoder_norm", "decoder_pred"):
        for p in ("weight", "bias"):
            top[f"{name}.{p}"] = f"decoder.{name}.{p}"
    inner = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in top:
            out[top[key]] = value
            continue
        for prefix, target in (("blocks.", "vit.layers."), ("decoder_blocks.", "decoder.decoder_layers.")):
            if not key.startswith(prefix):
                continue
            index, rest = key[len(prefix):].split(".", 1)
            if num_layers is not None and prefix == "blocks." and int(index) >= num_layers:
                raise ValueError(f"checkpoint block {index} beyond the model's {num_layers} layers")
            module, param = rest.rsplit(".", 1)
            if module == "attn.qkv":
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{target}{index}.attention.{name}.{param}"] = part.contiguous()
            elif module in inner:
                out[f"{target}{index}.{inner[module]}.{param}"] = value
    return out


def init_random_mae(model: nn.Module) -> nn.Module:
    """Give a freshly built ``ViTMAEForPreTraining`` MAE's initialisation: fixed 2-D sin-cos position
    embeddings in the encoder and the decoder, the patch projection as a Linear (Xavier), CLS and
    mask token N(0, 0.02). Returns ``model``.

    transformers 5.x leaves them at zero on a model built from a config: its weight
    initialisation flags the patch projection as initialised before it reaches the embeddings, so
    ``ViTMAEEmbeddings.initialize_weights`` returns early, and the decoder's ``_init_weights``
    zeroes ``decoder_pos_embed`` and ``mask_token``. With zero (and frozen) position embeddings
    the MAE cannot tell one patch from another: its loss stays at the patch mean's (0.93 of 1).
    Here the modules' own ``initialize_weights`` run again with the flags cleared.
    """
    emb, dec = model.vit.embeddings, model.decoder
    tensors = (emb.position_embeddings, emb.cls_token, emb.patch_embeddings.projection.weight,
               dec.decoder_pos_embed, dec.mask_token)
    for obj in (emb.patch_embeddings.projection, *tensors):
        if hasattr(obj, "_is_hf_initialized"):
            obj._is_hf_initialized = False
    emb.initialize_weights()
    dec.initialize_weights(emb.patch_embeddings.num_patches)
    return model


def build_mae(cfg) -> nn.Module:
    """A ``ViTMAEForPreTraining`` for a :class:`~medalign_lite.models.vision.VisionConfig` (see the
    module docstring for what ``name``, ``pretrained`` and ``hf_config`` select). ``cfg.in_chans``
    is the data's channel count: a random model is built with it, a loaded one keeps its own
    (ALTA repeats a gray channel to 3)."""
    from transformers import ViTMAEForPreTraining

    pretrained = cfg.pretrained
    if pretrained is False:
        if cfg.hf_config is None:
            raise ValueError(f"{cfg.name}: a random MAE needs hf_config (a vit_mae config dict)")
        conf = mae_config({"num_channels": cfg.in_chans, **cfg.hf_config}, cfg.image_size)
        return init_random_mae(ViTMAEForPreTraining(conf))
    source = resolve_pretrained(cfg.name if pretrained is True else pretrained, cfg.allow_download)
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        with quiet_hub_progress(source):
            return ViTMAEForPreTraining.from_pretrained(source, local_files_only=True, dtype=torch.float32)
    if cfg.hf_config is None:
        raise ValueError(f"{source}: an MAE-repository checkpoint needs hf_config for the model's shape")
    model = ViTMAEForPreTraining(mae_config({"num_channels": cfg.in_chans, **cfg.hf_config}, cfg.image_size))
    sd = convert_mae_checkpoint(load_state_dict(source), model.config.num_hidden_layers)
    pred = sd.get("decoder.decoder_pred.weight")
    if pred is not None and pred.shape != model.decoder.decoder_pred.weight.shape:  # MRM: a 2x-resolution head
        model.decoder.decoder_pred = nn.Linear(pred.shape[1], pred.shape[0])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("position_embeddings", "decoder_pos_embed"))]
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not fit the MAE config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model
