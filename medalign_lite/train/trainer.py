"""The :class:`Trainer`: stages in order, exact resume, checkpoints and ``metrics.jsonl`` (see the package
docstring), the non-finite guard (:mod:`.guard`) and resume from the newest readable checkpoint."""
from __future__ import annotations

import fnmatch
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..utils import (
    get_rng_state,
    preserved_rng,
    quiet_progress,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from .checkpoints import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    CorruptCheckpointError,
    latest_checkpoint,
    load_weights,
    resume_checkpoint,
    save_weights,
)
from .guard import (
    NonFiniteLossError,
    NonFiniteWeightsError,
    StepGuard,
    grads_finite,
    nonfinite_names,
    nonfinite_tensors,
)
from .sampling import EpochSampler, SeededItems, _mix
from .stages import Stage, TrainConfig, TrainResult, freeze_for_stage, warmup_cosine
from .timing import active_timer

logger = logging.getLogger(__name__)


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

    def merge(self, other: _Window) -> None:
        """Add ``other``'s sums and count (one optimizer step's micro-batches) to this window."""
        for k, v in other.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += other.count

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
        self._resume_weights: tuple[Path, dict] | None = None  # what verifying the checkpoint read

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

    def _check_finite(self, model, pos: _Position, final: Path) -> None:
        """Refuse to write a checkpoint with non-finite weights or buffers (every process decides alike)."""
        acc = self.accelerator
        bad = nonfinite_tensors(model).to(acc.device)
        if acc.num_processes > 1:
            bad = acc.gather(bad.to(torch.float32)[None]).any()
        if bool(bad):
            names = nonfinite_names(model)
            stage = self.config.stages[pos.stage_index].name
            raise NonFiniteWeightsError(
                f"stage {stage!r}, global step {pos.global_step}: not writing {final}: the model holds non-finite "
                f"values ({', '.join(names) if names else 'on another process'}); the newest checkpoint is "
                f"{latest_checkpoint(self.config.output_dir)}", names)

    def _save(self, model, optimizer, scheduler, pos: _Position, window: _Window, stage_total: int,
              elapsed: float, bad_in_a_row: int = 0) -> Path:
        acc, cfg = self.accelerator, self.config
        root = Path(cfg.output_dir) / "checkpoints"
        final = root / f"{CHECKPOINT_PREFIX}{pos.global_step}"
        self._check_finite(model, pos, final)
        # Not utils.atomic_dir: every process writes its part into this folder (so its name is fixed,
        # not random), a step saved again replaces the old folder, and a killed run's leftover is
        # cleared by name when the resumed run saves that step again.
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
                     "log_window": window_state, "elapsed": elapsed, "bad_in_a_row": bad_in_a_row,
                     # sizes of what was written, checked on resume (a truncated file is corrupt)
                     "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}}
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

    def _find_resume_checkpoint(self, out: Path) -> Path | None:
        """The newest checkpoint that reads back (:func:`.checkpoints.resume_checkpoint`), chosen on the
        main process (which warns about and moves aside corrupt ones) and broadcast to the others."""
        acc = self.accelerator
        found: list = [None, None]
        error = None
        if acc.is_main_process:
            try:
                ckpt, weights = resume_checkpoint(out)
                self._resume_weights = (ckpt, weights) if ckpt is not None else None
                found = [None if ckpt is None else str(ckpt), None]
            except CorruptCheckpointError as e:
                error, found = e, [None, str(e)]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(found)
        if error is not None:
            raise error
        if found[1] is not None:
            raise CorruptCheckpointError(found[1], out / "checkpoints")
        return None if found[0] is None else Path(found[0])

    def _load_model_weights(self, raw: nn.Module, ckpt: Path) -> None:
        pre, self._resume_weights = self._resume_weights, None
        sd = pre[1] if pre is not None and pre[0] == ckpt else load_weights(ckpt / WEIGHTS)
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

    # ---------------------------------------------------------------- the step and its guard

    def _optimizer_step(self, optimizer, scheduler, clip_params, guard: StepGuard) -> dict | None:
        """Clip, check (:class:`.guard.StepGuard`), then step optimizer and schedule, or skip the step
        (weights, optimizer and schedule untouched, buffers restored). Gradients are zeroed either
        way. Returns the skipped step's record, or None."""
        acc, cfg = self.accelerator, self.config
        if acc.scaler is None:
            if cfg.max_grad_norm is not None:
                norm = acc.clip_grad_norm_(clip_params, cfg.max_grad_norm)  # the total norm, before clipping
                grad_ok = None if norm is None else torch.isfinite(torch.as_tensor(norm))
            else:
                grad_ok = grads_finite(clip_params)
            skipped = guard.check(acc, grad_ok)
        else:  # fp16: a non-finite gradient is the scaler's to skip (it lowers its scale); check the loss
            skipped = guard.check(acc, None)
            if skipped is None and cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(clip_params, cfg.max_grad_norm)
        if skipped is None:
            optimizer.step()
            if not optimizer.step_was_skipped:
                scheduler.step()
        else:
            guard.restore()
        optimizer.zero_grad(set_to_none=True)
        guard.end()
        return skipped

    def _bad_steps_error(self, stage: Stage, pos: _Position, steps: list[dict], last_ckpt) -> NonFiniteLossError:
        def ids(r):
            return r["study_ids"] if r.get("study_ids") else "no study ids in the batch"

        listing = "; ".join(f"global step {r['global_step']} ({r['skipped']}): {ids(r)}" for r in steps)
        n = len(steps)
        return NonFiniteLossError(
            f"stage {stage.name!r}, global step {pos.global_step}: {n} optimizer step{'s' if n > 1 else ''} in a "
            f"row {'were' if n > 1 else 'was'} skipped (max_bad_steps={self.config.max_bad_steps}): {listing}. "
            "The model holds the finite weights "
            f"of global step {pos.global_step - len(steps)}; newest checkpoint: {last_ckpt}",
            stage=stage.name, global_step=pos.global_step, steps=list(steps))

    # ---------------------------------------------------------------- the loop

    def fit(self, resume: bool = True) -> TrainResult:
        """Run every stage; with ``resume`` continue from the newest checkpoint in ``output_dir``
        that reads back whole (a corrupt newer one is named in a warning and moved aside).

        Raises :class:`.guard.NonFiniteLossError` after ``max_bad_steps`` skipped steps in a row,
        :class:`.guard.NonFiniteWeightsError` instead of writing a checkpoint with non-finite
        weights, :class:`.checkpoints.CorruptCheckpointError` when no checkpoint reads back.

        ``resume=False`` starts over: it deletes ``metrics.jsonl`` and the ``checkpoints/step-*``
        folders of ``output_dir``.
        """
        from ..config import save_config

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

        self._resume_weights = None
        ckpt = self._find_resume_checkpoint(out) if resume else None
        state = self._read_state(ckpt) if ckpt is not None else None
        pos = _Position(**{k: state[k] for k in ("stage_index", "epoch", "step_in_epoch", "stage_step", "global_step")}) \
            if state else _Position()
        elapsed0 = state["elapsed"] if state else 0.0
        self.history = self._start_history(metrics, pos.global_step if state else None)
        if ckpt is not None:
            logger.info("resuming from %s (stage %s, global step %d)", ckpt, state["stage_name"], pos.global_step)

        sampler = EpochSampler(len(self.train_dataset), cfg.seed)
        loader = acc.prepare(self._dataloader(sampler))
        window, step_window = _Window(), _Window()
        guard = StepGuard()
        if state is not None:
            guard.in_a_row = int(state.get("bad_in_a_row", 0))
            guard.recent = [r for r in self.history if "skipped" in r][-guard.in_a_row:] if guard.in_a_row else []
        t0 = time.perf_counter()
        last_ckpt = ckpt
        raw = self.model
        stages_run = 0
        timer = active_timer()  # None unless a record_steps() block is open (train.timing)

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
            span = stage.schedule_epochs * steps_per_epoch if stage.schedule_epochs is not None else total
            warmup = math.ceil(stage.warmup_ratio * span) if stage.warmup_ratio > 0 else 0
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, functools.partial(warmup_cosine, warmup=warmup, total=span))
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
            if timer is not None:
                timer.start()
            while pos.stage_step < total:
                if pos.step_in_epoch >= steps_per_epoch:
                    pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
                sampler.set_epoch(pos.epoch)
                loader.set_epoch(pos.epoch)
                skip = pos.step_in_epoch * cfg.grad_accum
                epoch_loader = acc.skip_first_batches(loader, skip) if skip else loader
                stopped_early = False
                for batch in epoch_loader:
                    if timer is not None:
                        timer.lap("data")
                    with acc.accumulate(model):
                        guard.begin(raw)
                        out_ = model(batch)
                        if not isinstance(out_, dict) or "loss" not in out_:
                            raise TypeError("model.forward(batch) must return a dict with a 'loss' tensor, got "
                                            f"{type(out_).__name__}" + (f" with keys {list(out_)}" if isinstance(out_, dict) else ""))
                        if timer is not None:
                            timer.lap("forward")
                        acc.backward(out_["loss"])
                        if timer is not None:
                            timer.lap("backward")
                        guard.add(out_["loss"], batch)
                        step_window.add(out_, acc.device)
                        lr = scheduler.get_last_lr()[0]
                        if timer is not None:
                            timer.lap("other")
                        skipped = self._optimizer_step(optimizer, scheduler, clip_params, guard) \
                            if acc.sync_gradients else None
                        if timer is not None and acc.sync_gradients:
                            timer.lap("optimizer")
                    if not acc.sync_gradients:
                        continue
                    if skipped is None:  # a skipped step's outputs stay out of the logged means
                        window.merge(step_window)
                    step_window = _Window()
                    pos.step_in_epoch += 1
                    pos.stage_step += 1
                    pos.global_step += 1
                    bar.update(1)
                    elapsed = elapsed0 + time.perf_counter() - t0
                    log_now = pos.global_step % cfg.log_every == 0 or pos.stage_step == total
                    if skipped is not None or log_now:
                        means = window.means(acc) if log_now else {}
                        row = {"stage": stage.name, "epoch": pos.epoch, "step": pos.stage_step,
                               "global_step": pos.global_step, **means, **(skipped or {}), "lr": lr, "time": elapsed}
                        self._write_row(row, metrics)
                        if "loss" in means:
                            bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
                    if skipped is not None:
                        guard.recent.append(row)
                        if acc.is_main_process:
                            logger.warning("stage %r, global step %d: %s, optimizer step skipped (%d in a row, "
                                           "max_bad_steps=%d); study ids: %s", stage.name, pos.global_step,
                                           skipped["skipped"], guard.in_a_row, cfg.max_bad_steps,
                                           skipped["study_ids"] if skipped["study_ids"] else "none in the batch")
                        if guard.in_a_row >= cfg.max_bad_steps:
                            bar.close()
                            raise self._bad_steps_error(stage, pos, guard.recent, last_ckpt)
                    if self.eval_fn is not None and (
                            (cfg.eval_every and pos.global_step % cfg.eval_every == 0) or pos.stage_step == total):
                        self._evaluate(model, stage, pos, elapsed, metrics)
                    save = bool(cfg.save_every and pos.global_step % cfg.save_every == 0) or pos.stage_step == total
                    if save:
                        last_ckpt = self._save(model, optimizer, scheduler, pos, window, total, elapsed,
                                               guard.in_a_row)
                    if timer is not None:
                        timer.end_step(stage=stage.name, global_step=pos.global_step, checkpoint=save)
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
