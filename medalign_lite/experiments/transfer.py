"""Transfer of a dual encoder's image features: zero-shot classification with prompt ensembles and
the linear probe, on the datasets the notebooks use.

- :func:`zero_shot_eval`: Phantom-5×200 (or CheXpert 5×200) images against GLoRIA-style prompt
  ensembles of the five classes (:func:`~medalign_lite.eval.zeroshot.chexpert_5x200_prompts`),
  encoded by the model's own text tower; macro one-vs-rest AUROC, macro F1, accuracy
  (:func:`~medalign_lite.eval.zeroshot.zero_shot_classify`).
- :func:`probe_eval`: the MGCA linear probe (:func:`~medalign_lite.eval.probe.linear_probe`) on the
  image encoder's pooled features (before the projection, as MGCA probes the backbone) of a
  manifest's train and test splits, 14 labels, macro AUROC per training fraction.

Any model with ``encode_image``, ``encode_text``, ``tokenize`` and an ``image_encoder`` returning
:class:`~medalign_lite.models.features.ImageFeatures` fits (ConVIRT, GLoRIA, AGA, ALTA).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.dataset import Collate, ManifestDataset
from ..data.findings import CHEXPERT_LABELS
from ..eval.probe import ProbeConfig, linear_probe
from ..eval.zeroshot import (
    CHEXPERT_5X200_CLASSES,
    chexpert_5x200_prompts,
    embed_prompts,
    zero_shot_classify,
)
from ..utils import module_device, quiet_progress

__all__ = ["image_features", "probe_eval", "zero_shot_eval"]


@torch.no_grad()
def image_features(model, dataset: ManifestDataset, batch_size: int = 64, projected: bool = False) -> torch.Tensor:
    """(N, D) features of a dataset's current frontals: the image encoder's pooled vector, or with
    ``projected`` the L2-normalised joint-space embedding (``encode_image``)."""
    model.eval()
    dev = module_device(model)
    out = []
    for batch in quiet_progress(DataLoader(dataset, batch_size=batch_size, collate_fn=Collate()), desc="features"):
        images = batch.images.to(dev)
        out.append((model.encode_image(images) if projected else model.image_encoder(images).pooled).cpu())
    return torch.cat(out)


@torch.no_grad()
def zero_shot_eval(model, gallery: ManifestDataset, n_prompts: int | None = 5, seed: int = 0,
                   label_column: str = "class", classes: Sequence[str] = CHEXPERT_5X200_CLASSES,
                   batch_size: int = 64) -> dict:
    """Zero-shot 5-class classification of ``gallery`` (one ``label_column`` class per study):
    each image against ``n_prompts`` seeded prompts per class (mean of their cosines). Returns
    ``auroc``, ``f1``, ``accuracy`` and ``per_class_auroc`` (a dict by class)."""
    dev = module_device(model)
    model.eval()

    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            tok = model.tokenize(texts[i:i + batch_size])
            t = {k: v.to(dev) for k, v in tok.items() if isinstance(v, torch.Tensor)}
            out.append(model.encode_text(**t).cpu())
        return torch.cat(out)

    prompts = chexpert_5x200_prompts(n_prompts, seed=seed, classes=classes)
    text = embed_prompts(prompts, encode)
    images = image_features(model, gallery, batch_size, projected=True)
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[c] for c in gallery.df[label_column]]
    r = zero_shot_classify(images, text, labels)
    return {"auroc": r["auroc"], "f1": r["f1"], "accuracy": r["accuracy"],
            "per_class_auroc": dict(zip(classes, r["per_class_auroc"]))}


def probe_eval(model, manifest: str | Path, image_size: int, fractions: Sequence[float] = (0.1, 1.0),
               seed: int = 42, config: ProbeConfig | None = None, limit: int | None = None,
               train: ManifestDataset | None = None, test: ManifestDataset | None = None) -> dict:
    """Linear-probe macro AUROC on the manifest's test split for each training fraction, from the
    image encoder's pooled features of its train split (``limit``: the first studies of each
    split; ``train``/``test``: prepared datasets). Returns ``{fraction: auroc}`` and
    ``"per_class"`` (the full-fraction AUROC by observation)."""
    train = train if train is not None else ManifestDataset(manifest, split="train", image_size=image_size, cache=True)
    test = test if test is not None else ManifestDataset(manifest, split="test", image_size=image_size, cache=True)
    x_tr, x_te = image_features(model, train), image_features(model, test)
    y_tr, y_te = train.labels, test.labels
    if limit:
        x_tr, y_tr, x_te, y_te = x_tr[:limit], y_tr[:limit], x_te[:limit], y_te[:limit]
    res = linear_probe(x_tr, y_tr, x_te, y_te, fractions=tuple(fractions), seed=seed, class_names=CHEXPERT_LABELS,
                       config=config or ProbeConfig(standardize=True))
    out: dict = {f: r["auroc"] for f, r in res.items()}
    out["per_class"] = dict(zip(CHEXPERT_LABELS, res[max(res)]["per_class"]))
    return out
