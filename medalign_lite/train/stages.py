"""What a run is: its stages and settings (:class:`Stage`, :class:`TrainConfig`), what it returns
(:class:`TrainResult`), and what a stage does to the model: its LR schedule and which parameters train.
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
        schedule_epochs: the warm-up + cosine schedule spans this many epochs while the stage
            runs ``epochs`` (ALTA: cosine over 100 epochs, stopped at 30); None: the stage's own
            length. ``warmup_ratio`` is then a fraction of the schedule.
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
    schedule_epochs: int | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"stage {self.name!r}: lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"stage {self.name!r}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"stage {self.name!r}: max_steps must be >= 1 or None, got {self.max_steps}")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(f"stage {self.name!r}: schedule_epochs ({self.schedule_epochs}) must be >= "
                             f"epochs ({self.epochs}) or None")
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
        max_bad_steps: an optimizer step whose loss or gradient norm is not finite is skipped
            (weights, optimizer and LR schedule untouched; logged with the batch's study ids);
            this many skipped steps in a row stop the run with ``NonFiniteLossError``
            (1: stop at the first; see :mod:`medalign_lite.train.guard`).
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
    max_bad_steps: int = 3
    stages: list[Stage] = field(default_factory=lambda: [Stage()])

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "log_every", "max_bad_steps"):
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

    ``skipped`` are the rows of the optimizer steps skipped for a non-finite loss or gradient
    norm (``skipped``: the reason, ``study_ids``, ``stage``, ``global_step``), ``skipped_steps``
    their number.
    """

    history: list[dict]
    checkpoint: Path | None
    done: bool = True

    @property
    def skipped(self) -> list[dict]:
        return [r for r in self.history if "skipped" in r]

    @property
    def skipped_steps(self) -> int:
        return len(self.skipped)


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
