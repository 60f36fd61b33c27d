"""IU-Phantom: the 3,955 real IU X-Ray reports paired with phantoms rendered from their MeSH codes.

For every report of the Indiana University collection (read at run time from the archive
inside the torchxrayvision wheel, never copied into the repository):

1. its manual MeSH major codes become findings through :func:`findings.mesh_to_findings`;
   codes that no table row covers go to the ``unrendered`` column (never dropped silently);
2. a frontal (PA, or AP where IU's metadata says so) and a lateral phantom are rendered for
   the patient, with one mask per finding for the frontal (``masks`` column);
3. a synthetic *prior* study of the same patient is made: same anatomy, each finding evolved
   (``new`` / ``worse`` / ``better`` / ``unchanged``, plus sometimes a finding that has
   since ``resolved``), rendered with another acquisition and described by the report writer
   (``prior_report``); ``prior_changes`` records what changed;
4. the report writer also describes the *current* findings in free and structured style
   (``written_*``, ``structured_*`` columns with character spans per finding): phrase↔mask
   ground truth, and AGA's structured-versus-free-text study on the same images.

Labels are the image's truth: the 14 CheXpert columns say which observations the rendered
findings make positive (:func:`findings.chexpert_labels`), 0 elsewhere. Splits are seeded and
patient-disjoint (IU has one study per patient: the report id is the patient). Reports with
neither findings nor impression are dropped and counted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..findings import (
    CATALOGUE,
    CHEXPERT_LABELS,
    SEVERITIES,
    Finding,
    chexpert_labels,
    findings_to_json,
    merge_findings,
    mesh_to_findings,
)
from ..manifest import format_labels, split_patients, write_manifest
from ..masks import MAX_MASKS
from .common import RenderJob, patient_seed, relpath, render_cache_dir, run_jobs

NAME = "iu-phantom"
CHANGES = ("new", "worse", "better", "unchanged")
_CHANGE_P = (0.2, 0.2, 0.2, 0.4)
#: kinds that do not evolve between two studies a few months apart
CHRONIC = frozenset({"degenerative_spine", "scoliosis", "granuloma", "calcified_lymph_node",
                     "aortic_calcification", "tortuous_aorta", "hyperinflation", "scarring",
                     "hiatal_hernia", "pleural_thickening", "interstitial_markings",
                     "sternotomy_wires"})
#: kinds a prior study may show that have resolved since
RESOLVABLE = ("consolidation", "pleural_effusion", "atelectasis", "pneumothorax", "edema",
              "airspace_opacity", "pneumonia")


#: The manifest's columns in the order written (schema columns first, then the extras).
COLUMNS = ("study_id", "patient_id", "split", "dataset", "view", "frontal", "lateral", "prior_frontal",
           "prior_lateral", "findings", "impression", "prior_report", *CHEXPERT_LABELS, "masks", "report_id",
           "indication", "comparison", "mesh", "unrendered", "findings_json", "n_findings", "written_findings",
           "written_impression", "written_spans", "structured_findings", "structured_impression",
           "structured_spans", "prior_findings_json", "prior_changes")


def map_codes(codes: list[str]) -> tuple[list[Finding], list[str]]:
    """MeSH codes -> (merged findings, unrendered codes), capped at the mask file's 16 bits."""
    found: list[Finding] = []
    unrendered: list[str] = []
    for code in codes:
        fs = mesh_to_findings(code)
        if fs is None:
            unrendered.append(code)
        else:
            found.extend(fs)
    return merge_findings(found)[:MAX_MASKS], unrendered


def evolve(findings: list[Finding], rng: np.random.Generator) -> tuple[list[Finding], dict, list[Finding]]:
    """The prior study's findings: each current finding's change drawn from
    ``CHANGES`` (chronic kinds unchanged, devices new or unchanged); sometimes one acute
    finding existed before and has resolved. Returns (prior findings, {finding index: change},
    resolved findings)."""
    prior: list[Finding] = []
    changes: dict[int, str] = {}
    for i, f in enumerate(findings):
        if f.kind in CHRONIC:
            change = "unchanged"
        elif f.type.device:
            change = "new" if rng.random() < 0.3 else "unchanged"
        else:
            change = CHANGES[rng.choice(4, p=_CHANGE_P)]
        s = SEVERITIES.index(f.severity)
        if change == "worse" and s == 0:
            change = "new"
        if change == "better" and s == len(SEVERITIES) - 1:
            change = "unchanged"
        changes[i] = change
        if change == "unchanged":
            prior.append(f)
        elif change == "worse":
            prior.append(f.with_severity(SEVERITIES[s - 1]))
        elif change == "better":
            prior.append(f.with_severity(SEVERITIES[s + 1]))
    resolved: list[Finding] = []
    if rng.random() < 0.25:
        kind = RESOLVABLE[rng.integers(len(RESOLVABLE))]
        t = CATALOGUE[kind]
        cand = Finding(kind, t.sides[rng.integers(len(t.sides))], t.zones[0],
                       SEVERITIES[rng.integers(2)], instance=7)
        if all((f.kind, f.side) != (cand.kind, cand.side) for f in findings):
            resolved.append(cand)
            prior.append(cand)
    return prior, changes, resolved


def _spans_json(report) -> str:
    return json.dumps([[s.finding, s.section, s.start, s.end] for s in report.spans], separators=(",", ":"))


def _frontal_view(views: list[str]) -> str:
    for v in views:
        if v in ("PA", "AP"):
            return v
    return "PA"


def phantom_study(uid: str, findings: list[Finding], pseed: int, view: str, size: int, cache: Path,
                  rel_cache: str) -> tuple[dict, list[RenderJob]]:
    """One phantom patient's study from its findings: the render jobs of its four images (the
    current frontal with one mask per finding, the lateral, and a synthetic prior study
    evolved by :func:`evolve`) and its manifest columns — image and mask paths, the labels, the
    prior report, and the report writer's free and structured descriptions with each finding's
    span (shared by IU-Phantom and IU-Phantom-extra). ``pseed`` is the patient seed, ``size``
    the image side, ``cache`` the render folder, ``rel_cache`` that folder relative to the manifest."""
    from ..reports import write_report

    rng = np.random.default_rng([pseed, 1])
    prior, changes, resolved = evolve(findings, rng)
    written = write_report(findings, style="free", seed=pseed)
    structured = write_report(findings, style="structured", seed=pseed)
    prior_written = write_report(prior, style="free", seed=pseed + 1)
    paths = {k: cache / f"{uid}_{k}.png" for k in ("frontal", "lateral", "prior_frontal", "prior_lateral")}
    mask_path = cache / f"{uid}_masks.png"
    jobs = [
        RenderJob(str(paths["frontal"]), pseed, tuple(findings), view, size, 0, str(mask_path)),
        RenderJob(str(paths["lateral"]), pseed, tuple(findings), "LATERAL", size, 0),
        RenderJob(str(paths["prior_frontal"]), pseed, tuple(prior), view, size, 1),
        RenderJob(str(paths["prior_lateral"]), pseed, tuple(prior), "LATERAL", size, 1),
    ]
    row = {
        "view": view,
        **{k: f"{rel_cache}/{p.name}" for k, p in paths.items()},
        "prior_report": f"{prior_written.findings} {prior_written.impression}".strip(),
        **format_labels(chexpert_labels(findings)),
        "masks": f"{rel_cache}/{mask_path.name}",
        "findings_json": findings_to_json(findings), "n_findings": str(len(findings)),
        "written_findings": written.findings, "written_impression": written.impression,
        "written_spans": _spans_json(written),
        "structured_findings": structured.findings, "structured_impression": structured.impression,
        "structured_spans": _spans_json(structured),
        "prior_findings_json": findings_to_json(prior),
        "prior_changes": json.dumps({"changes": [changes[i] for i in range(len(findings))],
                                     "resolved": [f.to_dict() for f in resolved]},
                                    separators=(",", ":")),
    }
    return row, jobs


def build(out_dir, root=None, size: int | None = 224, limit: int | None = None, seed: int = 0,
          progress: bool = True, workers: int | None = None) -> Path:
    """Build ``out_dir/manifest.csv`` for IU-Phantom (``root`` is unused: the reports ship
    inside torchxrayvision). Returns the manifest path."""
    from ..iu_xray import load_iu_reports

    t0 = time.perf_counter()
    size = int(size or 224)
    out_dir = Path(out_dir)
    cache = render_cache_dir(out_dir, seed, size)
    reports = load_iu_reports()
    has_text = (reports["findings"].str.strip() != "") | (reports["impression"].str.strip() != "")
    dropped = int((~has_text).sum())
    reports = reports[has_text].sort_values("report_id").reset_index(drop=True)
    if limit:
        reports = reports.iloc[: int(limit)]
    splits = split_patients(reports["uid"], seed=seed)

    rel_cache = relpath(cache, out_dir)  # one relpath, then string joins (thousands of rows)
    rows, jobs = [], []
    for r in reports.itertuples(index=False):
        findings, unrendered = map_codes(list(r.mesh))
        study, study_jobs = phantom_study(r.uid, findings, patient_seed(seed, r.report_id),
                                          _frontal_view(list(r.image_views)), size, cache, rel_cache)
        jobs += study_jobs
        rows.append({
            "study_id": r.uid, "patient_id": r.uid, "split": splits[r.uid], "dataset": NAME,
            **study, "findings": r.findings, "impression": r.impression,
            "report_id": str(r.report_id), "indication": r.indication, "comparison": r.comparison,
            "mesh": "; ".join(r.mesh), "unrendered": "; ".join(unrendered),
        })
    rendered = run_jobs(jobs, workers=workers, progress=progress, desc="iu-phantom renders")
    path = write_manifest(pd.DataFrame(rows)[list(COLUMNS)], out_dir / "manifest.csv")
    if progress:
        print(f"iu-phantom: {len(rows)} studies ({dropped} reports without text dropped), "
              f"{rendered} images rendered, {len(jobs) - rendered} cached, "
              f"{time.perf_counter() - t0:.1f} s -> {path}")
    return path
