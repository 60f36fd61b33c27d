"""Medical VQA scoring with LLaVA-Med's conventions (the evaluation ExGra-Med reports).

LLaVA-Med (``llava/eval/run_eval.py``, reused by ExGra-Med) normalises both the prediction and
the ground truth (:func:`normalize_answer`: lower case, punctuation removed, the articles
a / an / the dropped, number words as digits), then scores

- a **closed** (yes / no) question as a hit when the normalised ground truth is a *substring*
  of the normalised prediction (:func:`closed_hit`). The rule is LLaVA-Med's and is lenient:
  "no" is a substring of "nodule", so a prediction that mentions a nodule counts as "no".
  :func:`closed_hit_strict` (ours) asks the prediction's first word to be the answer; both are
  reported.
- an **open** question by **recall** (:func:`open_recall`): over the words of the prediction
  and of the ground truth, tp = the prediction's count of each word that the ground truth has,
  fn = the ground truth's count of each word the prediction lacks, recall = tp / (tp + fn)
  (0 for an empty prediction). This is LLaVA-Med's ``calculate_f1score`` recall, including its
  quirk that a ground-truth word repeated in the prediction counts more than once.

:func:`score_vqa` returns the means and the per-question contributions that
:func:`~medalign_lite.experiments.claims.vqa_claim` bootstraps.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["closed_hit", "closed_hit_strict", "normalize_answer", "open_recall", "score_vqa", "vqa_contributions"]

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation → space (a decimal point kept), number words → digits, articles
    dropped, whitespace collapsed."""
    t = str(text).lower()
    t = re.sub(r"(?<!\d)\.(?!\d)", " ", t)
    t = re.sub(r"[^\w\s.]", " ", t)
    words = [_NUMBERS.get(w, w) for w in t.split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def closed_hit(prediction: str, answer: str) -> float:
    """1.0 when the normalised answer is a substring of the normalised prediction (LLaVA-Med)."""
    return float(normalize_answer(answer) in normalize_answer(prediction))


def closed_hit_strict(prediction: str, answer: str) -> float:
    """1.0 when the prediction's first word is the answer (ours; not LLaVA-Med's rule)."""
    words = normalize_answer(prediction).split()
    return float(bool(words) and words[0] == normalize_answer(answer))


def open_recall(prediction: str, answer: str) -> float:
    """LLaVA-Med's recall of an open answer (module docstring)."""
    pred, ref = Counter(normalize_answer(prediction).split()), Counter(normalize_answer(answer).split())
    if not pred or not ref:
        return 0.0
    tp = sum(pred[w] for w in pred if w in ref)
    fn = sum(ref[w] for w in ref if w not in pred)
    return tp / (tp + fn) if tp else 0.0


def vqa_contributions(predictions: Sequence[str], answers: Sequence[str], answer_types: Sequence[str],
                      strict: bool = False) -> np.ndarray:
    """Per-question contributions (N, 4): [closed hit, is closed, open recall, is open], whose
    sums give both scores (closed accuracy = Σ₀ / Σ₁, open recall = Σ₂ / Σ₃)."""
    if not len(predictions) == len(answers) == len(answer_types):
        raise ValueError(f"{len(predictions)} predictions, {len(answers)} answers, {len(answer_types)} answer types")
    out = np.zeros((len(answers), 4))
    hit = closed_hit_strict if strict else closed_hit
    for i, (p, a, t) in enumerate(zip(predictions, answers, answer_types)):
        t = str(t).upper()
        if t == "CLOSED":
            out[i, :2] = hit(p, a), 1.0
        elif t == "OPEN":
            out[i, 2:] = open_recall(p, a), 1.0
        else:
            raise ValueError(f"question {i}: answer_type must be CLOSED or OPEN, got {t!r}")
    return out


def score_vqa(predictions: Sequence[str], answers: Sequence[str], answer_types: Sequence[str]) -> dict:
    """``{"closed_accuracy", "closed_accuracy_strict", "open_recall", "average"`` (the mean of
    closed accuracy and open recall, the paper's per-dataset number), ``"n_closed", "n_open"}``;
    a score without questions is NaN."""
    c = vqa_contributions(predictions, answers, answer_types)
    s = vqa_contributions(predictions, answers, answer_types, strict=True)
    ratio = lambda a, b: float(a / b) if b else float("nan")
    closed, open_ = ratio(c[:, 0].sum(), c[:, 1].sum()), ratio(c[:, 2].sum(), c[:, 3].sum())
    return {"closed_accuracy": closed, "closed_accuracy_strict": ratio(s[:, 0].sum(), s[:, 1].sum()),
            "open_recall": open_, "average": float(np.nanmean([closed, open_])) if c.shape[0] else float("nan"),
            "n_closed": int(c[:, 1].sum()), "n_open": int(c[:, 3].sum())}
