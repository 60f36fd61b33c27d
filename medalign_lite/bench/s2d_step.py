"""S2D-ALIGN's training step at the paper's scale (``medalign bench s2d-step``), random weights,
nothing downloaded: SMA_v on Rad-DINO's 1,369 patches of 768 (and SMA_t, SMA_p from stage 2 and 3),
Vicuna-7B's shape (32 layers, 4096 wide, MLP 11,008, vocabulary 32,000) in bf16 with LoRA r = 16 on
every linear layer and gradient checkpointing, the curriculum stage's trainable set, batch 4, the
report at ``s2d_full``'s 160 tokens: time, LM tokens per second and peak memory of one step
(forward, backward, AdamW).

A CPU cannot run a 7B step in minutes: there the LM runs with 1 and 3 of its layers and the step is
extrapolated linearly in layers (``extrapolated``; the LM's embeddings, head, the SMA and the
optimizer are the intercept). A GPU runs all 32.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from .common import PatchInput, PeakMemory, _device_name, load_1min, random_llama, time_fn

__all__ = ["VICUNA_7B", "bench_s2d_step"]

#: Vicuna-7B v1.5's shape (LLaMA-2-7B).
VICUNA_7B = {"hidden": 4096, "layers": 32, "heads": 32, "intermediate": 11008, "vocab_size": 32000}
#: Rad-DINO's patch tokens at 518 px (37 × 37) and their width: what SMA_v reads.
RAD_DINO_PATCHES = (1369, 768)


def _step_point(layers: int, stage: int, batch_size: int, report_tokens: int, aux_tokens: int, device: str,
                dtype: str, checkpointing: bool, repeats: int, config: str, shape: dict, patches: tuple[int, int],
                seed: int = 0) -> dict:
    """One S2D of ``layers`` LM layers at ``stage`` (1-3): its step timed, its memory measured."""
    import random

    from ..config import load_config
    from ..methods.s2d import S2D, S2DConfig
    from ..models.llm import LLMConfig
    from ..train import TrainConfig, freeze_for_stage

    dev = torch.device(device)
    cfg = load_config(S2DConfig, config, section="model")
    lora = load_config(LLMConfig, config, section="llm")   # the config's LoRA: r 16, α 32, every linear layer
    llm_options = {"torch_dtype": dtype, "gradient_checkpointing": checkpointing, "lora_r": lora.lora_r,
                   "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                   "lora_targets": tuple(lora.lora_targets)}
    lm, tok, llm, words = random_llama(shape["hidden"], layers, shape["heads"], shape["intermediate"],
                                       vocab_size=shape["vocab_size"], texts=[cfg.prompt_prefix, cfg.prompt_suffix],
                                       max_positions=4096, seed=seed, **llm_options)
    model = S2D(PatchInput(patches[1]), lm, tok, cfg, llm).to(dev).train()
    st = load_config(TrainConfig, config, section="train").stages[stage - 1]
    params = freeze_for_stage(model, st)
    model.set_stage(st)
    rng = random.Random(seed)
    sent = lambda k: " ".join(rng.choices(words, k=k))
    g = torch.Generator().manual_seed(seed)
    batch = SimpleNamespace(images=torch.randn(batch_size, *patches, generator=g).to(dev),
                            texts=[sent(report_tokens - 1) for _ in range(batch_size)],       # + <eos>
                            prior_reports=[sent(aux_tokens) for _ in range(batch_size)],
                            key_phrases=[[sent(4) for _ in range(aux_tokens // 5)] for _ in range(batch_size)])
    with torch.no_grad():
        inp = model.build_inputs(batch)
    lm_tokens = int(inp.attention_mask.sum())
    opt = torch.optim.AdamW(params, lr=1e-5)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        with amp:
            loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with PeakMemory(dev) as mem:
        sec = time_fn(step, dev, repeats=repeats, warmup=1)
    out = {"layers": layers, "seconds": sec, "peak_added_mib": mem.mib, "memory": mem.method,
           "weights_mib": round(weights / 2**20, 1), "lm_tokens": lm_tokens, "sequence": int(inp.attention_mask.shape[1]),
           "report_tokens": int((inp.labels != -100).sum()), "trainable_params": sum(p.numel() for p in params),
           "params": sum(p.numel() for p in model.parameters()), "load_avg": load_1min()}
    if dev.type == "cuda":
        out["peak_total_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def bench_s2d_step(batch_size: int = 4, stage: int = 1, report_tokens: int = 160, aux_tokens: int = 256,
                   device: str = "cpu", dtype: str = "bfloat16", gradient_checkpointing: bool = True,
                   layers: int | None = None, repeats: int = 2, config: str = "s2d_full",
                   lm_shape: dict | None = None, patches: tuple[int, int] = RAD_DINO_PATCHES) -> dict:
    """One S2D-ALIGN training step at paper scale (see the module docstring).

    ``stage`` 1 (image only: the LM reads the prompt, 64 soft tokens and the report, 247
    positions per study at the defaults), 2 (+ the reference report through SMA_t) or 3 (+ key phrases through
    SMA_p): the trainable set is ``config``'s stage's. ``aux_tokens``: the reference report's
    length (stages 2 and 3; the key phrases are ``aux_tokens`` // 5 phrases of 4 words).
    ``layers``: the LM's layers to run (default 32 on CUDA; on a CPU 1 and 3, extrapolated to
    32). Returns ``step_s`` (measured or extrapolated), ``tokens_per_s`` (the LM's attended
    tokens per second), ``report_tokens_per_s`` (the supervised ones), ``peak_mib`` (CUDA: peak
    allocated during the steps, weights included; CPU: the measured points' peak resident growth,
    weights excluded) and ``points``: each measured configuration. ``lm_shape`` and ``patches``
    replace :data:`VICUNA_7B` and :data:`RAD_DINO_PATCHES` (smaller shapes for tests).
    """
    import multiprocessing as mp

    dev = torch.device(device)
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    shape = dict(lm_shape or VICUNA_7B)
    counts = [layers] if layers else ([shape["layers"]] if dev.type == "cuda" else [1, 3])
    common = {"stage": stage, "batch_size": batch_size, "report_tokens": report_tokens, "aux_tokens": aux_tokens,
              "device": device, "dtype": dtype, "checkpointing": gradient_checkpointing, "repeats": repeats,
              "config": config, "shape": shape, "patches": tuple(patches)}
    points = []
    for n in counts:
        kw = {**common, "layers": n}
        if dev.type == "cpu":  # a fresh process per point: the peak resident size is its own
            with mp.get_context("spawn").Pool(1) as pool:
                points.append(pool.map(_step_point_kw, [kw])[0])
        else:
            points.append(_step_point(**kw))
    res: dict = {"name": "s2d_step", "config": config, "device": _device_name(dev), "dtype": dtype, "B": batch_size,
                 "stage": stage, "gradient_checkpointing": gradient_checkpointing, "lm_shape": shape,
                 "patches": list(patches), "points": points}
    last = points[-1]
    if len(points) == 2 and last["layers"] != shape["layers"]:
        a, b = points
        per_layer = (b["seconds"] - a["seconds"]) / (b["layers"] - a["layers"])
        res["per_layer_s"] = per_layer
        res["step_s"] = a["seconds"] + per_layer * (shape["layers"] - a["layers"])
        res["extrapolated"] = f"linear in layers from {a['layers']} and {b['layers']} to {shape['layers']}"
        for key in ("params", "trainable_params"):  # exact: every layer holds the same parameters
            res[key] = a[key] + (b[key] - a[key]) // (b["layers"] - a["layers"]) * (shape["layers"] - a["layers"])
    else:
        res["step_s"] = last["seconds"]
        res["extrapolated"] = "" if last["layers"] == shape["layers"] else f"measured with {last['layers']} layers only"
    res["lm_tokens"], res["sequence"], res["report_tokens"] = last["lm_tokens"], last["sequence"], last["report_tokens"]
    res["tokens_per_s"] = res["lm_tokens"] / res["step_s"]
    res["report_tokens_per_s"] = res["report_tokens"] / res["step_s"]
    res["peak_mib"] = last.get("peak_total_mib", last["peak_added_mib"])
    res.setdefault("params", last["params"])
    res.setdefault("trainable_params", last["trainable_params"])
    return res


def _step_point_kw(kw: dict) -> dict:
    return _step_point(**kw)
