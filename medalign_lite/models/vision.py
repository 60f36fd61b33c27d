"""Image encoders → :class:`~medalign_lite.models.features.ImageFeatures` (pooled + patch grid).

Shapes: B batch, C channels, H×W pixels, h×w patch grid, P = h·w patches, Dl patch width,
Dg global width.

Four families behind one :class:`ImageEncoder`, picked by :attr:`VisionConfig.name`:

* ``"timm:<cnn>"`` (``resnet50``, ``resnet18``, ...): ``forward_intermediates`` returns the
  last stage and the ``local_stage`` map. Patches = the ``local_stage`` map flattened row-major
  (``(B, Dl, h, w) → (B, h·w, Dl)``); pooled = the model's global pool of the last stage.
  GLoRIA / MGCA: ResNet-50 ``layer3`` at 299 px → 19×19 = 361 patches, Dl = 1024, Dg = 2048.
* ``"timm:<vit>"`` (``vit_small_patch16_224``, ...): ``forward_features`` tokens; the prefix
  tokens (CLS, registers) are dropped from the patches (``drop_cls``) and the pooled vector is
  the model's pre-logits pool (CLS for ``global_pool="token"`` ViTs).
* ``"hf:<id>"`` or a local transformers folder (``microsoft/rad-dino`` → ``Dinov2Model``,
  ``openai/clip-vit-large-patch14`` → ``CLIPVisionModel``): ``last_hidden_state`` without its
  prefix tokens as patches, ``pooler_output`` (the normed CLS) as pooled.
* ``"tiny_cnn"``: :class:`TinyCNN`, a from-scratch 5-stage CNN (~1.2 M parameters) for the CPU
  tutorial, named like a ResNet so that ``local_stage="layer3"`` is stride 16 (14×14 at 224 px,
  19×19 at 299 px, like ResNet-50) and the global vector pools ``layer4`` (stride 32).

Grayscale (``in_chans=1``): timm models get a 1-channel stem (timm sums the pretrained RGB
filters, which equals repeating the gray channel), ``tiny_cnn`` is built with one input
channel, and transformers models see the gray channel repeated to their ``num_channels``.

Weights (``pretrained``): ``False`` = random init; ``True`` = the model's published weights
(timm's default tag on the Hub, or the ``hf:`` id itself); a string = a local file/folder or a
Hub id. All go through :func:`~medalign_lite.models.loading.resolve_pretrained` (offline-first:
local path, then the local Hugging Face cache; downloads only when allowed).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .features import ImageFeatures
from .loading import (
    ModelNotAvailable,
    load_state_dict,
    quiet_hub_progress,
    resolve_pretrained,
)

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AMX or AVX512-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@dataclass
class VisionConfig:
    """Which image encoder to build.

    Attributes:
        name: ``"tiny_cnn"``, ``"timm:<model>"`` (e.g. ``"timm:resnet50"``,
            ``"timm:vit_small_patch16_224"``), ``"hf:<id>"`` (e.g. ``"hf:microsoft/rad-dino"``,
            ``"hf:openai/clip-vit-large-patch14"``) or a local transformers model folder.
        pretrained: ``False`` random init; ``True`` published weights; a local path or Hub id of
            weights (safetensors, or a torch checkpoint read with ``weights_only=True``).
        local_stage: stage whose map gives the patches for CNNs (``"layer3"`` as GLoRIA/MGCA;
            any module name of timm's ``feature_info``). Transformers use their last layer.
        image_size: input side in pixels (299 for the GLoRIA/MGCA ResNet-50 shapes, 224 for
            ViT-B/16, 518 for Rad-DINO); sets timm ViT position embeddings and whether a
            transformers model interpolates its position encodings.
        in_chans: 1 (grayscale radiographs, as the data pipeline produces) or 3.
        drop_cls: drop CLS/register tokens from the patches of transformer encoders (then
            P = h·w). ``False`` keeps them in front: P = ``n_prefix`` + h·w.
        tiny_widths: channels of the ``tiny_cnn`` stem and its four stages.
        hf_config: a transformers config as a dict with ``model_type`` (e.g. a tiny
            ``Dinov2Config``) for random init without any file; overrides the named model's.
        hidden_layer: which hidden state of a transformers (``hf:``) encoder gives the
            patches: −1 the last (default), −2 the penultimate (LLaVA's
            ``mm_vision_select_layer``), counted as in ``output_hidden_states``.
        allow_download: permit a one-time download of missing weights (see ``loading``).
        precision: the backbone's arithmetic. ``"fp32"``; ``"bf16"``: under bfloat16 autocast
            (weights stay float32, the features come out float32, convolutions run channels-last);
            ``"auto"``: bf16 on a CPU that computes it natively (AMX or AVX512-BF16, where it runs
            2–3× faster than fp32: ``medalign bench``), fp32 elsewhere — on a GPU the trainer's
            mixed precision decides. The result depends on the choice (and so on the CPU with
            ``"auto"``): it is part of a cache key like any other field.
        channels_last: keep a CNN's weights (and so its activations) in channels-last memory
            order (NHWC). Under bf16 on a CPU the convolutions run channels-last anyway (the
            input is converted), and with weights stored channels-first oneDNN reorders every
            weight in every forward and backward: storing them channels-last saves about 11 % of
            a tutorial AGA step on our 2-core CPU (``benchmarks/RESULTS.md``). The numbers change
            in the last bits (other kernels), so it is a config field, not a silent switch;
            CNN encoders only.
    """

    name: str = "tiny_cnn"
    pretrained: bool | str = False
    local_stage: str = "layer3"
    image_size: int = 224
    in_chans: int = 1
    drop_cls: bool = True
    tiny_widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    hf_config: dict[str, Any] | None = None
    hidden_layer: int = -1
    allow_download: bool = False
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self):
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.tiny_widths) != 5:
            raise ValueError("tiny_widths needs 5 widths: stem, layer1..layer4")
        if self.hidden_layer != -1 and (self.name == "tiny_cnn" or self.name.startswith("timm:")):
            raise ValueError(f"hidden_layer applies to transformers (hf:) encoders only, not {self.name!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


# --------------------------------------------------------------------------- tiny_cnn


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class TinyCNN(nn.Module):
    """A small from-scratch CNN with a ResNet-like stage layout (each stage halves H and W).

    ``stem``: 3×3 conv stride 2; ``layer1..layer4``: [3×3 conv stride 2, 3×3 conv], BN + ReLU
    after each conv. Strides 2, 4, 8, 16, 32: ``layer3`` at 224 px → 14×14, ``layer4`` → 7×7.
    """

    stages = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128, 256)):
        super().__init__()
        self.widths = tuple(widths)
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, widths[0], 2))
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(*_conv_bn_relu(widths[i - 1], widths[i], 2),
                                                     *_conv_bn_relu(widths[i], widths[i], 1)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, local_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(last map (B, C4, H/32, W/32), map of stage ``local_index`` (B, Ci, h, w))."""
        local = None
        for i, name in enumerate(self.stages):
            x = getattr(self, name)(x)
            if i == local_index:
                local = x
        return x, local


# --------------------------------------------------------------------------- the encoder


def _family(name: str) -> tuple[str, str]:
    """(family, model name) from a VisionConfig name."""
    if name == "tiny_cnn":
        return "tiny", name
    if name.startswith("timm:"):
        return "timm", name[5:]
    if name.startswith("hf:"):
        return "hf", name[3:]
    if Path(name).expanduser().is_dir():
        return "hf", name
    raise ValueError(f"Unknown vision encoder '{name}': use 'tiny_cnn', 'timm:<model>', "
                     "'hf:<id>' or a local transformers folder")


class ImageEncoder(nn.Module):
    """An image backbone that returns :class:`ImageFeatures`.

    Attributes:
        cfg: the :class:`VisionConfig` it was built from.
        backbone: the wrapped model (``TinyCNN``, a timm model, or a transformers model).
        family: ``"tiny"``, ``"timm_cnn"``, ``"timm_vit"`` or ``"hf"``.
        global_dim: Dg, width of ``pooled``.
        patch_dim: Dl, width of ``patches``.
        n_prefix: number of prefix tokens (CLS, registers) of transformer encoders (0 for CNNs).
    """

    def __init__(self, cfg: VisionConfig, backbone: nn.Module, family: str, global_dim: int,
                 patch_dim: int, local_index: int = -1, n_prefix: int = 0, patch_size: int = 0,
                 interpolate_pos: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.family = family
        self.global_dim = global_dim
        self.patch_dim = patch_dim
        self.local_index = local_index
        self.n_prefix = n_prefix
        self.patch_size = patch_size
        self.interpolate_pos = interpolate_pos
        if cfg.channels_last:
            if family not in ("tiny", "timm_cnn"):
                raise ValueError(f"channels_last applies to CNN encoders, not {cfg.name!r} ({family})")
            backbone.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        """images (B, C, H, W), C = ``cfg.in_chans`` → ImageFeatures(pooled (B, Dg),
        patches (B, P, Dl), grid (h, w))."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_chans:
            raise ValueError(f"{self.cfg.name} expects images (B, {self.cfg.in_chans}, H, W), "
                             f"got {tuple(images.shape)}")
        if not self._bf16(images.device):
            if self.cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            return self._forward(images)
        if self.family in ("tiny", "timm_cnn"):
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            f = self._forward(images)
        return ImageFeatures(pooled=f.pooled.float(), patches=f.patches.float(), grid=f.grid)

    def _bf16(self, device: torch.device) -> bool:
        p = self.cfg.precision
        return p == "bf16" or (p == "auto" and device.type == "cpu" and cpu_has_native_bf16())

    def _forward(self, images: torch.Tensor) -> ImageFeatures:
        if self.family in ("tiny", "timm_cnn"):
            return self._forward_cnn(images)
        if self.family == "timm_vit":
            return self._forward_timm_vit(images)
        return self._forward_hf(images)

    def _forward_cnn(self, images: torch.Tensor) -> ImageFeatures:
        if self.family == "tiny":
            last, local = self.backbone(images, self.local_index)
            pooled = last.mean(dim=(2, 3))
        else:
            last, (local,) = self.backbone.forward_intermediates(images, indices=[self.local_index])
            pooled = self.backbone.forward_head(last, pre_logits=True)
        h, w = local.shape[-2:]
        patches = local.flatten(2).transpose(1, 2)  # (B, Dl, h, w) -> (B, h·w, Dl), row-major
        return ImageFeatures(pooled=pooled, patches=patches, grid=(int(h), int(w)))

    def _forward_timm_vit(self, images: torch.Tensor) -> ImageFeatures:
        tokens = self.backbone.forward_features(images)  # (B, n_prefix + h·w, D), final norm applied
        pooled = self.backbone.forward_head(tokens, pre_logits=True)
        grid = tuple(int(g) for g in self.backbone.patch_embed.dynamic_feat_size(images.shape[-2:]))
        patches = tokens[:, self.n_prefix:] if self.cfg.drop_cls else tokens
        return ImageFeatures(pooled=pooled, patches=patches, grid=grid)

    def _forward_hf(self, images: torch.Tensor) -> ImageFeatures:
        channels = getattr(self.backbone.config, "num_channels", 3)
        if images.shape[1] != channels:
            images = images.expand(-1, channels, -1, -1)  # gray → repeated channels
        kwargs = {}
        if self.interpolate_pos:
            kwargs["interpolate_pos_encoding"] = True
        layer = self.cfg.hidden_layer
        if layer != -1:
            kwargs["output_hidden_states"] = True
        out = self.backbone(pixel_values=images, **kwargs)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]  # (B, n_prefix + h·w, D)
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        n_prefix = hidden.shape[1] - h * w
        if n_prefix < 0:
            raise RuntimeError(f"{self.cfg.name}: {hidden.shape[1]} tokens for a {h}×{w} grid")
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = hidden[:, 0] if n_prefix else hidden.mean(1)
        patches = hidden[:, n_prefix:] if self.cfg.drop_cls else hidden
        return ImageFeatures(pooled=pooled, patches=patches, grid=(h, w))


def _timm_state_dict(model_name: str, pretrained: bool | str, allow_download: bool) -> dict | None:
    """State dict for a timm model: its default Hub weights (``True``) or a path / id."""
    if pretrained is False:
        return None
    if pretrained is True:
        import timm

        pcfg = timm.models.get_pretrained_cfg(model_name)
        hub_id = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
        if not hub_id:
            raise ModelNotAvailable(f"timm model '{model_name}' names no Hub weights: pass "
                                    "pretrained='<local weight file>'")
        pretrained = hub_id
    return load_state_dict(resolve_pretrained(pretrained, allow_download))


def _build_timm(cfg: VisionConfig, model_name: str) -> ImageEncoder:
    import timm

    sd = _timm_state_dict(model_name, cfg.pretrained, cfg.allow_download)
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": cfg.in_chans, "pretrained": sd is not None}
    if sd is not None:  # timm adapts the stem to in_chans, resamples position embeddings, drops the head
        kwargs["pretrained_cfg_overlay"] = {"state_dict": sd, "source": "timm"}
    try:
        model = timm.create_model(model_name, img_size=cfg.image_size, **kwargs)
    except TypeError:  # CNNs take no img_size
        model = timm.create_model(model_name, **kwargs)
    if hasattr(model, "patch_embed"):  # ViT family
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        dim = int(model.num_features)
        return ImageEncoder(cfg, model, "timm_vit", global_dim=dim, patch_dim=dim, n_prefix=prefix)
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(f"timm model '{model_name}' has no forward_intermediates (timm>=1.0)")
    stages = [fi["module"] for fi in model.feature_info]
    if cfg.local_stage not in stages:
        raise ValueError(f"local_stage '{cfg.local_stage}' is not a stage of {model_name}: {stages}")
    idx = stages.index(cfg.local_stage)
    return ImageEncoder(cfg, model, "timm_cnn", global_dim=int(model.num_features),
                        patch_dim=int(model.feature_info[idx]["num_chs"]), local_index=idx)


def _build_hf(cfg: VisionConfig, model_id: str) -> ImageEncoder:
    import transformers

    if cfg.hf_config is not None:
        conf = dict(cfg.hf_config)
        if "model_type" not in conf:
            raise ValueError("hf_config needs a 'model_type' (e.g. 'dinov2')")
        config = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
        source = None
    else:
        source = resolve_pretrained(cfg.pretrained if isinstance(cfg.pretrained, str) else model_id,
                                    cfg.allow_download)
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    if getattr(config, "model_type", "") in ("clip", "siglip", "siglip2") and hasattr(config, "vision_config"):
        config = config.vision_config  # the vision tower of a two-tower checkpoint
    cls = {"clip_vision_model": transformers.CLIPVisionModel,
           "siglip_vision_model": transformers.SiglipVisionModel}.get(config.model_type, transformers.AutoModel)
    if cfg.pretrained is False or source is None:
        if cfg.pretrained is not False:
            raise ValueError("hf_config builds a random model: set pretrained=False")
        model = cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    else:
        try:
            with quiet_hub_progress(source):  # a small local tower draws no "Loading weights" bar
                model = cls.from_pretrained(source, config=config, local_files_only=True, dtype=torch.float32)
        except OSError as e:  # e.g. a cache holding the config but no weights
            raise ModelNotAvailable(f"Model '{model_id}': weights not found in '{source}' ({e}); "
                                    "download them with allow_download=True or pass a local path") from e
    patch = getattr(config, "patch_size", None)
    if not patch:
        raise ValueError(f"{model_id}: config has no patch_size, not a ViT-style encoder")
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    dim = int(config.hidden_size)
    n_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    if config.model_type.startswith("siglip"):
        n_prefix = 0
    interpolate = (getattr(config, "image_size", cfg.image_size) != cfg.image_size
                   and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters)
    return ImageEncoder(cfg, model, "hf", global_dim=dim, patch_dim=dim, n_prefix=n_prefix, patch_size=patch,
                        interpolate_pos=interpolate)


def build_image_encoder(cfg: VisionConfig | None = None) -> ImageEncoder:
    """An :class:`ImageEncoder` for ``cfg`` (default: random ``tiny_cnn`` at 224 px, gray)."""
    cfg = cfg or VisionConfig()
    family, model_name = _family(cfg.name)
    if family == "timm":
        return _build_timm(cfg, model_name)
    if family == "hf":
        return _build_hf(cfg, model_name)
    if cfg.pretrained is True:
        raise ModelNotAvailable("tiny_cnn has no published weights: pass pretrained='<checkpoint path>' "
                                "(e.g. one trained by the tutorial) or pretrained=False")
    net = TinyCNN(cfg.in_chans, cfg.tiny_widths)
    if cfg.local_stage not in TinyCNN.stages:
        raise ValueError(f"local_stage '{cfg.local_stage}' is not a tiny_cnn stage: {TinyCNN.stages}")
    idx = TinyCNN.stages.index(cfg.local_stage)
    enc = ImageEncoder(cfg, net, "tiny", global_dim=cfg.tiny_widths[-1], patch_dim=cfg.tiny_widths[idx],
                       local_index=idx)
    if isinstance(cfg.pretrained, str):
        sd = load_state_dict(resolve_pretrained(cfg.pretrained, cfg.allow_download))
        if any(k.startswith("backbone.") for k in sd):
            sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        net.load_state_dict(sd)
    return enc


__all__ = ["PRECISIONS", "ImageEncoder", "TinyCNN", "VisionConfig", "build_image_encoder", "cpu_has_native_bf16"]
