"""Benchmarks behind ``medalign bench ...``: each measures in one run and returns plain dicts,
so ratios are taken on the same machine at the same moment (this project's shared machines
are noisy; absolute times are only comparable within one run).
"""
from __future__ import annotations

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


def _alta_model(config: str, options: dict, text_hf_config: dict | None, trainable: list[str] | None = None):
    """An ALTA of ``config``'s shapes with random weights (nothing downloaded): the vision
    section's ``hf_config``, a BERT of ``text_hf_config`` (default BERT-base: CXR-BERT's shape)
    with MiniLM's tokenizer (the same 30,522-piece vocabulary); ``trainable``: glob patterns
    (default ALTA's own set)."""
    from dataclasses import replace

    from .config import load_config
    from .methods.alta import ALTA, ALTAConfig, set_trainable
    from .models.mae import build_mae
    from .models.text import TextConfig, build_text_encoder
    from .models.vision import VisionConfig

    cfg = load_config(ALTAConfig, config, [f"{k}={v}" for k, v in options.items()], section="model")
    vision = replace(load_config(VisionConfig, config, section="vision"), pretrained=False)
    text = load_config(TextConfig, config, section="text")
    text = replace(text, name="bert (random)", tokenizer="minilm", pretrained=False, trust_remote_code=False,
                   hf_config=dict(text_hf_config or BERT_BASE))
    torch.manual_seed(0)
    model = set_trainable(ALTA(build_mae(vision), build_text_encoder(text), cfg), trainable)
    return model, vision, text


def _alta_step_point(kw: dict) -> dict:
    """Time and peak memory of one ALTA training step (forward + backward + AdamW) in this process."""
    import os

    from .data.dataset import Batch

    dev = torch.device(kw["device"])
    if kw.get("threads"):
        torch.set_num_threads(kw["threads"])
    model, vision, _ = _alta_model(kw["config"], kw["options"], kw["text_hf_config"], kw["trainable"])
    model = model.to(dev).train()
    b, t = kw["batch_size"], kw["tokens"]
    g = torch.Generator().manual_seed(0)
    size = vision.image_size
    imgs = [torch.randn(b, 1, size, size, generator=g).to(dev) for _ in range(4)]
    vocab = model.text_encoder.model.config.vocab_size
    ids = torch.randint(1000, vocab, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = model.text_encoder.tokenizer.cls_token_id, model.text_encoder.tokenizer.sep_token_id
    present = torch.ones(b, dtype=torch.bool, device=dev)
    batch = Batch(images=imgs[0], texts=[""] * b, study_ids=[str(i) for i in range(b)], labels=torch.zeros(b, 14),
                  input_ids=ids.to(dev), attention_mask=torch.ones(b, t, dtype=torch.long, device=dev),
                  lateral=imgs[1], lateral_present=present, prior_frontal=imgs[2], prior_frontal_present=present,
                  prior_lateral=imgs[3], prior_lateral_present=present)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.05)
    dt = getattr(torch, kw["dtype"])

    def step():
        with torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    sec = time_fn(step, dev, repeats=kw["repeats"], warmup=1)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:  # peak resident memory growth of this fresh process (KiB on Linux)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"seconds": sec, "peak_mib": round(peak, 1), "trainable_params": sum(p.numel() for p in params),
            "params": sum(p.numel() for p in model.parameters()),
            "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def bench_alta(batch_size: int | None = None, tokens: int = 128, device: str = "cpu", dtype: str = "float32",
               repeats: int = 3, config: str = "alta_full", text_hf_config: dict | None = None,
               threads: int | None = None, steps: bool = True) -> dict:
    """ALTA's efficiency at ``config``'s shapes (default the paper's: ViT-B/16 MAE with a 4-block
    768-wide decoder, a BERT-base text encoder), random weights, nothing downloaded.

    - ``trainable_fraction``, ``trainable_params``, ``params``: the official trainable set
      (adapters, norms, heads, embeddings, scales, decoder input/mask token/pixel head, MLM head)
      over every parameter, and ``groups``: the per-group counts (the model is built on the
      ``meta`` device: shapes without memory);
    - with ``steps``: ``alta_step_s`` / ``full_step_s``, one training step (forward, backward,
      AdamW) of ALTA (adapters, masking 0.75 on four views, the four losses) and of an *unmasked
      full fine-tuning* step at the same shapes (no adapters, every weight trains, four unmasked
      views, global + local + MLM: nothing is masked, so no MIM), ``step_ratio`` = ALTA / full;
      ``alta_peak_mib``, ``full_peak_mib`` and ``memory_ratio``: peak memory of each step
      (CUDA: peak allocated; CPU: peak resident-memory growth of a fresh process per variant).

    ``batch_size=None`` is 24 (the paper's per GPU) on CUDA and 2 on CPU; ``tokens`` is the
    text length (the code pads to 128). ``load_avg``: the 1-minute load average during each
    CPU measurement (a shared machine makes times upper bounds).
    """
    from .methods.alta import parameter_table

    dev = torch.device(device)
    b = batch_size or (24 if dev.type == "cuda" else 2)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        model, vision, _ = _alta_model(config, {}, text_hf_config)
    groups = parameter_table(model)
    n_train = sum(r["trainable"] for r in groups.values())
    n_all = sum(r["params"] for r in groups.values())
    res: dict = {"name": "alta", "config": config, "device": _device_name(dev), "dtype": dtype, "B": b,
                 "T": tokens, "image_size": vision.image_size, "trainable_params": n_train, "params": n_all,
                 "trainable_fraction": n_train / n_all, "groups": groups}
    del model
    if not steps:
        return res
    common = {"config": config, "text_hf_config": text_hf_config, "device": device, "dtype": dtype,
              "batch_size": b, "tokens": tokens, "repeats": repeats, "threads": threads}
    runs = {"alta": {**common, "options": {}, "trainable": None},
            "full": {**common, "options": {"adapters": False, "mask_ratio": 0.0, "use_mim": False},
                     "trainable": ["*"]}}
    for name, kw in runs.items():
        if dev.type == "cpu":
            with mp.get_context("spawn").Pool(1) as pool:
                point = pool.map(_alta_step_point, [kw])[0]
        else:
            point = _alta_step_point(kw)
        res[f"{name}_step_s"], res[f"{name}_peak_mib"] = point["seconds"], point["peak_mib"]
        res[f"{name}_trainable_params"], res[f"{name}_load_avg"] = point["trainable_params"], point["load_avg"]
    res["step_ratio"] = res["alta_step_s"] / res["full_step_s"]
    res["memory_ratio"] = res["alta_peak_mib"] / max(res["full_peak_mib"], 1e-6)
    return res
