"""S2D-ALIGN's report generation speed (``medalign bench s2d-generate``)."""
from __future__ import annotations

import multiprocessing as mp
import time

import torch

from .common import _device_name, _sync, load_1min, time_fn

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

    from ..methods.s2d import build_s2d

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

        load0 = load_1min()
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
        res["load_avg"] = [load0, load_1min()]
        return res
    finally:
        torch.set_num_threads(old_threads)


#: Rad-DINO's shape (S2D-ALIGN's frozen encoder: a DINOv2 ViT-B/14, 768 wide, 12 blocks, at
#: 518 px: 37 × 37 = 1369 patches), for a random-weight stand-in that needs no download.
RAD_DINO = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "num_channels": 1}

#: Vicuna-7B's hidden size: the width S2D-ALIGN's SMA writes its soft tokens in.
VICUNA_7B_HIDDEN = 4096


def bench_s2d_aligner(batch_size: int = 8, image_size: int = 518, lm_hidden: int = VICUNA_7B_HIDDEN,
                      config: str = "s2d_full", vision_hf_config: dict | None = None,
                      encoder_batch: int | None = None, device: str = "cpu", repeats: int = 3) -> dict:
    """S2D-ALIGN's aligner against its encoder, random weights, nothing downloaded.

    - ``aligner_s``: SMA_v (:class:`~medalign_lite.methods.s2d.SMA` with ``config``'s memory
      queries, width, heads and MLP; default ``s2d_full``: 64 queries of 768, 8 heads, a
      3-layer MLP to ``lm_hidden`` = 4096) forward + backward on ``batch_size`` images' patches,
      in training mode: stage 1's aligner (stages 2 and 3 add SMA_t and SMA_p over at most
      ``max_aux_tokens`` text tokens);
    - ``encoder_s``: the frozen encoder's forward pass under ``no_grad``, as S2D runs it
      (``vision_hf_config``, default :data:`RAD_DINO`, at ``image_size`` px, gray input) for
      ``batch_size`` images; on a CPU it runs on ``encoder_batch`` images (default 1) and is
      extrapolated per image (``encoder_extrapolated``);
    - ``aligner_share`` = aligner / encoder; ``P`` the patches SMA_v reads (CLS dropped).
    """
    from torch import nn

    from ..config import load_config
    from ..methods.s2d import SMA, S2DConfig
    from ..models.vision import VisionConfig, build_image_encoder

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    cfg = load_config(S2DConfig, config, section="model")
    hf = {**(vision_hf_config or RAD_DINO), "image_size": image_size}
    torch.manual_seed(0)
    enc = build_image_encoder(VisionConfig("hf:microsoft/rad-dino", pretrained=False, image_size=image_size,
                                           in_chans=hf.get("num_channels", 1), hf_config=hf)).to(dev).eval()
    b_enc = batch_size if cuda else min(batch_size, encoder_batch or 1)
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randn(b_enc, hf.get("num_channels", 1), image_size, image_size, device=dev, generator=g)
    with torch.no_grad():
        n_patches, v_dim = enc(images[:1]).patches.shape[1:]

    def encoder_step():
        with torch.no_grad():
            enc(images)

    memory = nn.Parameter(torch.randn(cfg.memory_size, cfg.memory_dim, device=dev, generator=g) * cfg.memory_init_std)
    sma = SMA(v_dim, lm_hidden, memory, cfg.heads, cfg.mlp_layers, cfg.mlp_hidden, cfg.attn_dropout).to(dev).train()
    patches = torch.randn(batch_size, n_patches, v_dim, device=dev, generator=g)

    def sma_step():
        sma(patches).float().square().mean().backward()
        sma.zero_grad(set_to_none=True)

    encoder_s = time_fn(encoder_step, dev, repeats=repeats) * batch_size / b_enc
    aligner_s = time_fn(sma_step, dev, repeats=repeats)
    return {"name": "s2d_aligner", "config": config, "device": _device_name(dev), "B": batch_size,
            "image_size": image_size, "P": int(n_patches), "vision_dim": int(v_dim), "lm_hidden": lm_hidden,
            "memory_size": cfg.memory_size, "memory_dim": cfg.memory_dim, "repeats": repeats,
            "aligner_params": sum(p.numel() for p in sma.parameters()),
            "encoder_params": sum(p.numel() for p in enc.parameters()),
            "aligner_s": aligner_s, "encoder_s": encoder_s, "encoder_measured_B": b_enc,
            "encoder_extrapolated": b_enc != batch_size, "aligner_share": aligner_s / encoder_s}
