"""Weights on disk (safetensors, tied weights stored once) and the trainer's checkpoint folders.

A checkpoint the trainer resumes from must read back whole: :func:`verify_checkpoint` reads
every file of it (``torch.load`` with ``weights_only=True``), checks the sizes recorded when it
was written and that its weights are finite. :func:`resume_checkpoint` takes the newest one that
passes; one that does not is named in a warning (path and the underlying error), moved aside to
``checkpoints/corrupt-step-N`` (kept for inspection, out of the way of :func:`latest_checkpoint`
and ``keep_last``) and the next older one is tried, saying so.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_PREFIX = "step-"
CORRUPT_PREFIX = "corrupt-"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"
#: what a trainer_state.json must hold to resume from
STATE_KEYS = ("stage_index", "stage_name", "epoch", "step_in_epoch", "stage_step", "global_step", "log_window",
              "elapsed")

logger = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    """A checkpoint folder does not read back (``path``: the folder or file; ``__cause__``: why)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------- weights on disk


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict as safetensors; tensors sharing storage (tied weights) are stored once."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for k, v in state_dict.items():
        v = v.detach()
        key = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype) \
            if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        tensors[k] = v.contiguous().cpu()
    save_file(tensors, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases)})


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read what :func:`save_weights` wrote (aliases restored as shared tensors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for k, src in aliases.items():
        sd[k] = sd[src]
    return sd


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The complete checkpoint folders under ``output_dir/checkpoints`` (those with a
    ``trainer_state.json``, written last), newest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and (d / TRAINER_STATE).is_file():
            try:
                found.append((int(d.name[len(CHECKPOINT_PREFIX):]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(found, reverse=True)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints`` (or None; not read:
    see :func:`resume_checkpoint`)."""
    found = checkpoint_folders(output_dir)
    return found[0] if found else None


def _load_pt(path: Path, mmap: bool = False):
    return torch.load(path, weights_only=True, mmap=mmap)


def replace_checkpoint_weights(ckpt: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write ``state_dict`` as the weights of checkpoint ``ckpt`` (e.g. converted for another
    model that resumes from it) and record the new file size in its ``trainer_state.json``, so
    that :func:`verify_checkpoint` still accepts it."""
    from ..utils import atomic_write

    ckpt = Path(ckpt)
    save_weights(state_dict, ckpt / WEIGHTS)
    state_path = ckpt / TRAINER_STATE
    state = json.loads(state_path.read_text())
    if state.get("files") is not None:
        state["files"][WEIGHTS] = (ckpt / WEIGHTS).stat().st_size
        atomic_write(state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1)))


def verify_checkpoint(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """Read every file of a trainer checkpoint; return its weights (what :func:`load_weights` gives).

    Checks: ``trainer_state.json`` parses and has the resume keys; the file sizes it recorded
    (checkpoints written since the guard) match; ``model.safetensors`` loads and every
    floating-point tensor in it is finite (the trainer never writes others); the optimizer state
    (``optimizer.pt``, memory-mapped, or FSDP's ``optimizer*``), ``scheduler.pt``,
    ``scaler.pt`` if present and every ``rng_state_*.pt`` load with ``weights_only=True``.
    Raises :class:`CorruptCheckpointError` naming the file and the underlying error.
    """
    ckpt = Path(ckpt)
    path = ckpt / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise KeyError(f"no {missing}")
        for name, size in (state.get("files") or {}).items():
            path = ckpt / name
            if not path.is_file():
                raise FileNotFoundError("the file is missing")
            if path.stat().st_size != size:
                raise OSError(f"{path.stat().st_size} bytes, {size} when written (truncated or overwritten)")
        path = ckpt / WEIGHTS
        weights = load_weights(path)
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:
            raise ValueError(f"non-finite values in {len(bad)} tensor(s), e.g. {bad[:3]}")
        path = ckpt / "optimizer.pt"
        if path.is_file():
            _load_pt(path, mmap=True)
        elif not any(ckpt.glob("optimizer*")):
            raise FileNotFoundError("no optimizer state")
        for name in ("scheduler.pt", "scaler.pt"):
            path = ckpt / name
            if name == "scheduler.pt" or path.is_file():
                _load_pt(path)
        for path in sorted(ckpt.glob("rng_state_*.pt")) or [ckpt / "rng_state_0.pt"]:
            _load_pt(path)
    except Exception as e:  # whatever the reader raised: the file is what we name
        raise CorruptCheckpointError(f"{path}: {type(e).__name__}: {e}", path) from e
    return weights


def _move_aside(ckpt: Path) -> Path:
    dest = ckpt.with_name(CORRUPT_PREFIX + ckpt.name)
    n = 1
    while dest.exists():
        n += 1
        dest = ckpt.with_name(f"{CORRUPT_PREFIX}{ckpt.name}.{n}")
    os.replace(ckpt, dest)
    return dest


def resume_checkpoint(output_dir: str | Path, move_aside: bool = True
                      ) -> tuple[Path | None, dict[str, torch.Tensor] | None]:
    """The newest checkpoint under ``output_dir`` that reads back whole, and its weights.

    ``(None, None)`` when there is none at all (a fresh run). A checkpoint that fails
    :func:`verify_checkpoint` is named in a ``logging`` warning with the underlying error,
    moved aside to ``corrupt-step-N`` (``move_aside``), and the next older one is tried; the
    one resumed from is named too. When every checkpoint fails: one
    :class:`CorruptCheckpointError` naming the folder and each failure.
    """
    failures = []
    for ckpt in checkpoint_folders(output_dir):
        try:
            weights = verify_checkpoint(ckpt)
        except CorruptCheckpointError as e:
            where = ckpt
            if move_aside:
                try:
                    where = _move_aside(ckpt)
                except OSError:
                    pass
            failures.append(f"{ckpt.name}: {e}")
            logger.warning("checkpoint %s is corrupt and cannot be resumed from (%s)%s; trying the previous one",
                           ckpt, e, f"; moved to {where}" if where != ckpt else "")
            continue
        if failures:
            logger.warning("resuming from %s, the newest checkpoint that reads back (%d newer one(s) corrupt)",
                           ckpt, len(failures))
        return ckpt, weights
    if failures:
        root = Path(output_dir) / "checkpoints"
        raise CorruptCheckpointError(
            f"{root}: no checkpoint reads back, cannot resume ({'; '.join(failures)}); "
            "fit(resume=False) starts the run over", root)
    return None, None


def load_checkpoint_weights(model: nn.Module, checkpoint: str | Path, strict: bool | None = None) -> nn.Module:
    """Load ``checkpoint/model.safetensors`` (or a .safetensors file) into ``model``; return it.

    ``strict`` defaults to True for checkpoints holding all weights and False for
    ``save_weights="trained"`` ones (frozen weights then come from the model's own init).
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS
    sd = load_weights(path)
    if strict is None:
        strict = True
        state_file = path.parent / TRAINER_STATE
        if state_file.is_file():
            strict = json.loads(state_file.read_text()).get("save_weights", "all") == "all"
    _, unexpected = model.load_state_dict(sd, strict=strict)
    if unexpected:
        raise ValueError(f"{path}: weights for unknown parameters {unexpected[:5]}")
    return model
