"""What every benchmark shares: synchronised timing and the device's name."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_avg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS has none): every time a
    shared machine gives is an upper bound, to be read with these."""
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def load_1min() -> float | None:
    """The 1-minute load average (None where the OS has none): what a bench records before and
    after it measures."""
    avg = load_avg()
    return avg[0] if avg else None


def _proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` (resident now / its peak) of this process from /proc (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Set this process's peak resident size (VmHWM) to its current one (Linux >= 4.0:
    ``echo 5 > /proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.mib``: the peak memory the block added.

    CUDA: peak allocated memory above what was allocated at entry (after a reset of the peak
    statistics). CPU (Linux): the kernel's peak resident size (VmHWM), reset at entry, above
    the resident size at entry: exact, no sampling. Where the peak cannot be reset, the growth
    of the process's maximum resident size (``ru_maxrss``), which misses any peak below one the
    process reached before (a lower bound): ``method`` says which was used. On a CPU, memory
    that an earlier block freed is reused without growing the resident set, so a block that
    repeats an earlier one's work can read near 0.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.mib: float = float("nan")
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda peak allocated"
        elif _reset_peak_rss() and _proc_status_bytes("VmRSS") is not None:
            self._base = _proc_status_bytes("VmRSS")
            self.method = "peak resident size (VmHWM, reset at entry)"
        else:
            import resource

            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth (a lower bound)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("peak resident"):
            peak = _proc_status_bytes("VmHWM") or self._base
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.mib = round(max(peak - self._base, 0) / 2**20, 1)
