"""``medalign bench all``: every registered method's benchmarks in one run, one dict keyed by
method, so that the cost ratios between methods come from one process on one machine at one
moment (this project's machines are shared: absolute times are only comparable within a run).

Which bench serves which method (:data:`DEDICATED`; every registered method also gets
``train_step``, :func:`~medalign_lite.bench.train_step.bench_train_step` at its tutorial config
``<name>_tiny``: trainable and total parameters, step time, peak memory):

====================  ===========================================================================
method                dedicated benches
====================  ===========================================================================
``convirt``           none (no local loss, no head beyond its projections): ``train_step`` only
``gloria``            ``gloria``: :func:`~.losses.bench_gloria`, its local loss at the reference
                      shape, the denominator of every ``vs_gloria``
``aga``               ``aga``: :func:`~.losses.bench_aga`, the head against ResNet-50 + BERT-base
``alta``              ``alta``: :func:`~.alta.bench_alta` (masked adapter step against unmasked full
                      fine-tuning); ``alta_local``: its local loss alone at its own T and P
``exgramed``          ``exgramed``: :func:`~.exgramed.bench_exgramed` (aligner and text passes
                      against the LM step); ``exgramed_aligner``: the aligner alone at the
                      reference B (:func:`~.exgramed.aligner_step`)
``s2d``               ``s2d_generate``: :func:`~.generation.bench_s2d_generate`; ``s2d_aligner``:
                      :func:`~.generation.bench_s2d_aligner` (SMA_v against Rad-DINO's shape)
====================  ===========================================================================

A method registered later and absent here gets ``train_step`` alone (or, without a
training-step setup, an entry saying why it was not profiled): every registered method has an
entry.

Ratios (each entry's ``ratios``):

- the head or aligner against the method's encoders: AGA ``head_share`` (head / encoders),
  ExGra-Med ``aligner_share`` and ``text_pass_share`` (against the LM step), ALTA
  ``step_ratio`` / ``flop_ratio`` / ``memory_ratio`` (masked adapter step / unmasked full
  fine-tuning step: time, counted FLOPs, peak memory),
  S2D ``aligner_share`` (SMA_v forward + backward / the frozen encoder's forward), GLoRIA
  ``head_share`` (its local loss / AGA's encoders, the same ResNet-50 + BERT-base at the same
  B, when ``aga`` ran too);
- ``vs_gloria``: the method's local loss or aligner (forward + backward) over GLoRIA's local
  loss, both at the reference batch B of :class:`AllShapes`, each at its own paper's other
  shapes (AGA: T = 97, P = 361, d = 128; ALTA: T = 128, P = 4 views × 49 unmasked patches,
  d = 128; ExGra-Med: 3 graphs of B nodes of width 4096; S2D: SMA_v on the encoder's patches);
  ConVIRT has no local loss (no ``vs_gloria``);
- from ``train_step`` at the tutorial config (every method): ``head_loss_share`` (the
  head/loss's share of a step) in ``cost``.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from .common import _device_name, load_avg, time_fn

__all__ = ["CPU_SHAPES", "DEDICATED", "PAPER_SHAPES", "AllShapes", "bench_all", "check_methods"]


@dataclass(frozen=True)
class AllShapes:
    """The shapes and budgets of one :func:`bench_all` run (defaults: the papers').

    ``batch_size`` is the reference B: GLoRIA's local loss, AGA's head and encoders, ALTA's local
    loss, ExGra-Med's aligner and S2D's SMA_v all run at it, so each ``vs_gloria`` compares the
    same number of pairs.
    """

    name: str = "paper"
    why: str = "the papers' shapes"
    batch_size: int = 48                  # B, the reference batch (GLoRIA, AGA: 48)
    tokens: int = 97                      # T of GLoRIA's and AGA's losses (97 words)
    patches: int = 361                    # P (ResNet-50 layer3 at 299 px: 19 x 19)
    gloria_dim: int = 768                 # D of GLoRIA's local loss (BERT's width)
    aga_dim: int = 128                    # d of AGA's head
    aga_vision: str = "timm:resnet50"     # AGA's (and GLoRIA's) image encoder, random weights
    aga_image_size: int = 299
    aga_text_hf_config: dict | None = None  # AGA's text encoder (None: BERT-base, random weights)
    encoder_batch: int | None = None      # images the encoders run on, extrapolated to B (None: B on CUDA)
    alta_config: str = "alta_full"        # ALTA's model shapes (ViT-B/16 MAE + BERT-base)
    alta_batch: int | None = None         # ALTA's training-step B (None: 24 on CUDA, 2 on a CPU)
    alta_tokens: int = 128                # ALTA's T (the code pads reports to 128)
    alta_text_hf_config: dict | None = None
    exgramed_dim: int = 4096              # ExGra-Med's node width (LLaMA-7B's hidden size)
    exgramed_paper: bool = True           # bench_exgramed's paper-shape aligner and 4096-wide layer
    exgramed_solver_batches: tuple[int, ...] = (16, 32, 64, 128)
    s2d_image_size: int = 518             # Rad-DINO's input (37 x 37 = 1369 patches)
    s2d_lm_hidden: int = 4096             # Vicuna-7B's hidden size
    s2d_vision_hf_config: dict | None = None  # None: RAD_DINO's shape
    s2d_reports: int = 256                # reports generated by bench_s2d_generate (tiny model)
    s2d_report_batch: int = 64
    train_steps: int = 10                 # measured steps per stage and run of bench_train_step
    train_warmup: int = 2
    train_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per method
    manifest: str | None = None           # train-step data (None: IU-Phantom at 224 px)
    repeats: int = 3                      # timed repeats of every timed function

    def describe(self) -> str:
        return (f"{self.name}: B = {self.batch_size}, T = {self.tokens}, P = {self.patches}, GLoRIA D = "
                f"{self.gloria_dim}; encoders on {self.encoder_batch or 'B'} image(s); ALTA {self.alta_config} "
                f"B = {self.alta_batch or 'default'}; S2D encoder at {self.s2d_image_size} px; "
                f"{self.train_steps} + {self.train_warmup} training steps per stage; {self.repeats} repeat(s)")


#: The papers' shapes, for a GPU.
PAPER_SHAPES = AllShapes()

#: On a CPU only the batch sizes, S2D's image side and the numbers of steps and repeats are
#: scaled down; every width, T and P stays the paper's.
CPU_SHAPES = replace(
    PAPER_SHAPES, name="cpu",
    why=("scaled down so that the whole run takes minutes on 2 CPU cores: GLoRIA's O(B^2 T P D) local loss "
         "at B = 48, D = 768 alone takes minutes there, and a ResNet-50 + BERT-base, a ViT-B/14 at 518 px or a "
         "full ViT-B/16 + BERT-base step seconds per image. Batches B = 8 (reference; paper 48), ALTA B = 1 "
         "(paper 24 per GPU), the encoders run on 1 image and are extrapolated per image (a CPU runs samples one "
         "after the other), S2D's encoder at 224 px (256 patches; paper 518 px, 1369), 3 training steps after 1 "
         "per stage, one timed repeat after one warm-up; widths, T and P stay the papers'"),
    batch_size=8, encoder_batch=1, alta_batch=1, s2d_image_size=224, s2d_reports=64, s2d_report_batch=32,
    train_steps=3, train_warmup=1, repeats=1)


#: Method → its dedicated benches, in the order they run (see the module docstring).
DEDICATED: dict[str, tuple[str, ...]] = {
    "gloria": ("gloria",),
    "aga": ("aga",),
    "alta": ("alta", "alta_local"),
    "exgramed": ("exgramed", "exgramed_aligner"),
    "s2d": ("s2d_generate", "s2d_aligner"),
}


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """The registered methods to run (``None``: all of them, in registration order); an unknown
    name is a ``ValueError`` naming it and the known ones."""
    from ..methods import list_methods

    known = list_methods()
    if methods is None:
        return known
    names = [m.strip() for m in methods if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(repr(m) for m in unknown)}; "
                         f"registered methods: {', '.join(known)}")
    if not names:
        raise ValueError(f"no method named; registered methods: {', '.join(known)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- the benches


def _gloria_reference(sh: AllShapes, device: str) -> dict:
    from .losses import bench_gloria

    res = bench_gloria((sh.batch_size,), sh.tokens, sh.patches, sh.gloria_dim, device=device, repeats=sh.repeats)
    return {**res, "seconds": res["points"][0]["seconds"], "peak_mib": res["points"][0]["peak_mib"]}


def _alta_local(sh: AllShapes, device: str) -> dict:
    """ALTA's local loss alone (GLoRIA's, with ALTA's learnt scales, on the unmasked patches
    of its four views), forward + backward, at the reference B and ALTA's T, P, d."""
    from ..config import load_config
    from ..methods.alta import ALTAConfig
    from ..models.vision import VisionConfig
    from .losses import _gloria_step

    cfg = load_config(ALTAConfig, sh.alta_config, section="model")
    hf = load_config(VisionConfig, sh.alta_config, section="vision").hf_config or {}
    grid = int(hf["image_size"]) // int(hf["patch_size"])
    kept = int(grid * grid * (1 - cfg.mask_ratio))        # the MAE keeps ⌊L·(1 − ratio)⌋ patches
    p = len(cfg.views) * kept
    dev = torch.device(device)
    sec = time_fn(_gloria_step(sh.batch_size, sh.alta_tokens, p, cfg.embed_dim, dev, torch.float32, cfg.local_chunk),
                  dev, repeats=sh.repeats)
    return {"name": "alta_local_loss", "B": sh.batch_size, "T": sh.alta_tokens, "P": p, "d": cfg.embed_dim,
            "views": len(cfg.views), "patches_per_view": kept, "mask_ratio": cfg.mask_ratio, "seconds": sec}


def _exgramed_aligner(sh: AllShapes, device: str) -> dict:
    from .exgramed import aligner_step

    dev = torch.device(device)
    sec = time_fn(aligner_step(sh.batch_size, sh.exgramed_dim, dev), dev, repeats=sh.repeats)
    return {"name": "exgramed_aligner", "B": sh.batch_size, "dim": sh.exgramed_dim, "solver": "ipfp", "seconds": sec}


def _run_bench(name: str, sh: AllShapes, device: str) -> dict:
    """One dedicated bench of :data:`DEDICATED` at ``sh``."""
    if name == "gloria":
        return _gloria_reference(sh, device)
    if name == "aga":
        from .losses import bench_aga

        # gloria_dims=(): GLoRIA's local loss is measured once, by the gloria bench, for every vs_gloria
        return bench_aga(sh.batch_size, sh.tokens, sh.patches, sh.aga_dim, gloria_dims=(), device=device,
                         dtypes=("float32",), repeats=sh.repeats, vision=sh.aga_vision, image_size=sh.aga_image_size,
                         text_hf_config=sh.aga_text_hf_config, encoder_batch=sh.encoder_batch)
    if name == "alta":
        from .alta import bench_alta

        return bench_alta(sh.alta_batch, sh.alta_tokens, device=device, repeats=sh.repeats, config=sh.alta_config,
                          text_hf_config=sh.alta_text_hf_config)
    if name == "alta_local":
        return _alta_local(sh, device)
    if name == "exgramed":
        from .exgramed import bench_exgramed

        return bench_exgramed(device=device, repeats=sh.repeats, batch_sizes=sh.exgramed_solver_batches,
                              paper=sh.exgramed_paper)
    if name == "exgramed_aligner":
        return _exgramed_aligner(sh, device)
    if name == "s2d_generate":
        from .generation import bench_s2d_generate

        return bench_s2d_generate(sh.s2d_reports, min(sh.s2d_report_batch, sh.s2d_reports), device=device,
                                  overrides=sh.train_overrides.get("s2d", ()))
    if name == "s2d_aligner":
        from .generation import bench_s2d_aligner

        return bench_s2d_aligner(sh.batch_size, sh.s2d_image_size, sh.s2d_lm_hidden,
                                 vision_hf_config=sh.s2d_vision_hf_config, encoder_batch=sh.encoder_batch,
                                 device=device, repeats=sh.repeats)
    raise ValueError(f"unknown bench {name!r}")


def _train_step(method: str, sh: AllShapes, device: str) -> dict:
    from .train_step import bench_train_step

    return bench_train_step(method, steps=sh.train_steps, warmup=sh.train_warmup,
                            overrides=sh.train_overrides.get(method, ()), manifest=sh.manifest, device=device)


# --------------------------------------------------------------------------- the summary


def _cost(ts: dict) -> dict:
    """The tutorial config's cost from a train-step result: its later (``second``) run, the
    last stage (S2D's third, with every SMA; ExGra-Med's only profiled stage). ``peak_mib`` is
    the larger of the two runs' peaks: on a CPU the second run reuses memory the first one
    freed without growing the resident set, so its own figure alone is a lower bound (it can
    read 0); the first run's includes the caches it fills (``peak_mib_runs`` has both)."""
    run = ts["runs"].get("second") or next(iter(ts["runs"].values()))
    stage, s = list(run.items())[-1]
    return {"config": ts["config"], "stage": stage, "batch_size": ts["batch_size"], "threads": ts["threads"],
            "trainable_params": s.get("trainable_params"), "params": ts.get("params"),
            "step_s": s["step_s"], "steps_per_s": s["steps_per_s"],
            "peak_mib": max(ts["peak_mib"].values()) if ts.get("peak_mib") else None,
            "peak_mib_runs": ts.get("peak_mib"), "head_loss_share": s["shares"]["head_loss"],
            "encoders_share": s["shares"]["encoders"]}


def _ratios(method: str, results: dict, ref: dict | None, aga: dict | None) -> dict:
    """The entry's ratios (module docstring) from its benches' results."""
    g = ref["seconds"] if ref else None
    r: dict = {}
    if method == "gloria":
        if aga and "encoders_s" in aga and g:
            r["head_share"] = g / aga["encoders_s"]   # same encoders (ResNet-50 + BERT-base), same B
    elif method == "aga" and "aga" in results:
        a = results["aga"]
        if "head_share" in a:
            r["head_share"] = a["head_share"]
        if g:
            r["vs_gloria"] = a["head_s"] / g
    elif method == "alta":
        if "alta" in results:
            for k in ("step_ratio", "flop_ratio", "memory_ratio", "trainable_fraction"):
                if k in results["alta"]:
                    r[k] = results["alta"][k]
        if "alta_local" in results and g:
            r["vs_gloria"] = results["alta_local"]["seconds"] / g
    elif method == "exgramed":
        if "exgramed" in results:
            r["aligner_share"] = results["exgramed"]["aligner_share"]
            r["text_pass_share"] = results["exgramed"]["text_pass_share"]
        if "exgramed_aligner" in results and g:
            r["vs_gloria"] = results["exgramed_aligner"]["seconds"] / g
    elif method == "s2d":
        if "s2d_aligner" in results:
            r["aligner_share"] = results["s2d_aligner"]["aligner_share"]
            if g:
                r["vs_gloria"] = results["s2d_aligner"]["aligner_s"] / g
        if "s2d_generate" in results:
            r["reports_per_s"] = results["s2d_generate"]["reports_per_s"]
    return r


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the benches'
    spawned measuring processes): on a shared machine, what the run cost whatever the load."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _finite(x):
    """NaN and infinities → None, so the result is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def bench_all(device: str = "cpu", methods: Sequence[str] | None = None, shapes: AllShapes | str | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Every registered method's benchmarks in one run (module docstring: which bench serves
    which method, and the ratios).

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        methods: registered method names (default: all); an unknown name is a ``ValueError``
            naming it and the known ones, raised before anything runs.
        shapes: an :class:`AllShapes`, ``"paper"`` or ``"cpu"`` (default: the papers' on
            CUDA, :data:`CPU_SHAPES` on a CPU, where the papers' take hours).
        log: called with one line as each bench starts and ends (default: stderr).

    Returns ``{"_meta": {...}, method: {"kind", "paper", "benches", "cost", "ratios",
    "results", "seconds"}, ...}``: ``_meta`` holds the device, torch's version, the date, the
    threads, the load average at the start and the end, the shapes (and why they are scaled
    down on a CPU), GLoRIA's reference local loss, the wall time and the CPU time (``cpu_s``,
    this process and its finished children: what a loaded machine inflates far less); ``results`` each bench's
    own result, ``cost`` the tutorial config's training step (:func:`_cost`), ``seconds`` the
    wall time of the method's benches. Non-finite numbers are ``None`` (strict JSON).
    """
    from ..methods import get_method
    from ..utils import resolve_device

    names = check_methods(methods)
    dev = resolve_device(device)
    device = str(dev)
    if shapes is None or shapes == "auto":
        shapes = PAPER_SHAPES if dev.type == "cuda" else CPU_SHAPES
    elif isinstance(shapes, str):
        presets = {"paper": PAPER_SHAPES, "cpu": CPU_SHAPES}
        if shapes not in presets:
            raise ValueError(f"unknown shapes {shapes!r}: choose auto, paper or cpu")
        shapes = presets[shapes]
    sh = shapes
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    t_start, cpu0 = time.perf_counter(), _cpu_seconds()
    meta: dict = {"device": _device_name(dev), "device_type": dev.type, "torch": torch.__version__,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "threads": torch.get_num_threads(),
                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "load_avg_start": load_avg(),
                  "methods": names, "shapes_name": sh.name, "shapes_why": sh.why,
                  "shapes": {k: v for k, v in asdict(sh).items() if k not in ("name", "why")}}
    if dev.type == "cpu" and sh.name == "paper":
        meta["shapes_why"] += " (on a CPU: expect hours)"

    def timed(label: str, fn: Callable[[], dict]) -> tuple[dict, float]:
        log(f"bench all: {label} ...")
        t0 = time.perf_counter()
        res = fn()
        sec = time.perf_counter() - t0
        log(f"bench all: {label} done in {sec:.1f} s (load average {load_avg()})")
        return res, sec

    ref, ref_s = None, 0.0
    if any(m in DEDICATED for m in names):
        ref, ref_s = timed("gloria local loss (the vs_gloria reference)", lambda: _run_bench("gloria", sh, device))
        meta["gloria_reference"] = {k: ref[k] for k in ("seconds", "peak_mib")} | {
            "B": sh.batch_size, "T": sh.tokens, "P": sh.patches, "D": sh.gloria_dim}
    out: dict = {"_meta": meta}
    aga_result = None
    for name in names:
        spec = get_method(name)
        entry: dict = {"kind": spec.kind, "paper": spec.paper, "benches": {}, "results": {}}
        seconds = 0.0
        for bench in DEDICATED.get(name, ()):
            if bench == "gloria":
                res, sec = ref, ref_s
            else:
                res, sec = timed(f"{name}: {bench}", lambda b=bench: _run_bench(b, sh, device))
            entry["benches"][bench] = _BENCH_FUNCTIONS[bench]
            entry["results"][bench] = res
            seconds += sec
        if name == "aga":
            aga_result = entry["results"].get("aga")
        try:
            ts, sec = timed(f"{name}: train_step", lambda n=name: _train_step(n, sh, device))
            entry["benches"]["train_step"] = _BENCH_FUNCTIONS["train_step"]
            entry["results"]["train_step"] = ts
            entry["cost"] = _cost(ts)
            seconds += sec
        except ValueError as e:
            if "no training-step setup" not in str(e):
                raise
            entry["cost"] = {"skipped": str(e)}
        entry["seconds"] = seconds
        out[name] = entry
    for name in names:  # after every bench: GLoRIA's head_share needs AGA's encoders
        out[name]["ratios"] = _ratios(name, out[name]["results"], ref, aga_result)
        if name == "convirt" or (name not in DEDICATED and "vs_gloria" not in out[name]["ratios"]):
            out[name]["ratios"].setdefault("note", "no local loss: no vs_gloria")
    meta["load_avg_end"] = load_avg()
    meta["wall_s"] = time.perf_counter() - t_start
    meta["cpu_s"] = _cpu_seconds() - cpu0
    return _finite(out)


#: The function behind each bench name of an entry's ``benches``.
_BENCH_FUNCTIONS = {
    "gloria": "medalign_lite.bench.losses.bench_gloria",
    "aga": "medalign_lite.bench.losses.bench_aga",
    "alta": "medalign_lite.bench.alta.bench_alta",
    "alta_local": "medalign_lite.bench.losses._gloria_step (ALTA's T, P, d)",
    "exgramed": "medalign_lite.bench.exgramed.bench_exgramed",
    "exgramed_aligner": "medalign_lite.bench.exgramed.aligner_step",
    "s2d_generate": "medalign_lite.bench.generation.bench_s2d_generate",
    "s2d_aligner": "medalign_lite.bench.generation.bench_s2d_aligner",
    "train_step": "medalign_lite.bench.train_step.bench_train_step",
}
