"""Paired bootstrap over test items of a difference between two systems, over seeds.

Two systems were scored on the same N test items, each with S training seeds. Every score this
package reports is a function of sums over items: a mean (P@K: the mean of each query's
precision) or a ratio of counts (CE F1: TP, FP, FN summed over reports). So each system is
given as per-item contributions ``x`` of shape (S, N, *F) and a ``reduce(sums, n)`` that turns
the (…, *F) sums over items into the score (``n``: the number of items the sums cover).

A replicate draws N items with replacement — the same draw for both systems and every seed
(paired) — and recomputes the seed-mean difference Δ = mean_s [score(a_s) − score(b_s)].
Vectorised: the replicates' multiplicities W (R, N) times the per-item contributions. The
percentile interval of Δ says how much the difference owes to *which* test items were drawn;
the per-seed differences say whether the training seeds agree. :mod:`medalign_lite.experiments.claims`
combines both into one verdict.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["mean_reduce", "paired_bootstrap"]

Reduce = Callable[[np.ndarray, int], np.ndarray]


def mean_reduce(sums: np.ndarray, n: int) -> np.ndarray:
    """The mean of a scalar per-item score: ``sums / n`` (sums of shape (…,))."""
    return np.asarray(sums, dtype=float) / n


def paired_bootstrap(a, b, reduce: Reduce = mean_reduce, n_boot: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Paired bootstrap of Δ = mean over seeds of reduce(a_s) − reduce(b_s).

    Args:
        a, b: per-item contributions of shape (S, N, *F) (one seed: ``x[None]``), the same N
            items in the same order; S may differ between the systems (each is averaged over
            its own seeds).
        reduce: ``reduce(sums (R, *F), n) -> (R,)`` scores from sums over items.
        n_boot: replicates; ``confidence``: of the percentile interval; ``seed``: of the draws
            (``numpy.random.default_rng``).

    Returns:
        ``{"diff"`` (Δ on the items as given), ``"low", "high"`` (percentile interval),
        ``"per_seed"`` (each seed's difference on the items as given: seeds paired in order
        when both have S seeds, else each seed of ``a`` against the seed mean of ``b``),
        ``"p_a_not_better"`` (fraction of replicates with Δ ≤ 0), ``"scores_a", "scores_b"``
        (each seed's score on the items as given), ``"n", "n_boot"}``.
    """
    if n_boot < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < confidence < 1, got {n_boot} and {confidence}")
    xa, xb = (np.asarray(x, dtype=float) for x in (a, b))
    if xa.ndim < 2 or xb.ndim < 2:
        raise ValueError(f"a and b are (seeds, items, ...): got shapes {xa.shape} and {xb.shape}")
    if xa.shape[1:] != xb.shape[1:]:
        raise ValueError(f"a and b must have the same items and features, got {xa.shape[1:]} and {xb.shape[1:]}")
    n = xa.shape[1]
    if n == 0:
        raise ValueError("paired_bootstrap: no items")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)    # (n_boot, N)
    w = np.vstack([np.ones((1, n)), w])                                         # row 0: as given

    def scores(x: np.ndarray) -> np.ndarray:                                    # (S, 1 + n_boot)
        sums = np.tensordot(w, x, axes=([1], [1]))                              # (R, S, *F)
        return np.stack([reduce(sums[:, s], n) for s in range(x.shape[0])])    # loop over seeds only

    sa, sb = scores(xa), scores(xb)
    d = sa.mean(0) - sb.mean(0)
    lo, hi = np.quantile(d[1:], [(1 - confidence) / 2, (1 + confidence) / 2])
    per_seed = (sa[:, 0] - sb[:, 0]) if sa.shape[0] == sb.shape[0] else (sa[:, 0] - sb[:, 0].mean())
    return {"diff": float(d[0]), "low": float(lo), "high": float(hi), "per_seed": [float(x) for x in per_seed],
            "p_a_not_better": float((d[1:] <= 0).mean()), "scores_a": [float(x) for x in sa[:, 0]],
            "scores_b": [float(x) for x in sb[:, 0]], "n": int(n), "n_boot": int(n_boot)}
