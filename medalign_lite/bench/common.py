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


def _rss_bytes() -> int | None:
    """This process's resident memory now (Linux: /proc/self/statm), or None."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.mib``: the peak memory the block added.

    CUDA: peak allocated memory above what was allocated at entry (after a reset of the peak
    statistics). CPU: peak resident memory above the resident memory at entry, sampled every
    ``interval`` seconds by a thread (torch's kernels release the GIL, so the sampler runs while
    they do; a peak shorter than ``interval`` can be missed). Where ``/proc/self/statm`` does
    not exist, the growth of the process's maximum resident size (``ru_maxrss``), which misses
    any peak below one the process reached before: ``method`` says which was used.
    """

    def __init__(self, device: torch.device | str, interval: float = 0.002):
        self.device, self.interval = torch.device(device), interval
        self.mib: float = float("nan")
        self.method = ""

    def __enter__(self):
        import threading

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda peak allocated"
            return self
        self._base = _rss_bytes()
        if self._base is None:
            import resource

            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth"
            return self
        self.method = f"resident memory sampled every {self.interval * 1e3:g} ms"
        self._peak, self._stop = self._base, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, _rss_bytes() or 0)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "ru_maxrss growth":
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes() or 0)
        self.mib = round(max(peak - self._base, 0) / 2**20, 1)
