"""The benchmark's results read as tables, decided claims, ``metrics.json`` and the README table.

:class:`BenchmarkResults` holds one :class:`JobResult` per system and seed. Every number a table,
a figure or the README shows comes from :meth:`BenchmarkResults.summary` (mean, sample std and
seed count of each score), and :func:`readme_table` writes the README's "Results on IU-Phantom"
table from a ``metrics.json`` alone, so that the table is never typed by hand.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CEILING", "README_BEGIN", "README_END", "TABLE_COLUMNS", "TASKS", "BenchmarkResults", "JobResult",
           "format_cell", "interval", "paper_scale_notes", "readme_table", "table_rows", "write_readme_table"]

#: The name of the supervised ceiling's rows.
CEILING = "supervised ceiling"
#: An untrained model's rows: ``untrained <method>``.
FLOOR_PREFIX = "untrained "

#: Each task's scores (the keys of :attr:`JobResult.scores` / ``cost``), in table order.
TASKS: dict[str, tuple[str, ...]] = {
    "retrieval": ("i2t_P@1", "i2t_P@5", "i2t_P@10", "t2i_P@1", "t2i_P@5", "t2i_P@10"),
    "transfer": ("zeroshot_accuracy", "zeroshot_auroc", "probe_auroc@1", "probe_auroc@10", "probe_auroc@100"),
    "grounding": ("mapped_pointing", "mapped_pointing_patch", "mapped_mask_auroc", "mapped_large_pointing",
                  "mapped_large_pointing_patch", "mapped_small_pointing", "mapped_small_pointing_patch",
                  "pointing", "pointing_patch", "mask_auroc"),
    "generation": ("ce_micro_precision_u0", "ce_micro_recall_u0", "ce_micro_f1_u0", "ce_macro_precision_u0",
                   "ce_macro_recall_u0", "ce_macro_f1_u0", "ce_example_precision_u0", "ce_example_recall_u0",
                   "ce_example_f1_u0", "ce5_micro_f1_u0", "ce5_macro_f1_u0", "BLEU_1", "BLEU_2", "BLEU_3",
                   "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"),
    "vqa": ("vqa_closed_accuracy", "vqa_open_recall", "vqa_average"),
    "cost": ("trainable_params", "total_params", "steps", "batch_size", "pairs_seen", "seconds_per_step",
             "train_seconds", "job_seconds", "peak_mib"),
}

#: The README table: (score key, header, decimals). Grounding is the pointing game on the phrases
#: the ceiling maps (findings with a CheXpert observation), so that every row is scored on the same ones.
TABLE_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("i2t_P@5", "image→text P@5", 3), ("t2i_P@5", "text→image P@5", 3), ("zeroshot_accuracy", "zero-shot acc.", 3),
    ("probe_auroc@100", "probe AUROC (100 %)", 3), ("mapped_pointing", "pointing game", 3),
    ("ce_micro_f1_u0", "CE micro F1", 3), ("ce_macro_f1_u0", "CE macro F1", 3), ("BLEU_4", "BLEU-4", 3),
    ("CIDEr", "CIDEr", 3), ("vqa_closed_accuracy", "VQA closed acc.", 3), ("steps", "steps", 0),
    ("seconds_per_step", "s / step", 3), ("train_seconds", "train s", 0),
)

README_BEGIN = "<!-- results-table:begin (written by scripts/results_table.py; do not edit by hand) -->"
README_END = "<!-- results-table:end -->"


@dataclass
class JobResult:
    """One system at one seed.

    Attributes:
        system: the method's name, :data:`CEILING`, or a baseline's name.
        kind: ``dual_encoder``, ``ceiling``, ``report_generator`` or ``baseline``.
        seed: the training seed (baselines: the first seed).
        scores: flat task scores (:data:`TASKS`).
        floor: the same scores of the untrained model (dual encoders, first seed), else None.
        per_item: what the claims rule reads: ``i2t_P@5`` / ``t2i_P@5``… per query (retrieval),
            ``reports`` (generation), ``vqa`` ((N, 4) contributions).
        cost: parameters, steps, batch, pairs seen, seconds per step, seconds, peak memory.
        extra: anything else a table shows (a generator driver's VQA floors, CE per observation).
    """

    system: str
    kind: str
    seed: int
    scores: dict
    floor: dict | None = None
    per_item: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def interval(per_item: np.ndarray, reduce=None, n_boot: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval over test items of a score: ``per_item`` (seeds, items,
    …) per-item contributions (or (items,) of one seed's scalar scores), ``reduce`` their score from sums (default: the mean;
    :func:`~medalign_lite.eval.clinical.micro_f1` for CE counts) — the seed mean, the same draw
    for every seed (the claims rule's bootstrap, against a system whose every contribution is 0)."""
    from ...eval.bootstrap import mean_reduce, paired_bootstrap

    x = np.asarray(per_item, dtype=float)
    x = x[None] if x.ndim == 1 else x
    r = paired_bootstrap(x, np.zeros_like(x[:1]), reduce or mean_reduce, n_boot=n_boot, confidence=confidence,
                         seed=seed)
    zero = float(np.asarray((reduce or mean_reduce)(np.zeros((1, *x.shape[2:])), x.shape[1])).reshape(-1)[0])
    return float(r["low"]) + zero, float(r["high"]) + zero


def paper_scale_notes(results_md: str | Path, methods: Sequence[str]) -> list[str]:
    """Where ``benchmarks/RESULTS.md`` (``medalign bench``'s results, with device and date) has
    figures of a method: ``"<method>: <section title>"`` for each section whose title names it
    (case-insensitive), or one line saying the file is absent."""
    path = Path(results_md)
    if not path.is_file():
        return [f"{path}: not found (paper-scale figures: `medalign bench`)"]
    titles = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    names = {"s2d": ("s2d",), "exgramed": ("exgra",), "convirt": ("convirt",)}
    out = []
    for m in methods:
        keys = names.get(m, (m,))
        out += [f"{m}: {path.name} § {t}" for t in titles
                if any(re.search(rf"\b{re.escape(k)}\b", t.lower()) for k in keys)]
    return out or [f"{path.name}: no section names {list(methods)}"]


def _mean_std(values: Sequence[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


@dataclass
class BenchmarkResults:
    """Every :class:`JobResult` of a run, the plans that made them, the seeds and the seconds."""

    results: list[JobResult]
    plans: dict
    seeds: list[int]
    seconds: float = 0.0
    #: the reference reports of the generation test split (the claims' CE labels)
    references: list[str] | None = None
    #: when each job ran: ``{"job", "seeds", "worker" (1, 2, …), "start_s", "end_s"}`` in seconds
    #: from the start of the run, in start order (where the wall time went)
    timeline: list[dict] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    def systems(self) -> list[str]:
        """Row order: each dual encoder's untrained floor then the method, the ceiling, the
        generators, the baselines."""
        out: list[str] = []
        for r in self.results:
            if r.floor is not None and FLOOR_PREFIX + r.system not in out:
                out.append(FLOOR_PREFIX + r.system)
            if r.system not in out:
                out.append(r.system)
        rank = {"dual_encoder": 0, "ceiling": 1, "report_generator": 2, "both": 2, "baseline": 3}
        kinds = {r.system: r.kind for r in self.results}
        kinds.update({FLOOR_PREFIX + r.system: r.kind for r in self.results if r.floor is not None})
        return sorted(out, key=lambda s: (rank.get(kinds[s], 4), out.index(s)))

    def runs(self, system: str) -> list[JobResult]:
        """The results of ``system`` (a floor: the method's results that carry one), by seed."""
        if system.startswith(FLOOR_PREFIX) and system not in {r.system for r in self.results}:
            base = system[len(FLOOR_PREFIX):]
            return [JobResult(system, r.kind, r.seed, r.floor, per_item=r.extra.get("floor_per_item", {}))
                    for r in self.results if r.system == base and r.floor is not None]
        return sorted([r for r in self.results if r.system == system], key=lambda r: r.seed)

    def kind(self, system: str) -> str:
        return self.runs(system)[0].kind

    def values(self, system: str, key: str) -> list[float]:
        """``key`` (a score or a cost) of every seed of ``system`` (missing: left out)."""
        out = []
        for r in self.runs(system):
            v = r.scores.get(key, r.cost.get(key))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(float(v))
        return out

    def summary(self) -> dict[str, dict[str, dict]]:
        """``{system: {key: {"mean", "std", "n"}}}`` over seeds (sample std; None for one seed)
        of every score and cost a system has."""
        out: dict[str, dict[str, dict]] = {}
        for s in self.systems():
            keys = dict.fromkeys(k for r in self.runs(s) for d in (r.scores, r.cost) for k, v in d.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool))
            out[s] = {k: _mean_std(self.values(s, k)) for k in keys}
        return out

    def long_frame(self, keys: Sequence[str]):
        """A long DataFrame (system, kind, seed, metric, value): one row per seed and key, for
        seaborn."""
        import pandas as pd

        rows = [{"system": s, "kind": self.kind(s), "seed": r.seed, "metric": k, "value": float(v)}
                for s in self.systems() for r in self.runs(s) for k in keys
                for v in [r.scores.get(k, r.cost.get(k))] if isinstance(v, (int, float)) and np.isfinite(v)]
        return pd.DataFrame(rows, columns=["system", "kind", "seed", "metric", "value"])

    def table(self, task: str, digits: int = 3):
        """Mean ± std over seeds of ``task``'s keys (:data:`TASKS`), one row per system that has
        any of them, and the seeds (a DataFrame of strings)."""
        import pandas as pd

        summary, keys, rows = self.summary(), TASKS[task], {}
        for s, sc in summary.items():
            if not any(k in sc and sc[k]["n"] for k in keys):
                continue
            row = {k: format_cell(sc.get(k), digits if k not in ("steps", "batch_size", "pairs_seen",
                                                                  "trainable_params", "total_params") else 0)
                   for k in keys}
            row["seeds"] = max(v["n"] for v in sc.values())
            rows[s] = row
        return pd.DataFrame(rows).T

    def relative_frame(self, keys: Sequence[str] = ("i2t_P@5", "zeroshot_accuracy", "probe_auroc@100",
                                                    "mapped_pointing", "ce_micro_f1_u0", "ce_macro_f1_u0",
                                                    "vqa_closed_accuracy")):
        """Systems × keys, each seed-mean score over its task's reference: the supervised ceiling
        for the dual-encoder tasks, the nearest-neighbour reports for generation, the supervised
        probe for VQA (1 = the reference; NaN where a system has no such score or no reference
        ran) — the method × task heatmap."""
        import pandas as pd

        summary = self.summary()
        refs = {"ce_micro_f1_u0": "nearest_neighbour", "ce_macro_f1_u0": "nearest_neighbour"}
        vqa_ref = self._vqa_floor("probe", "closed_accuracy")
        out = {}
        for s, sc in summary.items():
            row = {}
            for k in keys:
                m = (sc.get(k) or {}).get("mean")
                if k == "vqa_closed_accuracy":
                    ref = vqa_ref
                else:
                    ref = (summary.get(refs.get(k, CEILING), {}).get(k) or {}).get("mean")
                row[k] = m / ref if m is not None and ref else np.nan
            out[s] = row
        return pd.DataFrame(out).T

    def _vqa_floor(self, name: str, key: str) -> float | None:
        for r in self.results:
            f = r.extra.get("vqa_floors", {}).get(name)
            if f is not None:
                return float(f[key])
        return None

    def vqa_table(self):
        """VQA per system: the generators that answered (mean over seeds) and their drivers' floors
        (majority answer, question prior) and ceiling (supervised probe)."""
        import pandas as pd

        rows = {}
        for s in self.systems():
            v = {k: self.values(s, f"vqa_{k}") for k in ("closed_accuracy", "open_recall", "average")}
            if v["closed_accuracy"]:
                rows[s] = {k: float(np.mean(x)) for k, x in v.items()} | {"seeds": len(v["closed_accuracy"])}
        floors = next((r.extra["vqa_floors"] for r in self.results if "vqa_floors" in r.extra), {})
        for name, f in floors.items():
            rows[name] = {"closed_accuracy": f["closed_accuracy"], "open_recall": f["open_recall"],
                          "average": f["average"], "seeds": 1}
        return pd.DataFrame(rows).T

    # ------------------------------------------------------------------ claims
    def claims(self, seed: int = 0) -> list:
        """Every ordering the notebook states, decided by :mod:`medalign_lite.experiments.claims`:

        - retrieval: each trained dual encoder above its untrained model (first seed), and every
          pair of dual encoders (the higher mean first), image→text P@5 per query;
        - generation: each generator above the nearest-neighbour and the majority reports, and
          every pair of generators, CE micro and macro F1 per report (seeds with reports);
        - VQA: each question-answering generator above the majority answer and below / above the
          supervised probe, closed accuracy per question.
        """
        from itertools import combinations

        from ..claims import ce_claim, decide, vqa_claim

        out = []
        key = "i2t_P@5"
        duals = [s for s in self.systems() if self.kind(s) == "dual_encoder" and not s.startswith(FLOOR_PREFIX)]
        per = {s: [r.per_item[key] for r in self.runs(s) if key in r.per_item] for s in duals}
        for s in duals:  # each method above its own untrained model
            floor = [r.per_item[key] for r in self.runs(FLOOR_PREFIX + s) if key in r.per_item]
            if per[s] and floor:
                out.append(decide(np.stack(per[s]), np.stack(floor), name=f"{s} > untrained", a_name=s,
                                  b_name=FLOOR_PREFIX + s, metric=key, seed=seed))
        ranked = sorted([s for s in duals if per[s]], key=lambda s: -np.mean(self.values(s, key)))
        for a, b in combinations(ranked, 2):
            out.append(decide(np.stack(per[a]), np.stack(per[b]), name=f"{a} > {b}", a_name=a, b_name=b, metric=key,
                              seed=seed))
        gens = [s for s in self.systems() if self.kind(s) in ("report_generator", "both", "baseline")]
        reports = {s: [r.per_item["reports"] for r in self.runs(s) if "reports" in r.per_item] for s in gens}
        reports = {s: v for s, v in reports.items() if v}
        if reports:
            from ...text.labeler import label_reports

            if self.references is not None:
                ref = label_reports(self.references)
                labels = {s: [label_reports(x) for x in v] for s, v in reports.items()}
                methods = [s for s in labels if self.kind(s) != "baseline"]
                baselines = [s for s in labels if self.kind(s) == "baseline"]
                pairs = [(a, b) for a in methods for b in baselines]
                pairs += [tuple(sorted(p, key=lambda s: -np.mean(self.values(s, "ce_micro_f1_u0"))))
                          for p in combinations(methods, 2)]
                for a, b in pairs:
                    for avg in ("micro", "macro"):
                        out.append(ce_claim(ref, labels[a], labels[b], average=avg, name=f"{a} > {b}", a_name=a,
                                            b_name=b, seed=seed))
        for s in gens:
            contrib = [r.per_item["vqa"] for r in self.runs(s) if "vqa" in r.per_item]
            floors = next((r.extra["vqa_floors"] for r in self.runs(s) if "vqa_floors" in r.extra), {})
            for other in ("majority", "probe"):
                if contrib and other in floors:
                    out.append(vqa_claim(contrib, [floors[other]["contributions"]], "closed", name=f"{s} > {other}",
                                         a_name=s, b_name=f"vqa_{other}", seed=seed))
        return out

    # ------------------------------------------------------------------ metrics.json
    def metrics(self, claims: Sequence | None = None) -> dict:
        """Numbers for ``metrics.json``: ``summary`` (:meth:`summary`, rounded to 4 decimals),
        ``scores/<system>/seed<s>/<key>``, ``plans`` (config, overrides, planned steps per method)
        and the claims (:func:`~medalign_lite.experiments.claims.claims_metrics`)."""
        from ..claims import claims_metrics

        def rnd(d):
            return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}

        out: dict = {"summary": {s: {k: rnd(v) for k, v in sc.items()} for s, sc in self.summary().items()},
                     "systems": {s: self.kind(s) for s in self.systems()}}
        for s in self.systems():
            for r in self.runs(s):
                for k, v in {**r.scores, **r.cost}.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[f"scores/{s}/seed{r.seed}/{k}"] = round(float(v), 4)
        out["plans"] = {n: {"config": p.config, "overrides": list(p.overrides), "stage_steps": list(p.stage_steps),
                            "batch_size": p.batch_size, "kind": p.kind} for n, p in self.plans.items()}
        out["seeds"] = list(self.seeds)
        out["seconds/jobs"] = self.seconds
        out["timeline"] = [dict(s) for s in self.timeline]
        if claims:
            out.update(claims_metrics(claims))
        return out


# --------------------------------------------------------------------------- the README table


def format_cell(stat: Mapping | None, digits: int = 3) -> str:
    """``mean`` (and `` ± std`` over several seeds) with ``digits`` decimals; empty when missing."""
    if not stat or stat.get("mean") is None:
        return ""
    m, sd = float(stat["mean"]), stat.get("std")
    text = f"{m:,.{digits}f}" if digits == 0 else f"{m:.{digits}f}"
    if sd is not None and (stat.get("n") or 0) > 1:
        text += f" ± {float(sd):,.{digits}f}" if digits == 0 else f" ± {float(sd):.{digits}f}"
    return text


def table_rows(metrics: Mapping, columns: Sequence[tuple[str, str, int]] = TABLE_COLUMNS) -> list[list[str]]:
    """The README table's cells from a ``metrics.json``: one row per system of ``summary`` (in its
    order) with any of ``columns``, the system's name first."""
    rows = []
    for system, stats in metrics["summary"].items():
        cells = [format_cell(stats.get(key), digits) for key, _h, digits in columns]
        if any(cells):
            rows.append([system, *cells])
    return rows


def readme_table(metrics: Mapping, columns: Sequence[tuple[str, str, int]] = TABLE_COLUMNS) -> str:
    """The markdown of the "Results on IU-Phantom" table: the run it comes from (date, machine,
    command, seeds, wall time), the table (:func:`table_rows`), and how to regenerate it."""
    run = metrics.get("run", {})
    head = ["system", *[h for _k, h, _d in columns]]
    lines = [
        f"Run: {run.get('date', '?')} on {run.get('machine', '?')}; `{run.get('command', '?')}`; seeds "
        f"{metrics.get('seeds', '?')}; {run.get('seconds', '?')} s of wall time at load average "
        f"{run.get('load_average', '?')}{' (smoke run: numbers are not results)' if run.get('smoke') else ''}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(metrics, columns)]
    lines += ["", "Mean ± std over seeds. Dual-encoder scores on Phantom-5×200 (P@5, zero-shot) and "
              "IU-Phantom's test split (probe, pointing game on the phrases the ceiling maps); the "
              "ceiling's P@5 is image→image. Generation on IU-Phantom's test split (rule labeler, "
              "uncertain → 0); VQA on Phantom-VQA. Regenerate: "
              "`python scripts/results_table.py outputs/06_benchmark/metrics.json`."]
    return "\n".join(lines)


def write_readme_table(readme: str | Path, metrics: Mapping) -> str:
    """Replace the text between :data:`README_BEGIN` and :data:`README_END` in ``readme`` with
    :func:`readme_table` (atomically) → the new text. A README without both markers is an error
    naming the file."""
    from ...utils import atomic_write

    path = Path(readme)
    text = path.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path}: no results table markers ({README_BEGIN!r} … {README_END!r})")
    new = pattern.sub(lambda _m: f"{README_BEGIN}\n{readme_table(metrics)}\n{README_END}", text)
    atomic_write(path, lambda p: p.write_text(new))
    return new
