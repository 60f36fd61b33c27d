"""The tables every contrastive notebook prints: each method beside the untrained floor and the
supervised ceiling, so that a reader sees how much of the achievable a mechanism reached.

- :func:`retrieval_table` — image→text / text→image class P@K per system, mean ± std over seeds,
  with the share of the ceiling's image→image P@K (its counterpart: the same encoder trained on
  the labels, :mod:`~medalign_lite.experiments.ceiling`) and the floor.
- :func:`grounding_table` — pointing game (pixel and patch, :func:`~medalign_lite.experiments.
  contrastive.score_grounding`) and mask AUROC per system, overall and for the large and small
  findings apart, mean ± std over seeds, with each system's ratio to the ceiling's CAM and to
  the floor on the same phrases.

Inputs are plain dicts of the results the experiments layer returns, so the same tables serve
every notebook (01, 02, 04, 06).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["grounding_rows", "grounding_table", "retrieval_table"]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def retrieval_table(systems: Mapping[str, Sequence[Mapping[str, float]]],
                    ceiling: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
                    keys: Sequence[str] = ("i2t_P@1", "i2t_P@5", "i2t_P@10", "t2i_P@5"), ref: str = "i2t_P@5"):
    """One row per system: ``<key> mean`` and ``<key> std`` over its seeds (the columns of
    :func:`~medalign_lite.experiments.variants.summary_table`, so :func:`~medalign_lite.viz.
    ablation_bars` draws it; ``systems``: name → one retrieval dict per seed, e.g.
    ``RunResult.retrieval``; the floor is one more system), ``seeds``, and ``<ref> / ceiling``:
    the mean ``ref`` over the ceiling's image→image P@K of the same K (``ceiling``:
    :func:`~medalign_lite.experiments.ceiling.ceiling_retrieval`, or one per seed: their mean,
    with its std). The ceiling is the last row, its image→image P@K under the image→text columns."""
    import pandas as pd

    rows = {}
    for name, runs in systems.items():
        row = {}
        for k in keys:
            row[f"{k} mean"], row[f"{k} std"] = _mean_std([r.get(k, np.nan) for r in runs])
        row["seeds"] = len(runs)
        rows[name] = row
    if ceiling:
        runs = [ceiling] if isinstance(ceiling, Mapping) else list(ceiling)
        row = {"seeds": len(runs)}
        for k in keys:
            if k.startswith("i2t"):
                row[f"{k} mean"], row[f"{k} std"] = _mean_std([r.get(f"i2i_P@{k.split('@')[-1]}", np.nan) for r in runs])
        base = row.get(f"{ref} mean", np.nan)
        for other in rows.values():
            other[f"{ref} / ceiling"] = other[f"{ref} mean"] / base if base else float("nan")
        row[f"{ref} / ceiling"] = 1.0
        rows["supervised ceiling (image→image)"] = row
    return pd.DataFrame(rows).T


def grounding_rows(g: Mapping) -> dict:
    """The numbers of one :func:`~medalign_lite.experiments.contrastive.score_grounding` result
    that the grounding table shows: overall and per group (``large``, ``small``)."""
    row = {"pointing": g.get("pointing_game", np.nan), "pointing_patch": g.get("pointing_patch", np.nan),
           "mask_auroc": g.get("mask_auroc", np.nan), "phrases": g.get("n_phrases", 0)}
    for group, s in (g.get("groups") or {}).items():
        row[f"{group}: pointing"] = s["pointing"]
        row[f"{group}: pointing_patch"] = s["pointing_patch"]
        row[f"{group}: n"] = s["n"]
    return row


def grounding_table(systems: Mapping[str, Sequence[Mapping]], ceiling: str | None = None, floor: str | None = None,
                    ratio_key: str = "pointing"):
    """One row per system (name → one :func:`score_grounding` result per seed): mean (and
    ``std`` where there are several seeds) of the pointing games and mask AUROC, overall and per
    group, and ``<ratio_key> / ceiling`` and ``<ratio_key> / floor`` against the rows named
    ``ceiling`` and ``floor``. Compare ratios only on the same phrases: the ceiling maps only
    findings that have a CheXpert observation, so its row is scored on those, and so should be
    the systems' (``grounding_eval(..., observations_only=True)``)."""
    import pandas as pd

    rows = {}
    for name, runs in systems.items():
        per = [grounding_rows(g) for g in runs]
        row = {}
        for k in per[0]:
            if k.endswith(": n") or k == "phrases":
                row[k] = per[0][k]
                continue
            row[k], sd = _mean_std([p.get(k, np.nan) for p in per])
            if len(per) > 1:
                row[f"{k} std"] = sd
        row["seeds"] = len(per)
        rows[name] = row
    for ref, label in ((ceiling, "ceiling"), (floor, "floor")):
        if ref is not None and ref in rows:
            base = rows[ref][ratio_key]
            for row in rows.values():
                row[f"{ratio_key} / {label}"] = row[ratio_key] / base if base else float("nan")
    return pd.DataFrame(rows).T
