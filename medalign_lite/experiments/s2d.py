"""S2D-ALIGN's configuration, curriculum and the paper's ablations as data (the driver that runs
them: :mod:`medalign_lite.experiments.s2d_runs`).

The configuration is one file per scale (``configs/s2d_tiny.yaml``, ``configs/s2d_full.yaml``,
read into :class:`S2DExperiment` by :func:`load_s2d_experiment` with ``section.key=value``
overrides). Its ``train.stages`` are the progressive curriculum; every ablation below is
derived from those three stages by :func:`variant_stages`, so the curriculum is written once.

The paper (arXiv 2511.11066) trains in three stages, each starting from the previous one's
weights (PAG, progressive alignment; :mod:`medalign_lite.methods.s2d`), and ablates the
curriculum (its Table 3) and the adapter (its Table 4). Here each variant is a list of trainer
:class:`~medalign_lite.train.Stage` objects plus, for the adapter ablations, a change of
:class:`~medalign_lite.methods.s2d.S2DConfig` (:data:`VARIANT_OPTIONS`):

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

- *Per-stage budget.* Each curriculum stage has its own (epochs, lr) (paper: 8 / 5 / 3 epochs
  at 3e-4 / 1e-4 / 5e-5; ``s2d_full.yaml``). Every stage has its own warm-up + cosine schedule
  (the trainer's). Trainable parameters per stage: the memory bank, the SMA of every active
  input and the LoRA weights (:func:`trainable_for`; the config's stages must say the same,
  checked).
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

**Reuse of shared stage prefixes** (:mod:`medalign_lite.experiments.variants`: a variant that
starts with another's stages resumes from that run's stage checkpoint, the very computation it
would have run alone). By default progressive, single stage, reversed and without stage 3 all
share progressive's stage 1, and without stage 3 is progressive's stage-2 checkpoint (nothing left to train). The
independent-memory model also branches from it: in stage 1 only SMA_v runs, so its bank
receives exactly the shared bank's updates and the two unused banks keep their initial values
(:func:`independent_memory_state`, declared to the branching by :func:`_convertible`). The
tests compare every branch with the same variant trained from scratch (losses, weights and
reports agree to float tolerance).

**Frozen features, computed once.** The image encoder is frozen and training uses the
deterministic eval transform, so its patches are the same at every epoch: with
``cache_patches`` they are computed once per dataset
(:func:`~medalign_lite.experiments.generation.encode_dataset`) and the S2D model reads them
through :class:`~medalign_lite.experiments.generation.PrecomputedPatches` (a wrapper that
passes (B, P, D) features through and runs the encoder on (B, C, H, W) images). The pooled features of the same pass
give the nearest-neighbour baseline. With ``standardize`` (ours) SMA_v reads per-channel
standardised patches (training-split statistics,
:func:`~medalign_lite.experiments.generation.patch_statistics`): an affine map that
SMA_v's W_in could absorb, but the tiny tutorial run learned to use the image only with it (the
notebook ``05_s2d_full`` gives the measurement).

:func:`~medalign_lite.experiments.s2d_runs.run_s2d_variants` trains the requested variants for
each seed, generates reports from the image only, scores them and adds the nearest-neighbour and
majority baselines; chains of variants that share no stage train side by side in worker
processes (:func:`~medalign_lite.experiments.variants.run_chains`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..config import load_config
from ..methods.s2d import AUX_GROUPS, S2DConfig
from ..models.llm import LLMConfig
from ..models.vision import VisionConfig
from ..train import Stage, TrainConfig

__all__ = [
    "PAPER_CE_F1",
    "SMOKE_OVERRIDES",
    "VARIANTS",
    "VARIANT_LABELS",
    "VARIANT_OPTIONS",
    "EncoderSetup",
    "LMPretrainConfig",
    "S2DExperiment",
    "curriculum_stage",
    "encoder_recipe",
    "independent_memory_state",
    "load_s2d_experiment",
    "prepare_encoder",
    "prepare_s2d",
    "trainable_for",
    "variant_model_options",
    "variant_stages",
]

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
#: The :class:`S2DConfig` fields an adapter ablation changes (the others change the stages).
VARIANT_OPTIONS: dict[str, dict] = {"independent_memory": {"shared_memory": False}, "mlp_projector": {"projector": "mlp"}}
#: The paper's orderings the notebook checks: progressive above each ablation (CE F1).
CLAIMS: tuple[tuple[str, str], ...] = tuple(("progressive", v) for v in VARIANTS if v != "progressive")

#: What a smoke run (seconds: the notebook's ``smoke=True``, nbval) changes on the tutorial config:
#: 64 px, a 32-wide one-layer LM, 4 memory queries, two optimizer steps per stage.
SMOKE_OVERRIDES: tuple[str, ...] = (
    "vision.image_size=64", "llm.hidden_size=32", "llm.num_layers=1", "llm.intermediate_size=86",
    "lm_pretrain.epochs=1", "model.memory_size=4", "model.memory_dim=32", "model.max_report_tokens=24",
    "model.max_aux_tokens=16", "model.max_new_tokens=24", "model.num_beams=2", "train.batch_size=4",
    *(f"train.stages.{i}.{k}" for i in range(3) for k in ("epochs=1", "max_steps=2")),
    ("encoder.overrides=[train.stages.0.epochs=1, data.cache_text=true, data.augment=false, "
     "train.stages.0.max_steps=3, train.batch_size=8]"),
)

_SMA_OF = {"reference": "sma_t.*", "key_phrases": "sma_p.*"}
#: The curriculum's auxiliary inputs per stage, in order (C1; + C2 reference; + C3 phrases).
CURRICULUM_AUX: tuple[tuple[str, ...], ...] = ((), ("reference",), ("reference", "key_phrases"))


# --------------------------------------------------------------------------- the configuration


@dataclass
class LMPretrainConfig:
    """Pre-training of the tiny stand-in LM on the training reports
    (:func:`~medalign_lite.experiments.pretrain.pretrain_report_lm`; ignored for a real LLM)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    max_tokens: int = 128


@dataclass
class EncoderSetup:
    """Where the frozen image encoder comes from.

    ``align=True``: the tutorial's stand-in for Rad-DINO, ``vision.name`` (``tiny_cnn``) aligned
    once by ConVIRT on the training split with ``configs/convirt_tiny.yaml`` plus ``overrides``
    (:func:`~medalign_lite.experiments.pretrain.default_encoder_recipe`) and cached.
    ``align=False``: ``vision`` with its published weights (``hf:microsoft/rad-dino``), frozen.
    """

    align: bool = True
    overrides: list[str] = field(default_factory=list)


@dataclass
class S2DExperiment:
    """One S2D-ALIGN experiment: the sections of ``configs/s2d_<scale>.yaml``.

    ``model``, ``vision``, ``llm`` build the model (:func:`~medalign_lite.methods.s2d.build_s2d`
    reads the same sections); ``train.stages`` is the progressive curriculum, from which
    :func:`variant_stages` derives every ablation; ``encoder`` and ``lm_pretrain`` say how the
    frozen encoder and the tiny LM are made; ``standardize``: SMA_v reads per-channel
    standardised frozen patches (ours, see the module docstring); ``extra_studies``:
    IU-Phantom-extra training studies beside IU-Phantom's (:func:`~medalign_lite.data.
    ensure_iu_phantom`; 0: none; a user's own manifest gets none).
    """

    model: S2DConfig = field(default_factory=S2DConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    encoder: EncoderSetup = field(default_factory=EncoderSetup)
    lm_pretrain: LMPretrainConfig = field(default_factory=LMPretrainConfig)
    standardize: bool = True
    eval_batch_size: int = 64
    extra_studies: int = 0


def load_s2d_experiment(config: str | Path = "s2d_tiny", overrides: Sequence[str] = ()) -> S2DExperiment:
    """:class:`S2DExperiment` from a packaged config name or a YAML path, then ``overrides``
    (``"model.memory_size=32"``, ``"train.stages.0.epochs=4"``, ``"llm.name=/models/vicuna"``);
    the curriculum is checked (:func:`check_curriculum`)."""
    exp = load_config(S2DExperiment, config, overrides)
    check_curriculum(exp.train.stages, where=str(config))
    return exp


def encoder_recipe(exp: S2DExperiment, seed: int = 0):
    """The ConVIRT recipe of an experiment's aligned stand-in encoder (``exp.encoder.align``):
    ``configs/convirt_tiny.yaml`` at ``exp.vision``'s name and size, plus ``exp.encoder.overrides``,
    seeded with ``seed`` (:func:`~medalign_lite.experiments.pretrain.default_encoder_recipe`); None
    when the experiment loads published weights instead. S2D's and ExGra-Med's tiny configs give
    the same recipe, hence the same cache entry."""
    from .pretrain import default_encoder_recipe

    if not exp.encoder.align:
        return None
    return default_encoder_recipe([f"vision.name={exp.vision.name}", f"vision.image_size={exp.vision.image_size}",
                                   *exp.encoder.overrides], seed=seed)


def prepare_encoder(exp: S2DExperiment, train_manifest, seed: int = 0, progress: bool = False, curve=None,
                    eval_every: int = 0) -> nn.Module:
    """The frozen image encoder of an experiment, on the CPU: with ``exp.encoder.align`` the
    ConVIRT-aligned stand-in (:func:`encoder_recipe`), trained once on ``train_manifest`` (a path,
    or the list :func:`~medalign_lite.data.ensure_iu_phantom` gives) and cached
    (:func:`~medalign_lite.experiments.pretrain.pretrained_vision_encoder`; ``curve``,
    ``eval_every``: its learning curve while it trains); otherwise ``exp.vision`` with its
    published weights, frozen."""
    from ..models.vision import build_image_encoder
    from ..nn import freeze
    from .pretrain import pretrained_vision_encoder

    recipe = encoder_recipe(exp, seed)
    if recipe is None:
        return freeze(build_image_encoder(replace(exp.vision, pretrained=True)))
    return pretrained_vision_encoder(train_manifest, recipe, progress=progress, curve=curve, eval_every=eval_every)


def prepare_s2d(exp: S2DExperiment, train_manifest, train_texts: Sequence[str], seed: int = 0,
                device: str = "auto", progress: bool = False, curve=None, eval_every: int = 0
                ) -> tuple[nn.Module, LLMConfig, dict]:
    """The frozen image encoder and the LM of an experiment → (encoder on ``device``, the
    :class:`LLMConfig` every variant loads, info).

    - Encoder: :func:`prepare_encoder` (with ``exp.encoder.align`` the ConVIRT-aligned stand-in,
      trained once on ``train_manifest`` and cached; ``curve``, ``eval_every``: its learning
      curve while it trains); otherwise ``exp.vision`` with its published weights, frozen.
    - LM: ``llm.name == "tiny"`` pre-trains the tiny Llama on ``train_texts`` once
      (:func:`~medalign_lite.experiments.pretrain.pretrain_report_lm` with ``exp.lm_pretrain``,
      cached) and returns ``exp.llm`` pointing at its folder; a real LLM is returned as
      configured (LoRA settings included).

    ``info``: ``{"encoder": alignment_info or None, "encoder_seconds", "lm": pretrain.json
    contents or None, "lm_seconds"}``.
    """
    import json

    from ..utils import resolve_device
    from .pretrain import pretrain_report_lm

    info: dict = {"encoder": None, "lm": None}
    t = time.perf_counter()
    encoder = prepare_encoder(exp, train_manifest, seed=seed, progress=progress, curve=curve, eval_every=eval_every)
    if exp.encoder.align:
        info["encoder"] = dict(encoder.alignment_info)
    info["encoder_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    llm = exp.llm
    if llm.name == "tiny":
        p = exp.lm_pretrain
        folder = pretrain_report_lm(train_texts, llm=llm, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                                    max_tokens=p.max_tokens, seed=seed)
        info["lm"] = {"folder": str(folder), **json.loads((folder / "pretrain.json").read_text())}
        llm = replace(llm, name=str(folder))
    info["lm_seconds"] = round(time.perf_counter() - t, 1)
    return encoder.to(resolve_device(device)), llm, info


def check_curriculum(stages: Sequence[Stage], memory: bool = True, where: str = "the curriculum") -> None:
    """The progressive curriculum is three stages whose auxiliary inputs are
    :data:`CURRICULUM_AUX` and whose trainables are :func:`trainable_for` those inputs."""
    if len(stages) != 3:
        raise ValueError(f"{where}: the S2D curriculum has 3 stages, got {len(stages)}")
    for i, (st, aux) in enumerate(zip(stages, CURRICULUM_AUX)):
        got = tuple(st.inputs.get("aux", []))
        if got != aux:
            raise ValueError(f"{where}: train.stages.{i} ({st.name}) has inputs.aux {list(got)}, expected {list(aux)}")
        want = trainable_for(aux, memory)
        if list(st.trainable) != want:
            raise ValueError(f"{where}: train.stages.{i} ({st.name}) trains {list(st.trainable)}, expected {want}")


# --------------------------------------------------------------------------- the stages


def trainable_for(aux: Sequence[str], memory: bool = True) -> list[str]:
    """Trainable globs of a stage whose auxiliary inputs are ``aux``: the memory bank
    (``*memory``, absent for the MLP projector), SMA_v, the SMA of each auxiliary input
    (SMA_t for the reference report, SMA_p for key phrases) and the LoRA weights."""
    unknown = [a for a in aux if a not in AUX_GROUPS]
    if unknown:
        raise ValueError(f"unknown auxiliary input(s) {unknown}; choose from {list(AUX_GROUPS)}")
    return (["*memory"] if memory else []) + ["sma_v.*"] + [_SMA_OF[a] for a in AUX_GROUPS if a in aux] + ["*lora_*"]


def curriculum_stage(name: str, aux: Sequence[str], budget: Stage, memory: bool = True, **changes) -> Stage:
    """A stage with auxiliary inputs ``aux`` (kept in the given order in ``inputs["aux"]``),
    :func:`trainable_for` ``aux``, and the budget (epochs, lr, warm-up, cap, optimizer) of
    ``budget``; ``changes`` replace fields after."""
    return replace(budget, name=name, trainable=trainable_for(aux, memory), inputs={"aux": list(aux)}, **changes)


def variant_model_options(variant: str) -> dict:
    """The :class:`S2DConfig` fields a variant changes (``{}`` for the curriculum ablations)."""
    _check_variant(variant)
    return dict(VARIANT_OPTIONS.get(variant, {}))


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown S2D variant {variant!r}; choose from {list(VARIANTS)}")


def variant_stages(variant: str, curriculum: Sequence[Stage]) -> list[Stage]:
    """The trainer stages of ``variant``, derived from the progressive ``curriculum`` (the
    config's ``train.stages``, :func:`check_curriculum`), as the module docstring says."""
    _check_variant(variant)
    check_curriculum(curriculum)
    c1, c2, c3 = curriculum
    mem = variant != "mlp_projector"
    if variant in ("progressive", "independent_memory", "without_stage3"):
        return list(curriculum[:2] if variant == "without_stage3" else curriculum)
    ref, kp = ["reference"], ["key_phrases"]
    if variant == "mlp_projector":
        return [curriculum_stage(c.name, c.inputs["aux"], c, memory=False) for c in curriculum]
    if variant == "reversed":
        return [c1, curriculum_stage("stage2_phrases", kp, c2, mem),
                curriculum_stage("stage3_phrases_reference", kp + ref, c3, mem)]
    if variant == "single_stage":
        return [c1, curriculum_stage("stage1_image_cont2", [], c2, mem),
                curriculum_stage("stage1_image_cont3", [], c3, mem)]
    # joint: every input from the start, the three stages' epochs at stage 1's learning rate
    caps = [c.max_steps for c in curriculum]
    cap = sum(caps) if all(c is not None for c in caps) else None
    return [curriculum_stage("joint_all", ref + kp, c1, mem, epochs=c1.epochs + c2.epochs + c3.epochs,
                             max_steps=cap)]


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


def _convertible(src_options: dict, dst_options: dict, stages: Sequence[Stage]) -> int | None:
    """Shared → independent memory: the image-only stages carry over (in them only SMA_v runs,
    so its bank gets exactly the shared bank's updates); any other change of options: none."""
    independent = dict(dst_options) == {**src_options, "shared_memory": False} and src_options.get("shared_memory", True)
    if not independent or src_options.get("projector", "sma") != "sma":
        return None
    return next((i for i, s in enumerate(stages) if s.inputs.get("aux")), len(stages))
