"""Weights on disk (safetensors, tied weights stored once) and the trainer's checkpoint folders."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"


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


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints`` (or None)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and (d / TRAINER_STATE).is_file():
            try:
                found.append((int(d.name[len(CHECKPOINT_PREFIX):]), d))
            except ValueError:
                continue
    return max(found)[1] if found else None


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
