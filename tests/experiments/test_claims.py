"""The one claims rule: the vectorised paired bootstrap against a plain loop, and the verdicts."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medalign_lite.eval.bootstrap import mean_reduce, paired_bootstrap
from medalign_lite.eval.clinical import ce_counts, ce_metrics, macro_f1, micro_f1
from medalign_lite.experiments.claims import ce_claim, claims_metrics, claims_table, decide


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
