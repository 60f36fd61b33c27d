"""Pieces shared by the phantom builders: render jobs, the on-disk render cache, parallel runs.

A render job names everything that decides an image's pixels (patient seed, findings, view,
size, acquisition), so the cache key of a rendered study is its folder
``renders/v{BUILDER_VERSION}-seed{seed}-{size}px/`` plus the file name: a rebuild with the
same (builder version, seed, size) finds every file and renders nothing.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...utils import atomic_path
from ..findings import Finding
from ..masks import MAX_MASKS, save_masks

#: Bump when the renderer or the builders change pixels: old caches are then ignored.
BUILDER_VERSION = 2


@dataclass(frozen=True)
class RenderJob:
    """One image to render and save (``mask_path`` set for frontal images only)."""

    path: str
    seed: int
    findings: tuple[Finding, ...]
    view: str
    size: int
    acquisition: int = 0
    mask_path: str | None = None


def render_cache_dir(out_dir: str | Path, seed: int, size: int) -> Path:
    return Path(out_dir) / "renders" / f"v{BUILDER_VERSION}-seed{seed}-{size}px"


def patient_seed(base: int, patient_index: int) -> int:
    """Patient seed from the build seed and a patient number, stable across runs."""
    return int(np.random.SeedSequence([int(base), int(patient_index)]).generate_state(1)[0])


def _run_job(job: RenderJob) -> None:
    from ..phantom import render, to_uint8  # imported in the worker

    out = render(job.seed, job.findings, view=job.view, size=job.size, acquisition=job.acquisition)
    _save_png(job.path, to_uint8(out.image))
    if job.mask_path is not None:
        with atomic_path(job.mask_path) as tmp:
            save_masks(tmp, out.masks[:MAX_MASKS])


def _save_png(path: str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:  # a killed build never leaves a truncated image under the real name
        Image.fromarray(array).save(tmp, compress_level=1)


def _run_chunk(jobs: Sequence[RenderJob]) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for job in jobs:
        _run_job(job)
    return len(jobs)


def pending(jobs: Iterable[RenderJob]) -> list[RenderJob]:
    """Jobs whose outputs are not all on disk yet (the cache check)."""
    return [j for j in jobs if not os.path.exists(j.path)
            or (j.mask_path is not None and not os.path.exists(j.mask_path))]


def run_jobs(jobs: Sequence[RenderJob], workers: int | None = None, progress: bool = True,
             desc: str = "render", chunk: int = 64) -> int:
    """Render the jobs not cached yet on ``workers`` processes; return how many were rendered."""
    todo = pending(jobs)
    if not todo:
        return 0
    for d in {os.path.dirname(j.path) for j in todo} | {os.path.dirname(j.mask_path) for j in todo if j.mask_path}:
        os.makedirs(d, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    try:
        if workers <= 1 or len(chunks) == 1:
            for c in chunks:
                bar.update(_run_chunk(c))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for n in pool.map(_run_chunk, chunks):
                    bar.update(n)
    finally:
        bar.close()
    return len(todo)


def relpath(path: str | Path, start: str | Path) -> str:
    return os.path.relpath(path, start)
