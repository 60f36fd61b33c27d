"""ALTA's knobs (:class:`ALTAConfig`), the views of a study (:data:`VIEWS`) and the official
trainable set (:data:`TRAINABLE_GROUPS`). Readings: the package docstring."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

#: The views of a study, in the order ALTA stacks them: (view index, time index) of each.
VIEWS: dict[str, tuple[int, int]] = {"frontal": (0, 0), "lateral": (1, 0), "prior_frontal": (0, 1),
                                     "prior_lateral": (1, 1)}


@dataclass
class ALTAConfig:
    """ALTA's knobs (paper / official-code value as default; readings in the package docstring)."""

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
