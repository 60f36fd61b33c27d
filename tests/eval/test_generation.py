"""NLG metrics: tokenisation, hand-checked BLEU / ROUGE-L, identical corpora, the no-Java path."""
from __future__ import annotations

import math
import warnings

import pytest

from medalign_lite.eval import generation
from medalign_lite.eval.generation import clean_report, java_available, nlg_metrics

REPORTS = [
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "1. Small left pleural effusion.  2. No pneumothorax.",
    "Stable cardiomegaly with mild pulmonary vascular congestion; no focal consolidation.",
]


def test_clean_report_r2gen_style():
    assert clean_report(REPORTS[1]) == "small left pleural effusion . no pneumothorax ."
    assert clean_report(REPORTS[1], keep_periods=False) == "small left pleural effusion no pneumothorax"
    assert clean_report("Patient's XXXX-XXXX is 1.5 cm (stable)!") == "patients xxxx-xxxx is 1.5 cm stable ."
    assert clean_report("2) Rib 5. Clear") == "rib 5 . clear ."
    assert clean_report("...") == ""


def test_hand_checked_pair(monkeypatch):
    monkeypatch.setattr(generation, "java_available", lambda: False)
    # hypothesis "a b c x" vs reference "a b c d e f" (no period tokens):
    #   n-gram precisions 3/4, 2/3, 1/2, 0/1; brevity penalty exp(1 - 6/4)
    #   ROUGE-L: LCS 3, P = 3/4, R = 3/6, F_beta with beta = 1.2
    with pytest.warns(RuntimeWarning, match="METEOR skipped"):
        m = nlg_metrics(["a b c d e f"], ["a b c x"], keep_periods=False)
    bp = math.exp(1 - 6 / 4)
    assert m["BLEU_1"] == pytest.approx(bp * 3 / 4, rel=1e-6)
    assert m["BLEU_2"] == pytest.approx(bp * (3 / 4 * 2 / 3) ** 0.5, rel=1e-6)
    assert m["BLEU_3"] == pytest.approx(bp * (3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3), rel=1e-6)
    assert m["BLEU_4"] < 1e-3                      # no matching 4-gram (COCO's tiny smoothing)
    p, r, beta = 3 / 4, 3 / 6, 1.2
    assert m["ROUGE_L"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p))
    assert m["CIDEr"] == 0.0                       # one document: every IDF is log(1/1) = 0


def test_identical_corpus_without_java_has_no_meteor(monkeypatch):
    monkeypatch.setattr(generation, "java_available", lambda: False)

    def no_jvm(*args, **kwargs):
        raise AssertionError("METEOR must not run without Java")

    monkeypatch.setattr(generation, "_meteor", no_jvm)
    with pytest.warns(RuntimeWarning, match="METEOR skipped"):
        m = nlg_metrics(REPORTS, REPORTS)
    assert "METEOR" not in m
    assert list(m) == ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr"]
    assert m["BLEU_4"] == pytest.approx(1.0) and m["ROUGE_L"] == pytest.approx(1.0)
    assert m["CIDEr"] == pytest.approx(10.0)
    # the PTB tokenizer is Java too: it falls back to the pure-Python tokenisation, with a warning
    with pytest.warns(RuntimeWarning, match="PTBTokenizer needs Java"):
        ptb = nlg_metrics(REPORTS, REPORTS, tokenizer="ptb", meteor=False)
    assert ptb == {k: v for k, v in m.items()}
    # asking for no METEOR raises no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nlg_metrics(REPORTS, REPORTS, meteor=False)


def test_multiple_references_and_errors(monkeypatch):
    monkeypatch.setattr(generation, "java_available", lambda: False)
    one = nlg_metrics([REPORTS[0]], [REPORTS[0]], meteor=False)
    two = nlg_metrics([[REPORTS[2], REPORTS[0]]], [REPORTS[0]], meteor=False)
    assert two["BLEU_4"] == pytest.approx(one["BLEU_4"])   # the best-matching reference counts
    with pytest.raises(ValueError, match="references for"):
        nlg_metrics(REPORTS, REPORTS[:2], meteor=False)
    with pytest.raises(ValueError, match="tokenizer"):
        nlg_metrics(REPORTS, REPORTS, tokenizer="spacy", meteor=False)


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="METEOR and the PTB tokenizer need Java")
def test_real_meteor_with_java():
    # one JVM start (~3 s idle, longer on a busy machine): identical corpus, METEOR ~ 1
    m = nlg_metrics(REPORTS, REPORTS)
    assert list(m) == list(generation.METRIC_KEYS)
    assert m["METEOR"] > 0.95 and m["BLEU_4"] == pytest.approx(1.0)
