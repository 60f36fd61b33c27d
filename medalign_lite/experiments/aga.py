"""AGA's ablations (its Table of CheXpert 5×200 retrieval) as data: named overrides of one config.

Every variant is the tutorial config (``configs/aga_tiny.yaml``; ``aga_full.yaml`` at paper
scale) with a few ``section.key=value`` overrides; GLoRIA, the cross-pair baseline, trains with
the same data, budget and encoders (the config's ``vision``, ``text``, ``train`` and ``data``
sections) and its own loss. :func:`variant_recipes` turns names into
:class:`~medalign_lite.experiments.contrastive.AlignmentRecipe` objects for
:func:`~medalign_lite.experiments.variants.run_variants`; :func:`aga_claims` decides the
paper's orderings with the one claims rule (:mod:`medalign_lite.experiments.claims`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .claims import Claim, decide, retrieval_claim
from .contrastive import AlignmentRecipe, recipe_from_config

__all__ = ["CLAIMS", "PAPER_P5", "SMOKE_OVERRIDES", "TEXT_COLUMNS", "VARIANTS", "Variant", "aga_claims",
           "normalized_similarities", "sigma_claims", "variant_recipes"]


@dataclass(frozen=True)
class Variant:
    """A named change of the AGA config: ``overrides`` on it, or ``method``: another
    registered dual encoder trained on the same sections (its own loss, default settings)."""

    overrides: tuple[str, ...] = ()
    method: str | None = None
    label: str = ""


VARIANTS: dict[str, Variant] = {
    "full": Variant(label="full AGA"),
    "no_bcga": Variant(("model.use_bcga=false",), label="without BCGA"),
    "no_iga": Variant(("model.use_iga=false",), label="without IGA"),
    "fixed_thresholds": Variant(("model.fixed_thresholds=true",), label="fixed thresholds"),
    "global_only": Variant(("model.global_only=true",), label="global loss only"),
    "gloria": Variant(method="gloria", label="GLoRIA (cross-pair baseline)"),
    # ours, not in the paper: IGA's groups contrasted across the batch's pairs (AGAConfig.iga_scope)
    "cross_pair": Variant(("model.iga_scope=batch",), label="IGA across pairs (ours)"),
}

#: What a smoke run (seconds: the notebook's ``smoke=True``, nbval) changes on the tutorial config.
SMOKE_OVERRIDES: tuple[str, ...] = ("vision.image_size=64", "train.batch_size=8", "train.stages.0.epochs=1",
                                    "train.stages.0.max_steps=3")

#: The paper's image→text P@5 on CheXpert 5×200 (only the rows it reports).
PAPER_P5: dict[str, float] = {"full": 50.28, "no_bcga": 34.28, "fixed_thresholds": 48.54}

#: The orderings checked: (claim, a, b).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("full > without BCGA", "full", "no_bcga"),
    ("dynamic > fixed thresholds", "full", "fixed_thresholds"),
    ("full > without IGA", "full", "no_iga"),
    ("full > global only", "full", "global_only"),
    ("AGA > GLoRIA", "full", "gloria"),
)

#: Report styles of IU-Phantom (``data.text_columns``): IU's own free text, the report
#: writer's free text of what the phantom shows, and the same as structured lines.
TEXT_COLUMNS: dict[str, tuple[str, str]] = {
    "real": ("findings", "impression"),
    "written": ("written_findings", "written_impression"),
    "structured": ("structured_findings", "structured_impression"),
}


def variant_recipes(names: Sequence[str], config: str = "aga_tiny", overrides: Sequence[str] = (),
                    text: str | None = None, seed: int = 0, device: str = "auto") -> dict[str, AlignmentRecipe]:
    """``{name: recipe}`` for the variants ``names`` of :data:`VARIANTS`: the config plus the
    user's ``overrides`` plus the variant's. ``text`` picks a report style of
    :data:`TEXT_COLUMNS` (None: the config's). A ``method`` variant keeps the common sections
    and drops the user's ``model.*`` overrides (they configure AGA)."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown AGA variant(s) {unknown}; choose from {list(VARIANTS)}")
    if text is not None and text not in TEXT_COLUMNS:
        raise ValueError(f"text must be one of {sorted(TEXT_COLUMNS)}, got {text!r}")
    style = [f"data.text_columns=[{', '.join(TEXT_COLUMNS[text])}]"] if text is not None else []
    out = {}
    for name in names:
        v = VARIANTS[name]
        if v.method is None:
            out[name] = recipe_from_config(config, [*overrides, *style, *v.overrides], seed=seed, device=device)
        else:
            common = [o for o in overrides if not o.startswith("model.")]
            base = recipe_from_config(config, [*common, *style], seed=seed, device=device)
            out[name] = replace(base, method=v.method, method_options={}, trainable=None)
    return out


def aga_claims(results: Sequence, key: str = "i2t_P@5", seed: int = 0, claims=CLAIMS) -> list[Claim]:
    """The paper's orderings decided from a grid of runs (:class:`~medalign_lite.experiments.variants.RunResult`,
    every seed of each variant; a claim whose systems did not both run is left out)."""
    by: dict[str, list] = {}
    for r in results:
        by.setdefault(r.name, []).append(r)
    out = []
    for name, a, b in claims:
        if a in by and b in by:
            paper = (PAPER_P5[a], PAPER_P5[b]) if a in PAPER_P5 and b in PAPER_P5 else None
            out.append(retrieval_claim(sorted(by[a], key=lambda r: r.seed), sorted(by[b], key=lambda r: r.seed),
                                       key=key, name=name, a_name=a, b_name=b, seed=seed, paper=paper))
    return out




@torch.no_grad()
def normalized_similarities(model, dataset, batch_size: int = 64, keep_values: int = 200_000) -> dict:
    """What AGA's thresholds follow, measured pair by pair on ``dataset`` (eval mode, no σ update).

    σ_tg moves towards S̄_tg, the mean over a batch's valid (token, patch) entries of the
    similarities min-max normalised over the patches of each token; σ_vg towards S̄_vg, the same
    normalised over the tokens of each patch. A row whose similarities are *skewed* — a few
    patches far above the rest — normalises to a few values near 1 and many near 0, so its mean,
    and σ, settle low; evenly spread similarities give means near ½. Returns
    ``{"s_bar_tg", "s_bar_vg"}`` (N,) arrays, each pair's own mean (the per-item scores of
    :func:`sigma_claims`), and ``{"values_tg", "values_vg"}``: up to ``keep_values`` normalised
    entries each (the first pairs' valid entries, for a histogram).
    """
    from torch.utils.data import DataLoader

    from ..data.dataset import Collate
    from ..utils import module_device

    was = model.training
    model.eval()
    dev = module_device(model)
    out = {"s_bar_tg": [], "s_bar_vg": [], "values_tg": [], "values_vg": []}
    kept = {"tg": 0, "vg": 0}
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate(model.tokenize)):
            o = model(batch.to(dev))
            for key in ("tg", "vg"):
                s = o[f"sim_{key}"].float().cpu()                     # (B, T, P), padding −1
                valid = s >= 0
                out[f"s_bar_{key}"].append((s.clamp_min(0) * valid).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1))
                if kept[key] < keep_values:
                    v = s[valid][: keep_values - kept[key]]
                    out[f"values_{key}"].append(v)
                    kept[key] += v.numel()
    finally:
        model.train(was)
    return {k: torch.cat(v).numpy().astype(np.float64) for k, v in out.items()}


def sigma_claims(structured: Sequence[dict], free: Sequence[dict], free_name: str = "written", seed: int = 0
                 ) -> list[Claim]:
    """The paper's "thresholds settle higher for structured reports" (σ ≈ 0.45 / 0.43 on SMTs
    against 0.15 / 0.22 on MIMIC-CXR free text), decided by the one claims rule: per test pair,
    the mean normalised similarity each model's gate follows (:func:`normalized_similarities`,
    one dict per seed, the same test images read with each report style), structured minus free."""
    paper = {"tg": (0.45, 0.15), "vg": (0.43, 0.22)}
    return [decide(np.stack([r[f"s_bar_{k}"] for r in structured]), np.stack([r[f"s_bar_{k}"] for r in free]),
                   name=f"σ_{k} structured > {free_name} free text", a_name="structured", b_name=free_name,
                   metric=f"S_bar_{k} per pair", seed=seed, paper=paper[k]) for k in ("tg", "vg")]
