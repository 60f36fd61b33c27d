"""IU-Phantom-extra: more training studies, rendered from IU-Phantom's own training finding lists.

IU's training split is small and mostly normal: 61 % of its 2,749 studies have no finding, and
the findings a 5×200 gallery asks about are rare (consolidation in about 22 training studies,
edema in 72, effusion in 129). A contrastive batch of 32 then holds about 20 reports that all
say "normal" — each one a false negative for the others — and a run sees a rare finding a few
times. The phantom renderer can draw as many studies with known findings as a run needs; this
builder draws ``n`` new ones (default 4,000), every one a *training* study:

1. **Which findings.** Study ``j`` copies the finding list (kind, side, zone, severity,
   variant) of one abnormal IU-Phantom *training* study, chosen *kind-balanced*: a finding kind
   is drawn uniformly among the kinds that occur in the training split, then one training
   study that has it. Co-occurrences stay those of real reports; rare kinds are drawn as often
   as common ones. Normal studies are not drawn (the training split has plenty).
2. **A new patient.** Its seed comes from a range disjoint from IU-Phantom's (report ids below
   10,000) and Phantom-5×200's (10,000,000 + i): ``patient_seed(seed, 20_000_000 + j)``, so no
   evaluation patient's anatomy is ever trained on.
3. **A whole study**, as IU-Phantom's (:func:`.iu_phantom.phantom_study`): frontal with masks,
   lateral, a synthetic prior study and its report, the report writer's free and structured
   descriptions with spans. There is no IU report for a new patient, so ``findings`` and
   ``impression`` hold the writer's free text (the same as ``written_*``); ``source_report_id``
   names the IU report whose findings were copied.

Study ``j`` depends only on ``(seed, j)``: a build of ``n`` studies is the first ``n`` rows of
any larger build, so ``limit`` (or ``n``) only sets how many. Used with IU-Phantom's training
split, e.g. ``ManifestDataset([iu_phantom, iu_phantom_extra], split="train")``; the methods still
learn from image–report pairs alone — the finding lists only decide what is *drawn*.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..manifest import split_patients, write_manifest
from .common import patient_seed, relpath, render_cache_dir, run_jobs
from .iu_phantom import COLUMNS, map_codes, phantom_study

NAME = "iu-phantom-extra"
#: patient numbers of the extra studies start here (IU report ids < 10,000; Phantom-5×200 uses 10,000,000 + i)
PATIENT_OFFSET = 20_000_000
#: studies built when neither ``limit`` nor ``n`` says otherwise
DEFAULT_STUDIES = 4000


def training_finding_lists(seed: int = 0) -> tuple[list[list], list[str]]:
    """The abnormal studies of IU-Phantom's training split (the same seeded patient split as the
    IU-Phantom build of ``seed``): their finding lists and report ids, in report order."""
    from ..iu_xray import load_iu_reports

    reports = load_iu_reports()
    has_text = (reports["findings"].str.strip() != "") | (reports["impression"].str.strip() != "")
    reports = reports[has_text].sort_values("report_id").reset_index(drop=True)
    splits = split_patients(reports["uid"], seed=seed)
    lists, ids = [], []
    for r in reports.itertuples(index=False):
        if splits[r.uid] != "train":
            continue
        findings, _ = map_codes(list(r.mesh))
        if findings:
            lists.append(findings)
            ids.append(str(r.report_id))
    return lists, ids


def kind_balanced_picks(lists: list[list], n: int, seed: int = 0) -> list[int]:
    """For each extra study ``j < n``, the index of the finding list it copies: a kind drawn
    uniformly among the kinds of ``lists``, then a list that has it, both from a generator
    seeded with ``(seed, j)`` only."""
    kinds = sorted({f.kind for fs in lists for f in fs})
    having = {k: [i for i, fs in enumerate(lists) if any(f.kind == k for f in fs)] for k in kinds}
    picks = []
    for j in range(n):
        rng = np.random.default_rng([int(seed), PATIENT_OFFSET + j, 9])
        kind = kinds[int(rng.integers(len(kinds)))]
        picks.append(having[kind][int(rng.integers(len(having[kind])))])
    return picks


def build(out_dir, root=None, size: int | None = 224, limit: int | None = None, seed: int = 0,
          progress: bool = True, workers: int | None = None, n: int = DEFAULT_STUDIES) -> Path:
    """Build ``out_dir/manifest.csv`` with ``limit`` (else ``n``) extra training studies for the
    IU-Phantom build of ``seed`` (``root`` is unused). Returns the manifest path."""
    t0 = time.perf_counter()
    size = int(size or 224)
    n = int(limit or n)
    if n < 1:
        raise ValueError(f"iu-phantom-extra: the number of studies must be >= 1, got {n}")
    out_dir = Path(out_dir)
    cache = render_cache_dir(out_dir, seed, size)
    rel_cache = relpath(cache, out_dir)
    lists, ids = training_finding_lists(seed)
    picks = kind_balanced_picks(lists, n, seed)
    rows, jobs = [], []
    for j, i in enumerate(picks):
        uid = f"extra-{j:05d}"
        study, study_jobs = phantom_study(uid, lists[i], patient_seed(seed, PATIENT_OFFSET + j), "PA", size,
                                          cache, rel_cache)
        jobs += study_jobs
        rows.append({"study_id": uid, "patient_id": uid, "split": "train", "dataset": NAME, **study,
                     "findings": study["written_findings"], "impression": study["written_impression"],
                     "report_id": "", "indication": "", "comparison": "", "mesh": "", "unrendered": "",
                     "source_report_id": ids[i]})
    rendered = run_jobs(jobs, workers=workers, progress=progress, desc="iu-phantom-extra renders")
    path = write_manifest(pd.DataFrame(rows)[[*COLUMNS, "source_report_id"]], out_dir / "manifest.csv")
    if progress:
        print(f"iu-phantom-extra: {len(rows)} studies from {len(set(picks))} training finding lists, {rendered} images rendered, "
              f"{time.perf_counter() - t0:.1f} s -> {path}")
    return path


__all__ = ["DEFAULT_STUDIES", "NAME", "PATIENT_OFFSET", "build", "kind_balanced_picks", "training_finding_lists"]
