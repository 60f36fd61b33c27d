"""ExGra-Med's driver: train the variants, answer Phantom-VQA, add the floors and the ceiling,
and read the results as tables and decided claims (the configuration, data, stand-ins and
mechanism checks: :mod:`medalign_lite.experiments.exgramed`).

:func:`run_exgramed` makes the data and the stand-ins, trains stage 1 once per seed, trains every
variant's stage 2 (side by side in worker processes, :func:`~medalign_lite.experiments.variants.run_chains`),
answers every VQA question with each trained model and scores it
(:mod:`medalign_lite.eval.vqa`), and adds

- the **majority** answer of each question template and the **question prior** (the majority
  answer of the very question text): the floors, what the words alone know
  (:func:`majority_answers`);
- a **supervised probe** on the frozen pooled features the LM reads: the ceiling, what a
  supervised reader of the same features gets (:func:`probe_answers`).

:class:`ExGraMedResults` turns that into the notebook's table and metrics;
:func:`exgramed_claims` and :func:`baseline_claims` decide the paper's orderings and the
issue's checks with the one claims rule; :func:`alignment_snapshots` gives a batch's graphs and
matchings before and after stage 2.
"""
from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..eval.vqa import score_vqa, vqa_contributions
from ..methods.exgramed import ExGraMed, ExGraMedConfig
from ..models.llm import LLMConfig
from ..train import TrainConfig, Trainer
from .claims import Claim, vqa_claim
from .exgramed import (
    CLAIMS,
    PAPER_VQA_RAD,
    VARIANTS,
    ConversationItems,
    ExGraMedExperiment,
    answer_questions,
    build_model,
    fraction_indices,
    load_instruction_data,
    prepare_exgramed,
    train_stage1,
)

__all__ = [
    "TEMPLATES",
    "ExGraMedResults",
    "VariantRun",
    "alignment_snapshots",
    "baseline_claims",
    "exgramed_claims",
    "majority_answers",
    "probe_answers",
    "run_exgramed",
]


# --------------------------------------------------------------------------- baselines


#: Question kinds a reader cannot tell apart from the question's wording ("is there X?").
TEMPLATES = {"presence": "is_there", "absence": "is_there"}


def majority_answers(conversations: Sequence[dict], table, per_question: bool = False) -> list[str]:
    """Text-only floors for each VQA question (phantom data, whose training records carry
    ``keys``): the most frequent training answer of the question's *template* (presence and
    absence questions share "is there X?"; the "majority answer"), or with ``per_question`` of
    the very question text (what the question alone knows, finding included; the template's
    answer where the question was never asked). Real data (no kinds): the majority yes / no of
    the training answers for closed questions, "none" for open ones."""
    by_template: dict[str, Counter] = {}
    by_question: dict[str, Counter] = {}
    for rec in conversations:
        for (kind, key), (q, _) in zip(rec.get("keys", ()), rec["conversation"]):
            by_template.setdefault(TEMPLATES.get(kind, kind), Counter())[key] += 1
            by_question.setdefault(q, Counter())[key] += 1
    if by_template and "kind" in table and table["kind"].notna().all():
        out = []
        for kind, q in zip(table["kind"], table["question"]):
            c = by_question.get(q) if per_question else None
            c = c or by_template.get(TEMPLATES.get(kind, kind))
            out.append(c.most_common(1)[0][0] if c else "none")
        return out
    closed = Counter(a.strip().lower()[:3].rstrip(",. ") for rec in conversations for _, a in rec["conversation"]
                     if a.strip().lower().startswith(("yes", "no")))
    top = closed.most_common(1)[0][0] if closed else "no"
    return [top if t == "CLOSED" else "none" for t in table["answer_type"]]


def probe_answers(train_features: torch.Tensor, train_findings: Sequence, eval_features: torch.Tensor,
                  eval_table, majority: Sequence[str], seed: int = 0) -> list[str]:
    """The ceiling: logistic regressions on the frozen pooled features (what the LM reads),
    trained on the training studies' findings — one per finding kind with ≥ 5 positives, and
    "any finding" — answer the presence / absence / normality questions and list the kinds
    predicted present for "what abnormality"; side and severity questions take ``majority``."""
    from sklearn.linear_model import LogisticRegression

    from ..data.instructions import QA_NAMES

    x = train_features.numpy().astype(np.float64)
    xe = eval_features.numpy().astype(np.float64)
    kinds = sorted({f.kind for fs in train_findings for f in fs})
    probs: dict[str, np.ndarray] = {}
    for k in kinds + ["__any__"]:
        y = np.array([bool(fs) if k == "__any__" else any(f.kind == k for f in fs) for fs in train_findings])
        if y.sum() >= 5 and (~y).sum() >= 5:
            clf = LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced", random_state=seed).fit(x, y)
            probs[k] = clf.predict_proba(xe)[:, 1]
    name_to_kind = {QA_NAMES[k]: k for k in QA_NAMES}
    out = []
    for j, (kind, q, idx) in enumerate(zip(eval_table["kind"], eval_table["question"], eval_table["index"])):
        if kind in ("presence", "absence"):
            asked = next((name_to_kind[n] for n in sorted(name_to_kind, key=len, reverse=True) if f"is there {n}?" == q),
                         None)
            p = probs.get(asked)
            out.append(majority[j] if p is None else ("yes" if p[idx] > 0.5 else "no"))
        elif kind == "normal":
            p = probs.get("__any__")
            out.append(majority[j] if p is None else ("no" if p[idx] > 0.5 else "yes"))
        elif kind == "abnormality":
            present = [QA_NAMES[k].split(" ", 1)[-1] if QA_NAMES[k].startswith(("a ", "an ")) else QA_NAMES[k]
                       for k in kinds if k in probs and probs[k][idx] > 0.5]
            out.append(" and ".join(present) if present else "none")
        else:
            out.append(majority[j])
    return out


# --------------------------------------------------------------------------- results


@dataclass
class VariantRun:
    """One trained variant (one seed): its history, answers, scores and per-question
    contributions ((N, 4), :func:`~medalign_lite.eval.vqa.vqa_contributions`; ``strict`` with
    the first-word closed rule)."""

    name: str
    seed: int
    n_train: int
    history: list[dict]
    answers: list[str]
    scores: dict
    contributions: np.ndarray
    seconds: dict
    model: ExGraMed | None = None
    strict: np.ndarray | None = None      # the same with the strict closed rule


@dataclass
class ExGraMedResults:
    """Every run and baseline of :func:`run_exgramed`, on the same VQA questions."""

    runs: list[VariantRun]
    baselines: dict[str, dict]            # name → {"answers", "scores", "contributions"}
    questions: object                     # the VQA table (a DataFrame)
    stage1_history: dict[int, list[dict]]
    setup_seconds: dict
    info: dict = field(default_factory=dict)   # the stand-ins (encoder, LM) as prepare_exgramed says
    stage1_state: dict[int, dict] = field(default_factory=dict)  # seed → the projector after stage 1
    parts: dict = field(default_factory=dict)  # vision, llm, model_config, train_images, data, vqa_images

    def snapshot_batch(self, n: int = 16, seed: int = 0):
        """A fixed batch of ``n`` training conversations (seeded) collated for ``model``'s tokenizer."""
        data, images = self.parts["data"], self.parts["train_images"]
        idx = sorted(np.random.default_rng([seed, 99]).choice(len(data.conversations), size=n, replace=False).tolist())
        return ConversationItems(images, data.study_ids, data.conversations, idx)

    def stage1_model(self, seed: int = 0) -> ExGraMed:
        """The model every variant of ``seed`` starts stage 2 from: the projector trained in stage 1,
        LoRA and GNN at their seeded initial values (ExGra-Med's options)."""
        p = self.parts
        model = build_model(p["vision"], p["llm"], replace(p["model_config"], **VARIANTS["exgramed@100"].config_changes),
                            seed)
        model.load_state_dict(self.stage1_state[seed], strict=False)
        return model.eval()

    def by_variant(self) -> dict[str, list[VariantRun]]:
        out: dict[str, list[VariantRun]] = {}
        for r in self.runs:
            out.setdefault(r.name, []).append(r)
        return out

    def table(self, keys: Sequence[str] = ("closed_accuracy", "closed_accuracy_strict", "open_recall", "average")):
        """Mean ± std over seeds of each score per variant, the baselines below (a DataFrame)."""
        from .variants import summary_table

        rows = [{"variant": r.name, **r.scores} for r in self.runs]
        rows += [{"variant": n, **b["scores"]} for n, b in self.baselines.items()]
        return summary_table(rows, keys)

    def metrics(self) -> dict:
        """Flat numbers for ``metrics.json``: ``vqa/<variant>/seed<s>/<score>``, seed means, baselines."""
        out: dict = {}
        for r in self.runs:
            for k, v in r.scores.items():
                out[f"vqa/{r.name}/seed{r.seed}/{k}"] = v
            out[f"train/{r.name}/seed{r.seed}/n_studies"] = r.n_train
            out[f"seconds/{r.name}/seed{r.seed}"] = r.seconds
        for name, rs in self.by_variant().items():
            for k in rs[0].scores:
                out[f"vqa/{name}/{k}_mean"] = float(np.mean([r.scores[k] for r in rs]))
        for name, b in self.baselines.items():
            for k, v in b["scores"].items():
                out[f"vqa/{name}/{k}"] = v
        return out


def exgramed_claims(results: ExGraMedResults, metric: str = "average", seed: int = 0) -> list[Claim]:
    """The paper's orderings (:data:`CLAIMS`) among the variants that ran, decided by the claims
    rule on ``metric`` (``"average"`` of closed accuracy and open recall, ``"closed"``, ``"open"``)."""
    by = results.by_variant()
    out = []
    for a, b, name in CLAIMS:
        if a in by and b in by:
            c = vqa_claim([r.contributions for r in by[a]], [r.contributions for r in by[b]], metric, name=name,
                          a_name=a, b_name=b, seed=seed, paper=(PAPER_VQA_RAD[a], PAPER_VQA_RAD[b]))
            out.append(c)
    return out


def baseline_claims(results: ExGraMedResults, variant: str = "exgramed@100", metric: str = "closed",
                    seed: int = 0, strict: bool = False) -> list[Claim]:
    """``variant`` against the majority floor and the probe ceiling, and against the α = 0
    baseline of the same fraction (closed accuracy by default: the issue's number; ``strict``:
    with the first-word closed rule instead of LLaVA-Med's substring rule)."""
    by = results.by_variant()
    if variant not in by:
        return []
    key = "strict" if strict else "contributions"
    rule = " (strict)" if strict else ""
    mine = [getattr(r, key) for r in by[variant]]
    out = []
    for other in ("majority", "probe"):
        if other in results.baselines:
            out.append(vqa_claim(mine, [results.baselines[other][key]], metric, name=f"{variant} > {other}{rule}",
                                 a_name=variant, b_name=other + rule.replace(" (", "_").rstrip(")"), seed=seed))
    base = variant.replace("exgramed", "llava_med")
    if base != variant and base in by:
        out.append(vqa_claim(mine, [getattr(r, key) for r in by[base]], metric, name=f"{variant} > {base}{rule}",
                             a_name=variant, b_name=base + rule.replace(" (", "_").rstrip(")"), seed=seed))
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class _Context:
    """What a worker needs to train and score variants (pickled into spawned processes)."""

    vision: nn.Module
    llm: LLMConfig
    model_config: ExGraMedConfig
    train: TrainConfig
    train_images: torch.Tensor
    study_ids: list[str]
    conversations: list[dict]
    stage1: dict[int, dict]               # seed → projector weights
    vqa_images: torch.Tensor
    vqa_index: list[int]
    vqa_questions: list[str]
    vqa_answers: list[str]
    vqa_types: list[str]
    out_root: Path
    device: str
    eval_batch_size: int
    keep: frozenset
    progress: bool | None


def _run_chain(ctx: _Context, jobs: Sequence[tuple[int, str]]) -> list[tuple[VariantRun, dict | None]]:
    """Stage 2 and VQA for the (seed, variant) jobs, one after another → [(run, state or None)]."""
    out = []
    for seed, name in jobs:
        v = VARIANTS[name]
        model = build_model(ctx.vision, ctx.llm, replace(ctx.model_config, **v.config_changes), seed)
        model.load_state_dict(ctx.stage1[seed], strict=False)
        idx = fraction_indices(len(ctx.conversations), v.fraction, seed)
        items = ConversationItems(ctx.train_images, ctx.study_ids, ctx.conversations, idx)
        run_dir = ctx.out_root / f"{name}_s{seed}"
        cfg = replace(ctx.train, output_dir=str(run_dir), seed=seed, device=ctx.device, stages=list(ctx.train.stages[1:]))
        t = time.perf_counter()
        res = Trainer(model, items, cfg, collate_fn=model.collate()).fit(resume=False)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        model.eval()
        answers = answer_questions(model, ctx.vqa_images, ctx.vqa_index, ctx.vqa_questions, ctx.eval_batch_size)
        gen_s = time.perf_counter() - t
        contrib = vqa_contributions(answers, ctx.vqa_answers, ctx.vqa_types)
        strict = vqa_contributions(answers, ctx.vqa_answers, ctx.vqa_types, strict=True)
        run = VariantRun(name, seed, len(idx), res.history, answers, score_vqa(answers, ctx.vqa_answers, ctx.vqa_types),
                         contrib, {"train": round(train_s, 2), "answer": round(gen_s, 2)}, strict=strict)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()} if (name, seed) in ctx.keep else None
        out.append((run, state))
    return out


def run_exgramed(exp: ExGraMedExperiment, train_manifest: str | Path, vqa_manifest: str | Path,
                 output_dir: str | Path, variants: Sequence[str] = tuple(VARIANTS), seeds: Sequence[int] = (0,),
                 device: str = "auto", vqa_limit: int | None = None, workers: int = 1, threads: int | None = None,
                 keep_models: Sequence[str] = ("exgramed@100",), progress: bool | None = None,
                 on_result: Callable[[VariantRun], None] | None = None, encoder_manifest=None) -> ExGraMedResults:
    """The whole experiment (module docstring) → :class:`ExGraMedResults`.

    Args:
        exp: the configuration (:func:`load_exgramed_experiment`).
        train_manifest: IU-Phantom (its training split) or a LLaVA-Med instruction manifest.
        encoder_manifest: what the ConVIRT stand-in encoder aligns on (default ``train_manifest``;
            notebook 03: IU-Phantom + IU-Phantom-extra, ``exp.extra_studies``).
        vqa_manifest: Phantom-VQA (or any manifest with ``qa_json``; its test split, else all rows).
        variants: names of :data:`VARIANTS`; seeds: one run of each per seed.
        vqa_limit: score the questions of the first N VQA studies only (None: all).
        workers: CPU processes training variants side by side (threads each: ``threads``).
        keep_models: variants whose trained model (first seed) is returned on the run.
    """
    from ..data.builders.vqa import vqa_items
    from ..data.dataset import ManifestDataset
    from ..data.manifest import load_manifest
    from ..utils import resolve_device
    from .generation import PrecomputedPatches, encode_dataset, patch_statistics
    from .variants import run_chains

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ExGra-Med variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not seeds:
        raise ValueError("seeds is empty")
    if workers > 1 and resolve_device(device).type != "cpu":
        raise ValueError(f"workers={workers} runs CPU processes side by side; on {device} use workers=1")
    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    setup: dict[str, float] = {}

    t = time.perf_counter()
    data = load_instruction_data(train_manifest, exp.data.turns, seeds[0], exp.data.caption_columns)
    vdf = load_manifest(vqa_manifest)
    if "test" in set(vdf["split"]):
        vdf = vdf[vdf["split"] == "test"].reset_index(drop=True)
    if vqa_limit:
        vdf = vdf.iloc[: int(vqa_limit)].reset_index(drop=True)
    table = vqa_items(vdf)
    setup["data"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    encoder, llm, info = prepare_exgramed(exp, train_manifest, data, seeds[0], device, progress=bool(progress),
                                          encoder_manifest=encoder_manifest)
    setup["stand_ins"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    size = exp.vision.image_size
    train_set = ManifestDataset(train_manifest, split="train", image_size=size, text_columns=())
    vqa_set = ManifestDataset(vdf, split=None, image_size=size, text_columns=())
    tr_pooled, tr_patches, grid = encode_dataset(encoder, train_set)
    ev_pooled, ev_patches, _ = encode_dataset(encoder, vqa_set)
    mean, std = patch_statistics(tr_patches) if exp.standardize else (None, None)
    if exp.standardize:
        tr_patches, ev_patches = (tr_patches - mean) / std, (ev_patches - mean) / std
    vision = PrecomputedPatches(encoder.cpu(), grid, mean, std)
    setup["features"] = round(time.perf_counter() - t, 2)

    # stage 1, once per seed
    stage1, stage1_hist = {}, {}
    captions = ConversationItems(tr_patches, data.study_ids, data.captions)
    t = time.perf_counter()
    for s in seeds:
        model = build_model(vision, llm, exp.model, s)
        stage1[s], stage1_hist[s] = train_stage1(model, captions, exp.train, out_root / f"stage1_s{s}", s, device)
        del model
    setup["stage1"] = round(time.perf_counter() - t, 2)

    ctx = _Context(vision=vision, llm=llm, model_config=exp.model, train=exp.train, train_images=tr_patches,
                   study_ids=data.study_ids, conversations=data.conversations, stage1=stage1, vqa_images=ev_patches,
                   vqa_index=list(table["index"]), vqa_questions=list(table["question"]),
                   vqa_answers=list(table["answer"]), vqa_types=list(table["answer_type"]), out_root=out_root,
                   device=device, eval_batch_size=exp.eval_batch_size,
                   keep=frozenset((v, seeds[0]) for v in keep_models), progress=progress)
    order = sorted(variants, key=lambda v: -VARIANTS[v].fraction)     # the longest runs first
    chains = [[(s, v)] for s in seeds for v in order]
    runs: list[VariantRun] = []

    def done(res):
        for run, state in res:
            if state is not None:
                m = build_model(vision, llm, replace(exp.model, **VARIANTS[run.name].config_changes), run.seed)
                m.load_state_dict(state)
                run.model = m.eval()
            runs.append(run)
            if on_result is not None:
                on_result(run)

    t = time.perf_counter()
    run_chains(functools.partial(_run_chain, ctx), chains, workers=workers, threads=threads,
               cost=lambda c: VARIANTS[c[0][1]].fraction, on_done=done)
    setup["variants"] = round(time.perf_counter() - t, 2)
    runs.sort(key=lambda r: (seeds.index(r.seed), list(variants).index(r.name)))

    # baselines on the same questions
    maj = majority_answers(data.conversations, table)
    baselines = {"majority": _baseline(maj, table),
                 "question_prior": _baseline(majority_answers(data.conversations, table, per_question=True), table)}
    if data.findings is not None:
        probe = probe_answers(tr_pooled, data.findings, ev_pooled, table, maj, seeds[0])
        baselines["probe"] = _baseline(probe, table)
    parts = {"vision": vision, "llm": llm, "model_config": exp.model, "train_images": tr_patches, "data": data,
             "vqa_images": ev_patches}
    return ExGraMedResults(runs, baselines, table, stage1_hist, setup, info, stage1, parts)


def _baseline(answers: Sequence[str], table) -> dict:
    truth, types = list(table["answer"]), list(table["answer_type"])
    return {"answers": list(answers), "scores": score_vqa(answers, truth, types),
            "contributions": vqa_contributions(answers, truth, types),
            "strict": vqa_contributions(answers, truth, types, strict=True)}


def alignment_snapshots(results: ExGraMedResults, variant: str = "exgramed@100", n: int = 16, seed: int = 0) -> dict:
    """The graphs and matchings of one fixed batch of ``n`` training conversations before stage 2
    (the stage-1 model: trained projector, initial LoRA and GNN) and after it (``variant``'s kept
    model), without noise (β = 0) and in eval mode: ``{"before", "after"}`` →
    :class:`~medalign_lite.methods.exgramed.AlignmentOutput` (``after`` absent when the variant's
    model was not kept)."""
    items = results.snapshot_batch(n, seed)
    out = {}
    models = {"before": results.stage1_model(seed)}
    run = next((r for r in results.runs if r.name == variant and r.model is not None), None)
    if run is not None:
        models["after"] = run.model
    for name, model in models.items():
        batch = model.collate()([items[i] for i in range(len(items))])
        beta = model.aligner.noise_scale
        model.aligner.noise_scale = 0.0
        try:
            out[name] = model.eval().align_batch(batch)
        finally:
            model.aligner.noise_scale = beta
    return out
