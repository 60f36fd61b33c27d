"""The one claims rule: the vectorised paired bootstrap against a plain loop, and the verdicts."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medalign_lite.eval.bootstrap import mean_reduce, paired_bootstrap
from medalign_lite.eval.clinical import ce_counts, ce_metrics, macro_f1, micro_f1
from medalign_lite.experiments.claims import ce_claim, claims_metrics, claims_table, decide, welch_p


def _reference_bootstrap(a, b, reduce, n_boot, seed):
    """One replicate at a time, one seed at a time, resampled item by item."""
    n = a.shape[1]
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    diffs = []
    for r in range(n_boot):
        idx = [i for i in range(n) for _ in range(w[r, i])]
        sa = np.mean([reduce(a[s][idx].sum(0)[None], n)[0] for s in range(a.shape[0])])
        sb = np.mean([reduce(b[s][idx].sum(0)[None], n)[0] for s in range(b.shape[0])])
        diffs.append(sa - sb)
    return np.asarray(diffs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(2, 12), st.integers(0, 10**6))
def test_vectorised_bootstrap_matches_the_loop(n_seeds, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((n_seeds, n)), rng.random((n_seeds, n))
    r = paired_bootstrap(a, b, mean_reduce, n_boot=50, seed=seed)
    ref = _reference_bootstrap(a, b, mean_reduce, 50, seed)
    lo, hi = np.quantile(ref, [0.025, 0.975])
    assert r["low"] == pytest.approx(lo) and r["high"] == pytest.approx(hi)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    np.testing.assert_allclose(r["per_seed"], a.mean(1) - b.mean(1))
    np.testing.assert_allclose(r["scores_a"], a.mean(1))
    np.testing.assert_allclose(r["scores_b"], b.mean(1))


def test_ce_counts_reduce_to_ce_metrics():
    rng = np.random.default_rng(0)
    ref = rng.choice([1.0, 0.0, -1.0, np.nan], size=(40, 14))
    hyp = rng.choice([1.0, 0.0, np.nan], size=(40, 14))
    c = ce_counts(ref, hyp).sum(0)
    m = ce_metrics(ref, hyp)
    assert micro_f1(c[None])[0] == pytest.approx(m["micro"]["f1"])
    assert macro_f1(c[None])[0] == pytest.approx(m["macro"]["f1"])
    # and through the bootstrap, with per-study contributions, the same on the items as given
    claim = ce_claim(ref, [hyp], [ref], average="macro", name="x", a_name="hyp", b_name="oracle")
    assert claim.diff == pytest.approx(m["macro"]["f1"] - ce_metrics(ref, ref)["macro"]["f1"])


def test_verdicts_need_the_interval_and_every_seed():
    rng = np.random.default_rng(1)
    base = rng.random((3, 200))
    kw = {"name": "a > b", "a_name": "a", "b_name": "b", "metric": "P@5", "n_boot": 500}
    assert decide(base + 0.2, base, **kw).verdict == "holds"
    assert decide(base - 0.2, base, **kw).verdict == "reversed"
    assert decide(base + rng.normal(0, 0.3, base.shape), base, **kw).verdict == "undecided"
    # a clear mean difference carried by two seeds, with the third seed the other way: undecided
    split = base.copy()
    split[:2] += 0.5
    split[2] -= 0.05
    c = decide(split, base, **kw)
    assert c.low > 0 and c.per_seed[2] < 0 and c.verdict == "undecided"
    assert c.n_seeds == 3 and c.n_items == 200 and "UNDECIDED" in c.line()
    table = claims_table([c])
    assert table.loc["a > b", "verdict"] == "undecided" and table.loc["a > b", "seeds"] == 3
    m = claims_metrics([c])["claim/a>b/P@5"]
    assert m["verdict"] == "undecided" and m["low"] <= m["diff"] <= m["high"]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="seeds, items"):
        paired_bootstrap(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(np.zeros((1, 5)), np.zeros((1, 6)))


def _welch_reference(x, y):
    """Welch's t-test written out: t, the Welch-Satterthwaite degrees of freedom, two-sided p."""
    from scipy.stats import t as student

    x, y = np.asarray(x, float), np.asarray(y, float)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (x.mean() - y.mean()) / np.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return 2 * student.sf(abs(t), df)


def test_every_claim_carries_the_seeds_welch_test():
    """The seed-level test beside the verdict (claims module docstring: the rule itself decided a
    fifth of the comparisons between runs that differ by chance). Three seeds that agree in sign
    with a clear item interval make a verdict, and the seeds alone need not carry it."""
    kw = {"name": "a > b", "a_name": "a", "b_name": "b", "metric": "P@5", "n_boot": 500}
    rng = np.random.default_rng(3)
    base = rng.random((3, 400))
    noisy = base + np.array([0.02, 0.15, 0.01])[:, None]  # every seed above, by very different amounts
    c = decide(noisy, base, **kw)
    assert c.verdict == "holds"
    assert c.seed_p == pytest.approx(_welch_reference(noisy.mean(1), base.mean(1)))
    assert c.seed_p > 0.05 and "Welch p" in c.line()
    steady = decide(base + 0.2 + rng.normal(0, 0.002, (3, 1)), base, **kw)
    assert steady.verdict == "holds" and steady.seed_p < 0.01
    assert claims_table([c, steady])["seed_p"].tolist() == [c.seed_p, steady.seed_p]
    assert claims_metrics([c])["claim/a>b/P@5"]["seed_p"] == round(c.seed_p, 4)
    # one seed on a side, or seeds that do not vary: no test
    assert decide(base[:1] + 0.2, base[:1], **kw).seed_p is None
    assert decide(base[:1] + 0.2, base, **kw).seed_p is None
    assert welch_p([0.5, 0.5], [0.4, 0.4]) is None
    assert welch_p([0.5, 0.6, 0.7], [0.1, 0.2, 0.35]) == pytest.approx(_welch_reference([0.5, 0.6, 0.7], [0.1, 0.2, 0.35]))
    assert "Welch" not in decide(base[:1] + 0.2, base[:1], **kw).line()
