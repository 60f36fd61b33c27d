"""Benchmarks behind ``medalign bench ...``: each measures in one run and returns plain dicts,
so ratios are taken on the same machine at the same moment (this project's shared machines
are noisy; absolute times are only comparable within one run).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import resource
import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gloria_step(b: int, t: int, p: int, d: int, device: torch.device, dtype: torch.dtype, chunk: int | None):
    from .methods.baselines import gloria_local_loss

    g = torch.Generator(device=device).manual_seed(0)
    words = torch.randn(b, t, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    regions = torch.randn(b, p, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)

    def step():
        l0, l1 = gloria_local_loss(words, mask, regions, chunk=chunk)
        (l0 + l1).backward()
        words.grad = regions.grad = None
    return step


def _gloria_point(args) -> dict:
    b, t, p, d, device_name, dtype_name, repeats, chunk = args
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    step = _gloria_step(b, t, p, d, device, dtype, chunk)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sec = time_fn(step, device, repeats=repeats)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:  # peak resident memory growth of this fresh process (KiB on Linux)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"B": b, "T": t, "P": p, "D": d, "seconds": sec, "peak_mib": round(peak, 1)}


def bench_gloria(batch_sizes=(8, 16, 32, 48), t: int = 97, p: int = 361, d: int = 768,
                 device: str = "cpu", dtype: str = "float32", repeats: int = 3,
                 chunk: int | None = None) -> dict:
    """Time (forward + backward) and peak memory of GLoRIA's batched local loss.

    Each batch size runs in a fresh process on CPU (so peak RSS is its own) and in this
    process on CUDA (peak allocated memory after a reset). ``growth_exponent`` is the slope of
    log(time) against log(B): 2 for an O(B²·T·P·D) loss once the GPU/CPU is saturated.
    """
    dev = torch.device(device)
    points = []
    for b in batch_sizes:
        args = (b, t, p, d, device, dtype, repeats, chunk)
        if dev.type == "cpu":
            with mp.get_context("spawn").Pool(1) as pool:
                points.append(pool.map(_gloria_point, [args])[0])
        else:
            points.append(_gloria_point(args))
    xs = [math.log(pt["B"]) for pt in points]
    ys = [math.log(pt["seconds"]) for pt in points]
    slope = _slope(xs, ys) if len(points) > 1 else float("nan")
    mem = [math.log(max(pt["peak_mib"], 1e-3)) for pt in points]
    return {"name": "gloria_local_loss", "device": _device_name(dev), "dtype": dtype,
            "points": points, "growth_exponent": round(slope, 2),
            "memory_growth_exponent": round(_slope(xs, mem), 2) if len(points) > 1 else float("nan")}


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
