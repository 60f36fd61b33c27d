"""Benchmarks behind ``medalign bench ...``: each measures in one run and returns plain dicts,
so ratios are taken on the same machine at the same moment (this project's shared machines
are noisy; absolute times are only comparable within one run).
"""
from __future__ import annotations

import functools
import math
import multiprocessing as mp
import resource
import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gloria_step(b: int, t: int, p: int, d: int, device: torch.device, dtype: torch.dtype, chunk: int | None):
    from .methods.baselines import gloria_local_loss

    g = torch.Generator(device=device).manual_seed(0)
    words = torch.randn(b, t, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    regions = torch.randn(b, p, d, device=device, dtype=dtype, generator=g, requires_grad=True)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)

    def step():
        l0, l1 = gloria_local_loss(words, mask, regions, chunk=chunk)
        (l0 + l1).backward()
        words.grad = regions.grad = None
    return step


def _gloria_point(args) -> dict:
    b, t, p, d, device_name, dtype_name, repeats, chunk = args
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    step = _gloria_step(b, t, p, d, device, dtype, chunk)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    sec = time_fn(step, device, repeats=repeats)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:  # peak resident memory growth of this fresh process (KiB on Linux)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"B": b, "T": t, "P": p, "D": d, "seconds": sec, "peak_mib": round(peak, 1)}


def bench_gloria(batch_sizes=(8, 16, 32, 48), t: int = 97, p: int = 361, d: int = 768,
                 device: str = "cpu", dtype: str = "float32", repeats: int = 3,
                 chunk: int | None = None) -> dict:
    """Time (forward + backward) and peak memory of GLoRIA's batched local loss.

    Each batch size runs in a fresh process on CPU (so peak RSS is its own) and in this
    process on CUDA (peak allocated memory after a reset). ``growth_exponent`` is the slope of
    log(time) against log(B): 2 for an O(B²·T·P·D) loss once the GPU/CPU is saturated.
    """
    dev = torch.device(device)
    points = []
    for b in batch_sizes:
        args = (b, t, p, d, device, dtype, repeats, chunk)
        if dev.type == "cpu":
            with mp.get_context("spawn").Pool(1) as pool:
                points.append(pool.map(_gloria_point, [args])[0])
        else:
            points.append(_gloria_point(args))
    xs = [math.log(pt["B"]) for pt in points]
    ys = [math.log(pt["seconds"]) for pt in points]
    slope = _slope(xs, ys) if len(points) > 1 else float("nan")
    mem = [math.log(max(pt["peak_mib"], 1e-3)) for pt in points]
    return {"name": "gloria_local_loss", "device": _device_name(dev), "dtype": dtype,
            "points": points, "growth_exponent": round(slope, 2),
            "memory_growth_exponent": round(_slope(xs, mem), 2) if len(points) > 1 else float("nan")}


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


#: BERT-base shapes (BioClinicalBERT's architecture) with the MiniLM tokenizer's vocabulary, for
#: random-weight text encoders that need no download.
BERT_BASE = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}


def bench_aga(batch_size: int | None = None, t: int = 97, p: int = 361, d: int = 128,
              gloria_dims: tuple[int, ...] = (768, 128), device: str = "cpu", dtype: str = "float32",
              repeats: int = 3, vision: str = "timm:resnet50", image_size: int = 299,
              text_hf_config: dict | None = None, encoders: bool = True, compile: bool = False) -> dict:
    """AGA's head against the encoders and against GLoRIA's local loss, measured in one run.

    Times (median of ``repeats``, forward + backward, synchronised) at paper shapes T = 97
    tokens, P = 361 patches, d = 128:

    - ``head_s``: :class:`~medalign_lite.methods.aga.AGAHead` alone, in training mode, on
      random projected embeddings (similarity, min-max, gates, groups, IGA, BCGA, global
      InfoNCE), eager;
    - ``encoders_s``: image encoder (``vision`` at ``image_size`` px, random weights; ResNet-50
      at 299 px gives the 19×19 = 361 patches) + text encoder (``text_hf_config``, default
      BERT-base shape = BioClinicalBERT's, random weights, T tokens) + AGA's projections;
    - CUDA only: ``step_s``, one whole AGA training step (encoders + head + backward), and
      ``head_in_step_s`` = ``step_s`` − ``encoders_s``, what the head adds to a step (the
      head's kernel launches overlap the encoders' queued GPU work, so this is smaller than
      ``head_s``; a CPU runs ops one after the other, where it would equal ``head_s`` up to
      the noise of two large timings);
    - ``gloria_s``: GLoRIA's batched local loss at the same B, T, P for each D in
      ``gloria_dims`` (768 = GLoRIA's paper width, 128 = AGA's);
    - with ``compile``: the same for ``torch.compile(head)`` (``mode="reduce-overhead"``, i.e.
      CUDA graphs, on CUDA): ``head_compiled_s``, ``step_compiled_s``.

    Ratios: ``head_share`` = head / encoders and ``vs_gloria`` = head / GLoRIA(D =
    ``gloria_dims[0]``) (targets ≤ 0.05 both), plus ``*_in_step`` and ``*_compiled`` variants.
    ``batch_size=None`` is 48 (the paper's) on CUDA and 8 on CPU. ``dtype`` other than float32
    runs the head and encoders under autocast.
    """
    from .methods.aga import AGA, AGAConfig, AGAHead
    from .models.text import TextConfig, build_text_encoder
    from .models.vision import VisionConfig, build_image_encoder

    dev = torch.device(device)
    dt = getattr(torch, dtype)
    b = batch_size or (48 if dev.type == "cuda" else 8)
    g = torch.Generator(device=dev).manual_seed(0)

    def amp():
        return torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32)

    def rand(*shape):
        return torch.randn(*shape, device=dev, generator=g, requires_grad=True)

    torch.manual_seed(0)
    head = AGAHead(AGAConfig(embed_dim=d)).to(dev).train()
    heads = {"": head}
    if compile:
        heads["_compiled"] = torch.compile(head, mode="reduce-overhead" if dev.type == "cuda" else None)
    image_local, image_global, text_local, text_global = rand(b, p, d), rand(b, d), rand(b, t, d), rand(b, d)
    text_mask = torch.ones(b, t, dtype=torch.bool, device=dev)
    leaves = [image_local, image_global, text_local, text_global]

    def head_step(h):
        def step():
            with amp():
                out = h(image_local, image_global, text_local, text_mask, text_global)
            out["loss"].backward()
            head.zero_grad(set_to_none=True)
            for x in leaves:
                x.grad = None
        return step

    res: dict = {"name": "aga_head", "device": _device_name(dev), "dtype": dtype, "B": b, "T": t, "P": p,
                 "d": d, "repeats": repeats}
    warm = 3 if compile else 1
    for suffix, h in heads.items():
        res[f"head{suffix}_s"] = time_fn(head_step(h), dev, repeats=repeats, warmup=warm)
    res["gloria_s"] = {}
    for dim in gloria_dims:
        res["gloria_s"][str(dim)] = time_fn(_gloria_step(b, t, p, dim, dev, dt, None), dev, repeats=repeats)
    ref = res["gloria_s"][str(gloria_dims[0])] if gloria_dims else None
    if encoders:
        text_cfg = TextConfig(name="bert-base (random)", tokenizer="minilm", pretrained=False,
                              hf_config=dict(text_hf_config or BERT_BASE), max_length=max(t, 3),
                              merge_wordpieces=False, pooling="cls")
        model = AGA(build_image_encoder(VisionConfig(vision, image_size=image_size, in_chans=1)),
                    build_text_encoder(text_cfg), AGAConfig(embed_dim=d)).to(dev).train()
        images = torch.randn(b, 1, image_size, image_size, device=dev, generator=g)
        vocab = model.text_encoder.model.config.vocab_size
        ids = torch.randint(min(1000, vocab - 1), vocab, (b, t), device=dev, generator=g)
        attn = torch.ones(b, t, dtype=torch.long, device=dev)
        with torch.no_grad(), amp():
            res["encoder_P"] = int(model.embed_images(images[:1]).patches.shape[1])

        def encoder_step():
            with amp():
                img = model.embed_images(images)
                txt = model.embed_texts(ids, attn)
                total = img.pooled.sum() + img.patches.sum() + txt.pooled.sum() + txt.tokens.sum()
            total.float().backward()
            model.zero_grad(set_to_none=True)

        def full_step(h):
            def step():
                with amp():
                    img = model.embed_images(images)
                    txt = model.embed_texts(ids, attn)
                    out = h(img.patches, img.pooled, txt.tokens, txt.mask, txt.pooled)
                out["loss"].backward()
                model.zero_grad(set_to_none=True)
            return step

        res["encoders_s"] = time_fn(encoder_step, dev, repeats=repeats)
        model.head = head  # the timed head (same weights and buffers) inside the model
        for suffix, h in heads.items():
            if dev.type == "cuda":
                res[f"step{suffix}_s"] = time_fn(full_step(h), dev, repeats=repeats, warmup=warm)
                res[f"head_in_step{suffix}_s"] = res[f"step{suffix}_s"] - res["encoders_s"]
        res["vision"], res["image_size"] = vision, image_size
        res["text_layers"] = int(model.text_encoder.model.config.num_hidden_layers)
    for suffix in heads:
        in_step = f"head_in_step{suffix}_s" in res
        if encoders:
            res[f"head_share{suffix}"] = res[f"head{suffix}_s"] / res["encoders_s"]
            if in_step:
                res[f"head_share_in_step{suffix}"] = res[f"head_in_step{suffix}_s"] / res["encoders_s"]
        if ref:
            res[f"vs_gloria{suffix}"] = res[f"head{suffix}_s"] / ref
            if in_step:
                res[f"vs_gloria_in_step{suffix}"] = res[f"head_in_step{suffix}_s"] / ref
        for dim in gloria_dims[1:]:
            res[f"vs_gloria_d{dim}{suffix}"] = res[f"head{suffix}_s"] / res["gloria_s"][str(dim)]
    return res


#: Mean length of an IU X-Ray report (findings + impression) in tokens of the tiny LM's word
#: tokenizer: 45.8 over the 3,927 non-empty reports (median 41, 95th percentile 91), so 45
#: words + <eos>.
IU_MEAN_REPORT_TOKENS = 46


def bench_s2d_generate(n_reports: int = 256, batch_size: int = 64, num_beams: int = 3, max_new_tokens: int = 120,
                       report_tokens: int | None = IU_MEAN_REPORT_TOKENS, device: str = "cpu",
                       threads: int | None = None, config: str = "s2d_tiny", prefill_once: bool = True,
                       compare_plain: bool = False, overrides: tuple[str, ...] = (),
                       omp_wait_policy: str | None = "PASSIVE", processes: int = 1) -> dict:
    """Report generation speed of S2D-ALIGN (``build_s2d(config)``, random weights): the
    frozen image encoder, SMA_v and beam search with the KV cache on [prefix, C1, suffix].

    An untrained LM almost never emits ``<eos>`` (p ≈ 1/V per step: it runs to
    ``max_new_tokens``), so every beam is made to end after exactly ``report_tokens`` tokens,
    as a real report would: ``min_new_tokens = report_tokens − 1`` and ``<eos>`` forced at
    token ``report_tokens`` (``forced_eos_token_id``). The default, 46, is the IU mean report
    length in the tiny tokenizer's words (+ <eos>). ``report_tokens=None`` generates freely up
    to ``max_new_tokens``. One warm-up batch, then ``n_reports`` random 1-channel images in
    batches of ``batch_size``. ``threads`` sets torch's intra-op threads for the run.

    Returns ``reports_per_s``, ``tokens_per_s`` (generated tokens up to and including the
    first ``<eos>``, per second), ``mean_generated_tokens``, ``prompt_tokens``, ``seconds``
    and the settings; with ``compare_plain`` also the other prompt path's speed (``generate``
    running the prompt once per beam) and ``prefill_speedup``. ``load_avg`` is the 1-minute
    load average before and after and ``cpu_seconds`` the process's CPU time (user + system,
    all threads): on a shared machine wall-clock speed depends on the neighbours, CPU time
    much less.

    ``omp_wait_policy`` (CPU): OpenMP's default lets idle threads spin, which on a machine
    shared with other busy processes makes 2 threads ~10× slower than 1 (measured: 1.3 vs
    13 reports/s); ``"PASSIVE"`` (default) avoids it. It must be set before OpenMP starts, so
    when this process runs with another policy the measurement runs in a fresh process
    started with ``OMP_WAIT_POLICY`` set (``None``: measure here, as the process is).

    ``processes`` > 1 (CPU): that many spawned processes, each with its share of the reports
    and ``max(1, threads // processes)`` threads, build the same model, wait at a barrier and
    generate at the same time; ``reports_per_s`` is all reports over the wall-clock span from
    the common start to the last finish (model building and warm-up excluded, as for one
    process). On a small LM two one-thread processes use two cores better than two threads
    in one process (``run_s2d_variants(workers=...)`` generates inside its workers likewise).
    ``per_process`` lists each one's own result.
    """
    import os

    if n_reports < 1 or batch_size < 1:
        raise ValueError(f"n_reports and batch_size must be >= 1, got {n_reports} and {batch_size}")
    if processes < 1 or processes > n_reports:
        raise ValueError(f"processes must be between 1 and n_reports ({n_reports}), got {processes}")
    if processes > 1 and (torch.device(device).type != "cpu" or compare_plain):
        raise ValueError("processes > 1 measures CPU processes side by side; not with --device cuda or --compare")
    kwargs = {"n_reports": n_reports, "batch_size": batch_size, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
              "report_tokens": report_tokens, "device": device, "threads": threads, "config": config,
              "prefill_once": prefill_once, "compare_plain": compare_plain, "overrides": tuple(overrides),
              "barrier": None}
    current = os.environ.get("OMP_WAIT_POLICY", "")
    if processes == 1 and (torch.device(device).type != "cpu" or not omp_wait_policy
                           or current.upper() == omp_wait_policy.upper()):
        return _s2d_generate_point(kwargs)
    if omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy  # the spawned processes inherit the environment
    try:
        ctx = mp.get_context("spawn")
        if processes == 1:
            with ctx.Pool(1) as pool:
                return pool.map(_s2d_generate_point, [kwargs])[0]
        per_thread = max(1, (threads or torch.get_num_threads()) // processes)
        shares = [n_reports // processes + (i < n_reports % processes) for i in range(processes)]
        with ctx.Manager() as manager, ctx.Pool(processes) as pool:
            barrier = manager.Barrier(processes)
            parts = pool.map(_s2d_generate_point, [{**kwargs, "n_reports": n, "threads": per_thread,
                                                    "barrier": barrier} for n in shares])
    finally:
        if current:
            os.environ["OMP_WAIT_POLICY"] = current
        elif omp_wait_policy:
            del os.environ["OMP_WAIT_POLICY"]
    span = max(p["t_end"] for p in parts) - min(p["t_start"] for p in parts)
    n_rep = sum(p["n_reports"] for p in parts)
    n_tok = sum(p["tokens_per_s"] * p["seconds"] for p in parts)
    return {**parts[0], "processes": processes, "threads": per_thread, "n_reports": n_rep, "seconds": round(span, 6),
            "cpu_seconds": round(sum(p["cpu_seconds"] for p in parts), 3),
            "reports_per_s": round(n_rep / span, 2), "tokens_per_s": round(n_tok / span, 1),
            "mean_generated_tokens": round(n_tok / n_rep, 1),
            "load_avg": [parts[0]["load_avg"][0], max(p["load_avg"][1] or 0 for p in parts)],
            "per_process": [{k: p[k] for k in ("n_reports", "seconds", "reports_per_s")} for p in parts]}


def _s2d_generate_point(kw: dict) -> dict:
    """One measurement of :func:`bench_s2d_generate` in this process."""
    n_reports, batch_size, num_beams, max_new_tokens = (kw["n_reports"], kw["batch_size"], kw["num_beams"],
                                                        kw["max_new_tokens"])
    report_tokens, device, threads, config = kw["report_tokens"], kw["device"], kw["threads"], kw["config"]
    prefill_once, compare_plain, overrides = kw["prefill_once"], kw["compare_plain"], kw["overrides"]
    import os

    from .methods.s2d import build_s2d

    dev = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = build_s2d(config, overrides).to(dev).eval()
        size = model.vision.cfg.image_size if hasattr(model.vision, "cfg") else 224
        channels = model.vision.cfg.in_chans if hasattr(model.vision, "cfg") else 1
        g = torch.Generator(device="cpu").manual_seed(0)
        sizes = [min(batch_size, n_reports - i) for i in range(0, n_reports, batch_size)]
        batches = [torch.randn(n, channels, size, size, generator=g).to(dev) for n in sizes]
        eos = model.tokenizer.eos_token_id
        gen: dict = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
        if report_tokens is not None:
            n = max(1, min(report_tokens, max_new_tokens))
            gen.update(max_new_tokens=n, min_new_tokens=n - 1, forced_eos_token_id=eos)

        def run(prefill: bool) -> tuple[float, int, int]:
            model.generate_ids(batches[0][: min(4, len(batches[0]))], prefill_once=prefill, **gen)  # warm-up
            _sync(dev)
            if kw.get("barrier") is not None:  # processes side by side start together
                kw["barrier"].wait()
            wall[0] = time.time()
            t0, c0 = time.perf_counter(), time.process_time()
            n_tok = n_rep = 0
            for images in batches:
                ids = model.generate_ids(images, prefill_once=prefill, **gen)
                is_eos = ids == eos
                first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, ids.shape[1])
                n_tok += int(first.sum())
                n_rep += ids.shape[0]
            _sync(dev)
            cpu_s[prefill] = time.process_time() - c0
            wall[1] = time.time()
            return time.perf_counter() - t0, n_tok, n_rep

        cpu_s: dict[bool, float] = {}
        wall = [0.0, 0.0]

        load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        sec, n_tok, n_rep = run(prefill_once)
        with torch.inference_mode():
            prompt_len = int(model.generation_inputs(batches[0][:1]).shape[1])
        res = {"name": "s2d_generate", "config": config, "device": _device_name(dev), "threads": torch.get_num_threads(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
               "n_reports": n_rep, "batch_size": batch_size, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
               "report_tokens": report_tokens, "prefill_once": prefill_once, "prompt_tokens": prompt_len,
               "memory_size": model.config.memory_size, "seconds": round(sec, 6),
               "cpu_seconds": round(cpu_s[prefill_once], 3),
               "reports_per_s": round(n_rep / sec, 2), "tokens_per_s": round(n_tok / sec, 1),
               "mean_generated_tokens": round(n_tok / n_rep, 1), "processes": 1,
               "t_start": wall[0], "t_end": wall[1]}
        if compare_plain:
            sec_other, _, _ = run(not prefill_once)
            res["plain_reports_per_s" if prefill_once else "prefilled_reports_per_s"] = round(n_rep / sec_other, 2)
            res["prefill_speedup"] = round(sec_other / sec if prefill_once else sec / sec_other, 3)
        res["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None]
        return res
    finally:
        torch.set_num_threads(old_threads)


# --- ExGra-Med: the aligner and the text passes against the LM step; the solver alone -----------
class _PatchInput(torch.nn.Module):
    """A stand-in frozen encoder that takes its patches as input ((B, P, D) → ImageFeatures)."""

    def __init__(self, patch_dim: int):
        super().__init__()
        self.patch_dim = patch_dim

    def forward(self, x):
        from .models.features import ImageFeatures

        return ImageFeatures(pooled=x.mean(1), patches=x, grid=(1, x.shape[1]))


def _exgramed_parts(hidden: int, layers: int, heads: int, inter: int, vocab_words: int, b: int, patches: int,
                    patch_dim: int, turns: int, answer_words: int, gnn_dim: int | None, device: torch.device,
                    solver: str, seed: int = 0):
    """A random ExGra-Med (random-weight Llama of the given shape, its word tokenizer over
    ``vocab_words`` synthetic words) and a batch of ``b`` conversations of ``turns`` turns."""
    import random
    import tempfile

    from .methods.exgramed import ExGraMed, ExGraMedConfig
    from .models.llm import LLMConfig, load_causal_lm
    from .text.tokenizer import save_word_tokenizer, train_word_tokenizer

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab_words)]
    corpus = [" ".join(rng.choices(words, k=20)) for _ in range(200)] + ["human: <img> </img> ? assistant: ."] * 5
    folder = tempfile.mkdtemp(prefix="exgramed-bench-tok-")
    save_word_tokenizer(train_word_tokenizer(corpus, vocab_size=vocab_words + 32, min_frequency=1), folder)
    llm = LLMConfig(tokenizer=folder, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
                    max_positions=max(512, patches + 4 * turns * (answer_words + 12)), lora_r=16,
                    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                    lora_dropout=0.0)
    torch.manual_seed(seed)
    lm, tok = load_causal_lm(llm)
    cfg = ExGraMedConfig(solver=solver, gnn_dropout=0.1)
    model = ExGraMed(_PatchInput(patch_dim), lm, tok, cfg, llm)
    if gnn_dim is not None and gnn_dim != hidden:
        raise ValueError("the GNN keeps the LM width")
    model.to(device)
    sent = lambda k: " ".join(rng.choices(words, k=k))
    items = [{"study_id": str(i), "frontal": torch.randn(patches, patch_dim),
              "conversation": [(sent(8) + "?", sent(answer_words) + ".") for _ in range(turns)],
              "extended": [sent(2 * answer_words) + "." for _ in range(turns)]} for i in range(b)]
    batch = model.collate()(items).to(device)
    return model, batch


def _timed_step(model, batch, part: str, device: torch.device):
    """A closure timing one forward + backward of ``part``: ``"lm"`` (L_AR, the LM training
    step without alignment), ``"text"`` (the two text-only LM passes), ``"aligner"`` (GNN,
    matchings, target solves on given node features), ``"full"`` (L_AR + L_align)."""
    model.train()
    hidden = model.embed_tokens.embedding_dim
    nodes = torch.randn(3, len(batch), hidden, device=device, requires_grad=True)

    def step():
        if part == "lm":
            img = model.image_tokens(batch.images)
            loss, _ = model.lm_loss(batch, img)
        elif part == "text":
            z_r = model.text_nodes(batch.response_ids, batch.response_mask)
            z_e = model.text_nodes(batch.extended_ids, batch.extended_mask)
            loss = z_r.float().square().mean() + z_e.float().square().mean()
        elif part == "aligner":
            loss = model.aligner(nodes).loss
        else:
            loss = model(batch)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        nodes.grad = None
    return step


def bench_exgramed(device: str = "cpu", repeats: int = 3, batch_sizes=(16, 32, 64, 128), solver: str = "ipfp",
                   paper: bool = True, threads: int | None = 1) -> dict:
    """ExGra-Med's overheads, measured in one run (forward + backward, median of ``repeats``):

    - ``tiny``: the ``exgramed_tiny`` shapes (128-wide 2-layer Llama, 64 patches of 128, B = 16,
      4-turn conversations): the LM training step (L_AR), the two text-only LM passes, the
      aligner (shared GNN on 12 graphs, 6 matchings and their 6 target solves, the surrogate's
      backward); ``aligner_share`` and ``text_pass_share`` are their times over the LM step's.
    - ``paper`` (``paper=True``): the aligner at the paper's shapes (B = 16, d = 4096, a 2-layer
      4096-wide GNN: 67 M parameters) measured; the LM of that width (LLaMA-7B: 32 layers,
      11008 MLP, 32 heads) is not run whole on a CPU: one 4096-wide layer is timed on a short
      batch and the paper's LM step is extrapolated linearly in layers × tokens
      (``lm_step_extrapolated``, said so in the result; a GPU run measures it whole).
    - ``solver_ms``: the matchings alone (the 6 problems and their 6 target solves, one batched
      call, ``lap`` and ``ipfp``) at B = ``batch_sizes`` on ``threads`` CPU thread(s), costs from
      random node features (N(0, 1), 64-d, a noisy copy): milliseconds per step.

    The official code solves the same 12 problems with LPMP on the CPU in a Python loop, one
    instance at a time, with GPU↔CPU copies; LPMP does not build here, so it is not timed.
    """
    import os

    from .methods.exgramed import (
        QuadraticCost,
        edge_weights,
        gumbel,
        knn_graph,
        solve,
        unary_cost,
    )

    dev = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(threads)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res: dict = {"name": "exgramed", "device": _device_name(dev), "solver": solver}
    try:
        model, batch = _exgramed_parts(128, 2, 4, 344, 1000, 16, 64, 128, 4, 8, None, dev, solver)
        t = {p: time_fn(_timed_step(model, batch, p, dev), dev, repeats=repeats) for p in ("lm", "text", "aligner",
                                                                                           "full")}
        res["tiny"] = {"seconds": {k: round(v, 5) for k, v in t.items()}, "B": 16, "hidden": 128,
                       "aligner_share": round(t["aligner"] / t["lm"], 4), "text_pass_share": round(t["text"] / t["lm"], 4),
                       "full_over_lm": round(t["full"] / t["lm"], 3)}
        del model, batch
        if paper:
            from .methods.exgramed import BarycenterGraphAligner

            al = BarycenterGraphAligner(4096, solver=solver).to(dev)
            nodes = torch.randn(3, 16, 4096, device=dev, requires_grad=True)

            def align_step():
                al(nodes).loss.backward()
                al.zero_grad(set_to_none=True)
                nodes.grad = None
            t_al = time_fn(align_step, dev, repeats=repeats)
            # one LLaMA-7B-shaped layer on 2 sequences of 128 tokens, forward + backward
            from transformers import LlamaConfig
            from transformers.models.llama.modeling_llama import (
                LlamaDecoderLayer,
                LlamaRotaryEmbedding,
            )

            conf = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                               num_key_value_heads=32, num_hidden_layers=1)
            layer = LlamaDecoderLayer(conf, 0).to(dev)
            rope = LlamaRotaryEmbedding(conf).to(dev)
            n_seq, n_tok = 2, 128
            x = torch.randn(n_seq, n_tok, 4096, device=dev, requires_grad=True)
            pos = torch.arange(n_tok, device=dev)[None].expand(n_seq, -1)

            def layer_step():
                out = layer(x, position_embeddings=rope(x, pos), position_ids=pos)
                out = out[0] if isinstance(out, tuple) else out
                out.float().square().mean().backward()
                layer.zero_grad(set_to_none=True)
                x.grad = None
            t_layer = time_fn(layer_step, dev, repeats=max(1, repeats - 1))
            per_layer_token = t_layer / (n_seq * n_tok)
            conv_tokens, text_tokens = 256 + 256, 2 * 96   # image tokens + a conversation; two node texts
            lm_step = per_layer_token * 32 * 16 * conv_tokens
            text_pass = per_layer_token * 32 * 16 * text_tokens
            res["paper"] = {"aligner_seconds": round(t_al, 4), "layer_seconds": round(t_layer, 4),
                            "lm_step_extrapolated": round(lm_step, 2), "text_pass_extrapolated": round(text_pass, 2),
                            "aligner_share": round(t_al / lm_step, 5), "text_pass_share": round(text_pass / lm_step, 4),
                            "assumed": {"layers": 32, "B": 16, "conversation_tokens": conv_tokens,
                                        "text_tokens_per_sample": text_tokens},
                            "note": "aligner measured at paper shapes; LM step extrapolated from one 4096-wide layer"}
            del al, layer
        solver_ms: dict = {}
        for name in ("lap", "ipfp"):
            solver_ms[name] = {}
            for b in batch_sizes:
                g = torch.Generator().manual_seed(b)
                h = torch.relu(torch.randn(6, b, 64, generator=g))
                gg = h + 0.5 * torch.randn(6, b, 64, generator=g)
                g1 = knn_graph(h)
                q = QuadraticCost.from_graphs(h, gg, edge_weights(h, g1), edge_weights(gg, g1), g1.adjacency,
                                              g1.adjacency)
                u = unary_cost(h, gg) + gumbel((1, 1, b, b), 0.05, generator=g)
                u2 = torch.cat([u, u + 80.0 * (1 - 2 * torch.eye(b)) / b])       # the 6 + 6 target problems
                sec = time_fn(functools.partial(solve, u2, q, name), torch.device("cpu"), repeats=max(3, repeats))
                solver_ms[name][b] = round(1000 * sec, 3)
        res["solver_ms"] = solver_ms
        res["aligner_share"] = res["paper"]["aligner_share"] if paper else res["tiny"]["aligner_share"]
        res["text_pass_share"] = res["paper"]["text_pass_share"] if paper else res["tiny"]["text_pass_share"]
        res["threads"] = torch.get_num_threads()
        res["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None]
        return res
    finally:
        torch.set_num_threads(old_threads)
