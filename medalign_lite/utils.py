"""Small helpers every part of the library shares: seeding, devices, RNG state, progress bars.

- :func:`seed_everything` seeds ``random``, numpy and torch (every device) and, by default,
  asks torch for deterministic kernels.
- :func:`resolve_device` turns ``"auto"`` (the notebooks' ``device`` parameter) into a device.
- :func:`get_rng_state` / :func:`set_rng_state` / :func:`preserved_rng` capture, restore and
  isolate the global random number generators (the trainer's exact resume relies on them).
- :func:`quiet_progress` is tqdm that stays silent under tests, papermill and CI logs.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

_FALSE = {"", "0", "false", "no", "off"}


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (CPU for a module without parameters)."""
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
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


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
