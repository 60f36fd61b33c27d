"""One rule for deciding a paper's claimed ordering "A scores above B" from a run.

A run gives each system per-item scores on the same test items, for one or more training
seeds. Two kinds of noise can fake an ordering: *which* test items were drawn, and *which*
seed trained the model. The rule looks at both:

1. a paired bootstrap over the test items of the seed-mean difference Δ = mean_s [A_s − B_s]
   (:func:`medalign_lite.eval.bootstrap.paired_bootstrap`; the same draw for both systems and
   every seed), giving a 95 % interval [low, high];
2. the sign of each seed's own difference.

Verdict: **holds** when low > 0 and every seed's difference is > 0; **reversed** when high < 0
and every seed's difference is < 0; **undecided** otherwise. With one seed the second test is
only that seed's sign: the interval then speaks for the items alone, and :attr:`Claim.n_seeds`
says so. An undecided claim is a result only when a longer run cannot separate the systems
either (DESIGN.md); the notebooks say which budget they tried.

**How often the rule is fooled by run-to-run noise (measured, 2026-12-08).** Nine GLoRIA runs of
notebook 01 (six of one recipe, batch 16 for the default's pairs: two runs of one set of seeds that
part in float rounding; three of the default batch of 32, which no test told apart from them),
split every way into two groups of three "seeds": the rule decided 20 % of the 840 splits on
pointing-game hits (30 % of the 10 splits of the one recipe's six runs) and 23 % on image→text
P@5 — where a calibrated 95 % test decides 5 %. Both parts of the rule look at items: the
bootstrap draws test items for fixed models, and three seeds agree in sign by chance one time in
four. Nor are two systems' seed-s runs a pair: two runs of one recipe and seed parted by float
rounding after one epoch and ended as far apart as two seeds. So every claim also carries :attr:`Claim.seed_p`, Welch's two-sided t-test on the systems' seed
scores (each seed an independent run): it decided 4 % and 5 % of the same splits. A verdict
whose ``seed_p`` is ≥ 0.05 is one the seeds do not carry; read it as undecided. (The verdict is
kept as defined above, so runs stay comparable with earlier ones; the notebooks print both.)

Per-item scores: retrieval's ``per_query`` precision (mean-reduced), report generation's
per-report CE counts (:func:`~medalign_lite.eval.clinical.ce_counts`, F1-reduced) and VQA's
per-question contributions (:func:`~medalign_lite.eval.vqa.vqa_contributions`: closed accuracy,
open recall or their average, ratio-reduced).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..data.findings import CHEXPERT_LABELS
from ..eval.bootstrap import mean_reduce, paired_bootstrap
from ..eval.clinical import ce_counts, macro_f1, micro_f1

__all__ = ["VERDICTS", "Claim", "ce_claim", "claims_metrics", "claims_table", "decide", "retrieval_claim", "vqa_claim",
           "welch_p"]

VERDICTS = ("holds", "reversed", "undecided")


@dataclass
class Claim:
    """A decided ordering: ``a`` above ``b`` on ``metric``.

    Attributes:
        name: what the paper claims (e.g. ``"full > without BCGA"``).
        a, b: the two systems; metric: the score compared.
        verdict: ``"holds"``, ``"reversed"`` or ``"undecided"`` (module docstring).
        diff: the seed-mean difference A − B on the test items as given.
        low, high: its paired-bootstrap interval over test items at ``confidence``.
        per_seed: each seed's difference; n_seeds, n_items: what the verdict rests on.
        paper: the paper's own numbers for A and B, when given (for the table).
        seed_p: Welch's two-sided t-test on the two systems' per-seed scores (each seed one run):
            None with fewer than two seeds on either side, or when neither system's seeds vary.
            The module docstring says why it stands beside the verdict.
    """

    name: str
    a: str
    b: str
    metric: str
    verdict: str
    diff: float
    low: float
    high: float
    per_seed: list[float]
    n_seeds: int
    n_items: int
    confidence: float = 0.95
    paper: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)
    seed_p: float | None = None

    def line(self) -> str:
        """One printable sentence: the verdict with its numbers."""
        seeds = ", ".join(f"{d:+.3f}" for d in self.per_seed)
        paper = f"; paper {self.paper[0]:g} vs {self.paper[1]:g}" if self.paper else ""
        return (f"{self.name}: {self.verdict.upper()} — {self.metric} Δ {self.diff:+.3f}, "
                f"{round(100 * self.confidence)} % [{self.low:+.3f}, {self.high:+.3f}] over {self.n_items} items, "
                f"per seed [{seeds}] ({self.n_seeds} seed{'s' if self.n_seeds != 1 else ''}"
                + (f"; seeds' Welch p {self.seed_p:.2f}" if self.seed_p is not None else "") + f"){paper}")


def decide(a, b, *, name: str, a_name: str, b_name: str, metric: str, reduce=mean_reduce, n_boot: int = 2000,
           confidence: float = 0.95, seed: int = 0, paper: tuple[float, float] | None = None) -> Claim:
    """The rule, on per-item contributions ``a`` and ``b`` of shape (seeds, items, …) (see
    :func:`~medalign_lite.eval.bootstrap.paired_bootstrap` for ``reduce``)."""
    r = paired_bootstrap(a, b, reduce, n_boot=n_boot, confidence=confidence, seed=seed)
    per = np.asarray(r["per_seed"])
    seed_p = welch_p(r["scores_a"], r["scores_b"])
    if r["low"] > 0 and (per > 0).all():
        verdict = "holds"
    elif r["high"] < 0 and (per < 0).all():
        verdict = "reversed"
    else:
        verdict = "undecided"
    return Claim(name=name, a=a_name, b=b_name, metric=metric, verdict=verdict, diff=r["diff"], low=r["low"],
                 high=r["high"], per_seed=list(r["per_seed"]), n_seeds=int(np.asarray(a).shape[0]), n_items=r["n"],
                 confidence=confidence, paper=paper, seed_p=seed_p)


def welch_p(scores_a: Sequence[float], scores_b: Sequence[float]) -> float | None:
    """Welch's two-sided t-test of two systems' per-seed scores (unequal variances, unpaired):
    its p-value, or None with fewer than two scores on either side or no variation in either."""
    from scipy import stats

    xa, xb = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if xa.size < 2 or xb.size < 2 or (np.ptp(xa) == 0 and np.ptp(xb) == 0):
        return None
    return float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)


def retrieval_claim(runs_a: Sequence, runs_b: Sequence, key: str = "i2t_P@5", **kw) -> Claim:
    """:func:`decide` on two lists of contrastive runs (one per seed; each with
    ``retrieval["per_query"][key]``), queries as the items."""
    def stack(runs):
        if not runs:
            raise ValueError("retrieval_claim: a system has no runs")
        return np.stack([np.asarray(r.retrieval["per_query"][key], dtype=float) for r in runs])

    kw.setdefault("metric", key)
    return decide(stack(runs_a), stack(runs_b), **kw)


def ce_claim(ref_labels, hyps_a: Sequence, hyps_b: Sequence, average: str = "micro", uncertain: str = "zero",
             observations: Sequence[str] = CHEXPERT_LABELS, **kw) -> Claim:
    """:func:`decide` on CE F1 (``average`` micro or macro): ``hyps_a`` / ``hyps_b`` are one
    (N, 14) label matrix per seed of generated reports on the same N studies as ``ref_labels``."""
    if average not in ("micro", "macro"):
        raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
    a = np.stack([ce_counts(ref_labels, h, uncertain, observations) for h in hyps_a])
    b = np.stack([ce_counts(ref_labels, h, uncertain, observations) for h in hyps_b])
    kw.setdefault("metric", f"CE {average} F1")
    return decide(a, b, reduce=micro_f1 if average == "micro" else macro_f1, **kw)


VQA_METRICS = {"closed": "closed accuracy", "open": "open recall", "average": "VQA average"}


def _vqa_reduce(metric: str):
    def reduce(sums: np.ndarray, n: int) -> np.ndarray:
        closed = sums[..., 0] / np.maximum(sums[..., 1], 1e-12)
        open_ = sums[..., 2] / np.maximum(sums[..., 3], 1e-12)
        return {"closed": closed, "open": open_, "average": 0.5 * (closed + open_)}[metric]
    return reduce


def vqa_claim(contrib_a: Sequence, contrib_b: Sequence, metric: str = "average", **kw) -> Claim:
    """:func:`decide` on VQA: ``contrib_a`` / ``contrib_b`` are one (N, 4) array of
    :func:`~medalign_lite.eval.vqa.vqa_contributions` per seed, on the same N questions;
    ``metric`` is ``"closed"`` (accuracy), ``"open"`` (recall) or ``"average"`` (their mean,
    the number ExGra-Med's tables give per dataset)."""
    if metric not in VQA_METRICS:
        raise ValueError(f"metric must be one of {list(VQA_METRICS)}, got {metric!r}")
    a, b = np.stack([np.asarray(c, float) for c in contrib_a]), np.stack([np.asarray(c, float) for c in contrib_b])
    kw.setdefault("metric", VQA_METRICS[metric])
    return decide(a, b, reduce=_vqa_reduce(metric), **kw)


def claims_table(claims: Sequence[Claim]):
    """A DataFrame, one row per claim: verdict, Δ, interval, seeds, items (and the paper's pair)."""
    import pandas as pd

    rows = []
    for c in claims:
        d = asdict(c)
        rows.append({"claim": c.name, "metric": c.metric, "verdict": c.verdict, "diff": c.diff, "low": c.low,
                     "high": c.high, "seed_p": c.seed_p, "seeds": c.n_seeds, "items": c.n_items,
                     "paper": f"{c.paper[0]:g} vs {c.paper[1]:g}" if c.paper else "", **d["extra"]})
    return pd.DataFrame(rows).set_index("claim") if rows else pd.DataFrame()


def claims_metrics(claims: Sequence[Claim]) -> dict:
    """``{"claim/<a>><b>/<metric>": {"verdict", "diff", "low", "high", "seeds", "items"}}`` for
    ``metrics.json`` (metric names with spaces become underscores)."""
    return {f"claim/{c.a}>{c.b}/{c.metric.replace(' ', '_')}": {
        "verdict": c.verdict, "diff": round(c.diff, 4), "low": round(c.low, 4), "high": round(c.high, 4),
        "seed_p": None if c.seed_p is None else round(c.seed_p, 4), "seeds": c.n_seeds, "items": c.n_items}
        for c in claims}
