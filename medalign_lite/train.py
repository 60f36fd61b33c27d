"""Accelerate-based trainer: a run is a list of stages.

A **stage** (:class:`Stage`) names which parameters train (glob patterns over parameter names,
everything else frozen), for how long, at which learning rate and with which auxiliary inputs.
Stage *k* starts from the weights stage *k-1* ended with (same model object) and gets a fresh
AdamW over its own trainable parameters and a fresh linear-warm-up + cosine schedule. This is
S2D-ALIGN's three-stage curriculum (3e-4 → 1e-4 → 5e-5, each stage adding auxiliary inputs),
and a single stage is an ordinary run (ALTA: adapters, norms and heads train, backbones stay
frozen).

The model is any ``nn.Module`` whose ``forward(batch)`` returns a dict with a scalar ``loss``
and, optionally, named scalar parts (logged next to the loss; anything else in the dict is
ignored). If it defines ``set_stage(stage)`` the trainer calls it before each stage, with the
:class:`Stage` (its ``inputs`` dict says what the stage adds). ``set_stage`` must be
*declarative*: the model's configuration must depend on the stage given, not on the stages
called before, because a resumed run calls it only for the stage it resumes in.

Files under ``output_dir``::

    config.yaml                 the TrainConfig of the run
    metrics.jsonl               one JSON row per logged step (and per evaluation), flushed per row
    checkpoints/step-{N}/       after optimizer step N (every ``save_every`` steps and at the end of
        model.safetensors       each stage): model weights (all of them, or with
                                ``save_weights="trained"`` only the parameters some stage so far
                                trains, plus buffers);
        optimizer.pt            AdamW state (``torch.save``; read with ``weights_only=True``)
        scheduler.pt            LR schedule state (idem); scaler.pt with fp16
        rng_state_{rank}.pt     python / numpy / torch / CUDA generator states of each process
        trainer_state.json      stage index, epoch, step within epoch and stage, global step,
                                sampler seed/stage/epoch, the open logging window

**Exact resume.** ``fit(resume=True)`` continues from the newest complete checkpoint, and the
losses after it are bit-identical to those of a run that never stopped (same machine, seed and
process count), because nothing random depends on *when* the run started:

- data order: an :class:`EpochSampler` draws each epoch's permutation from
  ``(seed, stage, epoch)``; the batches of the current epoch already consumed are skipped with
  ``accelerate``'s ``skip_first_batches`` (at the index level: nothing is loaded);
- data augmentation: each item is produced under generators seeded from
  ``(seed, stage, epoch, index)`` and the caller's generator states are restored after, so
  augmentation is a pure function of the item's position, whatever the worker, the prefetching
  or the number of processes, and loading never moves the training generators;
- the DataLoader has its own ``torch.Generator`` (worker seeds are otherwise drawn from the
  global generator when an iterator is created, which happens at a different moment on resume);
- dropout and everything else in the forward pass: the global generator states are saved with
  each checkpoint and restored last when resuming; ``eval_fn`` runs with the generators
  preserved, so evaluation never shifts training randomness.

**Several processes.** Under ``accelerate launch`` each process sees ``batch_size`` examples per
micro-batch: the global batch is ``batch_size × num_processes × grad_accum``. The model is
wrapped (DDP) per stage, after freezing, so a stage's newly trainable parameters are
synchronised. Under FSDP a model cannot be re-wrapped: ``fit`` runs one stage per launch and
returns ``done=False``; launching the same command again resumes with the next stage (see
docs/distributed.md).
"""
from __future__ import annotations

import fnmatch
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from .utils import (
    get_rng_state,
    preserved_rng,
    quiet_progress,
    resolve_device,
    seed_cpu_generators,
    seed_everything,
    set_rng_state,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"


# --------------------------------------------------------------------------- configuration


@dataclass
class Stage:
    """One stage of a run.

    Attributes:
        name: label in logs, progress bars and ``metrics.jsonl``.
        epochs: passes over the training set.
        lr: peak learning rate of AdamW.
        trainable: glob patterns (``fnmatch``; ``*`` also matches dots) over
            ``model.named_parameters()`` names; matching parameters train, all others are frozen
            (``requires_grad=False``). A pattern matching nothing is an error (typo guard).
        weight_decay: AdamW decoupled weight decay, applied to parameters with ≥ 2 dimensions
            (biases, norms, scales and embeddings-as-vectors are not decayed).
        betas: AdamW (β1, β2).
        warmup_ratio: fraction of the stage's steps with linear warm-up, then cosine decay to 0.
        max_steps: cap on the stage's optimizer steps (the schedule spans the capped length).
        inputs: stage-specific switches handed to ``model.set_stage(stage)`` (e.g. S2D stage 2:
            ``{"reference_report": True}``).
    """

    name: str = "train"
    epochs: int = 1
    lr: float = 1e-4
    trainable: list[str] = field(default_factory=lambda: ["*"])
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.0
    max_steps: int | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"stage {self.name!r}: lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"stage {self.name!r}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"stage {self.name!r}: max_steps must be >= 1 or None, got {self.max_steps}")
        if not self.trainable:
            raise ValueError(f"stage {self.name!r}: trainable is empty (use ['*'] to train everything)")
        if self.weight_decay < 0:
            raise ValueError(f"stage {self.name!r}: weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"stage {self.name!r}: betas must be two numbers, got {self.betas}")


@dataclass
class TrainConfig:
    """How to train (what to train is the model's own config).

    Attributes:
        output_dir: where ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/`` go.
        batch_size: examples per micro-batch **per process**.
        grad_accum: micro-batches per optimizer step.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        precision: ``auto`` (fp32 on CPU; bf16 on a GPU that supports it, else fp16; under
            ``accelerate launch --mixed_precision X`` the launcher's X), ``fp32``, ``bf16``, ``fp16``.
        seed: seeds initial generators, data order and augmentation.
        deterministic: ask torch for deterministic kernels (see ``utils.seed_everything``).
        log_every: write a ``metrics.jsonl`` row every N optimizer steps (mean over the window).
        save_every: checkpoint every N optimizer steps (0: only at the end of each stage).
        eval_every: call ``eval_fn`` every N optimizer steps (0: only at the end of each stage).
        keep_last: keep only the newest N checkpoints (0: keep all).
        save_weights: ``all`` (every weight, frozen ones too) or ``trained`` (parameters trained
            by some stage up to the current one, plus buffers: for a frozen 7B LLM with LoRA).
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete batch of each epoch.
        device: ``auto`` (what accelerate picks: the launch's GPU, else CPU), ``cpu``, or
            ``cuda``/``mps`` (checked to exist, then placed by accelerate as with ``auto``).
        find_unused_parameters: DDP option, for models whose trainable parameters do not all
            receive a gradient each step.
        stages: the run, in order.
    """

    output_dir: str = "outputs/train"
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    deterministic: bool = True
    log_every: int = 1
    save_every: int = 0
    eval_every: int = 0
    keep_last: int = 0
    save_weights: Literal["all", "trained"] = "all"
    num_workers: int = 0
    drop_last: bool = False
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    find_unused_parameters: bool = False
    stages: list[Stage] = field(default_factory=lambda: [Stage()])

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "eval_every", "keep_last", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.save_weights not in ("all", "trained"):
            raise ValueError(f"save_weights must be 'all' or 'trained', got {self.save_weights!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {self.device!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        if not self.stages:
            raise ValueError("stages is empty: a run needs at least one Stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: every ``metrics.jsonl`` row of the run, the rows before a resume included.
        checkpoint: the newest checkpoint folder (``checkpoints/step-N``).
        done: False when an FSDP run stopped at a stage boundary (launch again to continue).
    """

    history: list[dict]
    checkpoint: Path | None
    done: bool = True


# --------------------------------------------------------------------------- data order


def _mix(*values: int) -> int:
    """A well-spread 63-bit seed from small non-negative ints (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler):
    """Yields keys ``(stage, epoch, index)``: a permutation of ``range(n)`` drawn from ``(seed, stage, epoch)``.

    The permutation depends only on the seed, the stage index and the epoch (set with
    :meth:`set_epoch`, as ``DistributedSampler``), so any epoch can be replayed, and the keys
    carry the position that :class:`SeededItems` needs to seed augmentation.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.stage = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(_mix(self.seed, 0, self.stage, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        s, e = self.stage, self.epoch
        return iter([(s, e, i) for i in self.indices()])

    def __len__(self) -> int:
        return self.n


class SeededItems(Dataset):
    """Wraps a map-style dataset: item ``(stage, epoch, i)`` is ``dataset[i]`` drawn under seeded generators.

    ``random``, numpy and torch's CPU generator are seeded from ``(seed, stage, epoch, i)`` for the
    call and restored after it, so random augmentation of an item is reproducible on its own and
    loading data never moves the caller's generators.
    """

    def __init__(self, dataset: Dataset, seed: int):
        if isinstance(dataset, IterableDataset):
            raise TypeError("the trainer needs a map-style dataset (with __len__ and __getitem__), got an IterableDataset")
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        stage, epoch, index = key
        with preserved_rng(cuda=False):
            seed_cpu_generators(_mix(self.seed, 1, stage, epoch, index))
            return self.dataset[index]


# --------------------------------------------------------------------------- schedule and freezing


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor for optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up ``(step + 1) / (warmup + 1)`` for ``step < warmup`` (no wasted step at lr 0),
    then ``½(1 + cos(π·(step − warmup)/(total − warmup)))`` (1 at the end of warm-up, > 0 at the
    last step).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def trainable_names(model: nn.Module, patterns: Sequence[str], stage_name: str = "") -> list[str]:
    """Names of ``model``'s parameters that match any glob pattern; a pattern matching none raises."""
    names = [n for n, _ in model.named_parameters()]
    chosen = set()
    for pat in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            sample = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
            raise ValueError(f"stage {stage_name!r}: trainable pattern {pat!r} matches no parameter "
                             f"(names look like: {sample})")
        chosen.update(hit)
    return [n for n in names if n in chosen]


def freeze_for_stage(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    """Set ``requires_grad`` from ``stage.trainable``; return the trainable parameters."""
    keep = set(trainable_names(model, stage.trainable, stage.name))
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
        if n in keep:
            params.append(p)
    return params


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


# --------------------------------------------------------------------------- logging window


class _Window:
    """Sums of the scalar outputs since the last logged row (one value per micro-batch)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, out: dict, device: torch.device) -> None:
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point():
                v = v.detach().reshape(()).to(torch.float64)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                v = torch.tensor(float(v), dtype=torch.float64, device=device)
            else:
                continue
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def _stacked(self, accelerator):
        names = sorted(self.sums, key=lambda k: (k != "loss", k))
        if not names:
            return names, None
        t = torch.stack([self.sums[k].to(accelerator.device) for k in names])
        if accelerator.num_processes > 1:
            t = accelerator.reduce(t, reduction="mean")
        return names, t

    def means(self, accelerator) -> dict[str, float]:
        """Window means, averaged over processes; resets the window."""
        names, t = self._stacked(accelerator)
        out = {} if t is None else dict(zip(names, (t / max(1, self.count)).tolist()))
        self.sums, self.count = {}, 0
        return out

    def synced_state(self, accelerator) -> dict:
        """The window averaged over processes (every process keeps that), as JSON."""
        names, t = self._stacked(accelerator)
        if t is not None:
            self.sums = {k: v for k, v in zip(names, t.unbind(0))}
        return {"names": names, "sums": [] if t is None else t.tolist(), "count": self.count}

    def load(self, state: dict, device: torch.device) -> None:
        self.sums = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in zip(state["names"], state["sums"])}
        self.count = int(state["count"])


# --------------------------------------------------------------------------- the trainer


@dataclass
class _Position:
    stage_index: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    stage_step: int = 0
    global_step: int = 0


class Trainer:
    """Train ``model`` on ``train_dataset`` through the stages of ``config``.

    Args:
        model: ``forward(batch) -> {"loss": scalar, <parts>: scalars, ...}``; optional
            ``set_stage(stage)``.
        train_dataset: a map-style dataset (items are collated by ``collate_fn``).
        config: a :class:`TrainConfig`.
        collate_fn: builds a batch from a list of items (default: torch's ``default_collate``);
            the batch is moved to the device with ``.to(device)`` (accelerate's ``send_to_device``),
            so a :class:`~medalign_lite.data.dataset.Batch` works as is.
        eval_fn: ``eval_fn(model) -> {name: number}``, run on the main process with the
            unwrapped model in eval mode under ``torch.no_grad()`` and preserved RNG; logged as
            ``eval/<name>``.
    """

    def __init__(self, model: nn.Module, train_dataset: Dataset, config: TrainConfig,
                 collate_fn: Callable | None = None, eval_fn: Callable[[nn.Module], dict] | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model = model
        self.train_dataset = train_dataset
        self.config = config
        self.collate_fn = collate_fn
        self.eval_fn = eval_fn
        self.history: list[dict] = []
        self.accelerator = None
        self._names: dict[str, set[str]] = {"params": set(), "trained": set()}

    # ---------------------------------------------------------------- set-up

    def _precision(self) -> str:
        p = self.config.precision
        on_cpu = self.config.device == "cpu" or not torch.cuda.is_available()
        if p == "auto":
            launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
            if launched in ("no", "fp16", "bf16") and not on_cpu:
                return launched
            if on_cpu:
                return "no"
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if p == "fp16" and on_cpu:
            raise ValueError("precision 'fp16' needs a GPU; use 'fp32' or 'bf16' on CPU")
        return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[p]

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState
        from accelerate.utils import DistributedDataParallelKwargs

        if self.config.device in ("cuda", "mps"):
            resolve_device(self.config.device)  # a clear error when it is not there
        kwargs = {"mixed_precision": self._precision(), "gradient_accumulation_steps": self.config.grad_accum,
                  "cpu": self.config.device == "cpu",
                  "kwargs_handlers": [DistributedDataParallelKwargs(
                      find_unused_parameters=self.config.find_unused_parameters)]}
        try:
            return Accelerator(**kwargs)
        except ValueError as e:
            # One process (a notebook) that trained before with another precision or device:
            # accelerate keeps its state per process; start it afresh.
            if "already been initialized" not in str(e) or PartialState().num_processes > 1:
                raise
            AcceleratorState._reset_state(reset_partial_state=True)
            return Accelerator(**kwargs)

    def _dataloader(self, sampler: EpochSampler) -> DataLoader:
        from torch.utils.data import default_collate

        g = torch.Generator()
        g.manual_seed(_mix(self.config.seed, 2))
        return DataLoader(SeededItems(self.train_dataset, self.config.seed), batch_size=self.config.batch_size,
                          sampler=sampler, collate_fn=self.collate_fn or default_collate,
                          num_workers=self.config.num_workers, drop_last=self.config.drop_last, generator=g)

    # ---------------------------------------------------------------- checkpoints

    def _is_fsdp(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def _trained_so_far(self, raw: nn.Module, stage_index: int) -> set[str]:
        """Parameters that some stage up to ``stage_index`` trains."""
        names = [n for n, _ in raw.named_parameters()]
        patterns = [p for s in self.config.stages[: stage_index + 1] for p in s.trainable]
        return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}

    def _save(self, model, optimizer, scheduler, pos: _Position, window: _Window, stage_total: int,
              elapsed: float) -> Path:
        acc, cfg = self.accelerator, self.config
        root = Path(cfg.output_dir) / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{pos.global_step}"
        tmp = root / f".tmp-{CHECKPOINT_PREFIX}{pos.global_step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(model)  # collective under FSDP (full state on rank 0)
        if acc.is_main_process:
            if cfg.save_weights == "trained":  # names taken before wrapping (FSDP renames parameters)
                keep, params = self._names["trained"], self._names["params"]
                state_dict = {k: v for k, v in state_dict.items() if k in keep or k not in params}
            save_weights(state_dict, tmp / WEIGHTS)
        del state_dict
        if self._is_fsdp():
            from accelerate.utils import save_fsdp_optimizer

            save_fsdp_optimizer(acc.state.fsdp_plugin, acc, optimizer, model, str(tmp))
        elif acc.is_main_process:  # DDP replicas hold the same optimizer state
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if acc.is_main_process:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
        torch.save(get_rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
        window_state = window.synced_state(acc)
        acc.wait_for_everyone()
        if acc.is_main_process:
            stage = cfg.stages[pos.stage_index]
            state = {"version": 1, "stage_index": pos.stage_index, "stage_name": stage.name, "epoch": pos.epoch,
                     "step_in_epoch": pos.step_in_epoch, "stage_step": pos.stage_step, "stage_total_steps": stage_total,
                     "global_step": pos.global_step,
                     "sampler": {"seed": cfg.seed, "stage": pos.stage_index, "epoch": pos.epoch},
                     "num_processes": acc.num_processes, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                     "dataset_size": len(self.train_dataset), "save_weights": cfg.save_weights,
                     "log_window": window_state, "elapsed": elapsed}
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if cfg.keep_last:
                ckpts = sorted((int(d.name[len(CHECKPOINT_PREFIX):]), d) for d in root.iterdir()
                               if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and d.name[len(CHECKPOINT_PREFIX):].isdigit())
                for _, d in ckpts[: -cfg.keep_last]:
                    shutil.rmtree(d, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _read_state(self, ckpt: Path) -> dict:
        state = json.loads((ckpt / TRAINER_STATE).read_text())
        cfg, acc = self.config, self.accelerator
        now = {"num_processes": acc.num_processes, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
               "dataset_size": len(self.train_dataset)}
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            raise ValueError(f"{ckpt}: cannot resume exactly, the run changed {changed} (checkpoint, now); "
                             "resume with the same settings or use another output_dir / fit(resume=False)")
        if state["stage_index"] >= len(cfg.stages) or cfg.stages[state["stage_index"]].name != state["stage_name"]:
            raise ValueError(f"{ckpt}: stage {state['stage_index']} was {state['stage_name']!r}, the config's stages "
                             f"are {[s.name for s in cfg.stages]}")
        return state

    def _load_model_weights(self, raw: nn.Module, ckpt: Path) -> None:
        sd = load_weights(ckpt / WEIGHTS)
        if any(p.is_meta for p in raw.parameters()):
            # FSDP cpu_ram_efficient_loading: only rank 0 holds real weights; FSDP broadcasts them
            if self.accelerator.is_main_process:
                raw.load_state_dict(sd, strict=self.config.save_weights == "all")
            return
        _, unexpected = raw.load_state_dict(sd, strict=self.config.save_weights == "all")
        if unexpected:
            raise ValueError(f"{ckpt}: checkpoint has weights the model lacks: {unexpected[:5]}")

    def _load_rng(self, ckpt: Path) -> None:
        path = ckpt / f"rng_state_{self.accelerator.process_index}.pt"
        if not path.is_file():
            path = ckpt / "rng_state_0.pt"
        set_rng_state(torch.load(path, weights_only=True))

    # ---------------------------------------------------------------- history

    def _start_history(self, metrics: Path, upto: int | None) -> list[dict]:
        rows: list[dict] = []
        if upto is not None and metrics.is_file():
            for line in metrics.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("global_step", 0) <= upto:
                        rows.append(row)
        if self.accelerator.is_main_process:
            with metrics.open("w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
        return rows

    def _write_row(self, row: dict, metrics: Path) -> None:
        self.history.append(row)
        if self.accelerator.is_main_process:
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()

    def _evaluate(self, model, stage: Stage, pos: _Position, elapsed: float, metrics: Path) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            raw = acc.unwrap_model(model)
            raw.eval()
            with preserved_rng(), torch.no_grad():
                scores = self.eval_fn(raw) or {}
            raw.train()
            row = {"stage": stage.name, "epoch": pos.epoch, "step": pos.stage_step, "global_step": pos.global_step,
                   **{f"eval/{k}": (float(v) if isinstance(v, (int, float, np.number)) or torch.is_tensor(v) else v)
                      for k, v in scores.items()},
                   "time": elapsed}
            self._write_row(row, metrics)
        acc.wait_for_everyone()

    # ---------------------------------------------------------------- the loop

    def fit(self, resume: bool = True) -> TrainResult:
        """Run every stage; with ``resume`` continue from the newest checkpoint in ``output_dir``.

        ``resume=False`` starts over: it deletes ``metrics.jsonl`` and the ``checkpoints/step-*``
        folders of ``output_dir``.
        """
        from .config import save_config

        cfg = self.config
        seed_everything(cfg.seed, cfg.deterministic)  # before CUDA starts (CUBLAS_WORKSPACE_CONFIG)
        self.accelerator = acc = self._make_accelerator()
        if self.eval_fn is not None and self._is_fsdp():
            raise ValueError("eval_fn is not supported under FSDP (the model is sharded across processes): "
                             "evaluate from the checkpoint after training")
        out = Path(cfg.output_dir)
        metrics = out / "metrics.jsonl"
        ckpt_root = out / "checkpoints"
        if acc.is_main_process:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            if not resume:
                for d in ckpt_root.iterdir():
                    if d.is_dir() and (d.name.startswith(CHECKPOINT_PREFIX) or d.name.startswith(".tmp-")):
                        shutil.rmtree(d)
            save_config(cfg, out / "config.yaml")
        acc.wait_for_everyone()

        ckpt = latest_checkpoint(out) if resume else None
        state = self._read_state(ckpt) if ckpt is not None else None
        pos = _Position(**{k: state[k] for k in ("stage_index", "epoch", "step_in_epoch", "stage_step", "global_step")}) \
            if state else _Position()
        elapsed0 = state["elapsed"] if state else 0.0
        self.history = self._start_history(metrics, pos.global_step if state else None)
        if ckpt is not None:
            logger.info("resuming from %s (stage %s, global step %d)", ckpt, state["stage_name"], pos.global_step)

        sampler = EpochSampler(len(self.train_dataset), cfg.seed)
        loader = acc.prepare(self._dataloader(sampler))
        window = _Window()
        t0 = time.perf_counter()
        last_ckpt = ckpt
        raw = self.model
        stages_run = 0

        for si in range(pos.stage_index, len(cfg.stages)):
            stage = cfg.stages[si]
            resuming = state is not None and si == state["stage_index"]
            if not resuming:
                pos.epoch, pos.step_in_epoch, pos.stage_step = 0, 0, 0
            pos.stage_index = si
            if stages_run and self._is_fsdp():
                logger.warning("FSDP cannot re-wrap a model between stages: stopping before stage %r; launch the "
                               "same command again to resume with it", stage.name)
                return TrainResult(self.history, last_ckpt, done=False)
            if hasattr(raw, "set_stage"):
                raw.set_stage(stage)
            params = freeze_for_stage(raw, stage)
            self._names = {"params": {n for n, _ in raw.named_parameters()}, "trained": self._trained_so_far(raw, si)}
            if resuming:
                self._load_model_weights(raw, ckpt)
            if len(loader) == 0:
                raise ValueError(f"{len(self.train_dataset)} training item(s) make no batch of {cfg.batch_size} "
                                 f"per process (drop_last={cfg.drop_last}, {acc.num_processes} process(es))")
            steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
            total = stage.epochs * steps_per_epoch
            if stage.max_steps is not None:
                total = min(total, stage.max_steps)
            if resuming and pos.stage_step >= total:  # the checkpoint closed this stage
                self._load_rng(ckpt)
                state = None
                continue

            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            groups = [g for g in ({"params": decay, "weight_decay": stage.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
            optimizer = torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas)
            warmup = math.ceil(stage.warmup_ratio * total) if stage.warmup_ratio > 0 else 0
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, functools.partial(warmup_cosine, warmup=warmup, total=total))
            acc.free_memory()  # forget the previous stage's wrapped model and optimizer
            model, optimizer = acc.prepare(raw, optimizer)
            clip_params = list(model.parameters()) if self._is_fsdp() else params
            if resuming:
                if self._is_fsdp():
                    from accelerate.utils import load_fsdp_optimizer

                    load_fsdp_optimizer(acc.state.fsdp_plugin, acc, optimizer, model, str(ckpt))
                else:
                    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
                scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
                if acc.scaler is not None and (ckpt / "scaler.pt").is_file():
                    acc.scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=True))
                window.load(state["log_window"], acc.device)
                self._load_rng(ckpt)  # last: nothing random may happen between this and the next step
                state = None
            stages_run += 1
            model.train()
            sampler.stage = si
            bar = quiet_progress(total=total, initial=pos.stage_step, desc=f"{stage.name}", unit="step",
                                 enabled=None if acc.is_main_process else False)
            while pos.stage_step < total:
                if pos.step_in_epoch >= steps_per_epoch:
                    pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
                sampler.set_epoch(pos.epoch)
                loader.set_epoch(pos.epoch)
                skip = pos.step_in_epoch * cfg.grad_accum
                epoch_loader = acc.skip_first_batches(loader, skip) if skip else loader
                stopped_early = False
                for batch in epoch_loader:
                    with acc.accumulate(model):
                        out_ = model(batch)
                        if not isinstance(out_, dict) or "loss" not in out_:
                            raise TypeError("model.forward(batch) must return a dict with a 'loss' tensor, got "
                                            f"{type(out_).__name__}" + (f" with keys {list(out_)}" if isinstance(out_, dict) else ""))
                        acc.backward(out_["loss"])
                        window.add(out_, acc.device)
                        lr = scheduler.get_last_lr()[0]
                        if acc.sync_gradients and cfg.max_grad_norm is not None:
                            acc.clip_grad_norm_(clip_params, cfg.max_grad_norm)
                        optimizer.step()
                        if acc.sync_gradients and not optimizer.step_was_skipped:
                            scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    if not acc.sync_gradients:
                        continue
                    pos.step_in_epoch += 1
                    pos.stage_step += 1
                    pos.global_step += 1
                    bar.update(1)
                    elapsed = elapsed0 + time.perf_counter() - t0
                    if pos.global_step % cfg.log_every == 0 or pos.stage_step == total:
                        means = window.means(acc)
                        row = {"stage": stage.name, "epoch": pos.epoch, "step": pos.stage_step,
                               "global_step": pos.global_step, **means, "lr": lr, "time": elapsed}
                        self._write_row(row, metrics)
                        if "loss" in means:
                            bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                    if self.eval_fn is not None and (
                            (cfg.eval_every and pos.global_step % cfg.eval_every == 0) or pos.stage_step == total):
                        self._evaluate(model, stage, pos, elapsed, metrics)
                    if (cfg.save_every and pos.global_step % cfg.save_every == 0) or pos.stage_step == total:
                        last_ckpt = self._save(model, optimizer, scheduler, pos, window, total, elapsed)
                    if pos.stage_step >= total:
                        stopped_early = True
                        break
                if stopped_early and hasattr(epoch_loader, "end"):
                    # leaving an accelerate loader mid-epoch: unregister it from the gradient state
                    try:
                        epoch_loader.end()
                    except ValueError:
                        pass
                if not stopped_early:
                    pos.step_in_epoch = steps_per_epoch  # an epoch always ends on an optimizer step
            bar.close()
        acc.wait_for_everyone()
        return TrainResult(self.history, last_ckpt, done=True)
