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
