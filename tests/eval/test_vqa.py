"""VQA scoring with LLaVA-Med's conventions: normalisation, the substring rule for closed
questions (and its stricter sibling), recall for open ones, against hand-computed cases and the
claims rule on VQA contributions."""
from __future__ import annotations

import numpy as np
import pytest

from medalign_lite.eval.vqa import (
    closed_hit,
    closed_hit_strict,
    normalize_answer,
    open_recall,
    score_vqa,
    vqa_contributions,
)
from medalign_lite.experiments.claims import vqa_claim


def test_normalisation_drops_articles_punctuation_and_spells_numbers():
    assert normalize_answer("The Left lung, an effusion.") == "left lung effusion"
    assert normalize_answer("Two nodules; 2.5 cm") == "2 nodules 2.5 cm"
    assert normalize_answer("None!") == "0"


def test_closed_substring_rule_and_its_leniency():
    assert closed_hit("Yes, there is an effusion.", "yes") == 1.0
    assert closed_hit("no.", "yes") == 0.0
    assert closed_hit("yes, a small nodule", "no") == 1.0      # LLaVA-Med's rule: "no" ⊂ "nodule"
    assert closed_hit_strict("yes, a small nodule", "no") == 0.0  # ours: the first word decides
    assert closed_hit_strict("No, there is none.", "no") == 1.0 and closed_hit_strict("", "no") == 0.0


def test_open_recall_is_llava_meds():
    assert open_recall("left", "left") == 1.0
    assert open_recall("the left lower lobe", "left lung") == pytest.approx(1 / 2)   # tp 1 (left), fn 1 (lung)
    assert open_recall("left left", "left lung") == pytest.approx(2 / 3)             # the prediction's count
    assert open_recall("", "left") == 0.0 and open_recall("right", "left") == 0.0


def test_score_vqa_and_contributions_agree():
    preds = ["yes", "no, none", "left", "mild", "pleural effusion"]
    answers = ["yes", "yes", "left", "moderate", "pleural effusion and cardiomegaly"]
    types = ["CLOSED", "CLOSED", "OPEN", "OPEN", "OPEN"]
    s = score_vqa(preds, answers, types)
    assert s["closed_accuracy"] == 0.5 and s["n_closed"] == 2 and s["n_open"] == 3
    assert s["open_recall"] == pytest.approx((1 + 0 + 2 / 4) / 3)
    assert s["average"] == pytest.approx((0.5 + s["open_recall"]) / 2)
    c = vqa_contributions(preds, answers, types)
    assert c.shape == (5, 4) and c[:, 1].sum() == 2 and c[:, 3].sum() == 3
    with pytest.raises(ValueError, match="answer_type"):
        vqa_contributions(["a"], ["a"], ["MAYBE"])
    assert np.isnan(score_vqa(["a"], ["a"], ["OPEN"])["closed_accuracy"])


def test_vqa_claim_holds_reverses_and_weighs_closed_and_open():
    rng = np.random.default_rng(0)
    n = 200
    types = np.array(["CLOSED", "OPEN"] * (n // 2))
    answers = ["yes" if t == "CLOSED" else "left" for t in types]
    good = vqa_contributions(["yes" if rng.random() < 0.9 else "no" for _ in types], answers, types)
    bad = vqa_contributions(["yes" if rng.random() < 0.4 else "no" for _ in types], answers, types)
    c = vqa_claim([good], [bad], "closed", name="a>b", a_name="a", b_name="b")
    assert c.verdict == "holds" and c.low > 0 and c.metric == "closed accuracy"
    assert vqa_claim([bad], [good], "average", name="b>a", a_name="b", b_name="a").verdict == "reversed"
    same = vqa_claim([good], [good], "open", name="a>a", a_name="a", b_name="a")
    assert same.verdict == "undecided" and same.diff == 0
    with pytest.raises(ValueError, match="metric"):
        vqa_claim([good], [bad], "f1", name="x", a_name="a", b_name="b")
