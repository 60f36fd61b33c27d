"""The AGA dual encoder (registered as ``aga``), its builder and a per-term gradient diagnostic."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .. import register_method
from ..dual import DualEncoder
from .config import AGAConfig
from .head import AGAHead


# --- the model -----------------------------------------------------------------------------
@register_method("aga", config=AGAConfig, kind="dual_encoder", paper="AGA (Li et al., 2025)")
class AGA(DualEncoder):
    """AGA on a dual encoder: ``forward(batch)`` → :class:`AGAHead`'s dict (loss, parts,
    thresholds, group statistics, maps). ``encode_image`` / ``encode_text`` (global, for
    retrieval) are the dual encoder's."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, config: AGAConfig | None = None):
        config = config or AGAConfig()
        super().__init__(image_encoder, text_encoder, config.embed_dim, config.proj)
        self.config = config
        self.head = AGAHead(config)

    def forward(self, batch) -> dict:
        j = self.joint(batch)
        return self.head(j.image.patches, j.image.pooled, j.text.tokens, j.text.mask, j.text.pooled)


def term_gradient_norms(model: AGA, batch, prefix: str = "image_encoder.") -> dict[str, float]:
    """‖∂L_term/∂θ‖₂ of each term of the objective over the parameters named ``prefix*``.

    Terms: ``"L_g"``, ``"IGA"`` = (L_tf + L_vf)/2 and ``"BCGA"`` = (L_gla + L_gva)/2 (their
    λ = 1, as in the objective), on one batch, gates in eval mode (σ is not updated). The λ weights are
    swapped one term at a time and restored. A diagnostic for ablations: a term whose gradient
    at the encoder is orders of magnitude below the others cannot change what a short run
    learns (BCGA at initialisation: every u_j is nearly the same uniform-attention mean, so
    the contrast of p_j against them is flat).
    """
    c = model.config
    saved = (c.lambda1, c.lambda2, c.lambda3, model.training)
    params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    if not params:
        raise ValueError(f"no parameter starts with {prefix!r}")
    terms = {"L_g": (1.0, 0.0, 0.0)}
    if c.use_iga and not c.global_only:
        terms["IGA"] = (0.0, 1.0, 0.0)
    if model.head.bcga is not None and not c.global_only:
        terms["BCGA"] = (0.0, 0.0, 1.0)
    out = {}
    try:
        model.eval()
        for name, (l1, l2, l3) in terms.items():
            c.lambda1, c.lambda2, c.lambda3 = l1, l2, l3
            grads = torch.autograd.grad(model(batch)["loss"], params, allow_unused=True)
            out[name] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    finally:
        c.lambda1, c.lambda2, c.lambda3 = saved[:3]
        model.train(saved[3])
    return out


def build_aga(config: str | Path = "aga_tiny", overrides: Sequence[str] = ()) -> AGA:
    """An :class:`AGA` with fresh encoders from a config file's ``model:``, ``vision:`` and
    ``text:`` sections (``medalign_lite/configs/aga_tiny.yaml``, ``aga_full.yaml``, or a path).

    ``overrides`` are ``section.key=value`` (``"text.pretrained=false"``,
    ``"vision.pretrained=false"``, ``"model.gamma_tg=0.999"``).
    """
    from ...config import load_config, split_overrides
    from ...models.text import TextConfig, build_text_encoder
    from ...models.vision import VisionConfig, build_image_encoder

    per = split_overrides(overrides, ("model", "vision", "text"))
    model_cfg = load_config(AGAConfig, config, per["model"], section="model")
    vision_cfg = load_config(VisionConfig, config, per["vision"], section="vision")
    text_cfg = load_config(TextConfig, config, per["text"], section="text")
    return AGA(build_image_encoder(vision_cfg), build_text_encoder(text_cfg), model_cfg)
