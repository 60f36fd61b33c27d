"""Clinical efficacy (CE): precision / recall / F1 of generated reports over CheXpert labels.

Both the reference and the generated report are labelled with the 14 CheXpert observations
(No Finding and Support Devices included); the labels are binarised and compared per
observation. Every number depends on three choices, so every result of this module
carries them, and every table built from it should state them:

1. **The labeler.** Papers use the Stanford CheXpert labeler (rules on a dependency parse)
   or CheXbert (a BERT model); CheXbert agrees better with radiologists, so the same
   reports score differently. :func:`ce_from_texts` uses this package's rule labeler
   (:mod:`medalign_lite.text.labeler`), an offline *proxy* of the CheXpert labeler: its
   numbers are comparable with each other, not with published ones.
2. **The uncertain policy.** Blank (not mentioned) is always 0. Uncertain (-1) is 0 in
   R2Gen's ``compute_ce.py`` and most report-generation papers (``uncertain="zero"``, the
   default: positive means "1") and 1 in ``f1chexbert`` / MAIRA / LLaVA-Rad
   (``uncertain="one"``). The choice alone moves F1 by several points.
3. **The averaging.** *micro* pools TP / FP / FN over all observations (dominated by
   frequent ones: No Finding, Support Devices, Cardiomegaly); *macro* averages the
   per-observation scores (rare ones count as much as frequent ones); *example-based*
   scores each report over its observations, then averages over reports (PromptMRG).
   Published "CE F1" values mix these: R2Gen's own checkpoint re-run gives macro 0.21
   against micro 0.38, and R2GenGPT re-runs differ from the paper by 0.1 — often only
   because the averaging or the labeler differs. Report all three.

Definitions (sklearn's ``precision_recall_fscore_support`` with ``zero_division=0``, which
the tests check): P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN); a
zero denominator gives 0, so an observation that is never positive in the references and
never predicted scores P = R = F1 = 0 and still counts in the macro average, and a report
with no positive label in either scores 0 in the example-based average (sklearn's
``average="samples"``).

>>> import numpy as np
>>> ref = np.array([[1, 0, np.nan] + [0] * 11], float)
>>> hyp = np.array([[1, -1, 0] + [0] * 11], float)
>>> ce_metrics(ref, hyp)["micro"]["f1"], ce_metrics(ref, hyp, uncertain="one")["micro"]["f1"]
(1.0, 0.6666666666666666)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.findings import CHEXPERT_LABELS
from .bootstrap import paired_bootstrap

__all__ = ["CHEXPERT_5", "LABELER", "POLICIES", "binarize", "ce_bootstrap_diff", "ce_from_texts", "ce_metrics",
           "observation_auroc"]

POLICIES: dict[str, str] = {"zero": "uncertain->0", "one": "uncertain->1"}
"""``uncertain=`` argument → the policy label stored with every result."""

CHEXPERT_5: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
"""The five competition observations (``f1chexbert``'s "F1-5"); pass as ``observations``."""

LABELER = "medalign_lite rule labeler (offline CheXpert-labeler proxy)"


def binarize(labels, uncertain: str = "zero") -> np.ndarray:
    """(N, 14) labels 1 / 0 / -1 / NaN → (N, 14) bool positives.

    1 → True; 0 and NaN (blank) → False; -1 → False for ``uncertain="zero"``, True for
    ``"one"``. Any other value is an error (a label matrix read wrongly).
    """
    if uncertain not in POLICIES:
        raise ValueError(f"uncertain must be one of {sorted(POLICIES)}, got {uncertain!r}")
    x = np.asarray(labels, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"labels must have shape (N, {len(CHEXPERT_LABELS)}), got {x.shape}")
    bad = ~(np.isnan(x) | np.isin(x, (1.0, 0.0, -1.0)))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"label values must be 1, 0, -1 or NaN; found {float(x[i, j])!r} at row {int(i)}, "
                         f"column {CHEXPERT_LABELS[j]!r}")
    pos = x == 1.0
    if uncertain == "one":
        pos |= x == -1.0
    return pos


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts (any shape), 0 where a denominator is 0."""
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def _scores(p, r, f) -> dict[str, float]:
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def ce_metrics(ref_labels, hyp_labels, uncertain: str = "zero",
               observations: Sequence[str] = CHEXPERT_LABELS) -> dict:
    """Clinical efficacy of hypothesis labels against reference labels.

    Args:
        ref_labels: (N, 14) reference labels (1 / 0 / -1 / NaN), columns in
            :data:`~medalign_lite.data.findings.CHEXPERT_LABELS` order.
        hyp_labels: (N, 14) labels of the generated reports, same rows.
        uncertain: ``"zero"`` (-1 → 0, R2Gen's convention) or ``"one"`` (-1 → 1).
        observations: the columns to score (default all 14; :data:`CHEXPERT_5` for F1-5).

    Returns:
        ``{"policy": "uncertain->0", "blank": "->0", "observations": [...], "n": N,
        "micro": {"precision", "recall", "f1"}, "macro": {...}, "example": {...},
        "per_class": {observation: {"precision", "recall", "f1", "support"}}}``; support =
        reference positives. All computed with array operations (no loop over reports).
    """
    ref = binarize(ref_labels, uncertain)
    hyp = binarize(hyp_labels, uncertain)
    if ref.shape != hyp.shape:
        raise ValueError(f"reference labels {ref.shape} and hypothesis labels {hyp.shape} differ in shape")
    if ref.shape[0] == 0:
        raise ValueError("ce_metrics: no reports")
    unknown = [o for o in observations if o not in CHEXPERT_LABELS]
    if unknown or not len(observations):
        raise ValueError(f"unknown observations {unknown}; known: {list(CHEXPERT_LABELS)}")
    cols = [CHEXPERT_LABELS.index(o) for o in observations]
    ref, hyp = ref[:, cols], hyp[:, cols]
    tp = ref & hyp                   # (N, C)
    fp = ~ref & hyp
    fn = ref & ~hyp
    # per class: counts over reports
    p_c, r_c, f_c = _prf(tp.sum(0), fp.sum(0), fn.sum(0))
    # micro: counts over reports and classes
    micro = _prf(tp.sum(), fp.sum(), fn.sum())
    # example-based: counts over classes, scores averaged over reports
    p_n, r_n, f_n = _prf(tp.sum(1), fp.sum(1), fn.sum(1))
    support = ref.sum(0)
    return {
        "policy": POLICIES[uncertain],
        "blank": "->0",
        "observations": list(observations),
        "n": int(ref.shape[0]),
        "micro": _scores(*micro),
        "macro": _scores(p_c.mean(), r_c.mean(), f_c.mean()),
        "example": _scores(p_n.mean(), r_n.mean(), f_n.mean()),
        "per_class": {o: {**_scores(p_c[k], r_c[k], f_c[k]), "support": int(support[k])}
                      for k, o in enumerate(observations)},
    }


def ce_from_texts(refs: Sequence[str], hyps: Sequence[str], uncertain: str = "zero",
                  observations: Sequence[str] = CHEXPERT_LABELS) -> dict:
    """:func:`ce_metrics` of generated reports ``hyps`` against ``refs``, both labelled with
    the rule labeler (:func:`medalign_lite.text.labeler.label_reports`); the result also
    names the labeler (key ``"labeler"``)."""
    from ..text.labeler import label_reports

    if len(refs) != len(hyps):
        raise ValueError(f"ce_from_texts: {len(refs)} references but {len(hyps)} hypotheses")
    out = ce_metrics(label_reports(refs), label_reports(hyps), uncertain, observations)
    return {"labeler": LABELER, **out}


def observation_auroc(ref_labels, scores, uncertain: str = "zero",
                      observations: Sequence[str] = CHEXPERT_LABELS) -> dict[str, float]:
    """Per-observation AUROC of continuous ``scores`` (N, 14) — a probe's probabilities, or the
    share of a generator's sampled reports that name the observation — against the reference
    labels (N, 14; binarised as CE F1 binarises them, :func:`binarize`).

    Ranks, not thresholds: it measures what a system *knows* about an observation, where F1
    measures what it *writes* at its decision rule. ``{observation: AUROC}`` over
    ``observations``, NaN where the references hold no positive or no negative.
    """
    from .zeroshot import auroc

    ref = binarize(ref_labels, uncertain)
    s = np.asarray(scores, dtype=float)
    if s.shape != ref.shape:
        raise ValueError(f"scores must have the labels' shape {ref.shape}, got {s.shape}")
    cols = [CHEXPERT_LABELS.index(o) for o in observations]
    out = auroc(torch.as_tensor(s[:, cols].T), torch.as_tensor(ref[:, cols].T))
    return {o: float(v) for o, v in zip(observations, out.tolist())}


def ce_bootstrap_diff(ref_labels, hyp_a, hyp_b, average: str = "micro", uncertain: str = "zero",
                      n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                      observations: Sequence[str] = CHEXPERT_LABELS) -> dict:
    """Paired bootstrap over reports of the F1 difference F1(a) − F1(b).

    Both systems reported on the same N studies (rows of the three (N, 14) label matrices).
    Each replicate draws N studies with replacement, the same draw for both systems, and
    recomputes ``average`` F1 (``"micro"`` or ``"macro"``, as :func:`ce_metrics`) of each.
    This measures how much the difference owes to *which* test studies were drawn; it says
    nothing of the spread over training seeds. Vectorised: the replicates' multiplicities
    (n_boot, N) times the per-study counts.

    Returns:
        ``{"average", "diff"`` (on the studies as given), ``"low"``, ``"high"`` (percentile
        interval at ``confidence``), ``"p_a_not_better"`` (fraction of replicates with
        diff ≤ 0), ``"n", "n_boot"}``.
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
    ref = ce_counts(ref_labels, ref_labels, uncertain, observations)  # shape check of the references
    a, b = ce_counts(ref_labels, hyp_a, uncertain, observations), ce_counts(ref_labels, hyp_b, uncertain, observations)
    if not ref.shape == a.shape == b.shape:
        raise ValueError(f"label matrices differ in shape: {ref.shape}, {a.shape}, {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("ce_bootstrap_diff: no reports")
    out = paired_bootstrap(a[None], b[None], micro_f1 if average == "micro" else macro_f1, n_boot, confidence, seed)
    out.pop("per_seed")
    return {"average": average, **out}


def ce_counts(ref_labels, hyp_labels, uncertain: str = "zero", observations: Sequence[str] = CHEXPERT_LABELS
              ) -> np.ndarray:
    """(N, 3, C) per-report TP, FP, FN of each observation: the per-item contributions whose
    sums give every CE F1 (:func:`micro_f1`, :func:`macro_f1`), for
    :func:`~medalign_lite.eval.bootstrap.paired_bootstrap`."""
    cols = [CHEXPERT_LABELS.index(o) for o in observations]
    ref = binarize(ref_labels, uncertain)[:, cols]
    hyp = binarize(hyp_labels, uncertain)[:, cols]
    if ref.shape != hyp.shape:
        raise ValueError(f"label matrices differ in shape: {ref.shape} and {hyp.shape}")
    return np.stack([ref & hyp, ~ref & hyp, ref & ~hyp], axis=1).astype(float)


def micro_f1(sums: np.ndarray, n: int | None = None) -> np.ndarray:
    """Micro F1 from summed :func:`ce_counts` (…, 3, C): counts pooled over observations."""
    tp, fp, fn = (sums[..., k, :].sum(-1) for k in range(3))
    return _prf(tp, fp, fn)[2]


def macro_f1(sums: np.ndarray, n: int | None = None) -> np.ndarray:
    """Macro F1 from summed :func:`ce_counts` (…, 3, C): the mean of the observations' F1."""
    return _prf(sums[..., 0, :], sums[..., 1, :], sums[..., 2, :])[2].mean(-1)
