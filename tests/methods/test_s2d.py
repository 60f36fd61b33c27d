"""S2D-ALIGN: SMA shapes and masking, the shared memory bank, the batched LM input and its
loss against per-sample / manual references, image-only generation (its plumbing:
tests/models/test_generation.py), LoRA freezing, the
three-stage curriculum through the Trainer, checkpoints and the packaged configs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medalign_lite.data.dataset import Batch
from medalign_lite.methods.s2d import (
    S2D,
    SMA,
    S2DConfig,
    build_s2d,
    causal_lm_loss,
)
from medalign_lite.models.llm import LLMConfig, load_causal_lm
from medalign_lite.text.tokenizer import save_word_tokenizer, train_word_tokenizer
from medalign_lite.train import Stage, load_weights, save_weights, trainable_names

from .fakes import FakeImageEncoder

CORPUS = ["the heart is normal in size .", "the lungs are clear .", "no pleural effusion .",
          "small left pleural effusion .", "no pneumothorax .", "the heart is enlarged .",
          "human : write the findings and impression of this chest x - ray . assistant :",
          "right lower lobe consolidation ; possible atelectasis"] * 2
SMALL_LM = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_positions": 128}
SMALL = {"memory_size": 6, "memory_dim": 16, "heads": 4, "mlp_hidden": 24, "max_aux_tokens": 12,
         "max_report_tokens": 16, "max_new_tokens": 6, "num_beams": 3}
REPORTS = ["The heart is normal in size. No pleural effusion.", "Small left pleural effusion.",
           "The lungs are clear."]
PRIORS = ["The heart is enlarged.", "", "No pneumothorax. The lungs are clear."]
ALL_AUX = ("reference", "key_phrases")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s2d_tok")
    save_word_tokenizer(train_word_tokenizer(CORPUS, min_frequency=1), folder)
    return str(folder)


def make_model(tok_dir, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=0, **cfg) -> S2D:
    torch.manual_seed(seed)
    llm_cfg = LLMConfig(tokenizer=tok_dir, lora_r=4, lora_alpha=8, lora_targets=lora_targets, **SMALL_LM)
    lm, tok = load_causal_lm(llm_cfg)
    with torch.no_grad():  # sharper attention than the N(0, 0.02²) init, so that positions matter
        for name, p in lm.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.normal_(0, 0.3)
    return S2D(FakeImageEncoder(), lm, tok, S2DConfig(**{**SMALL, **cfg}), llm_cfg)


def make_batch(n=3, priors=True, phrases=None, seed=1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    texts = [REPORTS[i % len(REPORTS)] for i in range(n)]
    return Batch(images=torch.randn(n, 1, 16, 16, generator=g), texts=texts, study_ids=[f"s{i}" for i in range(n)],
                 labels=torch.zeros(n, 14), prior_reports=[PRIORS[i % len(PRIORS)] for i in range(n)] if priors else None,
                 key_phrases=phrases)


def _sub(batch: Batch, i: int) -> Batch:
    return Batch(images=batch.images[i:i + 1], texts=batch.texts[i:i + 1], study_ids=batch.study_ids[i:i + 1],
                 labels=batch.labels[i:i + 1],
                 prior_reports=None if batch.prior_reports is None else batch.prior_reports[i:i + 1],
                 key_phrases=None if batch.key_phrases is None else batch.key_phrases[i:i + 1])


# --- SMA ---------------------------------------------------------------------------------------
def test_sma_shapes_mask_and_padding_invariance():
    torch.manual_seed(0)
    mem = torch.nn.Parameter(torch.randn(5, 16) * 0.02)
    sma = SMA(10, 24, mem, heads=4, mlp_layers=3, mlp_hidden=20).eval()
    assert [m.out_features for m in sma.mlp if isinstance(m, torch.nn.Linear)] == [20, 20, 24]
    x = torch.randn(3, 7, 10)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False          # padding
    mask[2] = False              # no valid key at all (an empty reference report)
    c, attn = sma(x, mask, return_attention=True)
    assert c.shape == (3, 5, 24) and attn.shape == (3, 5, 7)
    assert torch.isfinite(c).all()
    torch.testing.assert_close(attn[:2].sum(-1), torch.ones(2, 5))
    assert (attn[1, :, 4:] == 0).all() and (attn[2] == 0).all()
    # a padded sample equals the same sample without its padding
    torch.testing.assert_close(c[1:2], sma(x[1:2, :4], None))
    # H = LN(Q + MHA(Q, X W_in)), C = MLP(H): the formula, by hand
    q = mem.unsqueeze(0)
    u, _ = sma.attn(q, sma.proj(x[:1]))
    torch.testing.assert_close(c[:1], sma.mlp(F.layer_norm(q + u, (16,), sma.norm.weight, sma.norm.bias)))


def test_memory_bank_is_one_parameter_when_shared(tok_dir):
    m = make_model(tok_dir)
    assert m.sma_v.memory is m.sma_t.memory is m.sma_p.memory is m.memory
    names = [n for n, _ in m.named_parameters()]
    assert names.count("memory") == 1 and not any(n.endswith(".memory") for n in names)
    u = make_model(tok_dir, shared_memory=False)
    banks = [u.sma_v.memory, u.sma_t.memory, u.sma_p.memory]
    assert len({id(b) for b in banks}) == 3 and not hasattr(u, "memory")
    assert all(torch.equal(b, banks[0]) for b in banks)  # same initial values
    assert {"sma_v.memory", "sma_t.memory", "sma_p.memory"} <= {n for n, _ in u.named_parameters()}


def test_memory_gradient_flows_through_sma_t_in_stage_2(tok_dir):
    batch = make_batch()
    m = make_model(tok_dir)
    m.set_stage(Stage(name="s2", inputs={"aux": ["reference"]}))
    assert m.aux == ("reference",)
    m(batch)["loss"].backward()
    g2 = m.memory.grad.clone()
    assert m.sma_t.proj.weight.grad.abs().sum() > 0 and m.sma_p.proj.weight.grad is None
    m.zero_grad()
    m.aux = ()
    m(batch)["loss"].backward()
    assert not torch.allclose(g2, m.memory.grad)  # SMA_t adds to the shared bank's gradient
    u = make_model(tok_dir, shared_memory=False)
    u.aux = ("reference",)
    u(batch)["loss"].backward()
    assert u.sma_t.memory.grad.abs().sum() > 0 and u.sma_p.memory.grad is None


# --- the LM input and loss ---------------------------------------------------------------------
def test_labels_mask_everything_but_the_report_and_loss_is_target_ce(tok_dir):
    m = make_model(tok_dir).eval()
    m.aux = ALL_AUX
    batch = make_batch()
    inp = m.build_inputs(batch)
    tok = m.tokenizer
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in batch.texts]  # + <eos>
    n_prompt = inp.labels.shape[1] - inp.target_len
    assert (inp.labels[:, :n_prompt] == -100).all()           # prompt and soft tokens
    for i, n in enumerate(lens):
        assert (inp.labels[i, n_prompt:n_prompt + n] != -100).all()
        assert (inp.labels[i, n_prompt + n:] == -100).all()    # padding
        assert inp.labels[i, n_prompt + n - 1] == tok.eos_token_id
        assert inp.attention_mask[i, n_prompt:].sum() == n
    # the study without a reference: its C2 block takes no attention and no position
    m_ = SMALL["memory_size"]
    assert inp.n_soft.tolist()[1] < inp.n_soft.tolist()[0]
    c2 = slice(m.prefix_ids.shape[1] + m_, m.prefix_ids.shape[1] + 2 * m_)
    assert (inp.attention_mask[1, c2] == 0).all() and (inp.attention_mask[0, c2] == 1).all()
    out = m(batch)
    assert out["n_tokens"] == sum(lens)
    with torch.no_grad():
        logits = m.lm(inputs_embeds=inp.inputs_embeds, attention_mask=inp.attention_mask,
                      position_ids=inp.position_ids).logits
    # manual CE over the report positions only (position t predicts the label at t + 1)
    nll, count = 0.0, 0
    for i, n in enumerate(lens):
        for t in range(n_prompt, n_prompt + n):
            nll += F.cross_entropy(logits[i, t - 1][None], inp.labels[i, t][None]).item()
            count += 1
    assert count == sum(lens)
    assert abs(out["loss"].item() - nll / count) < 1e-4
    # whatever label sat on prompt / soft-token positions would not count: corrupt them
    corrupted = inp.labels.clone()
    corrupted[:, :n_prompt] = 5
    assert not torch.isclose(causal_lm_loss(logits, corrupted)[0], out["loss"])
    torch.testing.assert_close(causal_lm_loss(logits, inp.labels)[0], out["loss"].detach())


def test_empty_reference_is_finite_and_equals_no_reference(tok_dir):
    m = make_model(tok_dir).eval()
    batch = make_batch(priors=False)
    batch.prior_reports = ["", "", ""]
    m.aux = ("reference",)
    out = m(batch)
    assert torch.isfinite(out["loss"]) and out["n_soft_tokens"] == SMALL["memory_size"]
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.aux = ()
    torch.testing.assert_close(out["loss"].detach(), m(batch)["loss"].detach(), rtol=1e-5, atol=1e-5)
    m.aux = ("reference",)
    batch.prior_reports = None  # no prior report at all: the same
    torch.testing.assert_close(out["loss"].detach(), m(batch)["loss"].detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("projector", ["sma", "mlp"])
def test_batched_loss_equals_per_sample_loss(tok_dir, projector):
    m = make_model(tok_dir, projector=projector).eval()
    m.aux = ALL_AUX
    batch = make_batch(n=3, phrases=[["left pleural effusion"], [], ["no pneumothorax", "cardiomegaly"]])
    with torch.no_grad():
        out = m(batch)
        parts = [m(_sub(batch, i)) for i in range(3)]
    total = sum(p["loss"] * p["n_tokens"] for p in parts) / sum(p["n_tokens"] for p in parts)
    torch.testing.assert_close(out["loss"], total, rtol=1e-5, atol=1e-5)


def test_key_phrases_come_from_the_batch_or_the_target_report(tok_dir):
    m = make_model(tok_dir)
    batch = make_batch(n=2)
    assert m.key_phrase_texts(batch) == ["no cardiomegaly; no pleural effusion", "left pleural effusion"]
    batch.key_phrases = [["a b", "c"], []]
    assert m.key_phrase_texts(batch) == ["a b; c", ""]


# --- generation --------------------------------------------------------------------------------
def test_generation_ignores_auxiliary_inputs_and_stage(tok_dir):
    m = make_model(tok_dir)
    with torch.no_grad():  # LoRA B ≠ 0, so that merging matters
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    m.train()
    full = make_batch(n=2, phrases=[["left pleural effusion"], ["no pneumothorax"]])
    bare = make_batch(n=2, priors=False)
    ref = m.generate_batch(full)
    assert m.training  # generate restores the mode
    assert len(ref) == 2 and all(isinstance(t, str) for t in ref)
    assert m.generate_batch(bare) == ref == m.generate(full.images)
    for aux in ((), ("reference",), ALL_AUX):
        m.set_stage(Stage(name="s", inputs={"aux": list(aux)}))
        assert m.generate(full.images) == ref
    ids = m.generate_ids(full.images, min_new_tokens=6)
    assert ids.shape == (2, 6)
    # the shared-prompt cache and the merged LoRA give generate's own tokens
    assert torch.equal(ids, m.generate_ids(full.images, prefill_once=False, min_new_tokens=6))
    m.config.merge_lora_for_generation = False
    assert torch.equal(ids, m.generate_ids(full.images, min_new_tokens=6))
    assert torch.equal(m.generate_ids(full.images, num_beams=1, min_new_tokens=4),
                       m.generate_ids(full.images, num_beams=1, min_new_tokens=4, prefill_once=False))
    # the decode-time attention kernel (CPU: eager) changes no token, and the LM gets its own back
    base = m.lm.get_base_model()
    loaded = base.config._attn_implementation
    assert m.config.generation_attention == "eager" and loaded != "eager"
    seen = []
    original = base.set_attn_implementation
    base.set_attn_implementation = lambda name: (seen.append(name), original(name))
    try:
        m.config.generation_attention = None
        assert torch.equal(ids, m.generate_ids(full.images, min_new_tokens=6)) and seen == []
        m.config.generation_attention = "eager"
        assert torch.equal(ids, m.generate_ids(full.images, min_new_tokens=6))
    finally:
        del base.set_attn_implementation
    assert seen == ["eager", loaded] and base.config._attn_implementation == loaded


@pytest.mark.parametrize("checkpointing", [False, True])
def test_building_training_and_generating_warn_nothing(tok_dir, checkpointing):
    """No warning of any category (every one would be an error), and no deprecation message
    through transformers' logger: the KV cache is passed and read as ``cache``, not the
    deprecated ``past_key_values``. (Filtered, at their source: peft's read of the deprecated
    ``is_gradient_checkpointing`` in ``apply_lora``, and generate's notes that a repetition
    penalty / n-gram block skips an ``inputs_embeds`` prompt.)"""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    hf_logging.warning_once.cache_clear()  # messages already shown once in this process show again
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            m = build_s2d("s2d_tiny", [f"llm.tokenizer={tok_dir}", "llm.hidden_size=32", "llm.num_layers=2",
                                       "llm.intermediate_size=64", "model.memory_size=4", "model.memory_dim=16",
                                       "model.max_new_tokens=4", f"llm.gradient_checkpointing={checkpointing}"],
                          vision_encoder=FakeImageEncoder())
            m.set_stage(Stage(name="s3", inputs={"aux": list(ALL_AUX)}))
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
            m.train()
            m(make_batch())["loss"].backward()
            opt.step()
            images = make_batch(n=2).images
            for kw in ({}, {"prefill_once": False}, {"num_beams": 1},
                       {"repetition_penalty": 2.0, "length_penalty": 2.0, "no_repeat_ngram_size": 2}):
                assert len(m.generate(images, **kw)) == 2
    finally:
        hf_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []


def test_memory_attention_over_the_patch_grid(tok_dir):
    m = make_model(tok_dir)
    a = m.memory_attention(make_batch(n=2).images)
    assert a.shape == (2, SMALL["memory_size"], 16)  # 16 px → 4×4 patches
    torch.testing.assert_close(a.sum(-1), torch.ones(2, SMALL["memory_size"]))


# --- training ----------------------------------------------------------------------------------
def test_lora_step_leaves_the_base_weights_bitwise(tok_dir):
    m = make_model(tok_dir)
    m.aux = ALL_AUX
    stage = Stage(name="s3", trainable=["*memory", "sma_*", "*lora_*"])
    keep = set(trainable_names(m, stage.trainable))
    for n, p in m.named_parameters():
        p.requires_grad_(n in keep)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    for _ in range(2):  # lora_B starts at 0: A moves from the second step
        m(make_batch())["loss"].backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= keep
    base = [n for n in before if n.startswith("lm.") and "lora_" not in n]
    assert base and not changed & set(base)
    assert {n for n in keep if "lora_" in n} <= changed and "memory" in changed
    assert not any(n.startswith("vision.") for n in changed)


def test_checkpoint_round_trip_keeps_sharing_and_peft_names(tok_dir, tmp_path):
    m = make_model(tok_dir)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_weights(m.state_dict(), tmp_path / "model.safetensors")
    sd = load_weights(tmp_path / "model.safetensors")
    assert any(".lora_A." in k and k.startswith("lm.base_model.model.") for k in sd)
    assert {"memory", "sma_v.memory", "sma_t.memory", "sma_p.memory"} <= set(sd)
    fresh = make_model(tok_dir, seed=1)
    fresh.load_state_dict(sd, strict=True)
    assert fresh.sma_v.memory is fresh.sma_t.memory is fresh.memory
    for (n, p), (n2, q) in zip(m.state_dict().items(), fresh.state_dict().items()):
        assert n == n2 and torch.equal(p, q), n


def test_three_stage_curriculum_through_the_trainer(tok_dir, tiny_manifest, tmp_path):
    from medalign_lite.data.dataset import Collate, ManifestDataset
    from medalign_lite.data.manifest import write_manifest
    from medalign_lite.train import TrainConfig, Trainer, latest_checkpoint

    root, df = tiny_manifest
    df.loc[:, "findings"] = ["Small left pleural effusion.", "The heart is enlarged."] * 3
    df.loc[:, "prior_report"] = ["The lungs are clear.", "No pneumothorax."] * 3
    ds = ManifestDataset(write_manifest(df, root / "manifest.csv"), split="train", prior_report=True, image_size=16)
    m = make_model(tok_dir)
    seen: dict[str, dict] = {}
    start_weights: dict[str, dict] = {}
    set_stage, forward = m.set_stage, m.forward

    def record_stage(stage):
        start_weights[stage.name] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        set_stage(stage)

    def record_forward(batch):
        out = forward(batch)
        seen.setdefault(current[0], {"aux": m.aux, "prior_reports": batch.prior_reports})
        return out

    current = [""]
    m.set_stage = lambda stage: (current.__setitem__(0, stage.name), record_stage(stage))[-1]
    m.forward = record_forward
    stages = [Stage(name="stage1", epochs=1, lr=1e-2, trainable=["*memory", "sma_v.*", "*lora_*"], inputs={"aux": []}),
              Stage(name="stage2", epochs=1, lr=1e-2, trainable=["*memory", "sma_v.*", "sma_t.*", "*lora_*"],
                    inputs={"aux": ["reference"]}),
              Stage(name="stage3", epochs=1, lr=1e-2, trainable=["*memory", "sma_*", "*lora_*"],
                    inputs={"aux": ["reference", "key_phrases"]})]
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=2, device="cpu", stages=stages)
    result = Trainer(m, ds, cfg, collate_fn=Collate()).fit(resume=False)
    assert result.done and [r["stage"] for r in result.history] == ["stage1", "stage2", "stage3"]
    assert {k: v["aux"] for k, v in seen.items()} == {"stage1": (), "stage2": ("reference",),
                                                      "stage3": ("reference", "key_phrases")}
    assert sorted(seen["stage2"]["prior_reports"]) == ["No pneumothorax.", "The lungs are clear."]
    msz = SMALL["memory_size"]
    assert [r["n_soft_tokens"] for r in result.history] == [msz, 2 * msz, 3 * msz]
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir(), key=lambda d: int(d.name.split("-")[1]))
    ends = [load_weights(d / "model.safetensors") for d in ckpts]
    assert len(ends) == 3 and latest_checkpoint(tmp_path / "run") == ckpts[-1]
    for k in ("stage2", "stage3"):  # stage k starts from stage k−1's end
        prev = ends[int(k[-1]) - 2]
        assert all(torch.equal(start_weights[k][n], prev[n]) for n in prev), k
    def moved(a, b, prefix):  # the SMA's own weights (its .memory is the shared bank, trained throughout)
        return any(not torch.equal(a[n], b[n]) for n in a if n.startswith(prefix) and not n.endswith(".memory"))

    s1_start = start_weights["stage1"]
    assert moved(s1_start, ends[0], "sma_v.") and not moved(s1_start, ends[0], "sma_t.")
    assert moved(ends[0], ends[1], "sma_t.") and not moved(ends[0], ends[1], "sma_p.")
    assert moved(ends[1], ends[2], "sma_p.")
    base = [n for n in s1_start if n.startswith("lm.") and "lora_" not in n]
    assert all(torch.equal(s1_start[n], ends[2][n]) for n in base)


# --- configs -----------------------------------------------------------------------------------
def test_full_config_builds_config_and_curriculum(tok_dir):
    from medalign_lite.config import load_config
    from medalign_lite.models.vision import VisionConfig
    from medalign_lite.train import TrainConfig

    cfg = load_config(S2DConfig, "s2d_full", section="model")
    assert (cfg.memory_size, cfg.memory_dim, cfg.heads, cfg.mlp_layers, cfg.shared_memory) == (64, 768, 8, 3, True)
    vis = load_config(VisionConfig, "s2d_full", section="vision")
    llm = load_config(LLMConfig, "s2d_full", section="llm")
    assert vis.name == "hf:microsoft/rad-dino" and vis.image_size == 518
    assert llm.lora_r == 16 and llm.torch_dtype == "bfloat16" and llm.gradient_checkpointing
    train = load_config(TrainConfig, "s2d_full", section="train")
    assert [(s.epochs, s.lr) for s in train.stages] == [(8, 3e-4), (5, 1e-4), (3, 5e-5)]
    assert [s.inputs["aux"] for s in train.stages] == [[], ["reference"], ["reference", "key_phrases"]]
    tiny = load_config(TrainConfig, "s2d_tiny", section="train")
    m = make_model(tok_dir, lora_targets=llm.lora_targets)
    for stages in (train.stages, tiny.stages):  # every glob names parameters of the model
        for s in stages:
            names = trainable_names(m, s.trainable, s.name)
            assert "memory" in names and any("lora_" in n for n in names)
            assert not any(n.startswith(("vision.", "lm.")) and "lora_" not in n for n in names)
    m.set_stage(train.stages[2])
    assert m.aux == ALL_AUX


def test_build_s2d_tiny_config(tok_dir):
    m = build_s2d("s2d_tiny", [f"llm.tokenizer={tok_dir}", "llm.hidden_size=32", "llm.num_layers=1",
                               "llm.intermediate_size=64", "model.memory_size=4", "model.memory_dim=16"],
                  vision_encoder=FakeImageEncoder())
    assert m.memory.shape == (4, 16) and m.sma_v.mlp[-1].out_features == 32
    assert {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n, _ in m.named_parameters() if ".lora_A." in n} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any(p.requires_grad for p in m.vision.parameters()) and not m.train().vision.training
    with pytest.raises(ValueError, match="unknown auxiliary"):
        m.aux = ("reference", "priors")
    with pytest.raises(ValueError, match="expected one of model.KEY=V, vision.KEY=V, llm.KEY=V"):
        build_s2d("s2d_tiny", ["text.name=x"])


def test_bench_cli_prints_json_last(capsys):
    import json

    from medalign_lite.cli import main

    assert main(["bench", "s2d-generate", "--n-reports", "2", "--batch-size", "2", "--report-tokens", "3",
                 "--set", "model.memory_size=4", "--threads", "1", "--omp-wait-policy", "", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n_reports"] == 2 and res["mean_generated_tokens"] == 3 and res["reports_per_s"] > 0


def test_bench_processes_split_the_reports_and_time_them_together():
    from medalign_lite.bench import bench_s2d_generate

    res = bench_s2d_generate(n_reports=5, batch_size=2, report_tokens=3, overrides=("model.memory_size=4",),
                             processes=2)
    assert res["processes"] == 2 and res["threads"] >= 1 and res["n_reports"] == 5
    assert [p["n_reports"] for p in res["per_process"]] == [3, 2] and res["mean_generated_tokens"] == 3
    # the span covers every process's own timed section
    assert res["seconds"] >= max(p["seconds"] for p in res["per_process"]) * 0.999
    assert res["reports_per_s"] == pytest.approx(5 / res["seconds"], rel=0.01)
    with pytest.raises(ValueError, match="processes"):
        bench_s2d_generate(n_reports=1, processes=2)
