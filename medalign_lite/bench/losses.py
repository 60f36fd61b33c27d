"""The losses at paper shapes: GLoRIA's local loss (``medalign bench gloria``) and AGA's head
against the encoders and against GLoRIA (``medalign bench aga``)."""
from __future__ import annotations

import math
import multiprocessing as mp
import resource

import torch

from .common import _device_name, _slope, time_fn


def _gloria_step(b: int, t: int, p: int, d: int, device: torch.device, dtype: torch.dtype, chunk: int | None):
    from ..methods.baselines import gloria_local_loss

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


#: BERT-base shapes (BioClinicalBERT's architecture) with the MiniLM tokenizer's vocabulary, for
#: random-weight text encoders that need no download.
BERT_BASE = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512}


def bench_aga(batch_size: int = 48, t: int = 97, p: int = 361, d: int = 128,
              gloria_dims: tuple[int, ...] = (768, 128), device: str = "cpu",
              dtypes: tuple[str, ...] | None = None, repeats: int = 3, vision: str = "timm:resnet50",
              image_size: int = 299, text_hf_config: dict | None = None, encoders: bool = True,
              encoder_batch: int | None = None, gloria_repeats: int | None = None, compile: bool = False) -> dict:
    """AGA's head against the encoders and against GLoRIA's local loss, measured in one run.

    Times (median of ``repeats`` after one warm-up, forward + backward, synchronised) at the
    paper's shapes, B = 48 pairs of T = 97 tokens and P = 361 patches, d = 128, on every device:

    - ``head_s``: :class:`~medalign_lite.methods.aga.AGAHead` alone as a run uses it by
      default (``AGAConfig.compile="auto"``: compiled on CUDA, eager on a CPU), in training
      mode, on random projected embeddings (similarity, min-max, gates, groups, IGA, BCGA,
      global InfoNCE); on CUDA also ``head_eager_s`` (``compile="never"``); with ``compile``
      on a CPU also ``head_compiled_s`` (``compile="always"``: inductor, minutes to compile);
    - ``encoders_s``: image encoder (``vision`` at ``image_size`` px, random weights; ResNet-50
      at 299 px gives the 19×19 = 361 patches) + text encoder (``text_hf_config``, default
      BERT-base shape = BioClinicalBERT's, random weights, T tokens) + AGA's projections, for
      B pairs. On a CPU they run on ``encoder_batch`` pairs (default 2: B = 48 would take
      minutes) and the time is extrapolated per pair (``encoders_measured_B``,
      ``encoders_extrapolated``): a CPU runs an encoder's samples one after the other, so its
      time is linear in B;
    - CUDA only: ``step_s``, one whole AGA training step (encoders + head + backward), and
      ``head_in_step_s`` = ``step_s`` − ``encoders_s``, what the head adds to a step (its
      kernel launches overlap the encoders' queued GPU work);
    - ``gloria_s``: GLoRIA's batched local loss at the same B, T, P for each D in
      ``gloria_dims`` (768 = GLoRIA's paper width, 128 = AGA's). Its O(B²) cost at B = 48 takes
      minutes on a CPU, where it runs ``gloria_repeats`` times (default 1, no warm-up).

    Ratios: ``head_share`` = head / encoders and ``vs_gloria`` = head / GLoRIA(D =
    ``gloria_dims[0]``) (targets ≤ 0.05 both), ``vs_gloria_d<D>`` for the other widths, and the
    ``_eager`` / ``_compiled`` / ``_in_step`` variants. ``dtypes``: default float32 and
    bfloat16 on CUDA (the head and encoders under autocast, GLoRIA in that dtype), float32 on
    a CPU; each dtype's numbers are in ``by_dtype[dtype]``, and the first dtype's are also at
    the top level.
    """
    from ..methods.aga import AGA, AGAConfig, AGAHead
    from ..models.text import TextConfig, build_text_encoder
    from ..models.vision import VisionConfig, build_image_encoder

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    dtypes = tuple(dtypes or (("float32", "bfloat16") if cuda else ("float32",)))
    b = batch_size
    b_enc = b if cuda else min(b, encoder_batch or 2)
    g_reps = gloria_repeats or (repeats if cuda else 1)
    g = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=dev, generator=g, requires_grad=True)

    modes = {"": "auto"}
    if cuda:
        modes["_eager"] = "never"
    elif compile:
        modes["_compiled"] = "always"
    heads = {}
    for suffix, mode in modes.items():
        torch.manual_seed(0)
        heads[suffix] = AGAHead(AGAConfig(embed_dim=d, compile=mode)).to(dev).train()
    image_local, image_global, text_local, text_global = rand(b, p, d), rand(b, d), rand(b, t, d), rand(b, d)
    text_mask = torch.ones(b, t, dtype=torch.bool, device=dev)
    leaves = [image_local, image_global, text_local, text_global]
    model = None
    if encoders:
        text_cfg = TextConfig(name="bert-base (random)", tokenizer="minilm", pretrained=False,
                              hf_config=dict(text_hf_config or BERT_BASE), max_length=max(t, 3),
                              merge_wordpieces=False, pooling="cls")
        torch.manual_seed(0)
        model = AGA(build_image_encoder(VisionConfig(vision, image_size=image_size, in_chans=1)),
                    build_text_encoder(text_cfg), AGAConfig(embed_dim=d)).to(dev).train()
        images = torch.randn(b_enc, 1, image_size, image_size, device=dev, generator=g)
        vocab = model.text_encoder.model.config.vocab_size
        ids = torch.randint(min(1000, vocab - 1), vocab, (b_enc, t), device=dev, generator=g)
        attn = torch.ones(b_enc, t, dtype=torch.long, device=dev)

    res: dict = {"name": "aga_head", "device": _device_name(dev), "B": b, "T": t, "P": p, "d": d,
                 "repeats": repeats, "gloria_repeats": g_reps, "dtypes": list(dtypes), "by_dtype": {}}
    for dtype in dtypes:
        dt = getattr(torch, dtype)

        def amp(dt=dt):
            return torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32)

        def head_step(h):
            def step():
                with amp():
                    out = h(image_local, image_global, text_local, text_mask, text_global)
                out["loss"].backward()
                h.zero_grad(set_to_none=True)
                for x in leaves:
                    x.grad = None
            return step

        r: dict = {}
        for suffix, h in heads.items():  # a compiled head compiles in its warm-up calls
            compiled = h.config.compile == "always" or (h.config.compile == "auto" and cuda)
            r[f"head{suffix}_s"] = time_fn(head_step(h), dev, repeats=repeats, warmup=3 if compiled else 1)
        r["gloria_s"] = {str(dim): time_fn(_gloria_step(b, t, p, dim, dev, dt, None), dev, repeats=g_reps,
                                           warmup=1 if cuda else 0) for dim in gloria_dims}
        if model is not None:
            with torch.no_grad(), amp():
                res["encoder_P"] = int(model.embed_images(images[:1]).patches.shape[1])

            def encoder_step():
                with amp():
                    img = model.embed_images(images)
                    txt = model.embed_texts(ids, attn)
                    total = img.pooled.sum() + img.patches.sum() + txt.pooled.sum() + txt.tokens.sum()
                total.float().backward()
                model.zero_grad(set_to_none=True)

            measured = time_fn(encoder_step, dev, repeats=repeats)
            r["encoders_s"] = measured * b / b_enc
            r["encoders_measured_B"], r["encoders_extrapolated"] = b_enc, b_enc != b
            if cuda:
                for suffix, h in heads.items():
                    model.head = h  # the timed head (same weights and buffers) inside the model

                    def full_step():
                        with amp():
                            img = model.embed_images(images)
                            txt = model.embed_texts(ids, attn)
                            out = model.head(img.patches, img.pooled, txt.tokens, txt.mask, txt.pooled)
                        out["loss"].backward()
                        model.zero_grad(set_to_none=True)

                    r[f"step{suffix}_s"] = time_fn(full_step, dev, repeats=repeats, warmup=3)
                    r[f"head_in_step{suffix}_s"] = r[f"step{suffix}_s"] - r["encoders_s"]
        ref = r["gloria_s"][str(gloria_dims[0])] if gloria_dims else None
        for suffix in heads:
            for where in ("", "_in_step"):
                head_s = r.get(f"head{where}{suffix}_s")
                if head_s is None:
                    continue
                if "encoders_s" in r:
                    r[f"head_share{where}{suffix}"] = head_s / r["encoders_s"]
                if ref:
                    r[f"vs_gloria{where}{suffix}"] = head_s / ref
                for dim in gloria_dims[1:]:
                    r[f"vs_gloria_d{dim}{where}{suffix}"] = head_s / r["gloria_s"][str(dim)]
        res["by_dtype"][dtype] = r
    if model is not None:
        res["vision"], res["image_size"] = vision, image_size
        res["text_layers"] = int(model.text_encoder.model.config.num_hidden_layers)
    res.update({"dtype": dtypes[0], **res["by_dtype"][dtypes[0]]})
    return res
