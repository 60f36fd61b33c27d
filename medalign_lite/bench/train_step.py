"""One training step of each registered method at its tutorial config, phase by phase
(``medalign bench train-step``).

The step measured is the notebooks' own: the method's tutorial config
(``configs/<name>_tiny.yaml``) read by the experiments layer, the training set the notebook
trains on, and the trainer path its runs take, recorded by
:func:`~medalign_lite.train.record_steps` (data, forward, backward, optimizer, bookkeeping).
Module hooks split the forward and backward passes between the **encoders** (the modules
:attr:`TrainStepSetup.encoders` names; the rest of the forward pass is the **head/loss**):
the forward time of every top-level module is summed, and the backward pass counts as the
head's until it first reaches an encoder's output (the autograd engine runs the most recently
created nodes first, so the head's backward runs before the encoders'; an approximation where
the two interleave).

Where the setup comes from: a method whose tutorial config names it (``method:``) and that is a
dual encoder trains as a contrastive run (:mod:`medalign_lite.experiments.contrastive`, as
notebooks 01 and 02 do: ConVIRT, GLoRIA, AGA, and any dual encoder registered with such a
config); other methods register their notebook's setup with :func:`register_setup` (S2D-ALIGN,
notebook 05, and ExGra-Med's stage 2, notebook 03: below). Each method runs twice from the same seed: the ``first`` run starts with
the caches a notebook's first run starts with (the in-memory training set, the frozen text
encoder's features) and fills them; the ``second`` run is what every later run of a notebook's
ablation grid pays.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..train import PHASES, StepTimer, record_steps
from .common import PeakMemory, _device_name, load_1min

__all__ = ["SETUPS", "TrainStepSetup", "bench_train_step", "register_setup", "train_step_setup"]

#: The top-level modules of a dual encoder that count as its encoders (and their projections).
DUAL_ENCODER_MODULES = ("image_encoder", "text_encoder", "img_global", "img_local", "txt_global", "txt_local")


@dataclass
class TrainStepSetup:
    """What profiling one method's training step needs, built once (datasets and caches are
    shared by the runs, as a notebook's runs share them).

    Attributes:
        method, config: the registered method and its config.
        build: ``build(seed)`` → a fresh model, as the notebook builds it.
        train: ``train(model, max_steps, output_dir)`` runs the notebook's trainer path with
            every stage capped at ``max_steps`` optimizer steps.
        batch_size: examples per step.
        budget_steps: the optimizer steps of the notebook's default run, per stage.
        encoders: top-level modules of the model that count as encoders.
        threads: torch intra-op threads the notebook trains with (None: torch's default).
        notes: what differs from the notebook, or what the setup did once (printed).
    """

    method: str
    config: str
    build: Callable[[int], nn.Module]
    train: Callable[[nn.Module, int, Path], None]
    batch_size: int
    budget_steps: dict[str, int]
    encoders: tuple[str, ...]
    threads: int | None = None
    notes: list[str] = field(default_factory=list)


#: Method name → ``factory(config, overrides, manifest, device, seed)`` returning a
#: :class:`TrainStepSetup`, for methods whose notebook does not train a contrastive recipe.
SETUPS: dict[str, Callable[..., TrainStepSetup]] = {}


def register_setup(name: str) -> Callable:
    """Decorator: the training-step setup of method ``name`` (see :data:`SETUPS`)."""
    def deco(factory: Callable[..., TrainStepSetup]) -> Callable[..., TrainStepSetup]:
        SETUPS[name] = factory
        return factory
    return deco


def _default_manifest(manifest: str | os.PathLike | None) -> Path:
    from ..data import ensure_dataset

    return Path(manifest) if manifest else ensure_dataset("iu-phantom", size=224, seed=0, progress=False)


def train_step_setup(method: str, config: str | None = None, overrides: Sequence[str] = (),
                     manifest: str | os.PathLike | None = None, device: str = "auto", seed: int = 0) -> TrainStepSetup:
    """The :class:`TrainStepSetup` of a registered ``method`` at ``config`` (default: its
    tutorial config, ``<method>_tiny``), with ``section.key=value`` ``overrides``, on
    ``manifest`` (default: IU-Phantom at 224 px, the notebooks' dataset)."""
    from ..config import config_path, read_yaml
    from ..methods import get_method

    spec = get_method(method)
    config = config or spec.config_name("tiny")
    if method in SETUPS:
        return SETUPS[method](config, overrides, manifest, device, seed)
    raw = read_yaml(config_path(config))
    if raw.get("method") == method and spec.dual_encoder:
        return _contrastive_setup(method, config, overrides, manifest, device, seed)
    raise ValueError(f"no training-step setup for {method!r}: its config {config!r} does not name it as a "
                     "contrastive recipe ('method:' key) and no bench.train_step.register_setup entry exists")


def _contrastive_setup(method: str, config: str, overrides: Sequence[str], manifest, device: str,
                       seed: int) -> TrainStepSetup:
    """A dual encoder trained as notebooks 01 and 02 train it: ``run_variants`` builds the
    model with the shared, cached text encoder and ``train_alignment`` trains it on one
    training set (kept in memory when the recipe does not augment)."""
    from ..data.dataset import ManifestDataset
    from ..experiments.contrastive import build_model, recipe_from_config, train_alignment
    from ..models.text import build_text_encoder

    recipe = recipe_from_config(config, overrides, seed=seed, device=device)
    manifest = _default_manifest(manifest)
    dataset = ManifestDataset(manifest, split="train", text_columns=recipe.text_columns, image_size=recipe.image_size,
                              train=recipe.augment, cache=not recipe.augment)
    text = build_text_encoder(recipe.text) if recipe.cache_text else None  # one for every run, as run_variants
    per_epoch = len(dataset) // recipe.batch_size  # train_alignment drops the last incomplete batch
    budget = recipe.epochs * per_epoch if recipe.max_steps is None else min(recipe.epochs * per_epoch, recipe.max_steps)

    def build(s: int) -> nn.Module:
        return build_model(replace(recipe, seed=s), text_encoder=text)

    def train(model: nn.Module, max_steps: int, out: Path) -> None:
        r = replace(recipe, max_steps=max_steps, epochs=max(recipe.epochs, math.ceil(max_steps / max(per_epoch, 1))))
        train_alignment(model, manifest, r, out, dataset=dataset)

    notes = [(f"{recipe.vision.name} at {recipe.image_size} px, {recipe.text.name}"
              f"{' frozen, features cached' if recipe.cache_text else ''}, training set "
              f"{'augmented (read from disk every step)' if recipe.augment else 'in memory after its first read'}")]
    return TrainStepSetup(method, config, build, train, recipe.batch_size, {method: budget}, DUAL_ENCODER_MODULES,
                          notes=notes)


#: Notebook 05's report text (the report writer's findings and impression of each phantom).
S2D_TEXT_COLUMNS = ("written_findings", "written_impression")


@register_setup("s2d")
def _s2d_setup(config: str, overrides: Sequence[str], manifest, device: str, seed: int) -> TrainStepSetup:
    """S2D-ALIGN as notebook 05 trains it (``run_s2d_variants``): the frozen, aligned encoder
    and the pre-trained tiny LM from their caches (made once, minutes, when absent), the
    encoder's patches computed once and standardised, the curriculum's stages, one thread
    (the notebook trains in two one-thread worker processes)."""
    from ..data.dataset import Collate, ManifestDataset
    from ..experiments.generation import PatchItems, PrecomputedPatches, encode_dataset, patch_statistics
    from ..experiments.s2d import load_s2d_experiment, prepare_s2d
    from ..methods.s2d import S2D
    from ..models.llm import load_causal_lm
    from ..train import TrainConfig, Trainer

    exp = load_s2d_experiment(config, overrides)
    manifest = _default_manifest(manifest)
    train_set = ManifestDataset(manifest, split="train", text_columns=S2D_TEXT_COLUMNS, prior_report=True,
                                image_size=exp.vision.image_size)
    t0 = time.perf_counter()
    encoder, llm, info = prepare_s2d(exp, manifest, train_set.texts, seed=seed, device=device)
    _, patches, grid = encode_dataset(encoder, train_set)
    mean, std = patch_statistics(patches) if exp.standardize else (None, None)
    vision = PrecomputedPatches(encoder, grid, mean, std)
    items = PatchItems(train_set, (patches - mean) / std if exp.standardize else patches)
    ready = time.perf_counter() - t0
    per_epoch = math.ceil(len(items) / exp.train.batch_size)
    budget = {s.name: s.epochs * per_epoch if s.max_steps is None else min(s.epochs * per_epoch, s.max_steps)
              for s in exp.train.stages}

    def build(s: int) -> nn.Module:
        torch.manual_seed(s)
        lm, tok = load_causal_lm(llm)
        return S2D(vision, lm, tok, exp.model, llm)

    def train(model: nn.Module, max_steps: int, out: Path) -> None:
        cfg = TrainConfig(output_dir=str(out), batch_size=exp.train.batch_size, seed=seed,
                          precision=exp.train.precision, device=device, log_every=5, save_weights="trained",
                          stages=[replace(s, max_steps=max_steps) for s in exp.train.stages])
        Trainer(model, items, cfg, collate_fn=Collate()).fit(resume=False)

    notes = [(f"encoder and LM ready in {ready:.0f} s (encoder {info['encoder_seconds']} s, LM {info['lm_seconds']} s; "
              "cached after the first time), patches precomputed and standardised once")]
    return TrainStepSetup("s2d", config, build, train, exp.train.batch_size, budget, ("vision",), threads=1,
                          notes=notes)


@register_setup("exgramed")
def _exgramed_setup(config: str, overrides: Sequence[str], manifest, device: str, seed: int) -> TrainStepSetup:
    """ExGra-Med's stage 2 — instruction tuning with α·L_align, the step the graphs cost — as
    notebook 03 trains it (``run_exgramed``): the frozen aligned encoder and the pre-trained tiny
    LM from their caches (made once, minutes, when absent), the encoder's patches computed once
    and standardised, the whole instruction set (``exgramed@100``), one thread (the notebook
    trains in two one-thread worker processes). Stage 1 (the projector on captions) is not
    profiled: it runs once per seed and has no graph loss."""
    from ..data.dataset import ManifestDataset
    from ..experiments.exgramed import (
        ConversationItems,
        build_model,
        load_exgramed_experiment,
        load_instruction_data,
        prepare_exgramed,
    )
    from ..experiments.generation import PrecomputedPatches, encode_dataset, patch_statistics
    from ..train import Trainer

    exp = load_exgramed_experiment(config, overrides)
    manifest = _default_manifest(manifest)
    data = load_instruction_data(manifest, exp.data.turns, seed, exp.data.caption_columns)
    t0 = time.perf_counter()
    encoder, llm, info = prepare_exgramed(exp, manifest, data, seed, device)
    train_set = ManifestDataset(manifest, split="train", image_size=exp.vision.image_size, text_columns=())
    _, patches, grid = encode_dataset(encoder, train_set)
    mean, std = patch_statistics(patches) if exp.standardize else (None, None)
    vision = PrecomputedPatches(encoder.cpu(), grid, mean, std)
    items = ConversationItems((patches - mean) / std if exp.standardize else patches, data.study_ids,
                              data.conversations)
    ready = time.perf_counter() - t0
    stage = exp.train.stages[1]
    per_epoch = math.ceil(len(items) / exp.train.batch_size)
    budget = {stage.name: stage.epochs * per_epoch if stage.max_steps is None
              else min(stage.epochs * per_epoch, stage.max_steps)}

    def build(s: int) -> nn.Module:
        return build_model(vision, llm, exp.model, s)

    def train(model: nn.Module, max_steps: int, out: Path) -> None:
        cfg = replace(exp.train, output_dir=str(out), seed=seed, device=device, log_every=5, save_weights="trained",
                      stages=[replace(stage, max_steps=max_steps)])
        Trainer(model, items, cfg, collate_fn=model.collate()).fit(resume=False)

    notes = [(f"encoder and LM ready in {ready:.0f} s (encoder {info['encoder_seconds']} s, LM {info['lm_seconds']} s; "
              "cached after the first time), patches precomputed and standardised once; stage 2 only")]
    return TrainStepSetup("exgramed", config, build, train, exp.train.batch_size, budget, ("vision",), threads=1,
                          notes=notes)


# --------------------------------------------------------------------------- measuring


def _tensors(x) -> Iterator[torch.Tensor]:
    """The tensors in a module's output (a tensor, a tuple/list/dict of them, or a dataclass)."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            yield from _tensors(getattr(x, f.name))


@contextmanager
def _module_hooks(model: nn.Module, timer: StepTimer, encoders: Sequence[str]) -> Iterator[None]:
    """Forward time of each top-level module (``forward/<name>``), and the first moment the
    backward pass reaches an encoder's output (mark ``encoders``)."""
    handles, starts = [], {}

    def on_grad(grad):
        timer.mark("encoders")

    for name, child in model.named_children():
        def pre(mod, args, name=name):
            starts.setdefault(name, []).append(timer.now())

        def post(mod, args, out, name=name):
            timer.add(f"forward/{name}", timer.now() - starts[name].pop())
            if name in encoders and torch.is_grad_enabled():
                for t in _tensors(out):
                    if t.requires_grad:
                        t.register_hook(on_grad)

        handles += [child.register_forward_pre_hook(pre), child.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _trainable_counts(model: nn.Module, timer: StepTimer, counts: dict[int, int]) -> Iterator[None]:
    """``counts[i]``: the trainable parameters of ``model`` when step ``i`` of ``timer`` ran
    (a stage of the trainer sets its own trainable set)."""
    def count(mod, args):
        counts.setdefault(len(timer.steps), sum(p.numel() for p in mod.parameters() if p.requires_grad))

    handle = model.register_forward_pre_hook(count)
    try:
        yield
    finally:
        handle.remove()


def summarize_steps(steps: Sequence[dict], encoders: Sequence[str], skip: int = 0) -> dict:
    """Mean seconds per optimizer step of each phase over ``steps`` (the first ``skip`` and
    any that wrote a checkpoint left out), with the forward and backward passes split between
    the ``encoders`` and the head/loss; ``shares`` of the step; ``steps_per_s``; the process
    CPU seconds of a step and of each phase (``cpu_step_s``, ``cpu_phases_s``: what to compare
    on a machine shared with other jobs)."""
    kept = [s for s in steps[skip:] if not s.get("checkpoint")]
    if not kept:
        raise ValueError(f"no step to summarise ({len(steps)} recorded, {skip} skipped, checkpoints left out)")
    mean = {p: statistics.fmean(s.get(p, 0.0) for s in kept) for p in PHASES}
    modules = sorted({k for s in kept for k in s if k.startswith("forward/")})
    by_module = {k.split("/", 1)[1]: statistics.fmean(s.get(k, 0.0) for s in kept) for k in modules}
    enc_fwd = sum(v for k, v in by_module.items() if k in encoders)
    # backward: the head's until the first encoder output gets its gradient, the encoders' after
    head_bwd = statistics.fmean(min(s["marks"].get("encoders", s["backward"]), s["backward"]) for s in kept)
    parts = {"data": mean["data"], "encoders": enc_fwd + mean["backward"] - head_bwd,
             "head_loss": mean["forward"] - enc_fwd + head_bwd, "optimizer": mean["optimizer"], "other": mean["other"]}
    total = sum(mean.values())
    cpu = {p: statistics.fmean(s.get(f"cpu/{p}", 0.0) for s in kept) for p in PHASES}
    return {"steps": len(kept), "step_s": total, "steps_per_s": 1.0 / total, **{f"{k}_s": v for k, v in parts.items()},
            "shares": {k: v / total for k, v in parts.items()},
            "cpu_step_s": sum(cpu.values()), "cpu_phases_s": cpu,
            "phases_s": mean, "forward_by_module_s": {**by_module, "(rest of forward)": mean["forward"] - sum(by_module.values())},
            "median_step_s": statistics.median(sum(s.get(p, 0.0) for p in PHASES) for s in kept)}


def bench_train_step(method: str, steps: int = 10, warmup: int = 2, config: str | None = None,
                     overrides: Sequence[str] = (), manifest: str | os.PathLike | None = None, device: str = "cpu",
                     threads: int | None = None, seed: int = 0, setup: TrainStepSetup | None = None) -> dict:
    """Profile ``method``'s training step at its tutorial config (see the module docstring).

    Two runs from the same seed (``first``: the notebook's first run, filling the shared
    caches; ``second``: a later run), each with every stage capped at ``warmup + steps + 1``
    optimizer steps; the ``warmup`` first steps of each stage and its last (which writes the
    run's checkpoint, timed separately as ``checkpoint_s``) are left out of the means.
    ``threads``: torch intra-op threads (default: the notebook's, else torch's).

    Returns ``{"method", "config", "device", "threads", "batch_size", "budget_steps" (the
    default run's optimizer steps per stage), "runs": {"first"|"second": {stage: summary}},
    "params" (every parameter of the model), "peak_mib": {"first"|"second": MiB}, "memory"
    (how it was measured), "load_avg" (before, after), "notes"}``, each summary from
    :func:`summarize_steps` (``steps_per_s``, seconds and ``shares`` of data, encoders,
    head_loss, optimizer, other) with ``trainable_params`` (the stage's trainable set, counted
    when its last step ran) and ``checkpoint_s``. ``peak_mib``: the peak memory a run added
    (:class:`~medalign_lite.bench.common.PeakMemory`: CUDA peak allocated; CPU peak
    resident size: the first run's includes the caches it fills).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got {steps} and {warmup}")
    from ..utils import resolve_device

    s = setup or train_step_setup(method, config, overrides, manifest, device, seed)
    dev = resolve_device(device)
    n_threads = threads or s.threads or torch.get_num_threads()
    old_threads = torch.get_num_threads()
    load0 = load_1min()
    runs: dict[str, dict] = {}
    peak_mib: dict[str, float] = {}
    memory_method = params = None
    torch.set_num_threads(n_threads)
    try:
        name = _device_name(dev)
        with tempfile.TemporaryDirectory(prefix="medalign-train-step-") as tmp:
            for run in ("first", "second"):
                model = s.build(seed)
                params = sum(p.numel() for p in model.parameters())
                trainable: dict[int, int] = {}  # step index -> trainable parameters when it ran
                with PeakMemory(dev) as mem, record_steps(dev) as timer, _module_hooks(model, timer, s.encoders), \
                        _trainable_counts(model, timer, trainable):
                    s.train(model, warmup + steps + 1, Path(tmp) / run)
                peak_mib[run], memory_method = mem.mib, mem.method
                by_stage: dict[str, list[tuple[int, dict]]] = {}
                for i, st in enumerate(timer.steps):
                    by_stage.setdefault(st["stage"], []).append((i, st))
                runs[run] = {}
                for stage, rows in by_stage.items():
                    summary = summarize_steps([r for _, r in rows], s.encoders, skip=warmup)
                    summary["checkpoint_s"] = sum(r["other"] for _, r in rows if r.get("checkpoint"))
                    summary["trainable_params"] = trainable.get(rows[-1][0])
                    runs[run][stage] = summary
                del model
    finally:
        torch.set_num_threads(old_threads)
    load1 = load_1min()
    return {"name": "train_step", "method": s.method, "config": s.config, "device": name,
            "threads": n_threads, "batch_size": s.batch_size, "budget_steps": s.budget_steps, "steps": steps,
            "warmup": warmup, "encoders": list(s.encoders), "runs": runs, "params": params, "peak_mib": peak_mib,
            "memory": memory_method, "notes": list(s.notes), "load_avg": [load0, load1]}
