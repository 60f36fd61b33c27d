"""S2D-ALIGN's curriculum and the paper's ablations as data, and one driver that runs them.

The paper (arXiv 2511.11066) trains in three stages, each starting from the previous one's
weights (PAG, progressive alignment; :mod:`medalign_lite.methods.s2d`), and ablates the
curriculum (its Table 3) and the adapter (its Table 4). Here each variant is a list of trainer
:class:`~medalign_lite.train.Stage` objects plus, for the adapter ablations, a change of
:class:`~medalign_lite.methods.s2d.S2DConfig`:

=====================  =========================================================  =============
variant                stages (auxiliary inputs → ``inputs["aux"]``)              paper CE F1
=====================  =========================================================  =============
progressive            S1 [] → S2 [reference] → S3 [reference, key_phrases]       0.608
joint                  one stage, [reference, key_phrases] from the start          0.470
single_stage           S1's inputs ([]) for the whole budget                       0.449
reversed               S1 [] → [key_phrases] → [key_phrases, reference]            0.527
without_stage3         S1 [] → S2 [reference]                                      0.513
independent_memory     progressive, ``shared_memory=False`` (one Q_mem per SMA)    0.559
mlp_projector          progressive, ``projector="mlp"`` (LLaVA-style, no memory)  0.473
=====================  =========================================================  =============

(The paper's numbers are MIMIC-CXR CE F1 with CheXbert; ours come from the rule labeler on
IU-Phantom, so only the *orderings* can be compared.)

**Our readings**, where the paper summary leaves the ablation open:

- *Per-stage budget.* A curriculum spec is one (epochs, lr) pair per stage (paper: 8 / 5 / 3
  epochs at 3e-4 / 1e-4 / 5e-5). Every stage has its own warm-up + cosine schedule (the
  trainer's). Trainable parameters per stage are those of ``configs/s2d_tiny.yaml``: the
  memory bank, the SMA of every active input and the LoRA weights
  (:func:`trainable_for`).
- *Joint*: one stage with every auxiliary input and every SMA trainable, for the total of the
  three stages' epochs, at the first stage's learning rate.
- *Single stage*: stage 1's inputs and trainables (image only) for the total budget. We keep
  the curriculum's three (epochs, lr) segments, so it differs from the progressive run only
  in the auxiliary inputs (and it shares stage 1 with it, below).
- *Reversed* (S1→S3→S2): stage 2 adds the key phrases, stage 3 then adds the reference
  report: [] → [key_phrases] → [key_phrases, reference]. The model places soft tokens in a
  fixed order (C2 reference, C3 phrases), so the last stage's LM input is the progressive
  stage 3's; what changes is the order in which the SMAs and the memory learn.
- *Without stage 3*: the progressive run stopped after stage 2 (fewer epochs, as in the paper).
- *Independent memory* and *MLP projector*: the progressive stages on the changed model (the
  MLP projector has no memory bank, so its stages do not name one).

**Reuse of shared stage prefixes (a CPU-budget measure).** Variants whose stage lists begin
with the same stages on the same model are not trained from scratch each: the first run that
reaches the end of a stage leaves a trainer checkpoint, and a later variant that starts with
the same stages copies that checkpoint (and the metrics rows before it) into its own run
folder and *resumes* from it with ``Trainer.fit(resume=True)``. The trainer's exact resume
(same seed, same data order, restored RNG states; see :mod:`medalign_lite.train`) makes that
branch the very computation the variant would have run alone: same seed, same stage-1 weights.
By default progressive, single stage, reversed and without stage 3 all share progressive's
stage 1, and without stage 3 is progressive's stage-2 checkpoint (nothing left to train). The
independent-memory model also branches from it: in stage 1 only SMA_v runs, so its bank
receives exactly the shared bank's updates and the two unused banks keep their initial values
(:func:`independent_memory_state`). The tests compare every branch with the same variant
trained from scratch (losses, weights and reports agree to float tolerance).

**Frozen features, computed once.** The image encoder is frozen and training uses the
deterministic eval transform, so its patches are the same at every epoch: with
``cache_patches`` they are computed once per dataset
(:func:`~medalign_lite.reportgen.encode_dataset`) and the S2D model
reads them through :class:`PrecomputedPatches` (a wrapper that passes (B, P, D) features
through and runs the encoder on (B, C, H, W) images). The pooled features of the same pass
give the nearest-neighbour baseline. With ``standardize`` (ours) SMA_v reads per-channel
standardised patches (training-split statistics, :func:`patch_statistics`): an affine map that
SMA_v's W_in could absorb, but the tiny tutorial run learned to use the image only with it (the
notebook ``05_s2d_full`` gives the measurement).

:func:`run_s2d_variants` trains the requested variants for each seed, generates reports for an
evaluation set from the image only (batched beam search, :meth:`S2D.generate`), scores them with
:func:`~medalign_lite.reportgen.score_reports`, and adds the two baselines
(:func:`~medalign_lite.reportgen.nearest_neighbour_reports`,
:func:`~medalign_lite.reportgen.majority_report`).
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .data.dataset import Collate
from .methods.s2d import AUX_GROUPS, S2D, S2DConfig
from .models.features import ImageFeatures
from .models.llm import LLMConfig, load_causal_lm
from .reportgen import (
    encode_dataset,
    image_features,
    majority_report,
    nearest_neighbour_reports,
    score_reports,
)
from .train import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    Stage,
    TrainConfig,
    Trainer,
    load_weights,
    save_weights,
)
from .utils import module_device, quiet_progress

__all__ = [
    "PAPER_CE_F1",
    "PAPER_EPOCHS",
    "PAPER_LRS",
    "VARIANTS",
    "VARIANT_LABELS",
    "BaselineResult",
    "PatchItems",
    "PrecomputedPatches",
    "S2DResults",
    "VariantRun",
    "curriculum_stage",
    "generate_reports",
    "independent_memory_state",
    "patch_statistics",
    "run_s2d_variants",
    "shared_prefix",
    "trainable_for",
    "variant_model_options",
    "variant_stages",
]

#: Stage epochs and learning rates of the paper (stage 1, 2, 3).
PAPER_EPOCHS: tuple[int, int, int] = (8, 5, 3)
PAPER_LRS: tuple[float, float, float] = (3e-4, 1e-4, 5e-5)

#: The paper's MIMIC-CXR CE F1 of each variant (Tables 3 and 4).
PAPER_CE_F1: dict[str, float] = {
    "progressive": 0.608,
    "joint": 0.470,
    "single_stage": 0.449,
    "reversed": 0.527,
    "without_stage3": 0.513,
    "independent_memory": 0.559,
    "mlp_projector": 0.473,
}
VARIANTS: tuple[str, ...] = tuple(PAPER_CE_F1)
VARIANT_LABELS: dict[str, str] = {
    "progressive": "progressive S1→S2→S3",
    "joint": "joint (all inputs at once)",
    "single_stage": "single stage (S1 only)",
    "reversed": "reversed S1→S3→S2",
    "without_stage3": "w/o stage 3 (S1→S2)",
    "independent_memory": "independent memory",
    "mlp_projector": "MLP projector",
}

_SMA_OF = {"reference": "sma_t.*", "key_phrases": "sma_p.*"}
_WARMUP = 0.03  # s2d_tiny.yaml / s2d_full.yaml


# --------------------------------------------------------------------------- the stages


def trainable_for(aux: Sequence[str], memory: bool = True) -> list[str]:
    """Trainable globs of a stage whose auxiliary inputs are ``aux``: the memory bank
    (``*memory``, absent for the MLP projector), SMA_v, the SMA of each auxiliary input
    (SMA_t for the reference report, SMA_p for key phrases) and the LoRA weights — the
    ``trainable`` lists of ``configs/s2d_tiny.yaml``."""
    unknown = [a for a in aux if a not in AUX_GROUPS]
    if unknown:
        raise ValueError(f"unknown auxiliary input(s) {unknown}; choose from {list(AUX_GROUPS)}")
    return (["*memory"] if memory else []) + ["sma_v.*"] + [_SMA_OF[a] for a in AUX_GROUPS if a in aux] + ["*lora_*"]


def curriculum_stage(name: str, aux: Sequence[str], epochs: int, lr: float, memory: bool = True,
                     warmup_ratio: float = _WARMUP, max_steps: int | None = None) -> Stage:
    """One trainer stage with auxiliary inputs ``aux`` (kept in the given order in
    ``inputs["aux"]``) and :func:`trainable_for` ``aux``."""
    return Stage(name=name, epochs=int(epochs), lr=float(lr), trainable=trainable_for(aux, memory),
                 warmup_ratio=warmup_ratio, max_steps=max_steps, inputs={"aux": list(aux)})


def variant_model_options(variant: str) -> dict:
    """The :class:`S2DConfig` fields a variant changes (``{}`` for the curriculum ablations)."""
    _check_variant(variant)
    return {"independent_memory": {"shared_memory": False}, "mlp_projector": {"projector": "mlp"}}.get(variant, {})


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown S2D variant {variant!r}; choose from {list(VARIANTS)}")


def variant_stages(variant: str, epochs: Sequence[int] = PAPER_EPOCHS, lrs: Sequence[float] = PAPER_LRS,
                   warmup_ratio: float = _WARMUP, max_steps: int | Sequence[int | None] | None = None) -> list[Stage]:
    """The trainer stages of ``variant`` from a per-stage budget (see the module docstring).

    Args:
        variant: one of :data:`VARIANTS`.
        epochs, lrs: (stage 1, stage 2, stage 3) epochs and peak learning rates.
        warmup_ratio: every stage's linear warm-up fraction.
        max_steps: a cap on each stage's optimizer steps (one value, or one per curriculum
            stage; the joint stage takes the sum of the three when all are given).
    """
    _check_variant(variant)
    if len(epochs) != 3 or len(lrs) != 3:
        raise ValueError(f"epochs and lrs need one value per stage (3), got {list(epochs)} and {list(lrs)}")
    caps = list(max_steps) if isinstance(max_steps, (list, tuple)) else [max_steps] * 3
    if len(caps) != 3:
        raise ValueError(f"max_steps needs one value per stage (3), got {caps}")
    (e1, e2, e3), (l1, l2, l3) = epochs, lrs
    mem = variant != "mlp_projector"
    kw = {"memory": mem, "warmup_ratio": warmup_ratio}
    s1 = curriculum_stage("stage1_image", [], e1, l1, max_steps=caps[0], **kw)
    ref, kp = ["reference"], ["key_phrases"]
    if variant in ("progressive", "independent_memory", "mlp_projector", "without_stage3"):
        stages = [s1, curriculum_stage("stage2_reference", ref, e2, l2, max_steps=caps[1], **kw),
                  curriculum_stage("stage3_phrases", ref + kp, e3, l3, max_steps=caps[2], **kw)]
        return stages[:2] if variant == "without_stage3" else stages
    if variant == "reversed":
        return [s1, curriculum_stage("stage2_phrases", kp, e2, l2, max_steps=caps[1], **kw),
                curriculum_stage("stage3_phrases_reference", kp + ref, e3, l3, max_steps=caps[2], **kw)]
    if variant == "single_stage":
        return [s1, curriculum_stage("stage1_image_cont2", [], e2, l2, max_steps=caps[1], **kw),
                curriculum_stage("stage1_image_cont3", [], e3, l3, max_steps=caps[2], **kw)]
    # joint
    cap = sum(caps) if all(c is not None for c in caps) else None
    return [curriculum_stage("joint_all", ref + kp, e1 + e2 + e3, l1, max_steps=cap, **kw)]


def shared_prefix(a: Sequence[Stage], b: Sequence[Stage]) -> int:
    """How many leading stages two stage lists share (equal :class:`Stage` dataclasses)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- frozen features


class PrecomputedPatches(nn.Module):
    """The frozen image encoder, optionally standardised, or its features computed beforehand.

    ``forward(x)``: (B, C, H, W) images run through ``encoder`` and its patches are
    standardised per channel, V' = (V − μ) / σ, when ``mean`` and ``std`` (Dl,) are given;
    (B, P, D) tensors are taken to be such features already (computed once by the caller) and
    pass through as ``ImageFeatures(pooled = mean over P, patches = x, grid)``. ``patch_dim``
    is the encoder's. Used only where the encoder is frozen and the inputs deterministic, so
    both paths give the same patches.
    """

    def __init__(self, encoder: nn.Module, grid: tuple[int, int], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.encoder = encoder
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch_dim = int(encoder.patch_dim)
        self.standardize = mean is not None
        if self.standardize:
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1))

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        if x.ndim == 3:
            if x.shape[1] != self.grid[0] * self.grid[1] or x.shape[2] != self.patch_dim:
                raise ValueError(f"precomputed patches must be (B, {self.grid[0] * self.grid[1]}, {self.patch_dim}), "
                                 f"got {tuple(x.shape)}")
            return ImageFeatures(pooled=x.mean(1), patches=x, grid=self.grid)
        f = self.encoder(x)
        if self.standardize:
            f = ImageFeatures(pooled=f.pooled, patches=(f.patches - self.mean) / self.std, grid=f.grid)
        return f


def patch_statistics(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (Dl,) of (N, P, Dl) patch features over studies and patches."""
    flat = patches.reshape(-1, patches.shape[-1]).double()
    return flat.mean(0).float(), flat.std(0).clamp_min(eps).float()


class PatchItems(Dataset):
    """A :class:`~medalign_lite.data.dataset.ManifestDataset`'s studies with precomputed patch
    features in place of the image: item ``i`` is ``{study_id, text, labels, prior_report,
    frontal: patches[i] (P, D)}`` (no image is read). :class:`Collate` stacks them into a
    ``Batch`` whose ``images`` are (B, P, D)."""

    def __init__(self, base, patches: torch.Tensor):
        if len(base) != patches.shape[0]:
            raise ValueError(f"{len(base)} studies but {patches.shape[0]} feature rows")
        self.patches = patches
        self.texts = list(base.texts)
        self.labels = base.labels
        self.study_ids = list(base.df["study_id"])
        self.prior_reports = ([str(r or "") for r in base.df["prior_report"]]
                              if getattr(base, "prior_report", False) and "prior_report" in base.df else None)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        item = {"study_id": self.study_ids[i], "text": self.texts[i], "labels": self.labels[i],
                "frontal": self.patches[i]}
        if self.prior_reports is not None:
            item["prior_report"] = self.prior_reports[i]
        return item


# --------------------------------------------------------------------------- generation


def generate_reports(model: S2D, dataset, indices: Sequence[int] | None = None, batch_size: int = 64,
                     progress: bool | None = None, **overrides) -> list[str]:
    """Reports for ``dataset[i]`` (``i`` in ``indices``, default all), generated from the image
    (or its precomputed patches) only, ``batch_size`` studies per :meth:`S2D.generate` call;
    ``overrides`` go to ``generate`` (``num_beams``, ``max_new_tokens``, ...)."""
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    dev = module_device(model)
    out: list[str] = []
    for s in quiet_progress(range(0, len(idx), batch_size), desc="generate", enabled=progress):
        images = torch.stack([dataset[i]["frontal"] for i in idx[s:s + batch_size]]).to(dev)
        out += model.generate(images, **overrides)
    return out


# --------------------------------------------------------------------------- checkpoints and branches


def _stage_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{stage index: checkpoint folder that closed it} of a trainer run."""
    root = Path(run_dir) / "checkpoints"
    found: dict[int, Path] = {}
    if not root.is_dir():
        return found
    for d in root.iterdir():
        f = d / TRAINER_STATE
        if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and f.is_file():
            s = json.loads(f.read_text())
            if s["stage_step"] >= s["stage_total_steps"]:
                found[int(s["stage_index"])] = d
    return found


def independent_memory_state(shared_state: dict[str, torch.Tensor], fresh_independent: nn.Module
                             ) -> dict[str, torch.Tensor]:
    """A stage-1 state dict of the shared-memory model, as the independent-memory model.

    After stage 1 (image only, SMA_v alone) an independent-memory model built from the same
    seed differs from the shared one only in where its banks live: SMA_v's bank has had the
    shared bank's updates, SMA_t's and SMA_p's were never used and keep their initial values
    (the shared bank's initial values, which ``fresh_independent``, built from the same seed and
    untrained, holds). ``memory`` is dropped; ``sma_v.memory`` is the trained bank.
    """
    sd = {k: v for k, v in shared_state.items() if k != "memory"}
    if "memory" not in shared_state:
        raise ValueError("the state dict has no shared 'memory' bank")
    fresh = fresh_independent.state_dict()
    sd["sma_v.memory"] = shared_state["memory"].clone()
    for k in ("sma_t.memory", "sma_p.memory"):
        sd[k] = fresh[k].detach().clone()
    return sd


@dataclass
class _Done:
    """A finished trainer run the next variants may branch from."""

    variant: str
    seed: int
    options: dict
    stages: list[Stage]
    run_dir: Path
    checkpoints: dict[int, Path]


def _find_branch(done: Sequence[_Done], seed: int, options: dict, stages: Sequence[Stage]
                 ) -> tuple[_Done | None, int, bool]:
    """The finished run sharing the longest stage prefix with (options, stages) → (run, k, convert).

    Same model options: any shared prefix. Shared → independent memory: a prefix of image-only
    stages (``convert``: :func:`independent_memory_state`)."""
    best, best_k, best_conv = None, 0, False
    for d in done:
        if d.seed != seed:
            continue
        k = shared_prefix(d.stages, stages)
        convert = False
        if d.options != options:
            independent = dict(options) == {**d.options, "shared_memory": False} and d.options.get("shared_memory", True)
            if not independent or d.options.get("projector", "sma") != "sma":
                continue
            k = min(k, next((i for i, s in enumerate(stages) if s.inputs.get("aux")), len(stages)))
            convert = True
        k = max((i + 1 for i in range(k) if i in d.checkpoints), default=0)
        if k > best_k:
            best, best_k, best_conv = d, k, convert
    return best, best_k, best_conv


def _branch_into(src: _Done, k: int, run_dir: Path, convert_to: nn.Module | None) -> dict:
    """Copy the checkpoint closing stage ``k - 1`` of ``src`` (and its metrics rows) into
    ``run_dir`` so that ``fit(resume=True)`` continues from it."""
    ckpt = src.checkpoints[k - 1]
    dst = run_dir / "checkpoints" / ckpt.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ckpt, dst)
    state = json.loads((ckpt / TRAINER_STATE).read_text())
    if convert_to is not None:
        save_weights(independent_memory_state(load_weights(dst / WEIGHTS), convert_to), dst / WEIGHTS)
    rows = []
    metrics = src.run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [line for line in metrics.read_text().splitlines()
                if line.strip() and json.loads(line).get("global_step", 0) <= state["global_step"]]
    (run_dir / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
    return {"variant": src.variant, "stages": k, "stage": src.stages[k - 1].name, "global_step": state["global_step"],
            "seconds": float(state.get("elapsed", 0.0)), "converted": convert_to is not None}


# --------------------------------------------------------------------------- results


@dataclass
class VariantRun:
    """One trained variant (one seed).

    Attributes:
        name, seed: the variant and its seed.
        stages: its trainer stages.
        history: the trainer's metrics rows (stage prefixes taken over from another run included).
        reports: generated reports, aligned with ``indices`` (into the evaluation set).
        indices: the evaluation studies it reported on.
        scores: :func:`~medalign_lite.reportgen.score_reports` on the common subset
            (``S2DResults.subset``), the numbers of the ablation table.
        full_scores: the same on the whole evaluation set (variants in ``full_eval``), else None.
        seconds: ``train`` (this variant's own training), ``shared`` (training time of the
            branch it took over: what a from-scratch run would add), ``generate``, ``score``.
        branched_from: ``{"variant", "stages", "stage", "global_step", "seconds", "converted"}``
            when it resumed another run's checkpoint, else None.
        model: the trained model for the seeds in ``keep_models`` (else None).
    """

    name: str
    seed: int
    stages: list[Stage]
    history: list[dict]
    reports: list[str]
    indices: list[int]
    scores: dict
    full_scores: dict | None
    seconds: dict
    branched_from: dict | None = None
    model: S2D | None = None


@dataclass
class BaselineResult:
    """A baseline's reports on the whole evaluation set and its scores (``scores`` on the common
    subset, ``full_scores`` on everything)."""

    name: str
    reports: list[str]
    scores: dict
    full_scores: dict
    seconds: float


@dataclass
class S2DResults:
    """What :func:`run_s2d_variants` returns."""

    runs: list[VariantRun]
    baselines: dict[str, BaselineResult]
    references: list[str]
    subset: list[int]
    setup_seconds: dict = field(default_factory=dict)

    def by_variant(self) -> dict[str, list[VariantRun]]:
        out: dict[str, list[VariantRun]] = {}
        for r in self.runs:
            out.setdefault(r.name, []).append(r)
        return out

    def summary(self, keys: Sequence[str] = ("ce_micro_f1_u0", "ce_macro_f1_u0", "ce5_macro_f1_u0",
                                             "ce_example_f1_u0", "BLEU_4", "ROUGE_L"), full: bool = False):
        """A DataFrame, one row per variant and baseline: mean and std over seeds of each key
        (``full``: whole evaluation set, variants scored on it only), and ``n`` seeds. Std is the
        sample std (ddof 1; NaN for one seed)."""
        import pandas as pd

        rows = []
        for r in self.runs:
            s = r.full_scores if full else r.scores
            if s is not None:
                rows.append({"system": r.name, "seed": r.seed, **{k: s.get(k, np.nan) for k in keys}})
        for b in self.baselines.values():
            s = b.full_scores if full else b.scores
            rows.append({"system": b.name, "seed": 0, **{k: s.get(k, np.nan) for k in keys}})
        df = pd.DataFrame(rows)
        if df.empty:
            return df
        order = list(dict.fromkeys(df["system"]))
        g = df.groupby("system", sort=False)[list(keys)]
        table = g.mean().add_suffix(" mean").join(g.std(ddof=1).add_suffix(" std"))
        table["n"] = g.size()
        return table.loc[order, [c for k in keys for c in (f"{k} mean", f"{k} std")] + ["n"]]


# --------------------------------------------------------------------------- the driver


def _subset(n: int, size: int | Sequence[int] | None, seed: int) -> list[int]:
    if size is None or (isinstance(size, int) and size >= n):
        return list(range(n))
    if isinstance(size, int):
        g = torch.Generator().manual_seed(int(seed))
        return sorted(torch.randperm(n, generator=g)[:size].tolist())
    return sorted(int(i) for i in size)


def _plan(variants: Sequence[str]) -> list[str]:
    """Run order: the longest trunks first, so that the others can branch from them."""
    order = ["progressive", "without_stage3", "reversed", "single_stage", "independent_memory", "joint",
             "mlp_projector"]
    return [v for v in order if v in variants]


def _chains(variants: Sequence[str], seeds: Sequence[int], stages_of: Callable[[str], list[Stage]],
            reuse_prefixes: bool) -> list[list[tuple[int, str]]]:
    """The (seed, variant) jobs split into chains that share no stage prefix with each other.

    Within a chain the jobs run in :func:`_plan` order in one process, so every branch finds the
    run it branches from (:func:`_find_branch` on runs that checkpointed every stage); different
    chains are independent computations and may run in parallel. Chains come in plan order of
    their first job, seed by seed."""
    chains: list[list[tuple[int, str]]] = []
    for seed in seeds:
        by_variant: dict[str, list[tuple[int, str]]] = {}
        done: list[_Done] = []
        for v in _plan(variants):
            options, stages = variant_model_options(v), stages_of(v)
            src = _find_branch(done, seed, options, stages)[0] if reuse_prefixes else None
            chain = by_variant[src.variant] if src is not None else []
            if src is None:
                chains.append(chain)
            chain.append((seed, v))
            by_variant[v] = chain
            done.append(_Done(v, seed, options, stages, Path(), {i: Path() for i in range(len(stages))}))
    return chains


@dataclass
class _Context:
    """Everything a chain of variant runs needs (picklable: it goes to worker processes)."""

    train_items: Dataset
    eval_items: Dataset
    vision: nn.Module
    llm: LLMConfig
    model_config: S2DConfig
    out_root: Path
    stages_of: dict[str, list[Stage]]
    references: list[str]
    subset: list[int]
    full_eval: tuple[str, ...]
    keep: frozenset[tuple[str, int]]
    batch_size: int
    precision: str
    device: str
    log_every: int
    save_weights: str
    reuse_prefixes: bool
    keep_checkpoints: bool
    eval_batch_size: int
    generation: dict
    meteor: bool | str
    progress: bool | None


def _score(ctx: _Context, refs: Sequence[str], hyps: Sequence[str], whole: bool) -> tuple[dict, float]:
    t = time.perf_counter()
    s = score_reports(list(refs), list(hyps), meteor=bool(ctx.meteor) if ctx.meteor != "full" else whole)
    return s, time.perf_counter() - t


def _build(ctx: _Context, options: dict, seed: int) -> S2D:
    torch.manual_seed(seed)
    lm, tok = load_causal_lm(ctx.llm)
    return S2D(ctx.vision, lm, tok, replace(ctx.model_config, **options), ctx.llm)


def _run_chain(ctx: _Context, jobs: Sequence[tuple[int, str]], threads: int | None = None,
               on_result: Callable[[VariantRun], None] | None = None, return_state: bool = False
               ) -> list[tuple[VariantRun, dict | None]]:
    """Train, generate and score the (seed, variant) ``jobs`` one after another (branching from
    each other's checkpoints) → [(run, trained state dict or None)]. ``return_state`` (worker
    processes): kept models come back as state dicts, not modules; ``threads``: torch's
    intra-op threads in this process."""
    if threads is not None:
        torch.set_num_threads(threads)
    sub, references = ctx.subset, ctx.references
    done: list[_Done] = []
    out: list[tuple[VariantRun, dict | None]] = []
    for seed, variant in jobs:
        options, stages = variant_model_options(variant), ctx.stages_of[variant]
        run_dir = ctx.out_root / f"{variant}_s{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        model = _build(ctx, options, seed)
        branched = None
        if ctx.reuse_prefixes:
            src, k, convert = _find_branch(done, seed, options, stages)
            if src is not None:
                branched = _branch_into(src, k, run_dir, model if convert else None)
        cfg = TrainConfig(output_dir=str(run_dir), batch_size=ctx.batch_size, seed=seed, precision=ctx.precision,
                          device=ctx.device, log_every=ctx.log_every, save_weights=ctx.save_weights, stages=stages)
        t = time.perf_counter()
        res = Trainer(model, ctx.train_items, cfg, collate_fn=Collate()).fit(resume=branched is not None)
        train_s = time.perf_counter() - t
        done.append(_Done(variant, seed, options, stages, run_dir, _stage_checkpoints(run_dir)))
        model.eval()
        whole = variant in ctx.full_eval
        idx = list(range(len(ctx.eval_items))) if whole else sub
        t = time.perf_counter()
        reports = generate_reports(model, ctx.eval_items, idx, ctx.eval_batch_size, progress=ctx.progress,
                                   **ctx.generation)
        gen_s = time.perf_counter() - t
        by_idx = dict(zip(idx, reports))
        full_scores, s_full = _score(ctx, references, reports, True) if whole else (None, 0.0)
        if full_scores is not None and len(sub) == len(references):
            scores, s_part = full_scores, 0.0
        else:
            scores, s_part = _score(ctx, [references[i] for i in sub], [by_idx[i] for i in sub],
                                    len(sub) == len(references))
        keep = (variant, seed) in ctx.keep
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if keep and return_state else None
        run = VariantRun(variant, seed, stages, res.history, reports, idx, scores, full_scores,
                         {"train": round(train_s, 2), "shared": round(branched["seconds"], 2) if branched else 0.0,
                          "generate": round(gen_s, 2), "score": round(s_full + s_part, 2)},
                         branched, model if keep and not return_state else None)
        out.append((run, state))
        if on_result is not None:
            on_result(run)
        del model
    if not ctx.keep_checkpoints:
        for d in done:
            shutil.rmtree(d.run_dir / "checkpoints", ignore_errors=True)
    return out


def _run_chain_in_worker(ctx: _Context, jobs: Sequence[tuple[int, str]], threads: int
                         ) -> list[tuple[VariantRun, dict | None]]:
    return _run_chain(ctx, jobs, threads=threads, return_state=True)


def run_s2d_variants(variants: Sequence[str], train_dataset, eval_dataset, vision_encoder: nn.Module,
                     llm: LLMConfig, model_config: S2DConfig, output_dir: str | Path,
                     epochs: Sequence[int] = PAPER_EPOCHS, lrs: Sequence[float] = PAPER_LRS,
                     seeds: Sequence[int] = (0,), batch_size: int = 16, precision: str = "auto",
                     device: str = "auto", warmup_ratio: float = _WARMUP,
                     max_steps: int | Sequence[int | None] | None = None, log_every: int = 5,
                     cache_patches: bool = True, standardize: bool = True, subset: int | Sequence[int] | None = None,
                     full_eval: Sequence[str] = ("progressive",), eval_batch_size: int = 64,
                     generation: dict | None = None, meteor: bool | str = "full", baselines: bool = True,
                     reuse_prefixes: bool = True, keep_models: Sequence[str] = ("progressive",),
                     save_weights: str = "trained", keep_checkpoints: bool = True, on_result: Callable[[VariantRun], None] | None = None,
                     progress: bool | None = None, workers: int = 1) -> S2DResults:
    """Train S2D-ALIGN variants, generate reports from images only, score them; add baselines.

    Args:
        variants: names from :data:`VARIANTS` (run in the order of :func:`_plan`, so that shared
            stage prefixes are trained once; see the module docstring).
        train_dataset: a :class:`~medalign_lite.data.dataset.ManifestDataset` of the training
            split with ``prior_report=True`` and the target text columns, with the eval
            transform (``train=False``: no augmentation) when ``cache_patches``.
        eval_dataset: the evaluation split (same text columns: its texts are the references).
        vision_encoder: the frozen image encoder (shared by every model and the NN baseline).
        llm: the LM (``LLMConfig(name=<pre-trained tiny folder>)`` or a real LLM) and LoRA settings.
        model_config: the :class:`S2DConfig` every variant starts from
            (:func:`variant_model_options` changes it).
        output_dir: trainer runs go to ``output_dir/<variant>_s<seed>`` (cleared first).
        epochs, lrs: per-stage budget (:func:`variant_stages`); ``max_steps`` caps each stage.
        seeds: one run of every variant per seed (model init, data order, dropout).
        batch_size, precision, device, warmup_ratio, log_every, save_weights: trainer settings
            (``"trained"``: checkpoints hold the trained weights only; the frozen ones come from
            the seeded build, the same in every run).
        keep_checkpoints: False deletes each run's ``checkpoints/`` once every variant that may
            branch from it is done (``metrics.jsonl`` and ``config.yaml`` stay).
        cache_patches: compute the frozen encoder's features once (:class:`PrecomputedPatches`).
        standardize: SMA_v reads per-channel standardised patches, statistics of the training
            split (:func:`patch_statistics`); an affine map its W_in could absorb, but which
            changes how fast a from-scratch SMA learns (see the notebook).
        subset: evaluation studies every variant reports on (an int draws that many with
            ``seeds[0]``; indices; None: all). Variants in ``full_eval`` and the baselines
            report on the whole evaluation set and are also scored on the subset.
        eval_batch_size: studies per generation call; ``generation``: ``generate`` overrides.
        meteor: METEOR (a JVM start, ~10 s per scoring) for every scoring (True), none (False),
            or only whole-set scores (``"full"``).
        baselines: add ``nearest_neighbour`` and ``majority`` (:mod:`medalign_lite.reportgen`).
        reuse_prefixes: branch variants from shared stage prefixes (False: every variant from
            scratch, e.g. to check that both give the same numbers).
        keep_models: variants whose model of ``seeds[0]`` is returned.
        on_result: called with each :class:`VariantRun` when it is done (with ``workers`` > 1,
            when its chain is done).
        workers: CPU processes that train independent chains of variants side by side
            (:func:`_chains`: variants that branch from each other stay in one chain, and each
            seed is its own chain). On a small CPU model two threads in one process are slower
            than one, while two processes of one thread each use two cores fully. Each worker
            runs ``max(1, torch threads // workers)`` threads; every run is seeded, so the
            numbers do not depend on ``workers`` (tested). CPU only: on CUDA use 1.

    Returns:
        :class:`S2DResults` (``summary()`` gives the table).
    """
    from .utils import resolve_device

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown S2D variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not seeds:
        raise ValueError("seeds is empty")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and resolve_device(device).type != "cpu":
        raise ValueError(f"workers={workers} runs CPU processes side by side; on {device} use workers=1")
    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    references = list(eval_dataset.texts)
    sub = _subset(len(eval_dataset), subset, seeds[0])
    setup: dict[str, float] = {}

    # frozen features: once per dataset
    t0 = time.perf_counter()
    if cache_patches or standardize:
        tr_pooled, tr_patches, grid = encode_dataset(vision_encoder, train_dataset)
        mean, std = patch_statistics(tr_patches) if standardize else (None, None)
        vision: nn.Module = PrecomputedPatches(vision_encoder, grid, mean, std)
    if cache_patches:
        ev_pooled, ev_patches, _ = encode_dataset(vision_encoder, eval_dataset)
        if standardize:
            tr_patches, ev_patches = (tr_patches - mean) / std, (ev_patches - mean) / std
        train_items, eval_items = PatchItems(train_dataset, tr_patches), PatchItems(eval_dataset, ev_patches)
    else:
        if not standardize:
            tr_pooled, vision = image_features(vision_encoder, train_dataset), vision_encoder
        ev_pooled = image_features(vision_encoder, eval_dataset)
        train_items, eval_items = train_dataset, eval_dataset
    setup["features"] = time.perf_counter() - t0

    stages_of = {v: variant_stages(v, epochs, lrs, warmup_ratio, max_steps) for v in variants}
    ctx = _Context(train_items=train_items, eval_items=eval_items, vision=vision, llm=llm, model_config=model_config,
                   out_root=out_root, stages_of=stages_of, references=references, subset=sub,
                   full_eval=tuple(full_eval), keep=frozenset((v, seeds[0]) for v in keep_models),
                   batch_size=batch_size, precision=precision, device=device, log_every=log_every,
                   save_weights=save_weights, reuse_prefixes=reuse_prefixes, keep_checkpoints=keep_checkpoints,
                   eval_batch_size=eval_batch_size, generation=dict(generation or {}), meteor=meteor,
                   progress=progress)

    results = S2DResults(runs=[], baselines={}, references=references, subset=sub, setup_seconds=setup)
    if baselines:
        t = time.perf_counter()
        nn_reports = nearest_neighbour_reports(tr_pooled, list(train_dataset.texts), ev_pooled)
        maj = majority_report(list(train_dataset.texts))
        picked = time.perf_counter() - t
        for name, reps in (("nearest_neighbour", nn_reports), ("majority", [maj] * len(references))):
            full, s_full = _score(ctx, references, reps, True)
            part, s_part = _score(ctx, [references[i] for i in sub], [reps[i] for i in sub],
                                  len(sub) == len(references))
            results.baselines[name] = BaselineResult(name, reps, part, full, picked + s_full + s_part)

    chains = _chains(variants, seeds, stages_of.__getitem__, reuse_prefixes)
    if workers == 1 or len(chains) == 1:
        pairs = [p for chain in chains for p in _run_chain(ctx, chain, on_result=on_result)]
    else:
        pairs = _run_parallel(ctx, chains, workers, on_result)
    # plan order, seed by seed, whatever order the chains finished in
    rank = {(s, v): (i, j) for i, s in enumerate(seeds) for j, v in enumerate(_plan(variants))}
    for run, _ in sorted(pairs, key=lambda p: rank[(p[0].seed, p[0].name)]):
        results.runs.append(run)
    return results


def _chain_cost(chain: Sequence[tuple[int, str]], stages_of: dict[str, list[Stage]]) -> float:
    """Rough training cost of a chain: epochs of the stages it trains (a stage prefix shared
    with an earlier job counts once), each weighted by its LM sequence, 1 + 0.5 per auxiliary
    input (used only to start the longest chains first)."""
    seen: list[list[Stage]] = []
    cost = 0.0
    for _, v in chain:
        stages = stages_of[v]
        k = max((shared_prefix(s, stages) for s in seen), default=0)
        cost += sum(st.epochs * (1 + 0.5 * len(st.inputs.get("aux", []))) for st in stages[k:])
        seen.append(stages)
    return cost


def _run_parallel(ctx: _Context, chains: list[list[tuple[int, str]]], workers: int,
                  on_result: Callable[[VariantRun], None] | None) -> list[tuple[VariantRun, dict | None]]:
    """Chains in ``workers`` spawned processes, the longest first; kept models are rebuilt
    here from their state dicts."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // workers)
    ordered = sorted(chains, key=lambda c: -_chain_cost(c, ctx.stages_of))
    pairs: list[tuple[VariantRun, dict | None]] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(chains)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_chain_in_worker, ctx, chain, threads) for chain in ordered]
        for f in as_completed(futures):
            for run, state in f.result():
                if state is not None:
                    model = _build(ctx, variant_model_options(run.name), run.seed)
                    model.load_state_dict(state)
                    run.model = model.eval()
                if on_result is not None:
                    on_result(run)
                pairs.append((run, None))
    return pairs

