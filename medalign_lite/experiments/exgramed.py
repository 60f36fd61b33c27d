"""ExGra-Med's experiments: configuration, data, the two training stages, VQA evaluation, the
paper's data-efficiency and ablation variants, baselines and decided claims (the driver that
runs them: :mod:`medalign_lite.experiments.exgramed_runs`).

**The run** (:func:`~medalign_lite.experiments.exgramed_runs.run_exgramed`):

1. *Data* (:func:`load_instruction_data`): IU-Phantom's training split becomes the caption set
   (stage 1: one "describe" instruction per study, the report writer's report as the answer)
   and the instruction-following set (one conversation of ``data.turns`` questions per study,
   with the extended answers; :mod:`medalign_lite.data.instructions`); a LLaVA-Med instruction
   manifest (``llava-med-instruct``) is read as it is. Phantom-VQA's questions are the test set.
2. *Stand-ins* (:func:`prepare_exgramed`): a word tokenizer over the captions and the training
   conversations; the cached ConVIRT-aligned tiny encoder (the same cache entry as S2D's) and
   the tiny LM pre-trained on the captions, the extended answers and the questions (text only,
   never a question–answer pair: the chat format is learnt in stage 2), through the trainer
   (:func:`~medalign_lite.experiments.s2d.prepare_s2d`). The frozen encoder's patches are
   computed once and standardised per channel (``standardize``, as ``s2d_tiny``).
3. *Stage 1* (:func:`train_stage1`), once per seed: the projector alone on the captions, L_AR
   only (LLaVA-Med's alignment stage); its weights start every variant.
4. *Stage 2* per variant (:data:`VARIANTS`): LoRA + projector + GNN on a nested, seeded
   fraction of the instruction set (10 % ⊂ 40 % ⊂ 100 %), L_AR + α L_align.
5. *VQA* (:func:`answer_questions`): greedy answers to every Phantom-VQA question, scored with
   LLaVA-Med's conventions (:mod:`medalign_lite.eval.vqa`: closed accuracy, open recall).
6. *Baselines* (:mod:`~medalign_lite.experiments.exgramed_runs`): the **majority** answer of
   each question template and the **question prior** (of each question text) in the training
   conversations (the floors: what the words alone know), and a **supervised probe** on the very
   frozen features the LM reads (the ceiling: logistic regressions trained on the training
   studies' findings answer presence / absence / normality / abnormality; side and severity from
   the majority), scored the same way.
7. *Claims* (:func:`~medalign_lite.experiments.exgramed_runs.exgramed_claims`): the paper's
   orderings decided by the one claims rule on the VQA average (closed accuracy and open
   recall), paired bootstrap over questions.

Variants (the paper's VQA-RAD average, its Fig. 1 and Table 5 [digest]):

=====================  ========  ====================================  ======
variant                fraction  change                                paper
=====================  ========  ====================================  ======
exgramed@10/40/100     10/40/100 α = 1 (ExGra-Med)                     72.52 / ≈73.7 / 74.91
llava_med@10/40/100    10/40/100 α = 0 (the LLaVA-Med-style baseline)  52.39 / ≈70.8 / 72.64
alpha0.5@10            10        α = 0.5                               67.72
alpha0.1@10            10        α = 0.1                               65.95
no_extended@10         10        modalities image, response            72.12
infonce@10             10        InfoNCE image ↔ response, α = 1       68.48
=====================  ========  ====================================  ======
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import load_config
from ..methods.exgramed import ExGraMed, ExGraMedConfig
from ..models.llm import LLMConfig
from ..models.vision import VisionConfig
from ..train import TrainConfig, Trainer
from .s2d import EncoderSetup, LMPretrainConfig

__all__ = [
    "CLAIMS",
    "PAPER_VQA_RAD",
    "SMOKE_OVERRIDES",
    "VARIANTS",
    "ConversationItems",
    "ExGraMedData",
    "ExGraMedExperiment",
    "InstructionData",
    "Variant",
    "answer_questions",
    "build_model",
    "fraction_indices",
    "imle_gradient_check",
    "load_exgramed_experiment",
    "load_instruction_data",
    "prepare_exgramed",
    "solver_noise_curve",
    "tokenizer_corpus",
    "train_stage1",
]


# --------------------------------------------------------------------------- configuration


@dataclass
class ExGraMedData:
    """What the instruction data is made of (IU-Phantom's training split)."""

    turns: int = 4                         # questions per instruction conversation
    caption_columns: tuple[str, ...] = ("written_findings", "written_impression")  # stage 1's captions
    vocab_size: int = 2000                  # the tiny LM's word tokenizer
    min_frequency: int = 2

    def __post_init__(self):
        self.caption_columns = tuple(self.caption_columns)
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {self.turns}")


@dataclass
class ExGraMedExperiment:
    """One ExGra-Med experiment: the sections of ``configs/exgramed_<scale>.yaml``.

    ``model``, ``vision``, ``llm`` build the model (:func:`~medalign_lite.methods.exgramed.build_exgramed`);
    ``train.stages`` are stage 1 (projector on captions, ``inputs: {align: false}``) and
    stage 2 (instruction tuning); ``encoder`` / ``lm_pretrain`` make the tiny stand-ins (as S2D's);
    ``data`` the instruction set; ``standardize`` the per-channel standardised frozen patches;
    ``extra_studies``: IU-Phantom-extra studies the ConVIRT stand-in encoder aligns on beside
    IU-Phantom (the encoder of notebooks 01 and 05, one cache entry; the caller passes the
    manifests, :func:`~medalign_lite.data.ensure_iu_phantom`) — the instruction data stays
    the training manifest's.
    """

    model: ExGraMedConfig = field(default_factory=ExGraMedConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    encoder: EncoderSetup = field(default_factory=EncoderSetup)
    lm_pretrain: LMPretrainConfig = field(default_factory=LMPretrainConfig)
    data: ExGraMedData = field(default_factory=ExGraMedData)
    standardize: bool = True
    eval_batch_size: int = 64
    extra_studies: int = 0


def load_exgramed_experiment(config: str | Path = "exgramed_tiny", overrides: Sequence[str] = ()) -> ExGraMedExperiment:
    """:class:`ExGraMedExperiment` from a packaged config name or YAML path, then ``overrides``
    (``"model.alpha=0.5"``, ``"train.stages.1.epochs=1"``); the stages are checked: two, the
    first with ``inputs.align`` false."""
    exp = load_config(ExGraMedExperiment, config, overrides)
    st = exp.train.stages
    if len(st) != 2 or st[0].inputs.get("align", True) or not st[1].inputs.get("align", True):
        raise ValueError(f"{config}: train.stages must be [stage 1 with inputs.align false, stage 2 aligning], "
                         f"got {[(s.name, s.inputs) for s in st]}")
    return exp


#: What a smoke run (seconds: ``smoke=True``, nbval) changes on ``exgramed_tiny``.
SMOKE_OVERRIDES: tuple[str, ...] = (
    "vision.image_size=64", "llm.hidden_size=32", "llm.num_layers=1", "llm.intermediate_size=86",
    "lm_pretrain.epochs=1", "model.max_tokens=64", "model.max_text_tokens=48", "model.max_new_tokens=8",
    "data.turns=2", "train.batch_size=8", "train.stages.0.max_steps=2", "train.stages.1.epochs=1",
    "train.stages.1.max_steps=3",
    ("encoder.overrides=[train.stages.0.epochs=1, data.cache_text=true, data.augment=false, "
     "train.stages.0.max_steps=3, train.batch_size=8]"),
)


@dataclass(frozen=True)
class Variant:
    """A stage-2 run: ``fraction`` of the instruction set, ``options`` changing :class:`ExGraMedConfig`."""

    name: str
    fraction: float
    options: tuple[tuple[str, object], ...] = ()
    label: str = ""

    @property
    def config_changes(self) -> dict:
        return dict(self.options)


def _v(name, fraction, label, **options) -> Variant:
    return Variant(name, fraction, tuple(sorted(options.items())), label)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    _v("exgramed@10", 0.1, "ExGra-Med, 10 %", alpha=1.0),
    _v("exgramed@40", 0.4, "ExGra-Med, 40 %", alpha=1.0),
    _v("exgramed@100", 1.0, "ExGra-Med, 100 %", alpha=1.0),
    _v("llava_med@10", 0.1, "α = 0 (LLaVA-Med-style), 10 %", alpha=0.0),
    _v("llava_med@40", 0.4, "α = 0 (LLaVA-Med-style), 40 %", alpha=0.0),
    _v("llava_med@100", 1.0, "α = 0 (LLaVA-Med-style), 100 %", alpha=0.0),
    _v("alpha0.5@10", 0.1, "α = 0.5, 10 %", alpha=0.5),
    _v("alpha0.1@10", 0.1, "α = 0.1, 10 %", alpha=0.1),
    _v("no_extended@10", 0.1, "without extended captions, 10 %", alpha=1.0, modalities=("image", "response")),
    _v("infonce@10", 0.1, "InfoNCE instead of graph matching, 10 %", alpha=1.0, alignment="infonce"),
)}
#: The paper's VQA-RAD average (open and closed) per variant ([digest]; 40 % read off its figure).
PAPER_VQA_RAD: dict[str, float] = {
    "exgramed@10": 72.52, "exgramed@40": 73.7, "exgramed@100": 74.91, "llava_med@10": 52.39, "llava_med@40": 70.8,
    "llava_med@100": 72.64, "alpha0.5@10": 67.72, "alpha0.1@10": 65.95, "no_extended@10": 72.12,
    "infonce@10": 68.48,
}
#: The claims (a > b), in the issue's order: the data-efficiency pair, α, extended captions,
#: graph matching over InfoNCE; "≈" for 10 % against the baseline's 100 % (decided both ways).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("exgramed@10", "llava_med@10", "ExGra-Med 10 % > baseline 10 %"),
    ("llava_med@100", "exgramed@10", "baseline 100 % > ExGra-Med 10 % (paper: ≈, 72.64 vs 72.52)"),
    ("exgramed@10", "alpha0.5@10", "α = 1 > α = 0.5"),
    ("alpha0.5@10", "alpha0.1@10", "α = 0.5 > α = 0.1"),
    ("exgramed@10", "no_extended@10", "extended captions help"),
    ("exgramed@10", "infonce@10", "graph matching > InfoNCE (10 %)"),
)


# --------------------------------------------------------------------------- data


@dataclass
class InstructionData:
    """The training data of one run, aligned with the training split's studies.

    ``captions``: stage 1's records; ``conversations``: stage 2's records (each ``{"conversation":
    [(q, a), …], "extended": [a′, …] or None}``, phantom data also ``"keys": [(kind, key), …]``);
    ``study_ids``; ``findings`` (the findings of each study, for the probe; None for real data)."""

    study_ids: list[str]
    captions: list[dict]
    conversations: list[dict]
    findings: list | None = None


def load_instruction_data(manifest: str | Path, turns: int = 4, seed: int = 0,
                          caption_columns: Sequence[str] = ("written_findings", "written_impression"),
                          split: str = "train") -> InstructionData:
    """Captions and conversations of a manifest's split: IU-Phantom (``findings_json``:
    conversations written from the findings, :func:`~medalign_lite.data.instructions.study_conversation`,
    seeded per study, absence questions drawn with the split's :func:`~medalign_lite.data.instructions.prevalence`
    odds) or LLaVA-Med instruction JSON (``conversations_json`` / ``extended_json``;
    its first answer is the caption)."""
    from ..data.findings import findings_from_json
    from ..data.instructions import caption_conversation, prevalence, study_conversation
    from ..data.manifest import load_manifest

    df = load_manifest(manifest)
    df = df[df["split"] == split].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{manifest}: no study in split {split!r}")
    ids = list(df["study_id"])
    seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(len(df))]
    if "conversations_json" in df.columns:
        convs = [[tuple(t) for t in json.loads(c)] for c in df["conversations_json"]]
        ext = [json.loads(e) if e else None for e in df["extended_json"]]
        conversations = [{"conversation": c, "extended": e} for c, e in zip(convs, ext)]
        captions = [{"conversation": c[:1], "extended": None} for c in convs]
        return InstructionData(ids, captions, conversations, None)
    if "findings_json" not in df.columns:
        raise ValueError(f"{manifest}: neither findings_json (phantom) nor conversations_json (LLaVA-Med) columns")
    missing = [c for c in caption_columns if c not in df.columns]
    if missing:
        raise ValueError(f"{manifest}: caption column(s) {missing} missing")
    findings = [findings_from_json(f) for f in df["findings_json"]]
    weights = prevalence(findings)
    conversations = []
    for fs, s in zip(findings, seeds):
        turns_ = study_conversation(fs, s, turns, absent_weights=weights)
        conversations.append({"conversation": [(t.question, t.answer) for t in turns_],
                              "extended": [t.extended for t in turns_], "keys": [(t.kind, t.key) for t in turns_]})
    texts = [" ".join(str(row[c]).strip() for c in caption_columns if str(row[c]).strip())
             for _, row in df[list(caption_columns)].iterrows()]
    captions = [{"conversation": caption_conversation(t, s), "extended": None} for t, s in zip(texts, seeds)]
    return InstructionData(ids, captions, conversations, findings)


def fraction_indices(n: int, fraction: float, seed: int = 0) -> list[int]:
    """The first ⌈fraction·n⌉ of a seeded permutation of range(n) (at least 1), sorted: nested
    subsets, so 10 % ⊂ 40 % ⊂ 100 % for one seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    perm = np.random.default_rng([seed, 13]).permutation(n)
    return sorted(perm[: max(1, int(np.ceil(fraction * n - 1e-9)))].tolist())


class ConversationItems(Dataset):
    """Items for :class:`~medalign_lite.methods.exgramed.ConversationCollate`: ``frontal`` is the
    study's precomputed (standardised) patch tensor (P, D), or its image."""

    def __init__(self, images: torch.Tensor, study_ids: Sequence[str], records: Sequence[dict],
                 indices: Sequence[int] | None = None):
        if not len(images) == len(study_ids) == len(records):
            raise ValueError(f"{len(images)} images, {len(study_ids)} ids, {len(records)} records")
        self.images, self.ids, self.records = images, list(study_ids), list(records)
        self.indices = list(range(len(records))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        return {"study_id": self.ids[j], "frontal": self.images[j], **self.records[j]}


# --------------------------------------------------------------------------- stand-ins


def tokenizer_corpus(data: InstructionData, fmt) -> list[str]:
    """Texts the tiny LM's word tokenizer is built from: captions, every question, answer and
    extended answer of the training conversations, the prompt template and the VQA question
    templates (so that no question word is <unk>)."""
    from ..data.instructions import DESCRIBE_QUESTIONS, QA_NAMES

    texts = [c["conversation"][0][1] for c in data.captions]
    for rec in data.conversations:
        texts += [f"{q} {a}" for q, a in rec["conversation"]] + list(rec["extended"] or [])
    template = [f"{fmt.human} {fmt.image_start} {fmt.image_end} {fmt.assistant}", *DESCRIBE_QUESTIONS,
                ("what abnormality is seen? is this chest x-ray normal? which side is the on? how severe is the? "
                 "where is the? yes no none left right bilateral mild moderate severe"),
                *(f"is there {n}?" for n in QA_NAMES.values())]
    return texts + template * 3


def prepare_exgramed(exp: ExGraMedExperiment, train_manifest: str | Path, data: InstructionData, seed: int = 0,
                     device: str = "auto", progress: bool = False,
                     encoder_manifest=None) -> tuple[nn.Module, LLMConfig, dict]:
    """The frozen encoder and the LM of an experiment → (encoder, LLMConfig every run loads, info).

    For the tiny LM a word tokenizer of :func:`tokenizer_corpus` is built (cached), and the LM is
    pre-trained on text only — per study its caption, its extended answers joined, and its
    questions joined, never a question beside its answer — by :func:`~medalign_lite.experiments.s2d.prepare_s2d`, which also makes the
    ConVIRT-aligned encoder (the same cache entry as ``s2d_tiny``'s at the same settings). A real
    LLM and encoder are loaded as configured. ``encoder_manifest``: what the encoder aligns on
    (a path or a list, e.g. IU-Phantom + IU-Phantom-extra; default ``train_manifest``)."""
    from ..text.tokenizer import cached_word_tokenizer
    from .s2d import prepare_s2d

    llm = exp.llm
    texts = [c["conversation"][0][1] for c in data.captions]
    if llm.name == "tiny":
        tok = cached_word_tokenizer(tokenizer_corpus(data, exp.model.prompt_format()), "exgramed_words",
                                    vocab_size=exp.data.vocab_size, min_frequency=exp.data.min_frequency)
        llm = replace(llm, tokenizer=str(tok.name_or_path))
        for rec in data.conversations:  # per study: its extended answers, and its questions (apart)
            texts += [" ".join(rec["extended"] or []), " ".join(q for q, _ in rec["conversation"])]
        texts = [t for t in texts if t.strip()]
    encoder, llm_cfg, info = prepare_s2d(replace(exp, llm=llm), encoder_manifest or train_manifest, texts, seed=seed,
                                         device=device, progress=progress)
    return encoder, llm_cfg, info


# --------------------------------------------------------------------------- training


def build_model(vision: nn.Module, llm: LLMConfig, config: ExGraMedConfig, seed: int) -> ExGraMed:
    """An :class:`ExGraMed` on ``vision`` with the LM of ``llm``, its new weights seeded."""
    from ..models.llm import load_causal_lm

    torch.manual_seed(seed)
    lm, tok = load_causal_lm(llm)
    return ExGraMed(vision, lm, tok, config, llm)


def train_stage1(model: ExGraMed, items: Dataset, train: TrainConfig, output_dir: str | Path, seed: int = 0,
                 device: str = "auto") -> tuple[dict[str, torch.Tensor], list[dict]]:
    """LLaVA-Med's stage 1 through the trainer (``train.stages[0]``: the projector alone on the
    captions, no alignment) → (the projector's weights, the metrics rows)."""
    cfg = replace(train, output_dir=str(output_dir), seed=seed, device=device, stages=list(train.stages[:1]))
    res = Trainer(model, items, cfg, collate_fn=model.collate()).fit(resume=False)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith("projector.")}
    return state, res.history


def answer_questions(model: ExGraMed, images: torch.Tensor, index: Sequence[int], questions: Sequence[str],
                     batch_size: int = 64, **overrides) -> list[str]:
    """Greedy answers to ``questions`` about ``images[index[k]]`` (patches or images), in batches."""
    from ..utils import module_device

    dev = module_device(model)
    out: list[str] = []
    for s in range(0, len(questions), batch_size):
        idx = torch.as_tensor(list(index[s:s + batch_size]))
        out += model.generate(images[idx].to(dev), list(questions[s:s + batch_size]), **overrides)
    return out


# --------------------------------------------------------------------------- the mechanism, checked


def _permutations(n: int) -> torch.Tensor:
    import itertools

    return torch.stack([torch.eye(n, dtype=torch.float64)[list(p)] for p in itertools.permutations(range(n))])


def imle_gradient_check(n: int = 4, tau: float = 0.5, samples: int = 50_000, lams: Sequence[float] = (0.5, 2.0, 10.0, 80.0),
                        h: float = 0.05, seed: int = 0) -> dict:
    """The blackbox / I-MLE gradient of the Hamming loss against finite differences of its
    Gumbel-smoothed expectation, on an n×n linear assignment (exact MAP by enumerating the n!
    permutations; common random numbers). Returns ``{"fd" (n, n), "grads": {λ: (n, n)},
    "cosines": {λ: cos}, "theta"}``: the estimate the training uses, one perturbation per
    sample, averaged over ``samples``."""
    from ..methods.exgramed import blackbox_surrogate, gumbel, hamming

    perms = _permutations(n)

    def oracle(u, quad=None):
        flat = u.reshape(-1, n, n).double()
        best = torch.einsum("bij,kij->bk", flat, perms).argmin(-1)
        return perms[best].reshape(u.shape).to(u.dtype)

    theta = 0.5 * torch.randn(1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    eye = torch.eye(n, dtype=torch.float64)
    eps = gumbel((samples, 1, n, n), tau, generator=torch.Generator().manual_seed(seed + 1)).double()
    smooth = lambda th: float(hamming(oracle(th + eps), eye).mean())
    fd = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            e = torch.zeros(1, n, n, dtype=torch.float64)
            e[0, i, j] = h
            fd[i, j] = (smooth(theta + e) - smooth(theta - e)) / (2 * h)
    grads, cosines = {}, {}
    for lam in lams:
        th = theta.clone().requires_grad_()
        loss, _, _ = blackbox_surrogate(th, None, eye, eps, lam=float(lam), solver=oracle)
        g, = torch.autograd.grad(loss.mean(), th)
        grads[float(lam)] = g[0].numpy()
        cosines[float(lam)] = float(torch.nn.functional.cosine_similarity(g.flatten(), fd.flatten(), dim=0))
    return {"fd": fd.numpy(), "grads": grads, "cosines": cosines, "theta": theta[0].numpy()}


def solver_noise_curve(sigmas: Sequence[float] = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0), n: int = 16, d: int = 32,
                       trials: int = 40, k: int = 5, seed: int = 0) -> dict:
    """Matching accuracy of ``lap`` and ``ipfp`` against noise: a graph of n random nodes H
    (d-dim) and a permuted noisy copy G = Π H + σ ε, each with its own kNN graph; accuracy =
    the fraction of nodes matched to their true partner, over ``trials`` problems solved at
    once. Returns ``{"sigma": [...], "lap": [...], "ipfp": [...]}``."""
    from ..methods.exgramed import (
        QuadraticCost,
        edge_weights,
        ipfp,
        knn_graph,
        lap,
        unary_cost,
    )

    g = torch.Generator().manual_seed(seed)
    out = {"sigma": [float(s) for s in sigmas], "lap": [], "ipfp": []}
    for s in sigmas:
        hh = torch.randn(trials, n, d, generator=g)
        perm = torch.stack([torch.randperm(n, generator=g) for _ in range(trials)])
        gg = torch.gather(hh, 1, perm[..., None].expand(-1, -1, d)) + s * torch.randn(trials, n, d, generator=g)
        truth = torch.argsort(perm, dim=1)                          # node i of H is node truth[i] of G
        g1, g2 = knn_graph(hh, k), knn_graph(gg, k)
        q = QuadraticCost.from_graphs(hh, gg, edge_weights(hh, g1), edge_weights(gg, g2), g1.adjacency, g2.adjacency)
        u = unary_cost(hh, gg)
        for name, x in (("lap", lap(u)), ("ipfp", ipfp(u, q))):
            out[name].append(float((x.argmax(-1) == truth).float().mean()))
    return out
