"""Pieces shared by the phantom builders: render jobs, the on-disk render cache, parallel runs.

A render job names everything that decides an image's pixels (patient seed, findings, view,
size, acquisition), so the cache key of a rendered study is its folder
``renders/v{BUILDER_VERSION}-seed{seed}-{size}px/`` plus the file name: a rebuild with the
same (builder version, seed, size) finds every file and renders nothing. A cached file is
trusted only when :func:`png_complete` says so (PNG signature, ``IEND`` trailer, chunk CRCs):
a truncated or empty PNG (a disk that filled up, a copy cut short) is rendered again, and
temporary files a killed build left behind are swept once they are an hour old
(:func:`sweep_stale_temps`).

Render workers exit when the build process dies (:func:`pool_worker_init`): a killed
``medalign data build`` leaves no orphaned worker behind.
"""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import struct
import sys
import threading
import time
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


def render_cache_dir(out_dir: str | Path, seed: int, size: int, version: int | None = None) -> Path:
    """The render folder of a build; ``version``: the builder's own ``VERSION`` (``v2.1-…``)."""
    tag = f"v{BUILDER_VERSION}" + (f".{version}" if version is not None else "")
    return Path(out_dir) / "renders" / f"{tag}-seed{seed}-{size}px"


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk with its CRC: a PNG's last 12 bytes


#: what reading a damaged PNG raises (Pillow: SyntaxError / OSError for broken chunks or CRCs,
#: struct.error / EOFError for a short chunk)
_DAMAGED = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def png_complete(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole PNG file: the signature, an ``IEND`` chunk as its last 12 bytes
    (a truncated file has none) and every chunk's CRC (Pillow's ``verify``, which reads the
    chunks without decompressing them). About 35 µs for a 224 px render."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            f.seek(-12, os.SEEK_END)
            if f.read(12) != _PNG_IEND:
                return False
            f.seek(0)
            with Image.open(f, formats=["PNG"]) as img:
                img.verify()
        return True
    except _DAMAGED:
        return False


#: ``utils.atomic_path``'s temporary names: ``.{name}.{8 mkstemp characters}.tmp{ext}``
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
STALE_TEMP_AGE = 3600.0  # seconds


def sweep_stale_temps(folder: str | os.PathLike, max_age: float = STALE_TEMP_AGE) -> int:
    """Remove temporary files of :func:`~medalign_lite.utils.atomic_path` older than ``max_age``
    seconds from ``folder``; return how many. A killed build (SIGKILL, or a worker ended by
    the kernel when its build died) cannot remove the one it was writing; a temporary file an
    hour old belongs to no running writer (a render takes milliseconds), while a younger one
    may be another process's, filling the same cache, and is left alone."""
    now, removed = time.time(), 0
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") and _TEMP_NAME.match(entry.name):
                    try:
                        if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > max_age:
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:  # its writer renamed or removed it meanwhile
                        pass
    except FileNotFoundError:
        pass
    return removed


def pending(jobs: Iterable[RenderJob]) -> list[RenderJob]:
    """Jobs whose outputs are not all on disk yet, or not whole (the cache check)."""
    return [j for j in jobs if not png_complete(j.path)
            or (j.mask_path is not None and not png_complete(j.mask_path))]


# --------------------------------------------------------------------------- pool workers

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL = 0.5  # seconds between the watchdog's looks at the parent


def pool_worker_init(parent: int | None = None) -> None:
    """Initializer of a build's worker processes: exit when the build process dies.

    A pool worker blocks on the pool's queue; when the build is killed (SIGKILL, an
    out-of-memory kill, a notebook kernel restarted) nothing ever wakes it, and it used to
    stay alive, orphaned. Two guards:

    * Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` (through ctypes), so the kernel sends the
      worker SIGTERM the moment its parent exits; SIGTERM gets its default action back, in
      case the worker inherited a handler (a notebook kernel's).
    * Everywhere: a daemon thread that looks at ``os.getppid()`` every 0.5 s and ends the
      worker once it has been re-parented.

    ``parent`` is the build's pid: when the worker's parent is already someone else at start
    (the build died before this ran), it exits at once. Under ``forkserver`` the worker's
    parent is the fork server, which exits with the build, so ``parent`` is not compared.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ppid = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except (OSError, AttributeError, ValueError):  # pragma: no cover - no libc / not the main thread
            pass
    if parent is not None and ppid != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(ppid,), name="medalign-parent-watchdog", daemon=True).start()


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(_WATCH_INTERVAL)
        if os.getppid() != ppid:
            os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers exit when this process dies (:func:`pool_worker_init`)."""
    ctx = multiprocessing.get_context()
    parent = None if ctx.get_start_method() == "forkserver" else os.getpid()
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=pool_worker_init, initargs=(parent,))


def run_jobs(jobs: Sequence[RenderJob], workers: int | None = None, progress: bool = True,
             desc: str = "render", chunk: int = 64) -> int:
    """Render the jobs not cached yet on ``workers`` processes; return how many were rendered."""
    todo = pending(jobs)
    if not todo:
        return 0
    for d in {os.path.dirname(j.path) for j in todo} | {os.path.dirname(j.mask_path) for j in todo if j.mask_path}:
        os.makedirs(d, exist_ok=True)
        sweep_stale_temps(d)
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    try:
        if workers <= 1 or len(chunks) == 1:
            for c in chunks:
                bar.update(_run_chunk(c))
        else:
            with worker_pool(workers) as pool:
                for n in pool.map(_run_chunk, chunks):
                    bar.update(n)
    finally:
        bar.close()
    return len(todo)


def relpath(path: str | Path, start: str | Path) -> str:
    return os.path.relpath(path, start)
