"""Phantom-5x200: the CheXpert 5x200 retrieval recipe on phantoms.

Five classes — Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion — times 200
studies, each showing *exactly one* of them and nothing else (the CheXpert 5x200 rule: 1 for
its class, 0 for every other observation). Side, zone, severity and variant are drawn at
random from the finding's catalogue entry; the report is written by the report writer in
free style (with pertinent negatives, as real reports have). Patients are new: their seeds
come from a range disjoint from IU-Phantom's (``patient_seed(seed, 10_000_000 + i)`` vs the
IU report ids, all below 10,000), so no phantom patient of the retrieval set was trained on.
Every row is in split ``test``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..findings import CATALOGUE, SEVERITIES, Finding, chexpert_labels, findings_to_json
from ..manifest import format_labels, write_manifest
from .common import RenderJob, patient_seed, relpath, render_cache_dir, run_jobs

NAME = "phantom-5x200"
CLASSES: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
}
PATIENT_OFFSET = 10_000_000


def random_finding(kind: str, rng: np.random.Generator) -> Finding:
    t = CATALOGUE[kind]
    pick = lambda xs: xs[int(rng.integers(len(xs)))]
    return Finding(kind, pick(t.sides), pick(t.zones), pick(SEVERITIES),
                   pick(t.variants) if t.variants else None)


def build(out_dir, root=None, size: int | None = 224, limit: int | None = None, seed: int = 0,
          progress: bool = True, workers: int | None = None, per_class: int = 200) -> Path:
    """Build ``out_dir/manifest.csv`` with ``per_class`` studies per class (``limit`` caps the
    total, keeping the classes balanced by taking the first studies of each)."""
    from ..reports import write_report

    t0 = time.perf_counter()
    size = int(size or 224)
    out_dir = Path(out_dir)
    cache = render_cache_dir(out_dir, seed, size)
    n = per_class if not limit else min(per_class, max(1, int(limit) // len(CLASSES)))
    rows, jobs = [], []
    for c, (cls, kind) in enumerate(CLASSES.items()):
        for j in range(n):
            index = c * per_class + j
            pseed = patient_seed(seed, PATIENT_OFFSET + index)
            rng = np.random.default_rng([pseed, 5])
            finding = random_finding(kind, rng)
            report = write_report([finding], style="free", seed=pseed)
            sid = f"p5x200-{index:04d}"
            frontal, mask = cache / f"{sid}_frontal.png", cache / f"{sid}_masks.png"
            jobs.append(RenderJob(str(frontal), pseed, (finding,), "PA", size, 0, str(mask)))
            labels = chexpert_labels([finding])
            assert labels[cls] == 1 and sum(labels.values()) == 1, (cls, labels)
            rows.append({
                "study_id": sid, "patient_id": sid, "split": "test", "dataset": NAME, "view": "PA",
                "frontal": relpath(frontal, out_dir), "findings": report.findings,
                "impression": report.impression, **format_labels(labels),
                "masks": relpath(mask, out_dir), "class": cls,
                "findings_json": findings_to_json([finding]), "n_findings": "1",
                "written_spans": json.dumps([[s.finding, s.section, s.start, s.end] for s in report.spans],
                                            separators=(",", ":")),
            })
    rendered = run_jobs(jobs, workers=workers, progress=progress, desc="phantom-5x200 renders")
    path = write_manifest(pd.DataFrame(rows), out_dir / "manifest.csv")
    if progress:
        print(f"phantom-5x200: {len(rows)} studies, {rendered} rendered, "
              f"{time.perf_counter() - t0:.1f} s -> {path}")
    return path
