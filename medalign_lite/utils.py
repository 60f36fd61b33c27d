"""Small helpers every part of the library shares: seeding, devices, RNG state, progress bars, atomic files.

- :func:`seed_everything` seeds ``random``, numpy and torch (every device) and, by default,
  asks torch for deterministic kernels.
- :func:`resolve_device` turns ``"auto"`` (the notebooks' ``device`` parameter) into a device.
- :func:`get_rng_state` / :func:`set_rng_state` / :func:`preserved_rng` capture, restore and
  isolate the global random number generators (the trainer's exact resume relies on them).
- :func:`quiet_progress` is tqdm that stays silent under tests, papermill and CI logs.
- :func:`atomic_path` / :func:`atomic_write` / :func:`atomic_dir` write a file or a folder under
  a temporary name beside it and rename it into place, so a reader (or a later run) never sees
  half of one.
- :class:`PeakMemory` measures the peak memory a block of code adds (CUDA's peak allocated; on a
  CPU the kernel's peak resident size), for the benches and notebook 06's cost table.

A leaf module: it imports nothing from the package, and torch only inside the functions that
need it, so ``data`` and ``text`` (which never load torch) can use it.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

_FALSE = {"", "0", "false", "no", "off"}


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
    import torch

    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to something other than ``""``/0/false/no/off."""
    return os.environ.get(name, "").strip().lower() not in _FALSE


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed ``random``, numpy and torch (CPU and every CUDA device); return ``seed``.

    With ``deterministic=True`` (the default) also:

    - ``torch.use_deterministic_algorithms(True, warn_only=True)``: ops without a deterministic
      implementation warn instead of raising;
    - ``cudnn.benchmark = False`` and ``cudnn.deterministic = True``;
    - ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset (cuBLAS reads it when CUDA initialises, so
      call this before the first CUDA operation for it to take effect).

    PyTorch promises identical results only on the same hardware, software and thread count;
    never across CPU and GPU or across releases.
    """
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too (lazily if CUDA is not initialised)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return seed


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available, else ``mps`` if available, else ``cpu``.

    Any other value is checked: asking for ``cuda``/``mps`` on a machine without one raises a
    ``ValueError`` that says so, instead of failing later inside a forward pass.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    name = device.strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_ok else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here (use 'auto' or 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not mps_ok:
        raise ValueError(f"device {device!r} asked for, but MPS is not available here (use 'auto' or 'cpu')")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return dev


# --------------------------------------------------------------------------- RNG state


def get_rng_state(cuda: bool = True) -> dict[str, Any]:
    """The state of every global generator: ``random``, numpy, torch CPU and (if initialised) CUDA.

    The result holds only tensors, ints, floats, strings, lists and None, so it can be saved
    with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``.
    """
    import torch

    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA only when both sides have it)."""
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # a different GPU count: restore the devices both have
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


@contextlib.contextmanager
def preserved_rng(cuda: bool = True) -> Iterator[None]:
    """Run a block without disturbing the global generators (their states are restored after)."""
    state = get_rng_state(cuda=cuda)
    try:
        yield
    finally:
        set_rng_state(state)


def seed_cpu_generators(seed: int) -> None:
    """Seed ``random``, numpy and torch's CPU generator only (CUDA generators are left alone)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it). Process-wide while active."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- progress bars


def progress_enabled() -> bool:
    """Progress bars show only when ``TQDM_DISABLE`` is unset (or false) and stderr is a terminal."""
    if env_flag("TQDM_DISABLE"):
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def quiet_progress(iterable: Iterable | None = None, *, enabled: bool | None = None, **kwargs):
    """A tqdm bar that is silent under tests, papermill, nbval and CI logs.

    Args:
        iterable: what to wrap (or None and pass ``total=``, then call ``.update``).
        enabled: force the bar on (True) or off (False); None (default) follows
            :func:`progress_enabled`: off when ``TQDM_DISABLE`` is set or stderr is not a terminal.
        **kwargs: passed to tqdm (``desc``, ``total``, ``leave``, ``unit`` ...).

    A disabled bar accepts ``.update``/``.set_postfix``/``.close`` and does nothing.
    """
    from tqdm.auto import tqdm

    on = progress_enabled() if enabled is None else bool(enabled)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not on, **kwargs)


# --------------------------------------------------------------------------- atomic files

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the OS shows it (Linux ``/proc``).

    Elsewhere it is read the only portable way, ``os.umask(0)`` then ``os.umask(old)`` at once,
    under a lock; a file another thread creates in that instant would get mode 0o666.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0)
        os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; when the block succeeds it becomes ``path``.

    The temporary file, ``.{name}.XXXXXXXX.tmp{ext}`` in ``path``'s folder (created empty by
    :func:`tempfile.mkstemp`, so unique per process and thread), keeps ``path``'s extension for
    writers that pick the format from it (PIL, pandas). On success it gets the mode a plain
    ``open(path, "w")`` would give (``0o666 & ~umask``; mkstemp makes 0600 files) and
    :func:`os.replace` puts it in place atomically: readers see the old file or the new one,
    never half of one. When the block raises, the temporary file is removed and ``path`` is
    left as it was. Missing parent folders are created.

    >>> with atomic_path(folder / "table.csv") as tmp:  # doctest: +SKIP
    ...     df.to_csv(tmp, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` a temporary file, then rename it onto ``path`` (see :func:`atomic_path`); return ``path``.

    >>> atomic_write(folder / "info.json", lambda p: p.write_text("{}"))  # doctest: +SKIP
    """
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    For caches that several processes may fill at once. The folder, ``.{name}.XXXXXXXX.tmp``
    (:func:`tempfile.mkdtemp`, unique per process), gets the mode :func:`os.mkdir` would give
    (``0o777 & ~umask``; mkdtemp makes 0700 folders) and is moved onto ``path`` with
    :func:`os.replace`. If a folder ``path`` appeared meanwhile (another process finished the
    same entry first), theirs is kept and ours discarded. When the block raises, the temporary
    folder is removed. Check for a complete ``path`` before calling: the block always runs.

    >>> with atomic_dir(cache / "entry") as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            os.replace(tmp, path)  # fails when a non-empty folder is already there
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- peak memory
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
        import torch

        self.device = torch.device(device)
        self.mib: float = float("nan")
        self.method = ""

    def __enter__(self):
        import torch

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
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("peak resident"):
            peak = _proc_status_bytes("VmHWM") or self._base
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.mib = round(max(peak - self._base, 0) / 2**20, 1)
