"""ALTA's experiments as data: the cached MAE, the ablation variants, the four-view training set,
and the paper's claims decided by the one claims rule.

Every variant is the tutorial config (``configs/alta_tiny.yaml``; ``alta_full.yaml`` at paper
scale) with a few ``section.key=value`` overrides, trained with the same data, budget and seed
(:func:`~medalign_lite.experiments.variants.run_variants`). The tutorial's masked autoencoder is
pre-trained once (:func:`~medalign_lite.experiments.pretrain.pretrained_mae`, the config's
``mae_pretrain:`` section) and every variant starts from that same folder
(:func:`prepare_mae`, :func:`variant_recipes`).

The claims (:data:`CLAIMS`) are orderings "A scores above B" decided by
:func:`~medalign_lite.experiments.claims.retrieval_claim`; what a verdict means for the paper's
sentence (:func:`paper_reading`) depends on the sentence: "adapters match or beat full
fine-tuning" is contradicted only by *reversed*, "masking kept on costs no retrieval accuracy"
(the ordering "no masking > masking") only by *holds*, "temporal multi-view inputs help" is shown
only by *holds*.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import config_path, load_config, read_yaml
from .claims import Claim, retrieval_claim
from .contrastive import AlignmentRecipe, recipe_from_config
from .pretrain import MAEPretrainConfig, pretrained_mae

__all__ = ["ALL_VIEWS", "CLAIMS", "SMOKE_OVERRIDES", "VARIANTS", "Variant", "alta_claims", "build_ceiling",
           "mae_settings", "paper_reading", "prepare_mae", "seconds_per_step", "train_dataset", "variant_recipes"]

#: The four views of a study, as ``ManifestDataset(views=...)`` loads them.
ALL_VIEWS: tuple[str, ...] = ("frontal", "lateral", "prior_frontal", "prior_lateral")


@dataclass(frozen=True)
class Variant:
    """A named change of the ALTA config: ``overrides`` on it."""

    overrides: tuple[str, ...] = ()
    label: str = ""


VARIANTS: dict[str, Variant] = {
    "full": Variant(label="ALTA: adapters, masking 0.75, four views, four losses"),
    "full_finetune": Variant(("model.adapters=false", "train.stages.0.trainable=['*']"),
                             label="full fine-tuning (no adapters, every weight trains)"),
    "no_masking": Variant(("model.mask_ratio=0.0",), label="no masking during alignment"),
    "frontal_only": Variant(("model.views=[frontal]",), label="current frontal only"),
    "no_mim_mlm": Variant(("model.use_mim=false", "model.use_mlm=false"), label="without MIM and MLM"),
    "no_mim": Variant(("model.use_mim=false",), label="without MIM"),
    "no_mlm": Variant(("model.use_mlm=false",), label="without MLM"),
}

#: What a smoke run (seconds: the notebook's ``smoke=True``, nbval) changes on the tutorial config:
#: two-step MAE pre-training, batch 4, three steps per run.
SMOKE_OVERRIDES: tuple[str, ...] = ("train.batch_size=4", "train.stages.0.max_steps=3",
                                    "mae_pretrain.max_steps=2", "mae_pretrain.batch_size=4",
                                    "mae_pretrain.epochs=1")

#: The orderings checked: (claim, a, b, what the paper says, verdicts that support it, verdicts
#: that contradict it).
CLAIMS: tuple[tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("adapters > full fine-tuning", "full", "full_finetune", "adapters match or beat full fine-tuning",
     ("holds",), ("reversed",)),
    ("no masking > masking 0.75", "no_masking", "full", "masking kept on costs no retrieval accuracy",
     ("reversed",), ("holds",)),
    ("four views > current frontal", "full", "frontal_only", "temporal multi-view inputs help retrieval",
     ("holds",), ("reversed",)),
    ("with MIM + MLM > without", "full", "no_mim_mlm", "(ablation) the generative terms help retrieval",
     ("holds",), ("reversed",)),
    ("with MIM > without", "full", "no_mim", "(ablation) masked image modelling helps retrieval",
     ("holds",), ("reversed",)),
    ("with MLM > without", "full", "no_mlm", "(ablation) image-conditioned MLM helps retrieval",
     ("holds",), ("reversed",)),
)


def _split(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(recipe overrides, ``mae_pretrain.*`` overrides without their prefix)."""
    mae = [o[len("mae_pretrain."):] for o in overrides if o.startswith("mae_pretrain.")]
    return [o for o in overrides if not o.startswith("mae_pretrain.")], mae


def mae_settings(config: str | Path = "alta_tiny", overrides: Sequence[str] = ()) -> MAEPretrainConfig:
    """The config's ``mae_pretrain:`` section (defaults when it has none) with the user's
    ``mae_pretrain.*`` overrides."""
    path = config_path(config)
    mae = _split(overrides)[1]
    if "mae_pretrain" not in read_yaml(path):
        return load_config(MAEPretrainConfig, None, mae)
    return load_config(MAEPretrainConfig, path, mae, section="mae_pretrain")


def prepare_mae(manifest: str | Path, config: str | Path = "alta_tiny", overrides: Sequence[str] = (),
                seed: int = 0, device: str = "auto", progress: bool = False, cache_dir: str | Path | None = None
                ) -> Path | None:
    """The cached MAE folder the config's variants start from (pre-trained on ``manifest`` the
    first time), or None when the config names pretrained weights itself (paper scale: MRM)."""
    recipe = recipe_from_config(config, _split(overrides)[0], seed=seed, device=device)
    if recipe.vision.pretrained is not False:
        return None
    vision = replace(recipe.vision, image_size=recipe.image_size)
    return pretrained_mae(manifest, vision, mae_settings(config, overrides), seed=seed, device=device,
                          progress=progress, cache_dir=cache_dir)


def variant_recipes(names: Sequence[str], config: str | Path = "alta_tiny", overrides: Sequence[str] = (),
                    seed: int = 0, device: str = "auto", mae: str | Path | None = None) -> dict[str, AlignmentRecipe]:
    """``{name: recipe}`` for the variants ``names`` of :data:`VARIANTS`: the config plus the
    user's ``overrides`` plus the variant's; ``mae`` (a folder from :func:`prepare_mae`) becomes
    every recipe's ``vision.pretrained``. ``mae_pretrain.*`` overrides are accepted (they
    configure :func:`prepare_mae`) and left out of the recipes."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ALTA variant(s) {unknown}; choose from {list(VARIANTS)}")
    rest = _split(overrides)[0]
    mae_pretrain = _split(overrides)[1]
    if mae_pretrain:
        load_config(MAEPretrainConfig, None, mae_pretrain)  # a typo fails here, naming the key
    out = {}
    for name in names:
        r = recipe_from_config(config, [*rest, *VARIANTS[name].overrides], seed=seed, device=device)
        if mae is not None:
            r = replace(r, vision=replace(r.vision, pretrained=str(mae)))
        out[name] = r
    return out


def train_dataset(manifest: str | Path, recipe: AlignmentRecipe, split: str = "train", limit: int | None = None):
    """The four-view training set of a recipe (every variant reads it; the frontal-only variant
    ignores the other views): in memory when the recipe does not augment."""
    from ..data.dataset import ManifestDataset

    ds = ManifestDataset(manifest, split=split, views=ALL_VIEWS, text_columns=recipe.text_columns,
                         image_size=recipe.image_size, train=recipe.augment, cache=not recipe.augment)
    if limit:
        ds.df = ds.df.iloc[:limit].reset_index(drop=True)
        ds.texts, ds.labels = ds.texts[:limit], ds.labels[:limit]
    return ds


def paper_reading(claim: Claim) -> str:
    """``"supported"``, ``"contradicted"`` or ``"not shown"``: what the verdict says about the
    paper's sentence behind the claim (:data:`CLAIMS`)."""
    for name, _a, _b, _sentence, supports, contradicts in CLAIMS:
        if name == claim.name:
            return ("supported" if claim.verdict in supports else
                    "contradicted" if claim.verdict in contradicts else "not shown")
    raise ValueError(f"{claim.name!r} is not one of ALTA's claims")


def alta_claims(results: Sequence, key: str = "i2t_P@5", seed: int = 0, claims=CLAIMS) -> list[Claim]:
    """The orderings of :data:`CLAIMS` decided from a grid of runs
    (:class:`~medalign_lite.experiments.variants.RunResult`, every seed of each variant; a claim
    whose variants did not both run is left out). Each claim's ``extra`` holds the paper's
    sentence and its reading (:func:`paper_reading`)."""
    by: dict[str, list] = {}
    for r in results:
        by.setdefault(r.name, []).append(r)
    out = []
    for name, a, b, sentence, _s, _c in claims:
        if a in by and b in by:
            c = retrieval_claim(sorted(by[a], key=lambda r: r.seed), sorted(by[b], key=lambda r: r.seed), key=key,
                                name=name, a_name=a, b_name=b, seed=seed)
            c.extra = {"paper": sentence, "reading": paper_reading(c)}
            out.append(c)
    return out


def build_ceiling(recipe: AlignmentRecipe):
    """The supervised ceiling of ALTA's image encoder: the same (cached) MAE, read as ALTA reads
    it at inference (unmasked current frontal, patches and pooled vector), with a linear head on
    its patches (:class:`~medalign_lite.experiments.ceiling.LabelCeiling`), every weight trained
    on the labels with the recipe's budget by :func:`~medalign_lite.experiments.ceiling.train_ceiling`."""
    import torch

    from ..methods.alta import ALTAConfig, ALTAVision
    from ..models.mae import build_mae
    from .ceiling import LabelCeiling

    opts = ALTAConfig(**recipe.method_options)
    torch.manual_seed(recipe.seed)
    vision = ALTAVision(build_mae(replace(recipe.vision, image_size=recipe.image_size)), opts.recon_scale,
                        opts.norm_pix_loss, opts.image_pooling)
    return LabelCeiling(vision)


def seconds_per_step(history: Sequence[dict]) -> float:
    """Training seconds per optimizer step of a run: the median over its logged intervals of
    Δ``time`` / Δ``global_step`` (the trainer's elapsed clock), leaving out every interval that
    starts at a learning-curve evaluation (its clock includes the evaluation), so that a run with a
    curve and one without compare."""
    import statistics

    evals = {r["global_step"] for r in history if any(k.startswith("eval/") for k in r)}
    rows = [r for r in history if "time" in r and "global_step" in r and not any(k.startswith("eval/") for k in r)]
    rates, prev = [], (0, 0.0)
    for r in rows:
        step, t = r["global_step"], r["time"]
        if step > prev[0] and prev[0] not in evals:
            rates.append((t - prev[1]) / (step - prev[0]))
        prev = (step, t)
    return statistics.median(rates) if rates else float("nan")
