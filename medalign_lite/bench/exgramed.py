"""ExGra-Med's overheads (``medalign bench exgramed``): the aligner (GNN, matchings, I-MLE target
solves) and the two text-only LM passes, each as a share of the LM training step, at the tiny
config and at the paper's shapes; the solvers' milliseconds per step."""
from __future__ import annotations

import functools

import torch

from .common import PatchInput, _device_name, load_1min, random_llama, time_fn

__all__ = ["aligner_step", "bench_exgramed"]


def _exgramed_parts(hidden: int, layers: int, heads: int, inter: int, vocab_words: int, b: int, patches: int,
                    patch_dim: int, turns: int, answer_words: int, device: torch.device,
                    solver: str, seed: int = 0):
    """A random ExGra-Med (random-weight Llama of the given shape, its word tokenizer over
    ``vocab_words`` synthetic words) and a batch of ``b`` conversations of ``turns`` turns."""
    import random

    from ..methods.exgramed import ExGraMed, ExGraMedConfig

    lm, tok, llm, words = random_llama(
        hidden, layers, heads, inter, vocab_words=vocab_words, seed=seed,
        texts=["human: <img> </img> ? assistant: ."],
        max_positions=max(512, patches + 4 * turns * (answer_words + 12)), lora_r=16,
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), lora_dropout=0.0)
    rng = random.Random(seed)
    cfg = ExGraMedConfig(solver=solver, gnn_dropout=0.1)
    model = ExGraMed(PatchInput(patch_dim), lm, tok, cfg, llm)
    model.to(device)
    sent = lambda k: " ".join(rng.choices(words, k=k))
    items = [{"study_id": str(i), "frontal": torch.randn(patches, patch_dim),
              "conversation": [(sent(8) + "?", sent(answer_words) + ".") for _ in range(turns)],
              "extended": [sent(2 * answer_words) + "." for _ in range(turns)]} for i in range(b)]
    batch = model.collate()(items).to(device)
    return model, batch


def aligner_step(batch_size: int, dim: int, device: torch.device, solver: str = "ipfp", seed: int = 0):
    """A closure of one forward + backward of ExGra-Med's aligner alone
    (:class:`~medalign_lite.methods.exgramed.BarycenterGraphAligner`: the shared 2-layer GNN of
    width ``dim`` on the 3 modality graphs of ``batch_size`` nodes, the 6 matchings and their 6
    target solves, the surrogate's backward) on random node features, in training mode."""
    from ..methods.exgramed import BarycenterGraphAligner

    torch.manual_seed(seed)
    al = BarycenterGraphAligner(dim, solver=solver).to(device).train()
    g = torch.Generator(device=device).manual_seed(seed)
    nodes = torch.randn(3, batch_size, dim, device=device, generator=g, requires_grad=True)

    def step():
        al(nodes).loss.backward()
        al.zero_grad(set_to_none=True)
        nodes.grad = None
    return step


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
    from ..methods.exgramed import (
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
    load0 = load_1min()
    res: dict = {"name": "exgramed", "device": _device_name(dev), "solver": solver}
    try:
        model, batch = _exgramed_parts(128, 2, 4, 344, 1000, 16, 64, 128, 4, 8, dev, solver)
        t = {p: time_fn(_timed_step(model, batch, p, dev), dev, repeats=repeats) for p in ("lm", "text", "aligner",
                                                                                           "full")}
        res["tiny"] = {"seconds": {k: round(v, 5) for k, v in t.items()}, "B": 16, "hidden": 128,
                       "aligner_share": round(t["aligner"] / t["lm"], 4), "text_pass_share": round(t["text"] / t["lm"], 4),
                       "full_over_lm": round(t["full"] / t["lm"], 3)}
        del model, batch
        if paper:
            t_al = time_fn(aligner_step(16, 4096, dev, solver), dev, repeats=repeats)
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
            del layer
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
        res["load_avg"] = [load0, load_1min()]
        return res
    finally:
        torch.set_num_threads(old_threads)
