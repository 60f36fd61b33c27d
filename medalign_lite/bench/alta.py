"""ALTA's efficiency claims (``medalign bench alta``): the trainable fraction at the paper-scale
config, and one masked adapter training step against one unmasked full fine-tuning step at the
same shapes (time and peak memory)."""
from __future__ import annotations

import multiprocessing as mp

import torch
from torch.utils.flop_counter import FlopCounterMode

from .common import PeakMemory, _device_name, load_1min, time_fn
from .losses import BERT_BASE

__all__ = ["bench_alta"]


def _alta_model(config: str, options: dict, text_hf_config: dict | None, trainable: list[str] | None = None):
    """An ALTA of ``config``'s shapes with random weights (nothing downloaded): the vision
    section's ``hf_config``, a BERT of ``text_hf_config`` (default BERT-base: CXR-BERT's shape)
    with MiniLM's tokenizer (the same 30,522-piece vocabulary); ``trainable``: glob patterns
    (default ALTA's own set)."""
    from dataclasses import replace

    from ..config import load_config
    from ..methods.alta import ALTA, ALTAConfig, set_trainable
    from ..models.mae import build_mae
    from ..models.text import TextConfig, build_text_encoder
    from ..models.vision import VisionConfig

    cfg = load_config(ALTAConfig, config, [f"{k}={v}" for k, v in options.items()], section="model")
    vision = replace(load_config(VisionConfig, config, section="vision"), pretrained=False)
    text = load_config(TextConfig, config, section="text")
    text = replace(text, name="bert (random)", tokenizer="minilm", pretrained=False, trust_remote_code=False,
                   hf_config=dict(text_hf_config or BERT_BASE))
    torch.manual_seed(0)
    model = set_trainable(ALTA(build_mae(vision), build_text_encoder(text), cfg), trainable)
    return model, vision, text


def _alta_step_point(kw: dict) -> dict:
    """Time, peak memory and FLOPs of one ALTA training step (forward + backward + AdamW) in this
    process. ``gflop``: the step's matrix products, convolutions and attention, forward and
    backward, as ``torch.utils.flop_counter`` counts them on the warm-up step (element-wise work
    and the optimizer are not counted)."""
    from ..data.dataset import Batch

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

    with PeakMemory(dev) as mem:
        counter = FlopCounterMode(display=False)
        with counter:  # the warm-up step, its matrix products counted
            step()
        sec = time_fn(step, dev, repeats=kw["repeats"], warmup=0)
    return {"seconds": sec, "peak_mib": mem.mib, "memory": mem.method, "gflop": counter.get_total_flops() / 1e9,
            "trainable_params": sum(p.numel() for p in params), "params": sum(p.numel() for p in model.parameters()),
            "load_avg": load_1min()}


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
      ``alta_gflop``, ``full_gflop`` and ``flop_ratio``: the arithmetic of each step (matrix
      products, convolutions, attention; forward and backward; counted, so the same on every
      machine): the step ratio a device reaches when it is compute-bound;
      ``alta_peak_mib``, ``full_peak_mib`` and ``memory_ratio``: peak memory of each step
      (:class:`~medalign_lite.bench.common.PeakMemory` in a fresh process per variant: CUDA peak
      allocated; CPU the peak resident size above the model and batch already in memory).

    ``batch_size=None`` is 24 (the paper's per GPU) on CUDA and 2 on CPU; ``tokens`` is the
    text length (the code pads to 128). ``load_avg``: the 1-minute load average during each
    CPU measurement (a shared machine makes times upper bounds).
    """
    from ..methods.alta import parameter_table

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
        res[f"{name}_gflop"] = point["gflop"]
    res["step_ratio"] = res["alta_step_s"] / res["full_step_s"]
    res["flop_ratio"] = res["alta_gflop"] / res["full_gflop"]
    res["memory_ratio"] = res["alta_peak_mib"] / max(res["full_peak_mib"], 1e-6)
    return res
