"""S2D-ALIGN's experiment driver: train the variants, generate, score, add baselines, and
read the results as tables and decided claims.

:func:`run_s2d_variants` takes the variants of :mod:`medalign_lite.experiments.s2d` (their
stages derived from the config's curriculum), trains them with the shared-prefix branching and
the worker pool of :mod:`medalign_lite.experiments.variants`, generates a report for every
evaluation study from its image alone (batched beam search, :meth:`S2D.generate`), scores them
(:func:`~medalign_lite.experiments.generation.score_reports`) and adds the nearest-neighbour and
majority-report baselines. :class:`S2DResults` turns that into the notebook's tables
(:meth:`S2DResults.ablation_table`) and the paper's orderings decided by the one claims rule
(:func:`s2d_claims`, :func:`baseline_claims`).
"""
from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data.dataset import Collate
from ..methods.s2d import S2D, S2DConfig
from ..models.llm import LLMConfig, load_causal_lm
from ..train import Stage, TrainConfig, Trainer
from .claims import Claim, ce_claim
from .generation import (
    PatchItems,
    PrecomputedPatches,
    ReportCurve,
    encode_dataset,
    generate_reports,
    image_features,
    majority_report,
    nearest_neighbour_reports,
    patch_statistics,
    score_reports,
)
from .s2d import (
    PAPER_CE_F1,
    VARIANT_LABELS,
    VARIANTS,
    _convertible,
    independent_memory_state,
    load_s2d_experiment,
    variant_model_options,
    variant_stages,
)
from .variants import (
    FinishedRun,
    branch_into,
    find_branch,
    mean_std_table,
    plan_chains,
    run_chains,
    shared_prefix,
    stage_checkpoints,
    summary_table,
)

__all__ = [
    "ABLATION_KEYS",
    "TABLE_ORDER",
    "BaselineResult",
    "S2DResults",
    "VariantRun",
    "baseline_claims",
    "pairwise_agreement",
    "run_s2d_variants",
    "s2d_claims",
]

#: The scores of the ablation table.
ABLATION_KEYS: tuple[str, ...] = ("ce_micro_f1_u0", "ce_macro_f1_u0", "ce5_macro_f1_u0", "ce_example_f1_u0",
                                  "BLEU_4", "ROUGE_L")
#: The paper's order of the ablation rows (its CE F1, high to low), then the baselines.
TABLE_ORDER: tuple[str, ...] = ("progressive", "independent_memory", "reversed", "without_stage3", "mlp_projector",
                                "joint", "single_stage", "nearest_neighbour", "majority")


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
        scores: :func:`~medalign_lite.experiments.generation.score_reports` on the common subset
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
    _labels: tuple | None = field(default=None, repr=False, compare=False)

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
        rows = []
        for r in self.runs:
            s = r.full_scores if full else r.scores
            if s is not None:
                rows.append({"system": r.name, "seed": r.seed, **{k: s[k] for k in keys if k in s}})
        for b in self.baselines.values():
            s = b.full_scores if full else b.scores
            rows.append({"system": b.name, "seed": 0, **{k: s[k] for k in keys if k in s}})
        return summary_table(rows, keys, by="system")

    def ablation_table(self, keys: Sequence[str] = ABLATION_KEYS):
        """The paper's Tables 3–4 beside ours: one row per variant and baseline in
        :data:`TABLE_ORDER`, the paper's CE F1, ``mean ± std`` of each key over seeds (the mean
        alone for one seed) on the common subset, and the number of seeds."""
        import numpy as np

        summary = self.summary(keys)
        order = [v for v in TABLE_ORDER if v in summary.index]
        shown = mean_std_table(summary.loc[order], keys)
        shown.insert(0, "paper CE F1", [PAPER_CE_F1.get(v, np.nan) for v in order])
        shown.index = [VARIANT_LABELS.get(v, v) for v in order]
        return shown

    def metrics(self) -> dict:
        """Flat numbers for ``metrics.json``: ``test/<system>/<key>`` (whole evaluation set,
        with ``per_observation``), ``ablation/<variant>/seed<s>/<key>`` and
        ``ablation/<variant>/<key>_mean`` / ``_std`` (common subset), seconds per run. The
        ``test/`` scores of a variant are its first seed's."""
        import numpy as np

        out: dict = {}
        first = min((r.seed for r in self.runs), default=None)  # whole-set scores: the first seed's
        systems = {**{r.name: r.full_scores for r in self.runs if r.full_scores is not None and r.seed == first},
                   **{n: b.full_scores for n, b in self.baselines.items()}}
        for n, sc in systems.items():
            for k, v in sc.items():
                out[f"test/{n}/{k}"] = {o: round(x, 4) for o, x in v.items()} if k == "per_observation" else round(float(v), 4)
        for r in self.runs:
            for k, v in r.scores.items():
                if k != "per_observation":
                    out[f"ablation/{r.name}/seed{r.seed}/{k}"] = round(float(v), 4)
            for k, v in r.seconds.items():
                out[f"seconds/{r.name}/seed{r.seed}/{k}"] = v
        summary = self.summary(ABLATION_KEYS)
        for v in summary.index:
            for k in ABLATION_KEYS:
                out[f"ablation/{v}/{k}_mean"] = round(float(summary.loc[v, f"{k} mean"]), 4)
                out[f"ablation/{v}/{k}_std"] = round(float(np.nan_to_num(summary.loc[v, f"{k} std"])), 4)
        return out

    def subset_labels(self) -> tuple:
        """Rule-labeler labels of the references on the common subset, and of every run's
        reports there: (ref (n, 14), {(variant, seed): (n, 14)}), computed once and kept."""
        if getattr(self, "_labels", None) is None:
            from ..text.labeler import label_reports

            ref = label_reports([self.references[i] for i in self.subset])
            hyp = {}
            for r in self.runs:
                by_idx = dict(zip(r.indices, r.reports))
                hyp[(r.name, r.seed)] = label_reports([by_idx[i] for i in self.subset])
            self._labels = (ref, hyp)
        return self._labels


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
    curve: object = None
    curve_variants: tuple[str, ...] = ()
    eval_every: int = 0



def _score(ctx: _Context, refs: Sequence[str], hyps: Sequence[str], whole: bool) -> tuple[dict, float]:
    t = time.perf_counter()
    s = score_reports(list(refs), list(hyps), meteor=bool(ctx.meteor) if ctx.meteor != "full" else whole)
    return s, time.perf_counter() - t



def _build(ctx: _Context, options: dict, seed: int) -> S2D:
    torch.manual_seed(seed)
    lm, tok = load_causal_lm(ctx.llm)
    return S2D(ctx.vision, lm, tok, replace(ctx.model_config, **options), ctx.llm)



def _run_chain(ctx: _Context, jobs: Sequence[tuple[int, str]], return_state: bool = False,
               on_result: Callable[[VariantRun], None] | None = None) -> list[tuple[VariantRun, dict | None]]:
    """Train, generate and score the (seed, variant) ``jobs`` one after another (branching from
    each other's checkpoints) → [(run, trained state dict or None)]. ``return_state`` (worker
    processes): kept models come back as state dicts, not modules."""
    sub, references = ctx.subset, ctx.references
    done: list[FinishedRun] = []
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
            src, k, convert = find_branch(done, seed, options, stages, _convertible)
            if src is not None:
                branched = branch_into(src, k, run_dir, functools.partial(independent_memory_state,
                                                                          fresh_independent=model) if convert else None)
        curve = ctx.curve if variant in ctx.curve_variants else None
        cfg = TrainConfig(output_dir=str(run_dir), batch_size=ctx.batch_size, seed=seed, precision=ctx.precision,
                          device=ctx.device, log_every=ctx.log_every, save_weights=ctx.save_weights, stages=stages,
                          eval_every=ctx.eval_every if curve is not None else 0)
        t = time.perf_counter()
        res = Trainer(model, ctx.train_items, cfg, collate_fn=Collate(), eval_fn=curve).fit(resume=branched is not None)
        train_s = time.perf_counter() - t
        done.append(FinishedRun(variant, seed, options, stages, run_dir, stage_checkpoints(run_dir)))
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



def run_s2d_variants(variants: Sequence[str], train_dataset, eval_dataset, vision_encoder: nn.Module,
                     llm: LLMConfig, model_config: S2DConfig, output_dir: str | Path,
                     curriculum: Sequence[Stage] | None = None,
                     seeds: Sequence[int] = (0,), batch_size: int = 16, precision: str = "auto",
                     device: str = "auto", log_every: int = 5,
                     cache_patches: bool = True, standardize: bool = True, subset: int | Sequence[int] | None = None,
                     full_eval: Sequence[str] = ("progressive",), eval_batch_size: int = 64,
                     generation: dict | None = None, meteor: bool | str = "full", baselines: bool = True,
                     reuse_prefixes: bool = True, keep_models: Sequence[str] = ("progressive",),
                     save_weights: str = "trained", keep_checkpoints: bool = True, on_result: Callable[[VariantRun], None] | None = None,
                     progress: bool | None = None, workers: int = 1, threads: int | None = None,
                     curve_dataset=None, curve_size: int = 100, curve_variants: Sequence[str] = ("progressive",),
                     eval_every: int = 0) -> S2DResults:
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
        curriculum: the progressive curriculum's three stages (an :class:`S2DExperiment`'s
            ``train.stages``; default ``s2d_tiny.yaml``'s), from which :func:`variant_stages`
            derives every variant's stages.
        seeds: one run of every variant per seed (model init, data order, dropout).
        batch_size, precision, device, log_every, save_weights: trainer settings
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
        baselines: add ``nearest_neighbour`` and ``majority`` (:mod:`medalign_lite.experiments.generation`).
        reuse_prefixes: branch variants from shared stage prefixes (False: every variant from
            scratch, e.g. to check that both give the same numbers).
        keep_models: variants whose model of ``seeds[0]`` is returned.
        on_result: called with each :class:`VariantRun` when it is done (with ``workers`` > 1,
            when its chain is done).
        workers: CPU processes that train independent chains of variants side by side
            (:func:`~medalign_lite.experiments.variants.plan_chains`: variants that branch from
            each other stay in one chain, and each seed is its own chain). On a small CPU model
            two threads in one process are slower than one, while two processes of one thread
            each use two cores fully. CPU only: on CUDA use 1.
        threads: torch intra-op threads of every chain, here or in a worker (default: the
            current count divided among the workers). Every run is seeded; with the same
            ``threads`` the numbers do not depend on ``workers`` (tested).
        curve_dataset: a validation split (like ``eval_dataset``): the first ``curve_size`` of
            its studies give ``curve_variants`` a learning curve — CE F1 of greedy reports every
            ``eval_every`` optimizer steps and at the end of each stage
            (:class:`~medalign_lite.experiments.generation.ReportCurve`; rows ``eval/val_ce_*``).

    Returns:
        :class:`S2DResults` (``summary()`` gives the table).
    """
    from ..utils import resolve_device

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
    curve = None
    if curve_dataset is not None:
        n = min(int(curve_size), len(curve_dataset))
        val_items = curve_dataset
        if cache_patches:
            _, val_patches, _ = encode_dataset(vision_encoder, curve_dataset)
            if standardize:
                val_patches = (val_patches - mean) / std
            val_items = PatchItems(curve_dataset, val_patches)
        curve = ReportCurve(Subset(val_items, range(n)), list(curve_dataset.texts)[:n], eval_batch_size,
                            **{k: v for k, v in (generation or {}).items() if k != "num_beams"})
    setup["features"] = time.perf_counter() - t0

    if curriculum is None:
        curriculum = load_s2d_experiment("s2d_tiny").train.stages
    stages_of = {v: variant_stages(v, curriculum) for v in variants}
    ctx = _Context(train_items=train_items, eval_items=eval_items, vision=vision, llm=llm, model_config=model_config,
                   out_root=out_root, stages_of=stages_of, references=references, subset=sub,
                   full_eval=tuple(full_eval), keep=frozenset((v, seeds[0]) for v in keep_models),
                   batch_size=batch_size, precision=precision, device=device, log_every=log_every,
                   save_weights=save_weights, reuse_prefixes=reuse_prefixes, keep_checkpoints=keep_checkpoints,
                   eval_batch_size=eval_batch_size, generation=dict(generation or {}), meteor=meteor,
                   progress=progress, curve=curve, curve_variants=tuple(curve_variants), eval_every=int(eval_every))

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

    chains = plan_chains(_plan(variants), seeds, variant_model_options, stages_of.__getitem__, reuse_prefixes,
                         _convertible)
    parallel = workers > 1 and len(chains) > 1

    def finished(pairs: list[tuple[VariantRun, dict | None]]) -> None:  # in this process
        for run, state in pairs:
            if state is not None:  # a worker's kept model, rebuilt here
                model = _build(ctx, variant_model_options(run.name), run.seed)
                model.load_state_dict(state)
                run.model = model.eval()
            if parallel and on_result is not None:
                on_result(run)

    chain_fn = functools.partial(_run_chain, ctx, return_state=parallel, on_result=None if parallel else on_result)
    pairs = run_chains(chain_fn, chains, workers, threads, cost=functools.partial(_chain_cost, stages_of=stages_of),
                       on_done=finished)
    # plan order, seed by seed, whatever order the chains finished in
    rank = {(s, v): (i, j) for i, s in enumerate(seeds) for j, v in enumerate(_plan(variants))}
    for run, _ in sorted(pairs, key=lambda p: rank[(p[0].seed, p[0].name)]):
        results.runs.append(run)
    return results



# --------------------------------------------------------------------------- claims


def s2d_claims(results: S2DResults, variants: Sequence[str] | None = None, averages: Sequence[str] = ("micro", "macro"),
               seed: int = 0) -> list[Claim]:
    """The paper's orderings, progressive above each ablation, decided on the common subset
    by the claims rule (paired bootstrap over the subset's studies of the seed-mean CE F1
    difference, and agreement of every seed; :mod:`medalign_lite.experiments.claims`), for
    each F1 average."""
    ref, hyp = results.subset_labels()
    by = results.by_variant()
    if "progressive" not in by:
        raise ValueError("s2d_claims: the progressive curriculum did not run")
    seeds = sorted(r.seed for r in by["progressive"])
    out = []
    for v in variants if variants is not None else [v for v in VARIANTS if v in by and v != "progressive"]:
        common = [s for s in seeds if (v, s) in hyp]
        for avg in averages:
            out.append(ce_claim(ref, [hyp[("progressive", s)] for s in common], [hyp[(v, s)] for s in common],
                                average=avg, name=f"progressive > {VARIANT_LABELS[v]}", a_name="progressive",
                                b_name=v, seed=seed, paper=(PAPER_CE_F1["progressive"], PAPER_CE_F1[v])))
    return out


def pairwise_agreement(results: S2DResults, average: str = "micro", seed: int = 0) -> dict:
    """Every pair of variants that ran, decided by the claims rule: how many are ordered (not
    undecided) and how many of those agree with the paper's ordering."""
    from itertools import combinations

    ref, hyp = results.subset_labels()
    by = results.by_variant()
    ran = [v for v in VARIANTS if v in by]
    agree = ordered = 0
    for a, b in combinations(ran, 2):
        common = sorted({r.seed for r in by[a]} & {r.seed for r in by[b]})
        c = ce_claim(ref, [hyp[(a, s)] for s in common], [hyp[(b, s)] for s in common], average=average,
                     name=f"{a} > {b}", a_name=a, b_name=b, seed=seed)
        if c.verdict != "undecided":
            ordered += 1
            agree += int((PAPER_CE_F1[a] > PAPER_CE_F1[b]) == (c.verdict == "holds"))
    n = len(ran) * (len(ran) - 1) // 2
    return {"pairs": n, "ordered": ordered, "agreeing": agree, "undecided": n - ordered}


def baseline_claims(results: S2DResults, baseline: str = "nearest_neighbour", seed: int = 0) -> list[Claim]:
    """Progressive above a baseline on the whole evaluation set (the variants reported there:
    ``full_eval``), CE micro F1, macro F1 and CE-5 macro F1, by the claims rule."""
    from ..eval.clinical import CHEXPERT_5
    from ..text.labeler import label_reports

    prog = [r for r in results.runs if r.name == "progressive" and r.full_scores is not None]
    if not prog:
        raise ValueError("baseline_claims: progressive was not scored on the whole evaluation set (full_eval)")
    ref = label_reports(results.references)
    a = [label_reports(r.reports) for r in sorted(prog, key=lambda r: r.seed)]
    b = [label_reports(results.baselines[baseline].reports)]
    out = []
    for avg, obs, metric in (("micro", None, "CE micro F1"), ("macro", None, "CE macro F1"),
                             ("macro", CHEXPERT_5, "CE-5 macro F1")):
        kw = {"observations": obs} if obs is not None else {}
        out.append(ce_claim(ref, a, b, average=avg, name=f"progressive > {baseline.replace('_', ' ')}",
                            a_name="progressive", b_name=baseline, metric=metric, seed=seed, **kw))
    return out
