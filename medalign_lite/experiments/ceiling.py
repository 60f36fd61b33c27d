"""The supervised ceiling: the same image encoder, at the same size and budget, trained on labels.

An alignment method learns from image–report pairs alone. How much of what the images allow has
it learned? The ceiling answers with the same encoder (a method recipe's ``vision`` config and
image size, trained from the same seed with the recipe's batch size, epochs, step cap and
learning rate) trained on the manifest's 14 CheXpert labels instead of the reports:

- :class:`LabelCeiling`: the encoder's two outputs that the methods align — its pooled vector
  g and its patches V ∈ R^{P×D} — each get a linear head: z^g_c = u_cᵀ g + a_c and
  z^l_c = mean_p (w_cᵀ v_p + b_c) (B, 14), trained by the sum of their binary cross-entropies
  over the labelled entries. Classifying the *mean of the patches' scores* makes the class
  activation map exact: CAM_c(p) = w_cᵀ v_p + b_c is the map whose mean is the local logit
  (:meth:`LabelCeiling.cam`). The global head is what trains the stages after the local one
  (with ``local_stage="layer2"`` a patch head alone would leave ``layer3``/``layer4``, and so
  the pooled features that retrieval reads, untrained).
- :func:`ceiling_retrieval`: image→image class P@K over the gallery (Phantom-5×200; each query
  against every *other* image) with the encoder's pooled features, the counterpart of a
  method's image→text P@K.
- :func:`ceiling_grounding`: for every finding phrase that :func:`~medalign_lite.experiments.
  contrastive.grounding_eval` scores, the CAM of the finding's CheXpert observation, scored by
  the same pointing game and mask AUROC (:func:`~medalign_lite.experiments.contrastive.
  score_grounding`). Findings with no CheXpert observation (hyperinflation, scoliosis, …) have
  no label to learn from and are left out; the result says how many phrases remain.
- :func:`ceiling_auroc`: per-observation AUROC of the global logits on a split.
- :func:`ceiling_class_confusion`: the global head as a classifier of the gallery's classes, in
  the layout of :func:`~medalign_lite.eval.retrieval.class_confusion_at_k` (a reference for
  where a method's image→text retrieval confuses classes).

**Our readings** (the issue leaves them open): uncertain labels (-1) are ignored in the loss by
default (``uncertain="ignore"``; ``"zero"`` / ``"one"`` map them, as CE's policies do), blank
labels always; the grounding map reads the local patches (the map a method's grounding reads)
through its own head, so that its CAM needs no gradient; the two heads' losses weigh the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.dataset import Collate, ManifestDataset
from ..data.findings import CATALOGUE, CHEXPERT_LABELS
from ..eval.retrieval import within_precision_at_k
from ..eval.zeroshot import auroc
from ..models.vision import build_image_encoder
from ..train import Stage, TrainConfig, Trainer, TrainResult
from ..utils import module_device, quiet_progress
from .contrastive import AlignmentRecipe, finding_phrases, score_grounding
from .generation import encode_dataset

__all__ = ["MAPPED_KINDS", "UNCERTAIN", "LabelCeiling", "SupervisedCeiling", "build_ceiling", "ceiling_auroc", "ceiling_class_confusion",
           "ceiling_grounding", "ceiling_retrieval",
           "label_targets", "train_ceiling"]

UNCERTAIN = ("ignore", "zero", "one")
#: The finding kinds the ceiling has a map for (a CheXpert observation to learn): compare a
#: method's grounding with the ceiling's on these
#: (:func:`~medalign_lite.experiments.contrastive.restrict_grounding`).
MAPPED_KINDS: frozenset[str] = frozenset(k for k, t in CATALOGUE.items() if t.chexpert)


def label_targets(labels: torch.Tensor, uncertain: str = "ignore") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 14) labels 1 / 0 / -1 / NaN → (targets in {0, 1}, valid mask): blank is never valid;
    uncertain is ignored, or counted as 0 or 1."""
    if uncertain not in UNCERTAIN:
        raise ValueError(f"uncertain must be one of {UNCERTAIN}, got {uncertain!r}")
    y = labels.float()
    valid = (y == 1) | (y == 0)
    target = (y == 1).float()
    if uncertain != "ignore":
        unc = y == -1
        valid = valid | unc
        target = torch.where(unc, torch.full_like(target, 1.0 if uncertain == "one" else 0.0), target)
    return target, valid


class LabelCeiling(nn.Module):
    """An image encoder with a linear head on its pooled vector and one on its patches:
    global logits z^g = U g + a and local logits z^l = mean_p (W v_p + b), both (B, 14).

    ``forward(batch)`` → ``{"loss", "loss_global", "loss_local", "labelled"}``: the sum of the two
    binary cross-entropies, each averaged over the valid entries of ``batch.labels``
    (:func:`label_targets`).
    """

    def __init__(self, image_encoder: nn.Module, n_labels: int = len(CHEXPERT_LABELS), uncertain: str = "ignore"):
        super().__init__()
        if uncertain not in UNCERTAIN:
            raise ValueError(f"uncertain must be one of {UNCERTAIN}, got {uncertain!r}")
        self.image_encoder = image_encoder
        self.head = nn.Linear(int(image_encoder.patch_dim), n_labels)
        self.head_global = nn.Linear(int(image_encoder.global_dim), n_labels)
        self.uncertain = uncertain

    def _outputs(self, images: torch.Tensor):
        f = self.image_encoder(images)
        return self.head_global(f.pooled), self.head(f.patches).transpose(1, 2), f.grid

    def cam(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Class activation maps (B, 14, P) — CAM_c(p) = w_cᵀ v_p + b_c — and the patch grid."""
        _, cam, grid = self._outputs(images)
        return cam, grid

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 14): the global head's logits (the classifier :func:`ceiling_auroc` scores)."""
        return self._outputs(images)[0]

    def local_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 14): the mean of each class's activation map."""
        return self._outputs(images)[1].mean(-1)

    def forward(self, batch) -> dict:
        target, valid = label_targets(batch.labels, self.uncertain)
        z_global, cam, _ = self._outputs(batch.images)
        n = valid.sum().clamp_min(1)
        losses = [(F.binary_cross_entropy_with_logits(z, target, reduction="none") * valid).sum() / n
                  for z in (z_global, cam.mean(-1))]
        return {"loss": losses[0] + losses[1], "loss_global": losses[0].detach(), "loss_local": losses[1].detach(),
                "labelled": valid.float().sum(1).mean()}


def build_ceiling(recipe: AlignmentRecipe, uncertain: str = "ignore") -> LabelCeiling:
    """The ceiling of ``recipe``: a fresh encoder of its vision config at its image size, built
    from its seed (the same initial weights as the method's image encoder)."""
    torch.manual_seed(recipe.seed)
    vision = build_image_encoder(replace(recipe.vision, image_size=recipe.image_size))
    return LabelCeiling(vision, uncertain=uncertain)


@dataclass(frozen=True)
class SupervisedCeiling:
    """The ceiling of ``recipe`` as one more job of a grid of runs
    (:func:`~medalign_lite.experiments.variants.run_variants` trains it like a method's recipe,
    in the same worker pool: :func:`build_ceiling`, :func:`train_ceiling`, scored by
    :func:`ceiling_retrieval`)."""

    recipe: AlignmentRecipe
    uncertain: str = "ignore"


def train_ceiling(model: LabelCeiling, manifest, recipe: AlignmentRecipe, output_dir: str | Path,
                  dataset: ManifestDataset | None = None, resume: bool = False, eval_fn=None,
                  eval_every: int = 0) -> TrainResult:
    """Train ``model`` on the manifest's train split with the recipe's budget (batch size, epochs,
    ``max_steps``, lr, warm-up, seed, device; every weight trains), as
    :func:`~medalign_lite.experiments.contrastive.train_alignment` trains the method (``eval_fn``
    every ``eval_every`` steps: a learning curve)."""
    ds = dataset if dataset is not None else ManifestDataset(
        manifest, split="train", text_columns=recipe.text_columns, image_size=recipe.image_size,
        train=recipe.augment, cache=not recipe.augment)
    cfg = TrainConfig(output_dir=str(output_dir), batch_size=recipe.batch_size, seed=recipe.seed,
                      device=recipe.device, log_every=5, drop_last=True, eval_every=eval_every,
                      stages=[Stage(name="ceiling", epochs=recipe.epochs, lr=recipe.lr, trainable=["*"],
                                    warmup_ratio=recipe.warmup_ratio, max_steps=recipe.max_steps)])
    return Trainer(model, ds, cfg, collate_fn=Collate(), eval_fn=eval_fn).fit(resume=resume)


@torch.no_grad()
def ceiling_retrieval(model: LabelCeiling, gallery: ManifestDataset, ks: Sequence[int] = (1, 5, 10),
                      label_column: str = "class") -> dict:
    """Image→image class P@K over the gallery with the encoder's pooled, L2-normalised features:
    each image queries every other one (its own entry is excluded). ``{"i2i_P@K": …}``."""
    pooled, _, _ = encode_dataset(model.image_encoder, gallery, patches=False)
    return {f"i2i_P@{k}": v for k, v in within_precision_at_k(pooled, gallery.df[label_column].tolist(), ks).items()}


@torch.no_grad()
def _logits_and_labels(model: LabelCeiling, dataset: ManifestDataset, batch_size: int = 64):
    was = model.training
    model.eval()
    dev = module_device(model)
    out, labels = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate())
        for batch in quiet_progress(loader, desc="ceiling logits"):
            out.append(model.logits(batch.images.to(dev)).float().cpu())
            labels.append(batch.labels)
    finally:
        model.train(was)
    return torch.cat(out), torch.cat(labels)


def ceiling_auroc(model: LabelCeiling, dataset: ManifestDataset, batch_size: int = 64) -> dict[str, float]:
    """Per-observation AUROC of the ceiling's logits on ``dataset`` (positives: label 1;
    negatives: 0; uncertain and blank left out); NaN where a class lacks either."""
    logits, labels = _logits_and_labels(model, dataset, batch_size)
    target = labels == 1
    valid = (labels == 1) | (labels == 0)
    has_both = (target & valid).any(0) & (~target & valid).any(0)
    scores = auroc(logits.T, target.T, valid.T)
    return {o: float(scores[j]) if has_both[j] else float("nan") for j, o in enumerate(CHEXPERT_LABELS)}


def ceiling_class_confusion(model: LabelCeiling, gallery: ManifestDataset, label_column: str = "class",
                            batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """The ceiling's global head as a classifier of the gallery's classes (each a CheXpert
    observation, as in Phantom-5×200): every image gets the class whose logit is largest among
    them. Returns ``(classes, C)``, ``C[a, b]`` the share of class-``a`` images given class ``b``
    (rows sum to 1), the layout of :func:`~medalign_lite.eval.retrieval.class_confusion_at_k`.

    On a gallery whose reports cluster tightly by class, a method's image→text P@K is close to
    classifying each image by its nearest report class; this is the same task done by the model
    that saw the labels, without any fitting on the gallery. A reference for where the confusions
    lie, not the ceiling #11's targets use (that is :func:`ceiling_retrieval`'s image→image P@K).
    """
    classes = sorted(set(gallery.df[label_column].tolist()))
    unknown = [c for c in classes if c not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"{label_column!r} holds classes with no CheXpert observation: {unknown}")
    logits, _ = _logits_and_labels(model, gallery, batch_size)
    pred = logits[:, [CHEXPERT_LABELS.index(c) for c in classes]].argmax(1).numpy()
    true = np.array([classes.index(c) for c in gallery.df[label_column].tolist()])
    counts = np.zeros((len(classes), len(classes)))
    np.add.at(counts, (true, pred), 1)
    return classes, counts / counts.sum(1, keepdims=True)


@torch.no_grad()
def ceiling_grounding(model: LabelCeiling, manifest: str | Path, image_size: int, split: str | None = "test",
                      text_column: str = "written_findings", spans_column: str = "written_spans",
                      batch_size: int = 32, limit: int | None = None) -> dict:
    """The CAM of each finding phrase's CheXpert observation, scored like
    :func:`~medalign_lite.experiments.contrastive.grounding_eval` on the same phrases (those of
    findings that have an observation); ``n_without_observation`` counts the phrases left out."""
    ds = ManifestDataset(manifest, split=split, text_columns=(text_column,), masks=True, image_size=image_size)
    if limit:
        ds.df = ds.df.iloc[:limit].reset_index(drop=True)
        ds.texts, ds.labels = ds.texts[:limit], ds.labels[:limit]
    was = model.training
    model.eval()
    dev = module_device(model)
    maps, masks, kinds, study = [], [], [], []
    grid, skipped, row = None, 0, 0
    try:
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=Collate())
        for batch in quiet_progress(loader, desc="ceiling grounding"):
            cam, grid = model.cam(batch.images.to(dev))
            cam = cam.float().cpu()
            for b, k, _start, _end in finding_phrases(ds, batch, row, spans_column):
                kind = batch.finding_names[b][k]
                observations = CATALOGUE[kind].chexpert if kind in CATALOGUE else ()
                if not observations:
                    skipped += 1
                    continue
                maps.append(cam[b, CHEXPERT_LABELS.index(observations[0])])
                masks.append(batch.finding_masks[b, k])
                kinds.append(kind)
                study.append(ds.df.iloc[row + b]["study_id"])
            row += len(batch)
    finally:
        model.train(was)
    return {**score_grounding(maps, masks, kinds, study, grid), "n_without_observation": skipped}

