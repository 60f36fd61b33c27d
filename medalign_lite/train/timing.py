"""Where a training step's time goes: while a :func:`record_steps` block is open, every
:class:`~medalign_lite.train.Trainer` records the wall-clock time of each phase of each
optimizer step.

Phases, in the order the trainer meets them (each is the time since the previous one ended):

- ``data``: waiting for the batch (sampler, ``dataset[i]``, collate, the move to the device);
- ``forward``: ``model(batch)``;
- ``backward``: the backward pass of the loss;
- ``optimizer``: gradient clipping, the non-finite check (one host sync), the AdamW and LR
  steps, zeroing the gradients;
- ``other``: the trainer's bookkeeping (the logged window, ``metrics.jsonl`` rows, the progress
  bar, evaluation and checkpoints when they fall on the step).

Each phase also has its process CPU time (``cpu/<phase>``: user + system of every thread of
the process), which a machine shared with other jobs inflates much less than wall-clock time.
A caller may split a phase further (``medalign bench train-step`` times the encoders inside the
forward and backward passes with module hooks): :meth:`StepTimer.add` adds seconds to a named
sub-phase and :meth:`StepTimer.mark` keeps the first moment an event happened in the step.
On CUDA every boundary synchronises the device (so the phases add up, at the price of the
overlap an unrecorded run has). Recording changes no computation: a run is the same with
and without it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

__all__ = ["PHASES", "StepTimer", "active_timer", "record_steps"]

PHASES = ("data", "forward", "backward", "optimizer", "other")

_ACTIVE: ContextVar[StepTimer | None] = ContextVar("medalign_step_timer", default=None)


class StepTimer:
    """Per-step phase times of the trainer runs inside one :func:`record_steps` block.

    ``steps``: one dict per optimizer step with the seconds of each phase, its CPU seconds
    (``cpu/<phase>``), the seconds of any sub-phase :meth:`add` was given, ``stage``,
    ``global_step``, ``checkpoint`` (whether the step wrote one), and ``marks``
    (event → seconds since the step's backward pass began, for :meth:`mark`).
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.steps: list[dict] = []
        self._current: dict[str, float] = {}
        self._marks: dict[str, float] = {}
        self._last: float | None = None
        self._last_cpu = 0.0
        self._backward_start: float | None = None

    def now(self) -> float:
        """perf_counter, after synchronising the device (CUDA)."""
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        """Start the clock (the trainer calls this before each stage's first batch)."""
        self._last = self.now()
        self._last_cpu = time.process_time()

    def lap(self, phase: str) -> None:
        """The time since the previous boundary goes to ``phase``."""
        now, cpu = self.now(), time.process_time()
        if self._last is not None:
            self._current[phase] = self._current.get(phase, 0.0) + now - self._last
            key = f"cpu/{phase}"
            self._current[key] = self._current.get(key, 0.0) + cpu - self._last_cpu
        if phase == "forward":
            self._backward_start = now
        self._last, self._last_cpu = now, cpu

    def add(self, phase: str, seconds: float) -> None:
        """Add ``seconds`` to a sub-phase of the current step (e.g. the encoders' forward)."""
        self._current[phase] = self._current.get(phase, 0.0) + seconds

    def mark(self, event: str) -> None:
        """The first time ``event`` happens in this step's backward pass (seconds after it began)."""
        if event not in self._marks and self._backward_start is not None:
            self._marks[event] = self.now() - self._backward_start

    def end_step(self, **info) -> None:
        """Close the step (the trainer calls this after its bookkeeping) with ``info``."""
        self.lap("other")
        self.steps.append({**self._current, **info, "marks": dict(self._marks)})
        self._current, self._marks, self._backward_start = {}, {}, None


def active_timer() -> StepTimer | None:
    """The timer of the innermost open :func:`record_steps` block, or None."""
    return _ACTIVE.get()


@contextmanager
def record_steps(device: torch.device | str | None = None) -> Iterator[StepTimer]:
    """Record the phase times of every trainer step run inside the block (``device``: the one
    to synchronise at each boundary; None or CPU: none)."""
    timer = StepTimer(device)
    token = _ACTIVE.set(timer)
    try:
        yield timer
    finally:
        _ACTIVE.reset(token)
