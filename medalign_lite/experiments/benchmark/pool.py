"""Notebook 06's whole run: which jobs there are, which waits for which and in what order the
worker pool starts them (:data:`JOB_SECONDS`, :func:`_schedule`), the data every job reads, and
:func:`run_benchmark` (one job: :mod:`.runs`).

The ConVIRT stand-in encoder that S2D and ExGra-Med freeze is made once, before them: by the
ConVIRT job itself when its recipe is the encoder's (:func:`_encoder_provider`), else by
:data:`~.runs.ENCODER_JOB`. The order changes the wall time, never a number.
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ...config import config_path, read_yaml
from .results import CEILING, BenchmarkResults, JobResult
from .runs import (
    _ALL_SEEDS,
    _ENCODER_OF,
    ENCODER_JOB,
    REPORT_COLUMNS,
    BenchmarkData,
    MethodPlan,
    _Context,
    _dataset,
    _run_chain,
    _Span,
)

__all__ = ["JOB_SECONDS", "prepare_data", "run_benchmark"]


#: Seconds each job took in notebook 06's default run (2-core CPU, one thread per worker, cold
#: caches; stop 25; S2D's from the run after its stage 1 grew to 1,032 steps). Only the order in
#: which the pool starts jobs reads them — the longest chain of dependent work first
#: (:func:`_schedule`) — never a result; a method not listed counts as the median of those listed.
#: A worker's first dual-encoder job also encodes the training reports (about 60 s), so ConVIRT's
#: and AGA's seconds depend on where they run.
JOB_SECONDS: dict[str, float] = {"alta": 500.0, "exgramed": 305.0, "gloria": 275.0, "s2d": 220.0, "convirt": 170.0,
                                 ENCODER_JOB: 145.0, CEILING: 65.0, "aga": 65.0}


def _encoder_provider(plans: Mapping[str, MethodPlan], seed: int) -> str | None:
    """The dual encoder whose job at ``seed`` trains exactly the generators' stand-in encoder —
    its recipe (every field but the device) equal to the encoder recipe of every selected
    generator that aligns one, on the same choice of training manifests — or None. That job
    then stores its image encoder in the cache the generators read
    (:func:`~.pretrain.cache_aligned_encoder`), and they wait for it instead of an
    :data:`ENCODER_JOB`; the weights are the same (a run is deterministic at a given thread
    count, which the cache key covers)."""
    from ..contrastive import recipe_from_config
    from ..pretrain import _recipe_fields
    from ..s2d import encoder_recipe

    exps = [_ENCODER_OF[n](p) for n, p in plans.items() if not p.contrastive and n in _ENCODER_OF]
    exps = [e for e in exps if e.encoder.align]
    if not exps:
        return None
    wanted = {(json.dumps(_recipe_fields(encoder_recipe(e, seed)), sort_keys=True), bool(e.extra_studies))
              for e in exps}
    if len(wanted) != 1:
        return None
    for name, p in plans.items():
        if p.contrastive and not any(o.startswith("mae_pretrain.") for o in p.overrides):
            r = recipe_from_config(p.config, p.overrides, seed=seed)
            if {(json.dumps(_recipe_fields(r), sort_keys=True), bool(r.extra_studies))} == wanted:
                return name
    return None


def _jobs(plans: Mapping[str, MethodPlan], seeds: Sequence[int], ceiling: bool,
          provider: str | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Every job: the generators' aligned encoder (when one of them freezes an aligned stand-in:
    ``encoder.align``, and no dual encoder ``provider`` trains it, :func:`_encoder_provider`), the generators
    (a runner that takes every seed: one job), then the dual encoders and the ceiling, seed by
    seed. :func:`_schedule` says which waits for which and in what order the pool starts them."""
    jobs = []
    if provider is None and any(not p.contrastive and n in _ENCODER_OF and _ENCODER_OF[n](p).encoder.align
                                for n, p in plans.items()):
        jobs.append((ENCODER_JOB, (int(seeds[0]),)))
    jobs += [(n, tuple(seeds)) for n, p in plans.items() if not p.contrastive and n in _ALL_SEEDS]
    jobs += [(n, (s,)) for s in seeds for n, p in plans.items() if not p.contrastive and n not in _ALL_SEEDS]
    for s in seeds:
        jobs += [(n, (s,)) for n, p in plans.items() if p.contrastive]
        if ceiling:
            jobs.append((CEILING, (s,)))
    return jobs


def _schedule(jobs: Sequence[tuple[str, tuple[int, ...]]], provider: str | None = None
              ) -> tuple[list[int | None], list[float]]:
    """``(after, priority)`` of :func:`_jobs`' list for :func:`~.variants.run_chains`: a generator
    with an aligned encoder waits for the :data:`ENCODER_JOB`, or for the first job of the dual
    encoder ``provider`` that stores it (:func:`_encoder_provider`); a job's priority is its own
    :data:`JOB_SECONDS` (per seed it trains) plus the largest priority of the jobs that wait for
    it (critical-path list scheduling), so the encoder starts first when the generators behind it
    make the longest line of work."""
    known = sorted(JOB_SECONDS.values())
    default = known[len(known) // 2]

    def own(job):
        n = len(job[1]) if job[0] in _ALL_SEEDS else 1
        return JOB_SECONDS.get(job[0], default) * n

    first = next((i for i, j in enumerate(jobs) if j[0] == (provider or ENCODER_JOB)), None)
    after = [first if (j[0] in _ENCODER_OF and first is not None) else None for j in jobs]
    priority = [own(j) for j in jobs]
    if first is not None:
        priority[first] += max((priority[i] for i, a in enumerate(after) if a == first), default=0.0)
    return after, priority


def prepare_data(plans: Mapping[str, MethodPlan], extra_studies: int, *, seed: int = 0, smoke: bool = False,
                 device: str = "auto", progress: bool = True) -> BenchmarkData:
    """Build (or find) the datasets every job reads, and the pre-trained parts a method's config
    asks for (a ``mae_pretrain:`` section: ALTA's MAE, :func:`~.alta.prepare_mae`), here in the
    main process so that the workers find them cached."""
    from ...data import ensure_dataset, ensure_iu_phantom

    limit = 48 if smoke else None
    manifests = ensure_iu_phantom(extra_studies, size=224, limit=limit, seed=seed, progress=progress)
    gallery = ensure_dataset("phantom-5x200", size=224, limit=50 if smoke else None, seed=seed, progress=progress)
    vqa = ensure_dataset("phantom-vqa", size=224, limit=6 if smoke else None, seed=seed, progress=progress)
    data = BenchmarkData(list(manifests), gallery, vqa)
    for name, plan in plans.items():
        if plan.contrastive and "mae_pretrain" in read_yaml(config_path(plan.config)):
            from ..alta import prepare_mae

            folder = prepare_mae(data.iu, plan.config, plan.overrides, seed=seed, device=device, progress=progress)
            if folder is not None:
                data.pretrained[name] = str(folder)
    return data


def run_benchmark(plans: Mapping[str, MethodPlan], seeds: Sequence[int], data: BenchmarkData, output_dir: str | Path, *,
                  device: str = "auto", workers: int = 2, smoke: bool = False, ceiling: bool = True,
                  meteor: bool = True, on_result: Callable[[JobResult], None] | None = None) -> BenchmarkResults:
    """Every job of every method at every seed (:func:`_jobs`), in ``workers`` CPU processes of one
    thread each (:func:`~.variants.run_chains`; on a GPU use 1) → :class:`BenchmarkResults`.
    Runs write under ``output_dir/<system>_s<seed>``."""
    from ...utils import resolve_device
    from ..variants import run_chains

    if not seeds:
        raise ValueError("seeds is empty")
    if workers > 1 and resolve_device(device).type != "cpu":
        raise ValueError(f"workers={workers} runs CPU processes side by side; on {device} use workers=1")
    provider = _encoder_provider(plans, int(seeds[0]))
    ctx = _Context(dict(plans), data, Path(output_dir), device, smoke, int(seeds[0]), meteor, provider)
    ctx.out_root.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(plans, seeds, ceiling and any(p.contrastive for p in plans.values()), provider)

    def done(results: list) -> None:
        for r in results:
            if on_result is not None and isinstance(r, JobResult):
                on_result(r)

    after, priority = _schedule(jobs, provider)
    t, t_wall = time.perf_counter(), time.time()
    out = run_chains(functools.partial(_run_chain, ctx), [[j] for j in jobs], workers=workers,
                     threads=1 if workers > 1 else None, on_done=done, after=after,
                     cost=lambda chain: priority[jobs.index(chain[0])])
    results = [r for r in out if isinstance(r, JobResult)]
    pids = sorted({s.worker for s in out if isinstance(s, _Span)}, key=lambda w: min(
        s.start for s in out if isinstance(s, _Span) and s.worker == w))
    timeline = [{"job": s.job, "seeds": list(s.seeds), "worker": pids.index(s.worker) + 1,
                 "start_s": round(s.start - t_wall, 1), "end_s": round(s.end - t_wall, 1)}
                for s in sorted((s for s in out if isinstance(s, _Span)), key=lambda s: s.start)]
    order = {n: i for i, n in enumerate([*plans, CEILING])}
    results.sort(key=lambda r: (order.get(r.system, len(order)), r.system, r.seed))
    references = None
    if any(not p.contrastive for p in plans.values()):
        references = list(_dataset(data.iu, split="test", text_columns=REPORT_COLUMNS).texts)
    return BenchmarkResults(results, dict(plans), list(seeds), round(time.perf_counter() - t, 1), references,
                            timeline)


