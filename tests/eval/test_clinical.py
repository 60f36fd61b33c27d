"""Clinical efficacy: cross-checked against sklearn (micro, macro, samples; both policies),
a per-report reference loop, edge cases, and the text entry point."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from medalign_lite.data.findings import CHEXPERT_LABELS
from medalign_lite.eval.clinical import (
    CHEXPERT_5,
    LABELER,
    binarize,
    ce_from_texts,
    ce_metrics,
)


def _random_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n, 14), p=[0.2, 0.3, 0.1, 0.4])
    x[:, 5] = np.nan        # a class never positive anywhere (zero division per class)
    x[0] = 0.0              # a report with no positive at all (zero division per report)
    return x


def _sklearn(ref: np.ndarray, hyp: np.ndarray, average: str | None) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return precision_recall_fscore_support(ref, hyp, average=average, zero_division=0)[:3]


@pytest.mark.parametrize("uncertain", ["zero", "one"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(uncertain, seed):
    rng = np.random.default_rng(seed)
    ref, hyp = _random_labels(rng, 50), _random_labels(rng, 50)
    out = ce_metrics(ref, hyp, uncertain=uncertain)
    value = 1.0 if uncertain == "one" else 0.0
    r = np.where(ref == -1, value, np.nan_to_num(ref)).astype(int)
    h = np.where(hyp == -1, value, np.nan_to_num(hyp)).astype(int)
    for name, average in (("micro", "micro"), ("macro", "macro"), ("example", "samples")):
        want = _sklearn(r, h, average)
        got = tuple(out[name][k] for k in ("precision", "recall", "f1"))
        np.testing.assert_allclose(got, want, err_msg=name)
    per = _sklearn(r, h, None)
    for j, o in enumerate(CHEXPERT_LABELS):
        got = tuple(out["per_class"][o][k] for k in ("precision", "recall", "f1"))
        np.testing.assert_allclose(got, [per[0][j], per[1][j], per[2][j]], err_msg=o)
        assert out["per_class"][o]["support"] == r[:, j].sum()
    assert out["policy"] == {"zero": "uncertain->0", "one": "uncertain->1"}[uncertain]
    assert out["blank"] == "->0" and out["n"] == 50


def test_example_based_matches_a_per_report_loop():
    rng = np.random.default_rng(3)
    ref, hyp = _random_labels(rng, 30), _random_labels(rng, 30)
    r, h = ref == 1, hyp == 1
    f1s = []
    for a, b in zip(r, h):
        tp = np.sum(a & b)
        den = a.sum() + b.sum()
        f1s.append(2 * tp / den if den else 0.0)
    assert ce_metrics(ref, hyp)["example"]["f1"] == pytest.approx(np.mean(f1s))


def test_subset_of_observations():
    rng = np.random.default_rng(4)
    ref, hyp = _random_labels(rng, 40), _random_labels(rng, 40)
    out = ce_metrics(ref, hyp, observations=CHEXPERT_5)
    cols = [CHEXPERT_LABELS.index(o) for o in CHEXPERT_5]
    want = _sklearn((ref[:, cols] == 1).astype(int), (hyp[:, cols] == 1).astype(int), "macro")
    np.testing.assert_allclose([out["macro"][k] for k in ("precision", "recall", "f1")], want)
    assert list(out["per_class"]) == list(CHEXPERT_5)


def test_uncertain_policy_changes_the_score():
    ref = np.full((2, 14), np.nan)
    hyp = np.full((2, 14), np.nan)
    ref[:, 2] = 1.0
    hyp[0, 2], hyp[1, 2] = 1.0, -1.0
    assert ce_metrics(ref, hyp, "zero")["micro"]["recall"] == 0.5
    assert ce_metrics(ref, hyp, "one")["micro"]["recall"] == 1.0


def test_edge_cases():
    blank = np.full((3, 14), np.nan)
    out = ce_metrics(blank, blank)  # no positives anywhere: every score is 0 by definition
    assert all(out[a][k] == 0.0 for a in ("micro", "macro", "example") for k in ("precision", "recall", "f1"))
    with pytest.raises(ValueError, match="shape"):
        ce_metrics(np.zeros((2, 14)), np.zeros((3, 14)))
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        ce_metrics(np.zeros((2, 13)), np.zeros((2, 13)))
    with pytest.raises(ValueError, match="found 2.0"):
        ce_metrics(np.full((1, 14), 2.0), np.zeros((1, 14)))
    with pytest.raises(ValueError, match="uncertain"):
        ce_metrics(np.zeros((1, 14)), np.zeros((1, 14)), uncertain="half")
    with pytest.raises(ValueError, match="no reports"):
        ce_metrics(np.zeros((0, 14)), np.zeros((0, 14)))
    with pytest.raises(ValueError, match="unknown observations"):
        ce_metrics(np.zeros((1, 14)), np.zeros((1, 14)), observations=["Heart"])
    assert binarize([[np.nan, -1, 0, 1] + [0] * 10], "one").tolist()[0][:4] == [False, True, False, True]


def test_ce_from_texts():
    refs = ["Small left pleural effusion. Mild cardiomegaly.", "Normal chest.", "Cannot exclude pneumonia."]
    out = ce_from_texts(refs, refs)
    assert out["labeler"] == LABELER and out["policy"] == "uncertain->0"
    assert out["micro"]["f1"] == 1.0
    hyps = ["No pleural effusion. Mild cardiomegaly.", "Normal chest.", "Pneumonia."]
    zero = ce_from_texts(refs, hyps)
    # ref positives: effusion, cardiomegaly, No Finding; hyp: cardiomegaly, No Finding, pneumonia
    assert (zero["micro"]["precision"], zero["micro"]["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    one = ce_from_texts(refs, hyps, uncertain="one")     # uncertain pneumonia now counts as positive
    assert one["micro"]["recall"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="references"):
        ce_from_texts(refs, hyps[:2])


def test_bootstrap_diff_is_paired_and_centred_on_the_observed_difference():
    from medalign_lite.eval.clinical import ce_bootstrap_diff

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, (300, 14)).astype(float)
    good = np.where(rng.random(ref.shape) < 0.9, ref, 1 - ref)     # 90 % of labels right
    bad = np.where(rng.random(ref.shape) < 0.6, ref, 1 - ref)      # 60 %
    for average in ("micro", "macro"):
        r = ce_bootstrap_diff(ref, good, bad, average=average, n_boot=500)
        direct = ce_metrics(ref, good)[average]["f1"] - ce_metrics(ref, bad)[average]["f1"]
        assert r["diff"] == pytest.approx(direct)
        assert 0 < r["low"] < r["diff"] < r["high"] and r["p_a_not_better"] == 0.0
    same = ce_bootstrap_diff(ref, good, good, n_boot=200)
    assert same["diff"] == same["low"] == same["high"] == 0.0 and same["p_a_not_better"] == 1.0
    # a small difference on few studies: the interval straddles 0
    close = np.where(rng.random(ref.shape) < 0.88, ref, 1 - ref)
    r = ce_bootstrap_diff(ref[:20], good[:20], close[:20], n_boot=1000)
    assert r["low"] < 0 < r["high"] and 0.01 < r["p_a_not_better"] < 0.99
    assert ce_bootstrap_diff(ref, good, bad, seed=1)["low"] == ce_bootstrap_diff(ref, good, bad, seed=1)["low"]
    with pytest.raises(ValueError, match="shape"):
        ce_bootstrap_diff(ref, good[:10], bad)


def test_observation_auroc_matches_sklearn_per_observation():
    from sklearn.metrics import roc_auc_score

    from medalign_lite.eval.clinical import observation_auroc

    rng = np.random.default_rng(0)
    ref = rng.choice([1.0, 0.0, -1.0, np.nan], size=(60, 14), p=[0.3, 0.4, 0.1, 0.2])
    ref[:, 3] = 0.0  # no positive: undefined
    scores = np.round(rng.random((60, 14)) + 0.5 * (ref == 1), 1)  # ties on purpose
    out = observation_auroc(ref, scores)
    for j, name in enumerate(CHEXPERT_LABELS):
        y = ref[:, j] == 1  # uncertain and blank are negatives, as in CE F1 (uncertain -> 0)
        if j == 3:
            assert np.isnan(out[name])
        else:
            assert out[name] == pytest.approx(roc_auc_score(y, scores[:, j]))
    one = observation_auroc(ref, scores, uncertain="one", observations=["Edema"])
    j = CHEXPERT_LABELS.index("Edema")
    assert list(one) == ["Edema"] and one["Edema"] == pytest.approx(roc_auc_score(np.isin(ref[:, j], (1, -1)), scores[:, j]))
    with pytest.raises(ValueError, match="shape"):
        observation_auroc(ref, scores[:, :5])
