"""The non-finite guard: an optimizer step whose loss or gradient norm is not finite is skipped.

Per micro-batch the trainer records ``isfinite(loss)`` (a 0-dim tensor, no host sync) and the
batch's study ids; at the optimizer step it adds ``isfinite(total gradient norm)`` and decides
once, with one host sync (and, under several processes, one gather of the flags, so that every
process takes the same decision: a process that stepped while another skipped would
deadlock in the next collective or drift apart).

A **skipped step** leaves the run as if its batches had not been trained on: the optimizer does
not step (weights and AdamW state untouched), the gradients are zeroed, the LR schedule does not
advance, the buffers its forward passes changed (BatchNorm statistics, AGA's σ) are restored,
and its outputs stay out of the logged means. Its data are consumed all the same: the step
counters (``global_step``, ``step``, the position in the epoch) advance, because they are
positions in the data order, which is what makes exact resume work (see the package
docstring); a stage with k skipped steps applies ``total − k`` updates and its schedule ends k
steps short of its last value.

Each skipped step is a ``logging`` warning and a ``metrics.jsonl`` row with ``skipped`` (the
reason) and ``study_ids`` (those of the micro-batches whose loss was not finite, or of the
whole step for a non-finite gradient norm; ``None`` when the batches carry none: the row's
``global_step`` says which step it was). ``TrainConfig.max_bad_steps`` skipped steps in a row
stop the run with :class:`NonFiniteLossError`; a checkpoint is never written with non-finite
weights (:class:`NonFiniteWeightsError` instead).

Under fp16 (a gradient scaler) a non-finite gradient is the scaler's business: it skips that
step and lowers its scale, as it is meant to, and the guard checks the loss only.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """A run produced something non-finite it cannot go on from."""


class NonFiniteLossError(NonFiniteError):
    """``max_bad_steps`` optimizer steps in a row had a non-finite loss or gradient norm.

    Attributes: ``stage`` (name), ``global_step`` (the last bad step), ``steps`` (the bad steps
    in a row: one dict each, as its ``metrics.jsonl`` row), ``study_ids`` (of the last one).
    """

    def __init__(self, message: str, stage: str, global_step: int, steps: list[dict]):
        super().__init__(message)
        self.stage, self.global_step, self.steps = stage, global_step, steps
        self.study_ids = steps[-1].get("study_ids") if steps else None


class NonFiniteWeightsError(NonFiniteError):
    """The model holds non-finite weights or buffers where a checkpoint was to be written."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


def batch_study_ids(batch) -> list[str] | None:
    """The batch's study ids: a :class:`~medalign_lite.data.dataset.Batch`'s ``study_ids``, a
    dict batch's ``study_ids`` / ``study_id`` list; None when it has none."""
    ids = getattr(batch, "study_ids", None)
    if ids is None and isinstance(batch, Mapping):
        ids = batch.get("study_ids", batch.get("study_id"))
    if isinstance(ids, (list, tuple)):
        return [str(i) for i in ids]
    return None


def grads_finite(parameters) -> torch.Tensor | None:
    """0-dim bool: every gradient of ``parameters`` is finite (one ``_foreach_norm``: a per-tensor
    norm is finite iff its elements are, barring an overflow of the norm itself). None without
    gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.stack(torch._foreach_norm(grads)).isfinite().all()


def nonfinite_tensors(model: nn.Module) -> torch.Tensor:
    """0-dim bool: some floating-point parameter or buffer of ``model`` is not finite."""
    ts = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]
    if not ts:
        return torch.zeros((), dtype=torch.bool)
    return ~torch.stack([t.detach().isfinite().all() for t in ts]).all()


def nonfinite_names(model: nn.Module, limit: int = 5) -> list[str]:
    """Names of (up to ``limit``) non-finite floating-point parameters and buffers (error messages)."""
    out = []
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_floating_point() and not bool(t.detach().isfinite().all()):
            out.append(name)
            if len(out) >= limit:
                break
    return out


class StepGuard:
    """The bookkeeping of one optimizer step (see the module docstring).

    ``begin(model)`` before each micro-batch's forward (snapshots the buffers on the first),
    ``add(loss, batch)`` after its backward, ``check(accelerator, grad_ok)`` at the optimizer
    step → None (a good step) or the skipped step's record, ``restore()`` on a skipped step and
    ``end()`` after either. ``in_a_row`` counts skipped steps since the last good one (saved with
    each checkpoint).
    """

    def __init__(self):
        self.flags: list[torch.Tensor] = []
        self.ids: list[list[str] | None] = []
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.in_a_row = 0
        self.recent: list[dict] = []  # the skipped steps since the last good one

    def begin(self, model: nn.Module) -> None:
        if not self.flags:
            with torch.no_grad():
                self.buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def add(self, loss: torch.Tensor, batch) -> None:
        self.flags.append(torch.isfinite(loss.detach()).all())
        self.ids.append(batch_study_ids(batch))

    def check(self, accelerator, grad_ok: torch.Tensor | None) -> dict | None:
        """Decide (one host sync; the flags of every process are gathered first)."""
        device = accelerator.device
        local = torch.stack([f.to(device) for f in self.flags]
                            + [grad_ok.to(device) if grad_ok is not None else torch.ones((), dtype=torch.bool, device=device)])
        local = (~local).to(torch.float32)  # 1 = bad
        if accelerator.num_processes > 1:
            rows = accelerator.gather(local[None]).reshape(accelerator.num_processes, -1).tolist()
        else:
            rows = [local.tolist()]
        loss_bad = any(any(r[:-1]) for r in rows)
        grad_bad = any(r[-1] for r in rows)
        if not (loss_bad or grad_bad):
            self.in_a_row, self.recent = 0, []
            return None
        mine = rows[accelerator.process_index]
        which = [m for m in range(len(self.ids)) if mine[m]] if loss_bad else list(range(len(self.ids)))
        ids = [self.ids[m] for m in which]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            ids = gather_object(ids)
        known = [i for group in ids if group is not None for i in group]
        self.in_a_row += 1
        record = {"skipped": "non-finite loss" if loss_bad else "non-finite gradient norm",
                  "study_ids": known or None, "bad_in_a_row": self.in_a_row}
        if any(group is None for group in ids) and known:
            record["study_ids_incomplete"] = True
        return record

    def restore(self) -> None:
        with torch.no_grad():
            for b, saved in self.buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)

    def end(self) -> None:
        self.flags, self.ids, self.buffers = [], [], []
