"""Phantom-VQA: a patient-disjoint evaluation set of closed and open questions whose answers
are known from the rendered findings (ExGra-Med's VQA evaluation, offline).

For every IU X-Ray report of IU-Phantom's **test** split (the seeded patient-disjoint split of
a full ``iu-phantom`` build with the same ``seed``; a build with ``--limit`` splits its own
subset), a **new phantom patient** is rendered with
that report's findings: patient seeds come from a range disjoint from IU-Phantom's (report ids
< 10,000), Phantom-5x200's (10,000,000 + i) and IU-Phantom-extra's (20,000,000 + j):
``patient_seed(seed, 30_000_000 + report_id)``, so neither the images nor the finding
combinations were seen in training, with or without the extra training studies. Each study has:

- ``frontal`` (PA or AP as IU's metadata says) and ``masks`` (one mask per finding);
- ``findings`` / ``impression``: the report writer's free-style description of the findings;
- ``qa_json``: the questions of :func:`~medalign_lite.data.instructions.vqa_questions` —
  closed: presence of one of its findings ("yes"), absence of a kind it lacks ("no"), "is this
  chest x-ray normal?"; open: the side and the severity of one finding, "what abnormality is
  seen?" — each with ``answer`` (the key words VQA scoring compares with), ``answer_type``,
  ``qid`` and ``kind``;
- the 14 CheXpert labels of the rendered findings and ``findings_json``.

Every row is in split ``test``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..findings import chexpert_labels, findings_to_json
from ..manifest import format_labels, split_patients, write_manifest
from .common import RenderJob, patient_seed, relpath, render_cache_dir, run_jobs
from .iu_phantom import _frontal_view, map_codes, reports_with_text

NAME = "phantom-vqa"
PATIENT_OFFSET = 30_000_000
#: this builder's own version (1: patients moved from 20,000,000 + id, IU-Phantom-extra's range)
VERSION = 1


def build(out_dir, root=None, size: int | None = 224, limit: int | None = None, seed: int = 0,
          progress: bool = True, workers: int | None = None) -> Path:
    """Build ``out_dir/manifest.csv`` (``root`` is unused: the reports ship inside
    torchxrayvision). ``limit`` keeps the first N test-split reports by report id."""
    from ..instructions import prevalence, vqa_questions
    from ..reports import write_report

    t0 = time.perf_counter()
    size = int(size or 224)
    out_dir = Path(out_dir)
    cache = render_cache_dir(out_dir, seed, size, VERSION)
    reports, _ = reports_with_text()
    splits = split_patients(reports["uid"], seed=seed)  # a full iu-phantom build's split, same seed
    weights = prevalence([map_codes(list(m))[0] for m in reports["mesh"]])  # absence questions as frequent as presence
    reports = reports[reports["uid"].map(splits) == "test"].reset_index(drop=True)
    if limit:
        reports = reports.iloc[: int(limit)]
    rel_cache = relpath(cache, out_dir)
    rows, jobs, n_q = [], [], 0
    for r in reports.itertuples(index=False):
        findings, _ = map_codes(list(r.mesh))
        pseed = patient_seed(seed, PATIENT_OFFSET + int(r.report_id))
        sid = f"pvqa-{r.report_id}"
        view = _frontal_view(list(r.image_views))
        frontal, mask = cache / f"{sid}_frontal.png", cache / f"{sid}_masks.png"
        jobs.append(RenderJob(str(frontal), pseed, tuple(findings), view, size, 0, str(mask)))
        written = write_report(findings, style="free", seed=pseed)
        qs = vqa_questions(findings, int(np.random.SeedSequence([pseed, 9]).generate_state(1)[0]), weights)
        n_q += len(qs)
        qa = [{"question": t.question, "answer": t.key, "answer_type": t.answer_type, "qid": f"{sid}-{k}",
               "kind": t.kind} for k, t in enumerate(qs)]
        rows.append({
            "study_id": sid, "patient_id": sid, "split": "test", "dataset": NAME, "view": view,
            "frontal": f"{rel_cache}/{frontal.name}", "findings": written.findings, "impression": written.impression,
            **format_labels(chexpert_labels(findings)), "masks": f"{rel_cache}/{mask.name}",
            "report_id": str(r.report_id), "findings_json": findings_to_json(findings),
            "n_findings": str(len(findings)), "qa_json": json.dumps(qa, separators=(",", ":")),
        })
    rendered = run_jobs(jobs, workers=workers, progress=progress, desc="phantom-vqa renders")
    path = write_manifest(pd.DataFrame(rows), out_dir / "manifest.csv")
    if progress:
        print(f"phantom-vqa: {len(rows)} studies, {n_q} questions, {rendered} rendered, "
              f"{time.perf_counter() - t0:.1f} s -> {path}")
    return path
