"""Zero-shot classification with prompt ensembles (GLoRIA / CXR-CLIP / BioViL conventions).

A class is described by several prompts; an image is scored against each prompt by cosine
similarity and the prompt scores are pooled into one class score::

    s_ncp = <x̂_n, t̂_cp>             x̂, t̂ L2-normalised image / prompt embeddings
    mean:      S_nc = mean_p s_ncp    (MedCLIP ensemble)
    max:       S_nc = max_p s_ncp     (GLoRIA)
    embedding: S_nc = <x̂_n, normalise(mean_p t̂_cp)>   (CXR-CLIP: pool the embeddings)

Three task modes (see ``research/aga-and-peers.md`` §3):

* **multi-class** (CheXpert 5×200): one label per image, ``p = softmax(S / τ)``, prediction =
  argmax; AUROC is macro one-vs-rest on ``p``, F1 macro, accuracy. Optional GLoRIA step:
  z-normalise each class's scores over the image set before the softmax.
* **binary** (RSNA, the BioViL / CXR-CLIP recipe): two "classes" [negative, positive] prompts,
  softmax over the pair (τ = 1 on cosines as in CXR-CLIP); AUROC of ``p[:, 1]``, accuracy and
  F1 of the positive class. Selected automatically when C = 2.
* **multi-label**: each class has a [negative, positive] prompt pair, softmax over the pair per
  class (CheXzero / CXR-CLIP SIIM style); per-class AUROC / F1 at p > 0.5, macro averages;
  NaN labels are ignored per class.

Prompt texts are produced here; encoding them is the caller's job (:func:`embed_prompts` takes
any ``encode_text(list[str]) -> (n, D)``).

Shapes: N images, C classes, P prompts per class, D embedding width.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

CHEXPERT_5X200_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
"""The five CheXpert competition classes of the 5×200 benchmark, in its usual order."""

# Our own prompt vocabulary (written for this project, GLoRIA-style severity × subtype × location).
# Empty strings let a slot be omitted ("atelectasis at the left base").
CHEXPERT_PROMPT_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "Atelectasis": {
        "severity": ("", "minimal", "mild", "small", "patchy", "moderate"),
        "subtype": ("atelectasis", "subsegmental atelectasis", "plate-like atelectasis",
                    "discoid atelectasis", "linear atelectasis", "volume loss with atelectasis"),
        "location": ("", "at the left base", "at the right base", "at both lung bases",
                     "in the left lower lobe", "in the right middle lobe", "in the lingula",
                     "behind the heart"),
    },
    "Cardiomegaly": {
        "severity": ("", "mild", "moderate", "marked", "borderline"),
        "subtype": ("cardiomegaly", "enlargement of the cardiac silhouette", "cardiac enlargement",
                    "enlargement of the heart"),
        "location": ("", "unchanged from prior", "on the frontal view", "new since the prior study"),
    },
    "Consolidation": {
        "severity": ("", "focal", "patchy", "dense", "early", "confluent"),
        "subtype": ("consolidation", "airspace consolidation", "airspace opacity",
                    "consolidative opacity", "lobar consolidation"),
        "location": ("", "in the right upper lobe", "in the right lower lobe", "in the left upper lobe",
                     "in the left lower lobe", "at the lung bases", "in the perihilar region"),
    },
    "Edema": {
        "severity": ("", "mild", "moderate", "severe", "worsening", "improving"),
        "subtype": ("pulmonary edema", "interstitial edema", "alveolar edema",
                    "pulmonary vascular congestion", "interstitial pulmonary edema"),
        "location": ("", "bilaterally", "in both lungs", "in the perihilar regions",
                     "with kerley b lines"),
    },
    "Pleural Effusion": {
        "severity": ("", "small", "trace", "moderate", "large", "loculated"),
        "subtype": ("pleural effusion", "effusion", "layering pleural effusion", "pleural fluid collection"),
        "location": ("", "on the left", "on the right", "bilaterally", "at the left base",
                     "at the right base"),
    },
}
"""Per class: word lists whose product gives the prompt pool of :func:`chexpert_5x200_prompts`."""

RSNA_PROMPTS: dict[str, list[str]] = {
    "No Pneumonia": ["No evidence of pneumonia"],
    "Pneumonia": ["Findings suggesting pneumonia"],
}
"""The BioViL / CXR-CLIP binary pair, [negative, positive]."""

Pooling = Literal["mean", "max", "embedding"]
ClassEmbeddings = torch.Tensor | Sequence[torch.Tensor]


def _compose(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def all_chexpert_prompts(classes: Sequence[str] = CHEXPERT_5X200_CLASSES) -> dict[str, list[str]]:
    """Every severity × subtype × location combination per class (CXR-CLIP's "all prompts")."""
    out = {}
    for c in classes:
        parts = CHEXPERT_PROMPT_PARTS[c]
        out[c] = [_compose(*t) for t in itertools.product(parts["severity"], parts["subtype"], parts["location"])]
    return out


def chexpert_5x200_prompts(n_per_class: int | None = 5, seed: int = 0,
                           classes: Sequence[str] = CHEXPERT_5X200_CLASSES) -> dict[str, list[str]]:
    """GLoRIA-style prompt ensemble: ``n_per_class`` distinct prompts per class, seeded.

    Each class's pool is the product severity × subtype × location of
    :data:`CHEXPERT_PROMPT_PARTS`; ``n_per_class`` of them are drawn without replacement with
    ``numpy.random.default_rng([seed, class index])`` (so one class's draw does not depend on the
    others). ``n_per_class=None`` returns the whole pool (CXR-CLIP), in product order.

    Returns:
        ``{class: [prompt, ...]}`` in ``classes`` order.
    """
    pools = all_chexpert_prompts(classes)
    if n_per_class is None:
        return pools
    out = {}
    for i, c in enumerate(classes):
        pool = pools[c]
        if n_per_class > len(pool):
            raise ValueError(f"{c}: asked for {n_per_class} prompts, the pool has {len(pool)}")
        pick = np.random.default_rng([seed, i]).choice(len(pool), size=n_per_class, replace=False)
        out[c] = [pool[j] for j in pick]
    return out


def rsna_prompts() -> dict[str, list[str]]:
    """The RSNA pneumonia pair ``{"No Pneumonia": [...], "Pneumonia": [...]}`` (negative first)."""
    return {k: list(v) for k, v in RSNA_PROMPTS.items()}


def embed_prompts(prompts_by_class: Mapping[str, Sequence[str]],
                  encode_text: Callable[[list[str]], torch.Tensor]) -> ClassEmbeddings:
    """Encode every class's prompts in one call.

    Args:
        prompts_by_class: ``{class: [prompt, ...]}``; the class order is the dict order.
        encode_text: maps ``list[str]`` (n texts) to an (n, D) tensor or array.

    Returns:
        (C, P, D) tensor when every class has P prompts, else a list of C (P_c, D) tensors.
    """
    names = list(prompts_by_class)
    counts = [len(prompts_by_class[c]) for c in names]
    if min(counts, default=0) < 1:
        raise ValueError("every class needs at least one prompt")
    flat = [p for c in names for p in prompts_by_class[c]]
    emb = _as_tensor(encode_text(flat))
    if emb.ndim != 2 or emb.shape[0] != len(flat):
        raise ValueError(f"encode_text returned shape {tuple(emb.shape)} for {len(flat)} texts")
    if len(set(counts)) == 1:
        return emb.reshape(len(names), counts[0], -1)
    return list(torch.split(emb, counts))


def _as_tensor(x) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).detach().float().cpu()


def _pad_ragged(class_text_emb: ClassEmbeddings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(C, P, D) embeddings and a (C, P) validity mask (None when nothing is padded)."""
    if isinstance(class_text_emb, torch.Tensor):
        return class_text_emb.float(), None
    embs = [_as_tensor(e) for e in class_text_emb]
    p_max = max(e.shape[0] for e in embs)
    padded = torch.zeros(len(embs), p_max, embs[0].shape[-1])
    mask = torch.zeros(len(embs), p_max, dtype=torch.bool)
    for c, e in enumerate(embs):  # loop over classes (a handful), not samples
        padded[c, : e.shape[0]] = e
        mask[c, : e.shape[0]] = True
    return padded, mask


def prompt_scores(image_emb: torch.Tensor, class_text_emb: ClassEmbeddings,
                  pooling: Pooling = "mean") -> torch.Tensor:
    """Pooled cosine similarity of each image to each class's prompts.

    Args:
        image_emb: (N, D).
        class_text_emb: (..., P, D) tensor (e.g. (C, P, D) or (C, 2, P, D)) or a list of C
            (P_c, D) tensors (ragged prompt counts).
        pooling: ``"mean"`` / ``"max"`` of the prompt similarities, or ``"embedding"`` (cosine
            with the re-normalised mean prompt embedding).

    Returns:
        (N, ...) class scores, e.g. (N, C) or (N, C, 2).
    """
    text, mask = _pad_ragged(class_text_emb)
    x = F.normalize(image_emb.float(), dim=-1)
    t = F.normalize(text.to(x.device), dim=-1)
    if mask is not None:
        mask = mask.to(x.device)
        t = t * mask[..., None]
    lead = t.shape[:-2]
    if pooling == "embedding":
        n = mask.sum(-1, keepdim=True) if mask is not None else t.shape[-2]
        centroid = F.normalize(t.sum(-2) / n, dim=-1)                           # (..., D)
        return (x @ centroid.reshape(-1, t.shape[-1]).T).reshape(x.shape[0], *lead)
    s = (x @ t.reshape(-1, t.shape[-1]).T).reshape(x.shape[0], *t.shape[:-1])  # (N, ..., P)
    if pooling == "mean":
        if mask is None:
            return s.mean(-1)
        return s.sum(-1) / mask.sum(-1)
    if pooling == "max":
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return s.amax(-1)
    raise ValueError(f"pooling must be 'mean', 'max' or 'embedding', got {pooling!r}")


def auroc(scores: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise binary AUROC by the rank-sum (Mann–Whitney) formula, ties get average ranks.

    ``AUC = (Σ_{positives} rank − n⁺(n⁺+1)/2) / (n⁺ n⁻)`` over the valid entries of each row.
    Invalid entries are moved to +inf, above every valid score, so they do not change the
    ranks of valid ones.

    Args:
        scores: (R, M) finite scores (a 1-D input is one row).
        targets: (R, M) bool / {0, 1}.
        valid: optional (R, M) bool; False entries are ignored.

    Returns:
        (R,) float64 AUROC, NaN where a row has no valid positive or no valid negative.
    """
    squeeze = scores.ndim == 1
    s = torch.as_tensor(scores).double().reshape(-1, scores.shape[-1])
    t = torch.as_tensor(targets).bool().reshape(s.shape)
    v = torch.ones_like(t) if valid is None else torch.as_tensor(valid).bool().reshape(s.shape)
    if not torch.isfinite(s[v]).all():
        raise ValueError("AUROC needs finite scores")
    t = t & v
    s = s.masked_fill(~v, float("inf"))
    srt = s.sort(dim=1).values
    lo = torch.searchsorted(srt, s, right=False)
    hi = torch.searchsorted(srt, s, right=True)
    rank = (lo + hi + 1).double() / 2                       # 1-based average rank among ties
    n_pos = t.sum(1).double()
    n_neg = v.sum(1).double() - n_pos
    auc = ((rank * t).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc = torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, float("nan")))
    return auc[0] if squeeze else auc


def f1_per_class(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(C,) F1 = 2TP / (2TP + FP + FN) from (N, C) bool predictions and targets, 0 where 0/0."""
    pred, target = pred.bool(), target.bool()
    if valid is not None:
        pred, target = pred & valid, target & valid
    tp = (pred & target).sum(0).double()
    fp = (pred & ~target).sum(0).double()
    fn = (~pred & target).sum(0).double()
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1), torch.zeros_like(den))


def _nanmean(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def zero_shot_classify(image_emb: torch.Tensor, class_text_emb: ClassEmbeddings,
                       labels: torch.Tensor | Sequence[int] | np.ndarray, pooling: Pooling = "mean",
                       multilabel: bool = False, zscore: bool = False,
                       temperature: float = 1.0) -> dict:
    """Zero-shot classification metrics and predictions.

    Args:
        image_emb: (N, D) image embeddings (L2-normalised here).
        class_text_emb: multi-class / binary: (C, P, D) or a list of C (P_c, D);
            multi-label: (C, 2, P, D) or (C, 2, D), [negative, positive] prompts per class.
        labels: multi-class / binary: (N,) int in [0, C); multi-label: (N, C) {0, 1, NaN}.
        pooling: prompt pooling, see :func:`prompt_scores`.
        multilabel: use the per-class [negative, positive] pair mode.
        zscore: GLoRIA's step: standardise each class's score over the N images before the
            softmax (multi-class only).
        temperature: softmax temperature τ on the (cosine) scores; 1.0 as in CXR-CLIP. It does
            not change predictions, only the probabilities' sharpness (and OvR AUROC slightly).

    Returns:
        dict with ``auroc``, ``f1``, ``accuracy`` (floats) and ``per_class_auroc``,
        ``per_class_f1`` (lists), plus ``scores`` (N, C) or (N, C, 2) pooled similarities,
        ``probs`` (N, C) and ``preds`` ((N,) int for multi-class / binary, (N, C) bool for
        multi-label) as tensors. Binary mode also has ``f1_macro`` (over both classes) and
        ``mode`` says which mode ran. ``f1`` is macro F1 (multi-class), positive-class F1
        (binary) or mean per-class F1 (multi-label).
    """
    labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if multilabel:
        text = class_text_emb if isinstance(class_text_emb, torch.Tensor) else torch.stack(list(class_text_emb))
        if text.ndim == 3:
            text = text[:, :, None, :]
        if text.ndim != 4 or text.shape[1] != 2:
            raise ValueError(f"multi-label needs (C, 2, P, D) [negative, positive] prompts, got {tuple(text.shape)}")
        scores = prompt_scores(image_emb, text, pooling)                    # (N, C, 2)
        probs = torch.softmax(scores / temperature, dim=-1)[..., 1]          # (N, C) p(positive)
        y = labels_t.double()
        if y.shape != probs.shape:
            raise ValueError(f"labels {tuple(y.shape)} must be (N, C) = {tuple(probs.shape)}")
        valid = ~torch.isnan(y)
        target = (y == 1) & valid
        preds = probs > 0.5
        per_auc = auroc(probs.T, target.T, valid.T)
        per_f1 = f1_per_class(preds, target, valid)
        has_label = valid.any(0)
        per_f1 = torch.where(has_label, per_f1, torch.full_like(per_f1, float("nan")))
        acc = ((preds == target) & valid).sum().double() / valid.sum().clamp_min(1)
        return {"mode": "multilabel", "auroc": _nanmean(per_auc), "f1": _nanmean(per_f1),
                "accuracy": float(acc), "per_class_auroc": per_auc.tolist(), "per_class_f1": per_f1.tolist(),
                "scores": scores, "probs": probs, "preds": preds}

    scores = prompt_scores(image_emb, class_text_emb, pooling)              # (N, C)
    n, c = scores.shape
    y = labels_t.long().reshape(-1)
    if len(y) != n:
        raise ValueError(f"{len(y)} labels for {n} images")
    if (y < 0).any() or (y >= c).any():
        raise ValueError(f"labels must lie in [0, {c})")
    logits = scores
    if zscore:
        logits = (scores - scores.mean(0)) / scores.std(0).clamp_min(1e-8)
    probs = torch.softmax(logits / temperature, dim=-1)
    preds = probs.argmax(-1)
    onehot_y = F.one_hot(y, c).bool()
    onehot_p = F.one_hot(preds, c).bool()
    per_auc = auroc(probs.T, onehot_y.T)
    per_f1 = f1_per_class(onehot_p, onehot_y)
    present = onehot_y.any(0) | onehot_p.any(0)                # sklearn's label set for macro F1
    f1_macro = float(per_f1[present].mean())
    acc = float((preds == y).double().mean())
    out = {"mode": "multiclass", "auroc": _nanmean(per_auc), "f1": f1_macro, "accuracy": acc,
           "per_class_auroc": per_auc.tolist(), "per_class_f1": per_f1.tolist(),
           "scores": scores, "probs": probs, "preds": preds}
    if c == 2:
        out.update(mode="binary", auroc=float(per_auc[1]), f1=float(per_f1[1]), f1_macro=f1_macro)
    return out
