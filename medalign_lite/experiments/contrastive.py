"""Contrastive runs: build a dual encoder, train it on a manifest, embed a dataset, and
evaluate retrieval and phrase grounding.

Each function is one step a notebook shows; together they keep the notebooks thin (DESIGN.md:
narrative, one library call, one figure). Methods come from the registry
(:func:`medalign_lite.methods.get_method`), so ConVIRT, GLoRIA, AGA and ALTA plug in the same
way. A run's settings are one :class:`AlignmentRecipe`, read from the method's config file
(``configs/<method>_<scale>.yaml``) with ``section.key=value`` overrides by
:func:`recipe_from_config`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..config import ConfigError, config_path, load_config, read_yaml, split_overrides
from ..data.dataset import Collate, ManifestDataset
from ..eval.grounding import mask_auroc, pointing_game
from ..eval.retrieval import precision_at_k_per_query, retrieval_report, within_precision_at_k
from ..methods import get_method
from ..models.text import TextConfig, build_text_encoder
from ..models.vision import VisionConfig, build_image_encoder
from ..nn import l2norm
from ..train import Stage, TrainConfig, Trainer, TrainResult
from ..utils import module_device, quiet_progress


@dataclass
class AlignmentRecipe:
    """Everything a CPU-minutes alignment run needs; paper scale changes the fields.

    The defaults are the tutorial's: a small CNN trained from scratch (at 128 px its
    ``layer3`` grid is 8×8 = 64 patches) and the real all-MiniLM-L6-v2 with only its last
    layer trained. GLoRIA's paper scale: ``vision.name="timm:resnet50"``, ``image_size=299``,
    ``text.name="emilyalsentzer/Bio_ClinicalBERT"``, ``text.max_length=97``,
    ``text.last_n_layers=4``, ``embed_dim=768``, ``batch_size=48``, ``lr=5e-5``.
    """

    method: str = "gloria"
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(name="tiny_cnn", image_size=128))
    text: TextConfig = field(default_factory=lambda: TextConfig(name="minilm", max_length=64))
    embed_dim: int = 128
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 2
    lr: float = 3e-4
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    #: parameters trained (None: :func:`default_trainable`); the rest stays frozen
    trainable: list[str] | None = None
    text_columns: tuple[str, ...] = ("findings", "impression")
    seed: int = 0
    device: str = "auto"
    method_options: dict = field(default_factory=dict)
    #: random crop/affine/jitter while training; False trains on the eval transform, which
    #: lets an ablation keep its training set in memory (``ManifestDataset(cache=True)``)
    augment: bool = True
    #: freeze the text encoder whole and memoise its features (``TextEncoder.cache_features``):
    #: for runs whose trainable set leaves the text encoder out
    cache_text: bool = False
    #: the stage's AdamW weight decay and betas, the gradient clip (None: none) and the span of
    #: its LR schedule in epochs (None: the run's own; :class:`~medalign_lite.train.Stage`)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    schedule_epochs: int | None = None
    #: IU-Phantom-extra training studies added to IU-Phantom's training split
    #: (:func:`~medalign_lite.data.ensure_iu_phantom`; 0: IU-Phantom alone; a user's own manifest
    #: gets none)
    extra_studies: int = 0


def default_trainable(method: str, method_options: dict | None = None, text: bool = True) -> list[str]:
    """The image encoder, the projections, MiniLM's last layer (``text=False``: the text
    encoder stays frozen whole), and a method's own weights: AGA's BCGA attention lives in
    ``head`` (absent when an ablation drops BCGA or keeps only L_g). A method whose class names
    its own set (``trainable_patterns(method_options)``: ALTA's adapters, norms and heads) gets that."""
    opts = method_options or {}
    own = getattr(get_method(method).module, "trainable_patterns", None)
    if own is not None:
        return list(own(opts))
    base = ["image_encoder.*", "img_*", "txt_*"] + (["text_encoder.model.encoder.layer.5.*"] if text else [])
    has_head = method == "aga" and opts.get("use_bcga", True) and not opts.get("global_only", False)
    return base + (["head.*"] if has_head else [])


def recipe_trainable(recipe: AlignmentRecipe) -> list[str]:
    """The recipe's trainable patterns: its own list, else :func:`default_trainable` (text
    encoder frozen when the recipe caches its features)."""
    if recipe.trainable:
        return list(recipe.trainable)
    return default_trainable(recipe.method, recipe.method_options, text=not recipe.cache_text)


@dataclass
class DataOptions:
    """The ``data:`` section of a contrastive config: what a run reads from the manifest.

    Attributes:
        text_columns: manifest columns joined into the report text (IU's own free text
            ``findings, impression``; the report writer's ``written_*``; ``structured_*``).
        augment: random crop/affine/jitter while training (False: the eval transform, and the
            training set can stay in memory).
        cache_text: freeze the text encoder whole and memoise its features.
        extra_studies: IU-Phantom-extra studies added to IU-Phantom's training split (new
            patients drawn from the training split's finding lists, kind-balanced; 0: none).
            Only for the embedded data: a run on a user's manifest trains on that manifest.
    """

    text_columns: tuple[str, ...] = ("findings", "impression")
    augment: bool = True
    cache_text: bool = False
    extra_studies: int = 0


def recipe_from_config(config: str | Path, overrides: Sequence[str] = (), *, seed: int = 0,
                       device: str = "auto") -> AlignmentRecipe:
    """An :class:`AlignmentRecipe` from a contrastive method's config file and overrides.

    The file (``configs/<method>_<scale>.yaml`` or a path) names its ``method`` (a registered
    dual encoder) and has the sections ``model`` (the method's config dataclass:
    ``embed_dim``, τ, the ablation switches), ``vision`` (:class:`VisionConfig`; its
    ``image_size`` is the run's), ``text`` (:class:`TextConfig`), ``train`` (a one-stage
    :class:`~medalign_lite.train.TrainConfig`: batch size, and the stage's epochs, lr, warm-up,
    ``max_steps`` and, if written, ``trainable``; without it :func:`default_trainable` decides)
    and ``data`` (:class:`DataOptions`). ``overrides`` are ``section.key=value`` strings
    (``"model.use_bcga=false"``, ``"train.stages.0.lr=1e-3"``, ``"vision.image_size=96"``);
    every key is checked against its dataclass.
    """
    path = config_path(config)
    raw = read_yaml(path)
    if "method" not in raw:
        raise ConfigError(f"{path}: no 'method' key (the registered method this file configures)")
    spec = get_method(str(raw["method"]))
    per = split_overrides(overrides, ("model", "vision", "text", "train", "data"))
    model = load_config(spec.config, path, per["model"], section="model")
    vision = load_config(VisionConfig, path, per["vision"], section="vision")
    text = load_config(TextConfig, path, per["text"], section="text")
    train = load_config(TrainConfig, path, per["train"], section="train")
    data = load_config(DataOptions, path, per["data"], section="data")
    if len(train.stages) != 1:
        raise ConfigError(f"{path}: a contrastive run has one training stage, got {len(train.stages)}")
    stage = train.stages[0]
    stage_raw = ((raw.get("train") or {}).get("stages") or [{}])[0]
    trainable_given = "trainable" in stage_raw or any(o.startswith("train.stages.0.trainable") for o in overrides)
    defaults = asdict(spec.config())
    options = {k: v for k, v in asdict(model).items() if k != "embed_dim" and v != defaults[k]}
    return AlignmentRecipe(method=spec.name, vision=vision, text=text, embed_dim=model.embed_dim,
                           image_size=vision.image_size, batch_size=train.batch_size, epochs=stage.epochs, lr=stage.lr,
                           max_steps=stage.max_steps, warmup_ratio=stage.warmup_ratio,
                           trainable=list(stage.trainable) if trainable_given else None,
                           text_columns=tuple(data.text_columns), seed=seed, device=device, method_options=options,
                           augment=data.augment, cache_text=data.cache_text, weight_decay=stage.weight_decay,
                           betas=tuple(stage.betas), max_grad_norm=train.max_grad_norm,
                           schedule_epochs=stage.schedule_epochs, extra_studies=data.extra_studies)


#: Learning curves are read on a *validation* draw of the 5×200 recipe, never on the test gallery:
#: Phantom-5×200 built with the dataset seed plus this offset (other patients), 100 per class.
VALIDATION_SEED_OFFSET = 1000


def validation_gallery(seed: int = 0, per_class: int = 100, progress: bool = True) -> Path:
    """The manifest of the validation gallery (:data:`VALIDATION_SEED_OFFSET`): Phantom-5×200's
    recipe on patients of neither the training data nor the test gallery, ``per_class``
    studies per class."""
    from ..data import ensure_dataset

    return ensure_dataset("phantom-5x200", size=224, seed=seed + VALIDATION_SEED_OFFSET, limit=5 * per_class,
                          progress=progress)


def training_manifests(recipe: AlignmentRecipe, manifest: str | Path | None = None, *, seed: int = 0,
                       limit: int | None = None, progress: bool = True) -> list[Path]:
    """What a run of ``recipe`` trains on: ``[manifest]`` when the user gives one, else IU-Phantom
    plus the recipe's ``extra_studies`` IU-Phantom-extra studies
    (:func:`~medalign_lite.data.ensure_iu_phantom`, dataset ``seed``; ``limit`` caps both)."""
    if manifest:
        return [Path(manifest)]
    from ..data import ensure_iu_phantom

    return ensure_iu_phantom(recipe.extra_studies, limit=limit, seed=seed, progress=progress)


def build_model(recipe: AlignmentRecipe, text_encoder: nn.Module | None = None) -> nn.Module:
    """The recipe's method around fresh encoders (seeded). ``text_encoder``: reuse this one
    instead of loading a new one (only with ``cache_text``: a frozen encoder and its feature
    cache can serve every run of an ablation)."""
    spec = get_method(recipe.method)
    if not spec.dual_encoder:
        raise ValueError(f"{recipe.method!r} is a {spec.kind.replace('_', ' ')}, not a dual encoder")
    cls, cfg_cls = spec.module, spec.config
    torch.manual_seed(recipe.seed)
    build_vision = getattr(cls, "build_vision", build_image_encoder)  # ALTA: a masked autoencoder
    vision = build_vision(VisionConfig(**{**asdict(recipe.vision), "image_size": recipe.image_size}))
    if text_encoder is not None and not recipe.cache_text:
        raise ValueError("a shared text_encoder needs cache_text=True (a trained one would leak between runs)")
    text = text_encoder if text_encoder is not None else build_text_encoder(recipe.text)
    cfg = cfg_cls(**{"embed_dim": recipe.embed_dim, **recipe.method_options})
    if recipe.cache_text:
        trainable = recipe_trainable(recipe)
        if any(p.startswith("text_encoder") for p in trainable):
            raise ValueError(f"cache_text=True freezes the text encoder, but trainable has {trainable}")
        text.requires_grad_(False).cache_features()
    return cls(vision, text, cfg)


def train_alignment(model: nn.Module, manifest: str | Path | Sequence[str | Path], recipe: AlignmentRecipe,
                    output_dir: str | Path,
                    resume: bool = False, eval_fn: Callable | None = None,
                    dataset: ManifestDataset | None = None, eval_every: int = 0) -> TrainResult:
    """Train ``model`` on the manifest's train split with the recipe's single stage (a list of
    manifests reads as one: :func:`training_manifests`; the image views a model reads beyond the
    current frontal: its ``dataset_views``, ALTA's four).

    ``dataset`` replaces the one built from ``manifest`` (e.g. one in-memory training set
    shared by the runs of an ablation). ``eval_fn(model) -> {name: number}`` runs every
    ``eval_every`` optimizer steps and at the end (a learning curve:
    :class:`~medalign_lite.experiments.variants.RetrievalCurve`), logged as ``eval/<name>``.
    """
    ds = dataset if dataset is not None else ManifestDataset(
        manifest, split="train", text_columns=recipe.text_columns, image_size=recipe.image_size,
        train=recipe.augment, cache=not recipe.augment, views=getattr(model, "dataset_views", ("frontal",)))
    cfg = TrainConfig(output_dir=str(output_dir), batch_size=recipe.batch_size, seed=recipe.seed,
                      device=recipe.device, log_every=5, drop_last=True, max_grad_norm=recipe.max_grad_norm,
                      eval_every=eval_every,
                      stages=[Stage(name=recipe.method, epochs=recipe.epochs, lr=recipe.lr,
                                    trainable=recipe_trainable(recipe),
                                    warmup_ratio=recipe.warmup_ratio,
                                    max_steps=recipe.max_steps, weight_decay=recipe.weight_decay,
                                    betas=recipe.betas, schedule_epochs=recipe.schedule_epochs)])
    return Trainer(model, ds, cfg, collate_fn=Collate(model.tokenize), eval_fn=eval_fn).fit(resume=resume)


@torch.no_grad()
def embed(model: nn.Module, dataset: ManifestDataset, batch_size: int = 64, local: bool = False) -> dict:
    """Global (and with ``local`` the patch/word) embeddings of a whole dataset.

    Returns ``image`` (N, d) and ``text`` (N, d) L2-normalised; with ``local`` also
    ``patches`` (N, P, d), ``grid``, and the batches' word embeddings as lists (lengths vary).
    """
    model.eval()
    dev = module_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate(model.tokenize))
    img, txt, patches, words, word_masks, grid = [], [], [], [], [], None
    for batch in quiet_progress(loader, desc="embed"):
        batch = batch.to(dev)
        j = model.joint(batch)
        img.append(l2norm(j.image.pooled).cpu())
        txt.append(l2norm(j.text.pooled).cpu())
        if local:
            patches.append(j.image.patches.cpu())
            words.extend(j.text.tokens.cpu().unbind(0))
            word_masks.extend(j.text.mask.cpu().unbind(0))
            grid = j.image.grid
    out = {"image": torch.cat(img), "text": torch.cat(txt)}
    if local:
        out.update(patches=torch.cat(patches), words=words, word_masks=word_masks, grid=grid)
    return out


def retrieval_eval(model: nn.Module, manifest: str | Path, image_size: int, ks: Sequence[int] = (1, 5, 10),
                   label_column: str = "class", batch_size: int = 64,
                   dataset: ManifestDataset | None = None) -> dict:
    """Class-based P@K and instance R@K, both directions, over the whole gallery (Phantom-5×200
    or CheXpert 5×200: the class is the study's one positive observation). ``dataset``: a
    prepared gallery (e.g. ``ManifestDataset(manifest, split=None, cache=True)``) to reuse.

    Besides :func:`~medalign_lite.eval.retrieval.retrieval_report`'s numbers, ``"per_query"``
    holds ``{"i2t_P@K": (N,) float64 array, "t2i_P@K": ...}``, each query's precision (its mean
    is the P@K), for the paired bootstrap of :mod:`medalign_lite.experiments.claims`.

    ``"i2i_P@K"`` and ``"t2t_P@K"`` are the within-modality diagnostics: each image (report)
    queries the other images (reports) of the gallery with the same embeddings, its own entry
    left out, as :func:`~medalign_lite.experiments.ceiling.ceiling_retrieval` scores the
    supervised ceiling. Image→text P@K well below image→image P@K says the image space holds
    the classes and the cross-modal map is what falls short."""
    ds = dataset if dataset is not None else ManifestDataset(manifest, split=None, image_size=image_size)
    e = embed(model, ds, batch_size)
    labels = ds.df[label_column].tolist()
    out: dict = retrieval_report(e["image"], e["text"], labels, ks=tuple(ks))
    for name, x in (("i2i", e["image"]), ("t2t", e["text"])):
        out.update({f"{name}_P@{k}": v for k, v in within_precision_at_k(x, labels, ks).items()})
    sim = F.normalize(e["image"].float(), dim=-1) @ F.normalize(e["text"].float(), dim=-1).T  # as retrieval_report
    out["per_query"] = {f"{name}_P@{k}": precision_at_k_per_query(s, labels, labels, k).numpy()
                        for name, s in (("i2t", sim), ("t2i", sim.T.contiguous())) for k in ks if k <= len(labels)}
    return out


def phrase_word_mask(word_spans: Sequence[tuple[int, int]], start: int, end: int) -> np.ndarray:
    """(W,) bool: the words whose character span overlaps [start, end)."""
    s = np.array([a for a, _ in word_spans] or [0])
    e = np.array([b for _, b in word_spans] or [0])
    return (s < end) & (e > start) & (s >= 0)


@torch.no_grad()
def grounding_eval(model: nn.Module, manifest: str | Path, image_size: int, split: str = "test",
                   text_column: str = "written_findings", spans_column: str = "written_spans",
                   batch_size: int = 32, limit: int | None = None) -> dict:
    """Phrase grounding on a phantom manifest: for each finding phrase of the report writer's
    text (its character span), the phrase's local word embeddings (mean) are compared with
    every patch; the map is scored against the finding's mask by the pointing game and mask
    AUROC. Returns overall and per-kind scores plus the maps for plotting.
    """
    ds = ManifestDataset(manifest, split=split, text_columns=(text_column,), masks=True, image_size=image_size)
    if limit:
        ds.df = ds.df.iloc[:limit].reset_index(drop=True)
        ds.texts, ds.labels = ds.texts[:limit], ds.labels[:limit]
    model.eval()
    dev = module_device(model)
    maps, masks, kinds, study = [], [], [], []
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=Collate())
    row = 0
    grid = None
    for batch in quiet_progress(loader, desc="grounding"):
        tok = model.tokenize(batch.texts)
        spans_words = tok.pop("word_spans")
        tensors = {k: v.to(dev) for k, v in tok.items() if isinstance(v, torch.Tensor)}
        img = model.embed_images(batch.images.to(dev))
        txt = model.embed_texts(**tensors)
        grid = img.grid
        patches = l2norm(img.patches)                                    # (B, P, d)
        words = l2norm(txt.tokens)                                       # (B, W, d)
        for b, k, start, end in finding_phrases(ds, batch, row, spans_column):  # gathered, then scored batched
            wm = torch.from_numpy(phrase_word_mask(spans_words[b], start, end))[: words.shape[1]]
            wm = wm & txt.mask[b, : wm.shape[0]].cpu()
            if not wm.any():
                continue  # phrase truncated away
            phrase = l2norm(words[b, : wm.shape[0]][wm.to(dev)].mean(0))
            maps.append((patches[b] @ phrase).cpu())
            masks.append(batch.finding_masks[b, k])
            kinds.append(batch.finding_names[b][k])
            study.append(ds.df.iloc[row + b]["study_id"])
        row += len(batch)
    return score_grounding(maps, masks, kinds, study, grid)


def finding_phrases(ds: ManifestDataset, batch, row: int, spans_column: str = "written_spans"):
    """Yield ``(b, k, start, end)`` for every finding phrase of the batch's studies (rows
    ``row``… of ``ds``) that grounding is scored on: in the findings section, with a valid mask
    ``k`` (``batch.finding_masks[b, k]``); ``start:end`` is its character span. Phrases per
    report vary, so the caller gathers their maps and scores them batched."""
    for b in range(len(batch)):
        for k, section, start, end in json.loads(ds.df.iloc[row + b][spans_column]):
            if section == "findings" and k < batch.finding_masks.shape[1] and batch.finding_valid[b, k]:
                yield b, k, start, end


#: Finding kinds scored apart (the issue's and a reader's question: does a method ground what is
#: big on the radiograph, and what is a few pixels wide?). At 96 px a nodule or a granuloma is
#: smaller than one patch of a stride-16 grid.
GROUNDING_GROUPS: dict[str, tuple[str, ...]] = {
    "large": ("cardiomegaly", "pleural_effusion", "consolidation", "hyperinflation"),
    "small": ("nodule", "granuloma"),
}


def score_grounding(maps: list[torch.Tensor], masks: list[torch.Tensor], kinds: list[str], study_ids: list[str],
                    grid: tuple[int, int] | None) -> dict:
    """Pointing game and mask AUROC of phrase maps against their findings' masks, overall, per
    finding kind and per :data:`GROUNDING_GROUPS` group (:func:`grounding_eval`, and the
    supervised ceiling's class activation maps, :mod:`medalign_lite.experiments.ceiling`).

    Two pointing games: ``pointing_game`` (pixel: the argmax pixel of the bilinearly upsampled
    map lies in the mask, :func:`~medalign_lite.eval.grounding.pointing_game`) and
    ``pointing_patch`` (the map's argmax *patch* covers at least one mask pixel). On a coarse grid
    the pixel game also measures the grid: a bilinear map peaks at a patch centre, so a finding
    smaller than a patch that misses every centre can never be hit, whatever the map; the patch
    game asks only whether the model chose the right patch. Both are reported; neither is
    tuned per method.

    ``maps``: one (P,) score per patch for each phrase, ``grid`` their (h, w); ``masks``: the
    findings' (H, W) masks; ``kinds``, ``study_ids``: each phrase's finding kind and study.
    """
    if not maps:
        return {"n_phrases": 0}
    sim = torch.stack(maps).reshape(len(maps), *grid)
    m = torch.stack(masks)
    pg = pointing_game(sim, m)
    au = mask_auroc(sim, m)
    hits = np.asarray(pg["hits"], dtype=float)
    cells = F.adaptive_max_pool2d(m[:, None].float(), tuple(grid))[:, 0].flatten(1) > 0      # (N, P) patch ∩ mask
    best = sim.flatten(1).argmax(1)                                                          # first maximum
    patch_hits = cells[torch.arange(len(maps)), best].numpy().astype(float)
    valid = np.asarray(pg["valid"], dtype=bool)
    per_item = np.asarray(au["per_item"], dtype=float)

    def scores(idx: list[int]) -> dict:
        idx = [i for i in idx if valid[i]]
        if not idx:
            return {"n": 0, "pointing": float("nan"), "pointing_patch": float("nan"), "mask_auroc": float("nan")}
        auc = per_item[idx]
        return {"n": len(idx), "pointing": float(np.mean(hits[idx])), "pointing_patch": float(np.mean(patch_hits[idx])),
                "mask_auroc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")}

    per_kind = {kind: scores([i for i, k in enumerate(kinds) if k == kind]) for kind in sorted(set(kinds))}
    groups = {g: scores([i for i, k in enumerate(kinds) if k in members]) for g, members in GROUNDING_GROUPS.items()}
    return {"n_phrases": len(maps), "pointing_game": float(pg["accuracy"]),
            "pointing_patch": float(patch_hits[valid].mean()) if valid.any() else float("nan"),
            "mask_auroc": float(au["mean"]), "per_kind": per_kind, "groups": groups, "maps": sim, "masks": m,
            "kinds": kinds, "study_ids": list(study_ids), "grid": grid}


def restrict_grounding(g: dict, kinds) -> dict:
    """A :func:`score_grounding` result scored again on the phrases whose finding kind is in
    ``kinds`` (e.g. those the supervised ceiling maps: findings with a CheXpert observation), from
    its stored maps — so that two systems are compared on the same phrases."""
    keep = [i for i, k in enumerate(g.get("kinds", [])) if k in set(kinds)]
    if not keep:
        return {"n_phrases": 0}
    return score_grounding([g["maps"][i].flatten() for i in keep], [g["masks"][i] for i in keep],
                           [g["kinds"][i] for i in keep], [g["study_ids"][i] for i in keep], g["grid"])
