"""Seeds × variants: running them, sharing their common stages, side by side, in one table.

A *variant* is a named change of a method's configuration (``experiments/aga.py``,
``experiments/s2d.py`` hold each method's table). This module runs a grid of them and
summarises it, whatever the method:

1. :func:`summary_table` — one row per variant (or system): mean and sample std over seeds of
   each score, and the number of seeds. Every ablation table of the notebooks is this table.
2. :func:`run_variants` — the contrastive methods' grid (ConVIRT, GLoRIA, AGA and its
   ablations): every variant once per seed, trained one after the other on one in-memory
   training set and scored on one gallery (:mod:`medalign_lite.experiments.contrastive`).
3. **Branching from shared stage checkpoints** (a CPU-budget measure for multi-stage runs such
   as S2D-ALIGN's curriculum). Variants whose stage lists begin with the same stages on the same
   model are not trained from scratch each: the first run that reaches the end of a stage leaves
   a trainer checkpoint, and a later variant that starts with the same stages copies that
   checkpoint (and the metrics rows before it) into its own run folder and *resumes* from it
   (:func:`branch_into`, then ``Trainer.fit(resume=True)``). The trainer's exact resume (same
   seed, same data order, restored RNG states; :mod:`medalign_lite.train`) makes the branch the
   very computation the variant would have run alone. :func:`find_branch` picks the finished run
   with the longest shared prefix; a method may declare that another model's checkpoint converts
   to its own (S2D: shared → independent memory banks).
4. **Chains and the worker pool.** :func:`plan_chains` splits the (seed, variant) jobs into
   chains that share no stage prefix with each other; :func:`run_chains` runs the chains one
   after the other or in spawned CPU worker processes. Every chain runs with ``threads``
   intra-op threads whichever way it runs (default: the current count divided among the
   workers). A CPU's float reductions depend on the thread count, so the numbers depend on
   ``threads``, and with ``threads`` given not on ``workers``: ``workers=1, threads=1`` and
   ``workers=2, threads=1`` give the same runs (tested).
"""
from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.dataset import ManifestDataset
from ..train import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    Stage,
    load_weights,
    replace_checkpoint_weights,
)
from ..utils import torch_threads

__all__ = [
    "FinishedRun",
    "RetrievalCurve",
    "RunResult",
    "branch_into",
    "find_branch",
    "intra_op_threads",
    "mean_std_table",
    "plan_chains",
    "run_chains",
    "run_variants",
    "shared_prefix",
    "shared_text_encoder",
    "stage_checkpoints",
    "summary_table",
]


# --------------------------------------------------------------------------- 1. the table


def summary_table(rows: Sequence[dict], keys: Sequence[str], by: str = "variant"):
    """A DataFrame with one row per ``by`` value (first-seen order): ``<key> mean`` and
    ``<key> std`` for each key (sample std, ddof 1: NaN for one seed), and ``n`` (rows, i.e.
    seeds). ``rows`` are flat dicts with ``by`` and the keys (a missing key is NaN)."""
    import pandas as pd

    df = pd.DataFrame([{by: r[by], **{k: r.get(k, np.nan) for k in keys}} for r in rows])
    if df.empty:
        return df
    order = list(dict.fromkeys(df[by]))
    g = df.groupby(by, sort=False)[list(keys)]
    table = g.mean().add_suffix(" mean").join(g.std(ddof=1).add_suffix(" std"))
    table["n"] = g.size()
    return table.loc[order, [c for k in keys for c in (f"{k} mean", f"{k} std")] + ["n"]]


def mean_std_table(table, keys: Sequence[str], digits: int = 3):
    """:func:`summary_table` as text to print: ``mean ± std`` per key (the mean alone for one
    seed) and ``seeds``."""
    import pandas as pd

    def pm(m, sd):
        return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")

    out = pd.DataFrame({k: [pm(m, sd) for m, sd in zip(table[f"{k} mean"], table[f"{k} std"])] for k in keys},
                       index=table.index)
    out["seeds"] = table["n"]
    return out


# --------------------------------------------------------------------------- 2. contrastive grid


@dataclass
class RunResult:
    """One trained contrastive variant: its recipe, model, training history and retrieval
    scores (``retrieval``: :func:`~medalign_lite.experiments.contrastive.retrieval_eval`, with
    ``per_query`` hits for the claims rule). With a learning curve, the history's evaluation rows
    hold ``eval/<key>`` (:class:`RetrievalCurve`): :meth:`curve` reads them."""

    name: str
    seed: int
    recipe: object
    model: nn.Module | None
    history: list[dict]
    retrieval: dict
    seconds: float
    encoded_texts: int = 0  # reports this run's frozen text encoder encoded itself (0: all cached or shared)

    def row(self) -> dict:
        """``{"variant", "seed", <every scalar retrieval score>}``: a row of :func:`summary_table`."""
        return {"variant": self.name, "seed": self.seed,
                **{k: v for k, v in self.retrieval.items() if isinstance(v, (int, float))}}

    def curve(self, key: str = "val_i2t_P@5") -> tuple[list[int], list[float]]:
        """(optimizer steps, values) of the learning curve's ``key`` (empty without a curve)."""
        rows = [r for r in self.history if f"eval/{key}" in r]
        return [int(r["global_step"]) for r in rows], [float(r[f"eval/{key}"]) for r in rows]


class RetrievalCurve:
    """A learning curve's evaluation: class P@K both ways on a *validation* gallery (never the
    test gallery), called by the trainer every ``eval_every`` steps and at the end
    (``eval_fn``). Returns ``{"val_i2t_P@K": …, "val_t2i_P@K": …}``. A class, not a closure, so
    that worker processes receive it."""

    def __init__(self, gallery: ManifestDataset, ks: Sequence[int] = (5,), label_column: str = "class"):
        self.gallery, self.ks, self.label_column = gallery, tuple(ks), label_column

    def __call__(self, model: nn.Module) -> dict:
        from .ceiling import LabelCeiling, ceiling_retrieval
        from .contrastive import retrieval_eval

        if isinstance(model, LabelCeiling):  # the supervised ceiling: image→image, ``val_i2i_P@K``
            s = ceiling_retrieval(model, self.gallery, ks=self.ks, label_column=self.label_column)
            return {f"val_{k}": float(v) for k, v in s.items()}
        s = retrieval_eval(model, None, 0, ks=self.ks, label_column=self.label_column, dataset=self.gallery)
        return {f"val_{d}_P@{k}": float(s[f"{d}_P@{k}"]) for d in ("i2t", "t2i") for k in self.ks}


#: This process's frozen, feature-caching text encoders, by text config (one per process: the
#: notebook's and each worker's), so that every run of a grid encodes each report once.
_TEXT_ENCODERS: dict[str, nn.Module] = {}


def shared_text_encoder(text_config, pool: dict[str, nn.Module] | None = None) -> nn.Module:
    """The frozen text encoder of ``text_config`` that every ``cache_text`` run in this process
    shares (built on first use; ``pool``: another dict to keep it in)."""
    from ..models.text import build_text_encoder

    pool = _TEXT_ENCODERS if pool is None else pool
    key = repr(text_config)
    if key not in pool:
        pool[key] = build_text_encoder(text_config)
    return pool[key]


@dataclass
class _Grid:
    """What every contrastive job of a grid needs (sent once per job to a worker)."""

    variants: dict
    manifest: object
    gallery_manifest: object
    output_dir: Path
    train_dataset: ManifestDataset | dict | None
    gallery_dataset: ManifestDataset | None
    keep: set
    ks: tuple
    curve: RetrievalCurve | None
    eval_every: int
    return_state: bool
    text_encoders: dict | None = None
    text_groups: dict | None = None  # name -> _TextGroup (cache_text runs only)
    feature_dir: str | None = None   # where group leaders publish their text features (workers only)


@dataclass(frozen=True)
class _TextGroup:
    """The ``cache_text`` runs that read one training set through one text config: ``index``
    orders the groups, ``leader`` is the group's first (seed, variant) job, ``config`` the text
    config's ``repr`` (the shared encoder's key)."""

    index: int
    leader: tuple[int, str]
    config: str


def _text_groups(variants: dict, jobs: Sequence[tuple[int, str]], train_dataset) -> dict[str, _TextGroup]:
    """``{variant: its _TextGroup}`` for the ``cache_text`` variants (a ceiling reads no text);
    groups numbered in the order of their first job."""
    from .ceiling import SupervisedCeiling

    groups: dict[tuple, _TextGroup] = {}
    out = {}
    for seed, name in jobs:
        job = variants[name]
        if isinstance(job, SupervisedCeiling) or not job.cache_text or name in out:
            continue
        data = train_dataset.get(name) if isinstance(train_dataset, dict) else train_dataset
        key = (repr(job.text), id(data))
        if key not in groups:
            groups[key] = _TextGroup(len(groups), (seed, name), repr(job.text))
        out[name] = groups[key]
    return out


def _feature_file(directory: str, group: _TextGroup) -> Path:
    return Path(directory) / f"text_features_{group.index}.safetensors"


#: (folder, group index) of the published features this process has read already.
_ADOPTED: set[tuple[str, int]] = set()


def _adopt_text_features(text: nn.Module, directory: str, group: _TextGroup, groups: dict) -> None:
    """Load the features that the leaders of ``group`` and of every earlier group with the same
    text config published (rows already held are kept; each file is read once per process)."""
    from safetensors.torch import load_file

    for g in sorted({g for g in groups.values() if g.config == group.config and g.index <= group.index},
                    key=lambda g: g.index):
        if (directory, g.index) not in _ADOPTED and _feature_file(directory, g).exists():
            text.load_cache_state(load_file(str(_feature_file(directory, g))))
            _ADOPTED.add((directory, g.index))


def _complete_and_publish(text: nn.Module, train, batch_size: int, directory: str | None, group: _TextGroup,
                          held: int) -> None:
    """A group leader, after its run: encode the training reports its run did not meet (in
    dataset order: a short run sees only some), then publish the rows it added to the ``held``
    it started with — the earlier groups' files hold the rest — for the group's other runs
    (written to a temporary name, then renamed: a reader never sees half a file)."""
    if train is not None:
        texts = list(train.texts)
        for s in range(0, len(texts), batch_size):
            text.encode(texts[s:s + batch_size])
    if directory is not None:
        from safetensors.torch import save_file

        path = _feature_file(directory, group)
        tmp = path.with_suffix(".tmp")
        save_file(text.cache_state(since=held), str(tmp))
        tmp.replace(path)
        _ADOPTED.add((directory, group.index))  # this process holds them already


def _run_contrastive_chain(grid: _Grid, jobs: Sequence[tuple[int, str]],
                           on_result: Callable[[RunResult], None] | None = None) -> list[tuple[RunResult, dict | None]]:
    """Train and score the (seed, variant) ``jobs`` one after the other → [(result, the kept
    model's state dict when ``return_state``, else None)]."""
    from .ceiling import SupervisedCeiling, build_ceiling, ceiling_retrieval, train_ceiling
    from .contrastive import build_model, retrieval_eval, train_alignment

    out = []
    for seed, name in jobs:
        job = grid.variants[name]
        ceiling = isinstance(job, SupervisedCeiling)
        r = replace(job.recipe if ceiling else job, seed=seed)
        t0 = time.perf_counter()
        train = grid.train_dataset.get(name) if isinstance(grid.train_dataset, dict) else grid.train_dataset
        run_dir = Path(grid.output_dir) / f"{name}_s{seed}"
        group, encoded = None, 0
        if ceiling:
            model = build_ceiling(r, job.uncertain)
            res = train_ceiling(model, grid.manifest, r, run_dir, dataset=train, eval_fn=grid.curve,
                                eval_every=grid.eval_every)
            gallery = grid.gallery_dataset or ManifestDataset(grid.gallery_manifest, split=None, image_size=r.image_size)
            scores = ceiling_retrieval(model.eval(), gallery, ks=grid.ks)
        else:
            text = shared_text_encoder(r.text, grid.text_encoders) if r.cache_text else None
            group = (grid.text_groups or {}).get(name)
            if group is not None:  # (build_model turns the cache on; adopting turns it on first)
                if grid.feature_dir is not None:
                    _adopt_text_features(text, grid.feature_dir, group, grid.text_groups)
                held = text.cached_rows
            model = build_model(r, text_encoder=text)
            res = train_alignment(model, grid.manifest, r, run_dir, dataset=train, eval_fn=grid.curve,
                                  eval_every=grid.eval_every)
            scores = retrieval_eval(model, grid.gallery_manifest, r.image_size, ks=grid.ks,
                                    dataset=grid.gallery_dataset)
            if group is not None:
                if group.leader == (seed, name):
                    _complete_and_publish(text, train, r.batch_size, grid.feature_dir, group, held)
                encoded = text.cached_rows - held
        keep = seed in grid.keep
        state = None
        if keep and grid.return_state:  # the shared frozen text encoder stays behind
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()
                     if not (r.cache_text and k.startswith("text_encoder."))}
        result = RunResult(name, seed, r, model if keep and not grid.return_state else None, res.history, scores,
                           time.perf_counter() - t0, encoded)
        out.append((result, state))
        if on_result is not None:
            on_result(result)
        del model
    return out


def run_variants(variants: dict, seeds: Sequence[int], manifest, gallery_manifest: str | Path,
                 output_dir: str | Path, train_dataset: ManifestDataset | dict | None = None,
                 gallery_dataset: ManifestDataset | None = None, keep_models: Sequence[int] | None = None,
                 on_result: Callable[[RunResult], None] | None = None, ks: Sequence[int] = (1, 5, 10),
                 text_encoders: dict[str, nn.Module] | None = None, workers: int = 1, threads: int | None = None,
                 curve: RetrievalCurve | None = None, eval_every: int = 0) -> list[RunResult]:
    """Train every variant once per seed and score it on the gallery.

    ``variants`` maps a name to an :class:`~medalign_lite.experiments.contrastive.AlignmentRecipe`
    (its ``seed`` is replaced by each of ``seeds``), or to a
    :class:`~medalign_lite.experiments.ceiling.SupervisedCeiling` (the same encoder trained on the
    labels, in the same pool; its ``retrieval`` holds image→image ``i2i_P@K``, its curve
    ``val_i2i_P@K``); ``manifest`` is the training manifest (or
    the list :func:`~medalign_lite.experiments.contrastive.training_manifests` gives). Models of
    the seeds in ``keep_models`` (default: the first of ``seeds``) are returned for plotting; the
    others are dropped after scoring to keep memory flat. Runs write under
    ``output_dir/<name>_s<seed>``. Results come seed by seed, variants in their given order.
    ``train_dataset``: the training set every variant reads (e.g. in memory), or a dict giving
    some variants their own (another report style); a variant without one reads ``manifest``.

    **Shared text encoder.** Recipes with ``cache_text`` and the same text config share one frozen
    text encoder per process, so each report is encoded once for the whole grid
    (:func:`shared_text_encoder`; ``text_encoders``: a dict of the caller's to keep them in,
    filled in place, in this process). The runs that read one training set through one text
    config form a *group*; its first run in grid order (the *leader*) encodes the reports as its
    batches meet them, then the training reports it did not meet, and every other run of the
    group reads those features. A report's features depend on the batch it was encoded in (float
    rounding of padded shapes), so this rule — not the order in which workers happen to pick up
    runs — decides them.

    **Workers.** Every (seed, variant) run is independent: with ``workers`` > 1 they train in
    that many spawned processes (:func:`run_chains`), each run with ``threads`` intra-op threads
    (default: this process's count shared among the workers). ``train_dataset`` and
    ``gallery_dataset`` travel to the workers with what their item caches hold. The group
    leaders run first, one after the other (each reads the features of the leaders before it),
    beside the runs that read no text (the supervised ceilings); each leader publishes the
    features it encoded (safetensors, in a temporary folder removed at the end) and the rest of its
    group starts once it has, so the reports are encoded once for the grid, not once per worker.
    With ``threads`` given the numbers do not depend on ``workers`` (a CPU's float reductions
    depend on the thread count): ``workers=1`` runs the grid in order and meets the same rule
    (when its shared encoder holds nothing yet: features a caller's ``text_encoders`` already
    holds are used as they are).
    Each result's ``encoded_texts`` says how many reports its run encoded itself.

    **Learning curves.** ``curve`` (a :class:`RetrievalCurve` on a validation gallery) is
    evaluated every ``eval_every`` optimizer steps and at the end of training; each result's
    :meth:`RunResult.curve` reads it.
    """
    if not seeds:
        raise ValueError("seeds is empty")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    keep = set(seeds[:1] if keep_models is None else keep_models)
    jobs = [(seed, name) for seed in seeds for name in variants]
    parallel = workers > 1 and len(jobs) > 1
    groups = _text_groups(variants, jobs, train_dataset)
    grid = _Grid(dict(variants), manifest, gallery_manifest, Path(output_dir), train_dataset, gallery_dataset, keep,
                 tuple(ks), curve, int(eval_every), parallel, None if parallel else text_encoders, groups)
    if not parallel:
        pairs = run_chains(functools.partial(_run_contrastive_chain, grid, on_result=on_result), [jobs],
                           workers=1, threads=threads)
    else:
        import tempfile

        def done(res):
            for result, _ in res:
                if on_result is not None:
                    on_result(result)

        # every group leader first (each after the one before), then the runs without text
        # (ceilings), then the other runs, each after its group's leader has published
        leaders = sorted({g.leader: g for g in groups.values()}.values(), key=lambda g: g.index)
        lead = {g.leader for g in leaders}
        order = ([g.leader for g in leaders] + [j for j in jobs if j[1] not in groups]
                 + [j for j in jobs if j[1] in groups and j not in lead])
        at = {j: i for i, j in enumerate(order)}

        def parent(job):
            g = groups.get(job[1])
            if g is None:
                return None
            if job != g.leader:
                return at[g.leader]
            return at[leaders[g.index - 1].leader] if g.index else None

        after = [parent(j) for j in order]
        with tempfile.TemporaryDirectory(prefix="medalign-text-features-") as feature_dir:
            grid = replace(grid, feature_dir=feature_dir if groups else None)
            pairs = run_chains(functools.partial(_run_contrastive_chain, grid), [[j] for j in order], workers=workers,
                               threads=threads, on_done=done, after=after)
    order = {j: i for i, j in enumerate(jobs)}
    out = []
    for result, state in sorted(pairs, key=lambda p: order[(p[0].seed, p[0].name)]):
        if state is not None:  # rebuilt here around this process's shared text encoder
            from .ceiling import SupervisedCeiling, build_ceiling
            from .contrastive import build_model

            r, job = result.recipe, variants[result.name]
            if isinstance(job, SupervisedCeiling):
                model = build_ceiling(r, job.uncertain)
            else:
                model = build_model(r, text_encoder=shared_text_encoder(r.text, text_encoders) if r.cache_text else None)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("text_encoder.") for k in missing):
                raise RuntimeError(f"{result.name} seed {result.seed}: the worker's weights do not fit the rebuilt "
                                   f"model (missing {missing[:3]}, unexpected {unexpected[:3]})")
            result.model = model
        out.append(result)
    return out


# --------------------------------------------------------------------------- 3. branching


def shared_prefix(a: Sequence[Stage], b: Sequence[Stage]) -> int:
    """How many leading stages two stage lists share (equal :class:`Stage` dataclasses)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def stage_checkpoints(run_dir: Path) -> dict[int, Path]:
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


@dataclass
class FinishedRun:
    """A finished trainer run the next variants may branch from: the variant, its seed, the
    model options it was built with, its stages, its folder and its stage checkpoints."""

    variant: str
    seed: int
    options: dict
    stages: list[Stage]
    run_dir: Path
    checkpoints: dict[int, Path]


#: ``convertible(src_options, dst_options, dst_stages)`` → how many leading stages of another
#: model's run carry over after converting its weights, or None when they do not.
Convertible = Callable[[dict, dict, Sequence[Stage]], "int | None"]


def find_branch(done: Sequence[FinishedRun], seed: int, options: dict, stages: Sequence[Stage],
                convertible: Convertible | None = None) -> tuple[FinishedRun | None, int, bool]:
    """The finished run of ``seed`` sharing the longest checkpointed stage prefix with
    (``options``, ``stages``) → (run, k stages, convert). Same model options: any shared prefix;
    other options: only where ``convertible`` allows (then ``convert`` is True)."""
    best, best_k, best_conv = None, 0, False
    for d in done:
        if d.seed != seed:
            continue
        k = shared_prefix(d.stages, stages)
        convert = False
        if d.options != options:
            limit = convertible(d.options, options, stages) if convertible is not None else None
            if limit is None:
                continue
            k, convert = min(k, limit), True
        k = max((i + 1 for i in range(k) if i in d.checkpoints), default=0)
        if k > best_k:
            best, best_k, best_conv = d, k, convert
    return best, best_k, best_conv


def branch_into(src: FinishedRun, k: int, run_dir: Path,
                convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> dict:
    """Copy the checkpoint closing stage ``k - 1`` of ``src`` (and its metrics rows) into
    ``run_dir`` so that ``fit(resume=True)`` continues from it; ``convert`` maps its weights to
    the new model's. Returns ``{"variant", "stages", "stage", "global_step", "seconds",
    "converted"}`` (``seconds``: the training time taken over)."""
    ckpt = src.checkpoints[k - 1]
    dst = run_dir / "checkpoints" / ckpt.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ckpt, dst)
    state = json.loads((ckpt / TRAINER_STATE).read_text())
    if convert is not None:
        replace_checkpoint_weights(dst, convert(load_weights(dst / WEIGHTS)))
    rows = []
    metrics = src.run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [line for line in metrics.read_text().splitlines()
                if line.strip() and json.loads(line).get("global_step", 0) <= state["global_step"]]
    (run_dir / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
    return {"variant": src.variant, "stages": k, "stage": src.stages[k - 1].name, "global_step": state["global_step"],
            "seconds": float(state.get("elapsed", 0.0)), "converted": convert is not None}


# --------------------------------------------------------------------------- 4. chains and workers


def plan_chains(order: Sequence[str], seeds: Sequence[int], options_of: Callable[[str], dict],
                stages_of: Callable[[str], list[Stage]], reuse_prefixes: bool = True,
                convertible: Convertible | None = None) -> list[list[tuple[int, str]]]:
    """The (seed, variant) jobs split into chains that share no stage prefix with each other.

    Variants run in ``order`` (put the longest trunks first, so that the others can branch from
    them). Within a chain the jobs run in that order in one process, so every branch finds the
    run it branches from (:func:`find_branch`, assuming every stage checkpointed); different
    chains are independent computations and may run in parallel. Chains come in order of their
    first job, seed by seed."""
    chains: list[list[tuple[int, str]]] = []
    for seed in seeds:
        by_variant: dict[str, list[tuple[int, str]]] = {}
        done: list[FinishedRun] = []
        for v in order:
            options, stages = options_of(v), stages_of(v)
            src = find_branch(done, seed, options, stages, convertible)[0] if reuse_prefixes else None
            chain = by_variant[src.variant] if src is not None else []
            if src is None:
                chains.append(chain)
            chain.append((seed, v))
            by_variant[v] = chain
            done.append(FinishedRun(v, seed, options, stages, Path(), {i: Path() for i in range(len(stages))}))
    return chains


def intra_op_threads(workers: int, threads: int | None = None) -> int:
    """The torch intra-op threads each chain runs with: ``threads``, else the current count
    shared among ``workers`` (at least 1)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return int(threads)
    return max(1, torch.get_num_threads() // max(1, workers))


def _in_worker(run_chain: Callable, chain, threads: int):
    torch.set_num_threads(threads)
    return run_chain(chain)


def run_chains(run_chain: Callable[[list], list], chains: list[list], workers: int = 1, threads: int | None = None,
               cost: Callable[[list], float] | None = None, on_done: Callable[[list], None] | None = None,
               after: Sequence[int | None] | None = None) -> list:
    """``run_chain(chain)`` for every chain → the concatenated results.

    ``workers`` = 1 runs the chains here one after the other; more spawns that many CPU worker
    processes (``run_chain`` and the chains must pickle: a module-level function, or a
    ``functools.partial`` of one). Either way each chain runs with :func:`intra_op_threads`
    threads: with ``threads`` given, results do not depend on ``workers``. ``on_done`` is called
    here with each chain's results as it finishes (in completion order with workers, so sort the
    results afterwards if order matters). ``after[i]``: the index of a chain that must have
    finished before chain ``i`` starts (None: none).

    Scheduling (workers > 1; only the wall time depends on it): whenever a worker is free it
    starts the first *ready* chain (its ``after`` done) in the order of ``cost``, the highest
    first (without ``cost``: the given order), so a chain that becomes ready late still goes
    before cheaper ones. With one worker the chains run in their given order, each once its
    ``after`` is done.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    after = list(after) if after is not None else [None] * len(chains)
    if len(after) != len(chains):
        raise ValueError(f"after has {len(after)} entries for {len(chains)} chains")
    for i in range(len(chains)):  # every chain's line of predecessors must end: no cycle
        j, seen = after[i], 0
        while j is not None:
            if not 0 <= j < len(chains) or seen > len(chains):
                raise ValueError(f"after[{i}] leads to {j}: not a chain index, or a cycle")
            j, seen = after[j], seen + 1
    n = intra_op_threads(workers, threads)
    ordered = sorted(range(len(chains)), key=lambda i: -cost(chains[i])) if cost is not None else list(range(len(chains)))
    out: list = []
    if workers == 1 or len(chains) <= 1:
        with torch_threads(n):
            finished: set[int] = set()
            while len(finished) < len(chains):
                i = next(i for i in range(len(chains)) if i not in finished and (after[i] is None or after[i] in finished))
                res = run_chain(chains[i])
                finished.add(i)
                if on_done is not None:
                    on_done(res)
                out.extend(res)
        return out
    import functools
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    size = min(workers, len(chains))
    with ProcessPoolExecutor(max_workers=size, mp_context=mp.get_context("spawn")) as pool:
        running, waiting, finished = {}, list(ordered), set()

        def fill():  # never more chains in the pool than workers: the pool's own queue is FIFO
            while len(running) < size:
                i = next((i for i in waiting if after[i] is None or after[i] in finished), None)
                if i is None:
                    return
                waiting.remove(i)
                running[pool.submit(functools.partial(_in_worker, run_chain, chains[i], n))] = i

        fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                res = f.result()
                finished.add(i)
                if on_done is not None:
                    on_done(res)
                out.extend(res)
            fill()
    return out
