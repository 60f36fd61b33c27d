"""S2D-ALIGN experiments: the stage lists of the paper's ablations, branching from a shared
stage 1 (the branch is the run a variant would make alone), and the driver end to end on a
tiny manifest (scores for every variant and both baselines)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medalign_lite.data.dataset import Collate, ManifestDataset
from medalign_lite.experiments.generation import (
    PatchItems,
    PrecomputedPatches,
    encode_dataset,
    generate_reports,
)
from medalign_lite.experiments.s2d import (
    PAPER_CE_F1,
    VARIANTS,
    check_curriculum,
    independent_memory_state,
    load_s2d_experiment,
    trainable_for,
    variant_model_options,
    variant_stages,
)
from medalign_lite.experiments.s2d_runs import run_s2d_variants
from medalign_lite.experiments.variants import shared_prefix, stage_checkpoints
from medalign_lite.methods.s2d import S2D, S2DConfig
from medalign_lite.models.llm import LLMConfig, load_causal_lm
from medalign_lite.text.tokenizer import save_word_tokenizer, train_word_tokenizer
from medalign_lite.train import load_weights, trainable_names

from ..methods.fakes import FakeImageEncoder

REPORTS = ["The heart is normal in size. No pleural effusion.", "Small left pleural effusion.",
           "The heart is enlarged. The lungs are clear.", "No pneumothorax. The lungs are clear.",
           "Right lower lobe consolidation.", "The lungs are clear. No acute disease."]
PRIORS = ["The heart is enlarged.", "", "No pneumothorax. The lungs are clear.", "Small left pleural effusion."]
SMALL_LM = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "intermediate_size": 48, "max_positions": 160}
SMALL = {"memory_size": 4, "memory_dim": 16, "heads": 4, "mlp_hidden": 16, "max_aux_tokens": 12,
         "max_report_tokens": 14, "max_new_tokens": 5, "num_beams": 2, "prompt_prefix": "<img>",
         "prompt_suffix": "report :"}
ALL_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- the stage lists ---------------------------------------------------------------------------
def _aux(stages):
    return [s.inputs["aux"] for s in stages]


PAPER = load_s2d_experiment("s2d_full").train.stages  # the paper's curriculum: 8 / 5 / 3 epochs


def _curriculum(epochs=(1, 1, 1), lrs=(1e-2, 5e-3, 2e-3), max_steps=(None, None, None)):
    """The tutorial config's curriculum with another budget, set by overrides as a notebook does."""
    over = [f"train.stages.{i}.{k}={v}" for i in range(3)
            for k, v in (("epochs", epochs[i]), ("lr", lrs[i]), ("max_steps", max_steps[i]))]
    return load_s2d_experiment("s2d_tiny", [o.replace("=None", "=null") for o in over]).train.stages


def test_stage_lists_are_the_papers_table():
    e, lr = (8, 5, 3), (3e-4, 1e-4, 5e-5)
    assert [(s.epochs, s.lr) for s in PAPER] == list(zip(e, lr)) and set(PAPER_CE_F1) == set(VARIANTS)
    prog = variant_stages("progressive", PAPER)
    assert _aux(prog) == [[], ["reference"], ["reference", "key_phrases"]]
    assert [(s.epochs, s.lr) for s in prog] == list(zip(e, lr))
    assert [s.trainable for s in prog] == [["*memory", "sma_v.*", "*lora_*"],
                                           ["*memory", "sma_v.*", "sma_t.*", "*lora_*"],
                                           ["*memory", "sma_v.*", "sma_t.*", "sma_p.*", "*lora_*"]]  # s2d_tiny.yaml
    assert variant_stages("without_stage3", PAPER) == prog[:2]
    rev = variant_stages("reversed", PAPER)
    assert rev[0] == prog[0] and _aux(rev) == [[], ["key_phrases"], ["key_phrases", "reference"]]
    assert rev[1].trainable == ["*memory", "sma_v.*", "sma_p.*", "*lora_*"]
    assert [(s.epochs, s.lr) for s in rev] == list(zip(e, lr))
    single = variant_stages("single_stage", PAPER)
    assert single[0] == prog[0] and _aux(single) == [[], [], []] and sum(s.epochs for s in single) == 16
    assert all(s.trainable == prog[0].trainable for s in single)
    (joint,) = variant_stages("joint", PAPER)
    assert joint.inputs["aux"] == ["reference", "key_phrases"] and joint.epochs == 16 and joint.lr == 3e-4
    assert joint.trainable == prog[2].trainable
    assert variant_stages("independent_memory", PAPER) == prog
    assert variant_model_options("independent_memory") == {"shared_memory": False}
    mlp = variant_stages("mlp_projector", PAPER)
    assert _aux(mlp) == _aux(prog) and not any("*memory" in s.trainable for s in mlp)
    assert variant_model_options("mlp_projector") == {"projector": "mlp"} and variant_model_options("progressive") == {}
    # a custom budget and caps, from config overrides
    tiny = variant_stages("progressive", _curriculum((2, 1, 1), (1e-3, 3e-4, 1e-4), (5, None, 3)))
    assert [(s.epochs, s.lr, s.max_steps) for s in tiny] == [(2, 1e-3, 5), (1, 3e-4, None), (1, 1e-4, 3)]
    assert variant_stages("joint", _curriculum((2, 1, 1), max_steps=(4, 4, 4)))[0].max_steps == 12
    assert shared_prefix(prog, rev) == 1 and shared_prefix(prog, variant_stages("without_stage3", PAPER)) == 2
    assert shared_prefix(prog, [joint]) == 0
    with pytest.raises(ValueError, match="unknown S2D variant"):
        variant_stages("curriculum", PAPER)
    with pytest.raises(ValueError, match="unknown auxiliary"):
        trainable_for(["priors"])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s2dx_tok")
    corpus = [r.lower() for r in REPORTS + PRIORS] + ["left pleural effusion ; no pneumothorax ; cardiomegaly", "<img> report :"]
    save_word_tokenizer(train_word_tokenizer(corpus * 2, min_frequency=1), folder)
    return str(folder)


def _llm(tok_dir):
    return LLMConfig(tokenizer=tok_dir, lora_r=4, lora_alpha=8, lora_targets=ALL_LORA, **SMALL_LM)


def _model(tok_dir, seed=0, **options) -> S2D:
    torch.manual_seed(seed)
    llm = _llm(tok_dir)
    lm, tok = load_causal_lm(llm)
    return S2D(FakeImageEncoder(), lm, tok, S2DConfig(**{**SMALL, **options}), llm)


def test_every_trainable_glob_names_parameters_of_its_model(tok_dir):
    for v in VARIANTS:
        m = _model(tok_dir, **variant_model_options(v))
        for s in variant_stages(v, PAPER):
            names = trainable_names(m, s.trainable, s.name)  # raises on a glob that matches nothing
            assert any("lora_" in n for n in names) and not any(n.startswith("vision.") for n in names)
            assert not any(n.startswith("lm.") and "lora_" not in n for n in names)
            active = {"reference": "sma_t.", "key_phrases": "sma_p."}
            for aux, prefix in active.items():  # (an unused independent bank matches *memory: it gets no gradient)
                own = [n for n in names if n.startswith(prefix) and not n.endswith(".memory")]
                assert bool(own) == (aux in s.inputs["aux"]), (v, s.name, aux)
            if v != "mlp_projector":
                assert any(n == "memory" or n.endswith(".memory") for n in names)


# --- frozen features ---------------------------------------------------------------------------
def test_precomputed_patches_give_the_same_reports(tok_dir, manifest):
    ds = ManifestDataset(manifest, split="test", prior_report=True, image_size=16)
    enc = FakeImageEncoder().eval()
    pooled, patches, grid = encode_dataset(enc, ds, batch_size=3)
    assert patches.shape == (len(ds), 16, FakeImageEncoder.patch_dim) and grid == (4, 4)
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(len(ds)))
    items = PatchItems(ds, patches)
    batch = Collate()([items[i] for i in range(len(items))])
    assert batch.images.shape == patches.shape and batch.prior_reports == list(ds.df["prior_report"])
    torch.manual_seed(0)
    llm = _llm(tok_dir)
    lm, tok = load_causal_lm(llm)
    m = S2D(PrecomputedPatches(enc, grid), lm, tok, S2DConfig(**SMALL), llm).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    from_images = generate_reports(m, ds, batch_size=2)
    assert generate_reports(m, items, batch_size=3) == from_images and len(from_images) == len(ds)
    assert generate_reports(m, items, [2, 0]) == [from_images[2], from_images[0]]
    with pytest.raises(ValueError, match="precomputed patches"):
        m.vision(torch.zeros(1, 5, FakeImageEncoder.patch_dim))


# --- the driver --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from medalign_lite.data.manifest import empty_manifest_row, write_manifest

    root = tmp_path_factory.mktemp("s2dx_data")
    (root / "img").mkdir()
    rows = []
    for i in range(12):
        name = f"img/s{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)).save(root / name)
        row = empty_manifest_row()
        row.update(study_id=f"s{i}", patient_id=f"p{i}", split="train" if i < 8 else "test", dataset="mimic-cxr",
                   view="PA", frontal=name, findings=REPORTS[i % len(REPORTS)], impression="",
                   prior_report=PRIORS[i % len(PRIORS)], Cardiomegaly=str(i % 2))
        rows.append(row)
    return write_manifest(pd.DataFrame(rows), root / "manifest.csv")


def _run(manifest, tok_dir, tmp_path, variants, reuse=True, seeds=(0,), workers=1, threads=None):
    tr = ManifestDataset(manifest, split="train", prior_report=True, image_size=16)
    ev = ManifestDataset(manifest, split="test", prior_report=True, image_size=16)
    torch.manual_seed(123)  # the same frozen encoder for every call
    return run_s2d_variants(variants, tr, ev, FakeImageEncoder(), _llm(tok_dir), S2DConfig(**SMALL), tmp_path,
                            curriculum=_curriculum(), seeds=seeds, batch_size=4, device="cpu",
                            log_every=1, subset=3, meteor=False, reuse_prefixes=reuse, eval_batch_size=3,
                            workers=workers, threads=threads)


def _weights(run_dir, stage_index):
    return load_weights(stage_checkpoints(run_dir)[stage_index] / "model.safetensors")


def test_driver_scores_every_variant_and_both_baselines(manifest, tok_dir, tmp_path):
    res = _run(manifest, tok_dir, tmp_path, list(VARIANTS))
    runs = res.by_variant()
    assert set(runs) == set(VARIANTS) and set(res.baselines) == {"nearest_neighbour", "majority"}
    assert len(res.subset) == 3 and len(res.references) == 4
    for v, (r,) in runs.items():
        assert 0 <= r.scores["ce_micro_f1_u0"] <= 1 and "BLEU_4" in r.scores and "METEOR" not in r.scores
        assert len(r.reports) == len(r.indices) and all(isinstance(t, str) for t in r.reports)
        assert [row["stage"] for row in r.history if "loss" in row] == [s.name for s in r.stages for _ in range(2 * s.epochs)]
        assert (r.full_scores is not None) == (v == "progressive") and (r.model is not None) == (v == "progressive")
    assert len(runs["progressive"][0].reports) == 4 and len(runs["reversed"][0].reports) == 3
    # which variants took over a stage prefix, and from where
    branch = {v: (r[0].branched_from or {}) for v, r in runs.items()}
    assert {v: (b.get("variant"), b.get("stages")) for v, b in branch.items() if b} == {
        "without_stage3": ("progressive", 2), "reversed": ("progressive", 1), "single_stage": ("progressive", 1),
        "independent_memory": ("progressive", 1)}
    assert branch["independent_memory"]["converted"] and not branch["reversed"]["converted"]
    assert runs["without_stage3"][0].seconds["train"] < 5 and runs["joint"][0].branched_from is None
    # every branch starts from progressive's stage-1 weights, and its stage 1 rows are progressive's
    s1 = _weights(tmp_path / "progressive_s0", 0)
    prog_rows = [row for row in runs["progressive"][0].history if row["stage"] == "stage1_image"]
    for v in ("reversed", "single_stage"):
        w = _weights(tmp_path / f"{v}_s0", 0)
        assert w.keys() == s1.keys() and all(torch.equal(w[k], s1[k]) for k in s1)
        assert [row for row in runs[v][0].history if row["stage"] == "stage1_image"] == prog_rows
        later = _weights(tmp_path / f"{v}_s0", 1)
        assert any(not torch.equal(later[k], s1[k]) for k in s1 if "lora_" in k)  # and then trains on
    w = _weights(tmp_path / "independent_memory_s0", 0)
    assert "memory" not in w and torch.equal(w["sma_v.memory"], s1["memory"])
    torch.testing.assert_close(w["sma_t.memory"], w["sma_p.memory"])
    assert not torch.equal(w["sma_t.memory"], s1["memory"])
    table = res.summary()
    assert list(table.index) == [*[v for v in ("progressive", "without_stage3", "reversed", "single_stage",
                                               "independent_memory", "joint", "mlp_projector")],
                                 "nearest_neighbour", "majority"]
    assert table["n"].eq(1).all() and table["ce_micro_f1_u0 std"].isna().all()


def test_branches_are_the_runs_they_would_be_alone(manifest, tok_dir, tmp_path):
    """Reusing progressive's stage 1 (and its stage 2 for w/o stage 3) gives what training
    each variant from scratch gives: the same losses, weights and reports."""
    variants = ["progressive", "without_stage3", "reversed", "independent_memory"]
    shared = _run(manifest, tok_dir, tmp_path / "shared", variants).by_variant()
    alone = _run(manifest, tok_dir, tmp_path / "alone", variants, reuse=False).by_variant()
    assert all(alone[v][0].branched_from is None for v in variants)
    for v in variants:
        a, b = shared[v][0], alone[v][0]
        la = [row["loss"] for row in a.history if "loss" in row]
        lb = [row["loss"] for row in b.history if "loss" in row]
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6, err_msg=v)
        n = len(a.stages) - 1
        wa, wb = _weights(tmp_path / "shared" / f"{v}_s0", n), _weights(tmp_path / "alone" / f"{v}_s0", n)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=f"{v}: {k}")
        assert a.reports == b.reports


def test_chains_keep_branches_together_and_seeds_apart():
    from medalign_lite.experiments.s2d import _convertible
    from medalign_lite.experiments.s2d_runs import _plan
    from medalign_lite.experiments.variants import plan_chains

    curriculum = _curriculum()

    def chains_of(variants, seeds, reuse):
        return plan_chains(_plan(variants), seeds, variant_model_options, lambda v: variant_stages(v, curriculum),
                           reuse, _convertible)

    chains = chains_of(list(VARIANTS), [0, 1], True)
    trunk = [(0, v) for v in ("progressive", "without_stage3", "reversed", "single_stage", "independent_memory")]
    assert chains[:3] == [trunk, [(0, "joint")], [(0, "mlp_projector")]]
    assert chains[3:] == [[(1, v) for _, v in c] for c in chains[:3]]
    alone = chains_of(["progressive", "reversed"], [0], False)
    assert alone == [[(0, "progressive")], [(0, "reversed")]]


def test_worker_processes_give_the_same_runs(manifest, tok_dir, tmp_path):
    """workers=2 trains the chains in two spawned processes: with the same intra-op thread
    count in both modes (threads=1; a CPU's float reductions depend on it), the same reports,
    scores and losses, in the same order, and the kept model comes back with the same weights,
    bit for bit."""
    variants = ["progressive", "reversed", "joint"]
    one = _run(manifest, tok_dir, tmp_path / "one", variants, threads=1)
    two = _run(manifest, tok_dir, tmp_path / "two", variants, workers=2, threads=1)
    assert [r.name for r in two.runs] == [r.name for r in one.runs] == ["progressive", "reversed", "joint"]
    for a, b in zip(one.runs, two.runs):
        assert a.reports == b.reports and a.indices == b.indices, a.name
        flat = [k for k in a.scores if k != "per_observation"]
        assert {k: b.scores[k] for k in flat} == pytest.approx({k: a.scores[k] for k in flat}), a.name
        assert b.scores["per_observation"] == pytest.approx(a.scores["per_observation"]), a.name
        la = [row["loss"] for row in a.history if "loss" in row]
        lb = [row["loss"] for row in b.history if "loss" in row]
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6, err_msg=a.name)
    assert two.runs[1].branched_from["variant"] == "progressive"
    ma, mb = one.runs[0].model.state_dict(), two.runs[0].model.state_dict()
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    with pytest.raises(ValueError, match="workers"):
        _run(manifest, tok_dir, tmp_path / "bad", variants, workers=0)


def test_independent_memory_state_keeps_unused_banks_at_init(tok_dir):
    shared = _model(tok_dir)
    with torch.no_grad():
        shared.memory.add_(1.0)  # "trained" in stage 1
    fresh = _model(tok_dir, shared_memory=False)
    sd = independent_memory_state(shared.state_dict(), fresh)
    fresh.load_state_dict(sd, strict=True)
    torch.testing.assert_close(fresh.sma_v.memory, shared.memory)
    init = _model(tok_dir).memory  # same seed: the shared bank's initial values
    torch.testing.assert_close(fresh.sma_t.memory, init) and torch.testing.assert_close(fresh.sma_p.memory, init)
    with pytest.raises(ValueError, match="no shared"):
        independent_memory_state(fresh.state_dict(), fresh)


def test_the_config_curriculum_is_checked():
    stages = load_s2d_experiment("s2d_tiny").train.stages
    check_curriculum(stages)
    with pytest.raises(ValueError, match="has inputs.aux"):
        load_s2d_experiment("s2d_tiny", ["train.stages.1.inputs.aux=[key_phrases]"])
    with pytest.raises(ValueError, match="trains"):
        load_s2d_experiment("s2d_tiny", ["train.stages.0.trainable=[sma_v.*]"])


def test_results_give_the_table_the_metrics_and_decided_claims(manifest, tok_dir, tmp_path):
    from medalign_lite.experiments.s2d_runs import baseline_claims, pairwise_agreement, s2d_claims

    res = _run(manifest, tok_dir, tmp_path, ["progressive", "reversed", "joint"], seeds=(0, 1))
    table = res.ablation_table()
    assert list(table.index)[:3] == ["progressive S1→S2→S3", "reversed S1→S3→S2", "joint (all inputs at once)"]
    assert table["seeds"].tolist()[:3] == [2, 2, 2] and table["paper CE F1"].iloc[0] == 0.608
    assert " ± " in table.loc["progressive S1→S2→S3", "ce_micro_f1_u0"]
    m = res.metrics()
    assert {"ablation/reversed/seed1/ce_micro_f1_u0", "ablation/joint/ce_macro_f1_u0_std",
            "test/progressive/ce_micro_f1_u0", "test/nearest_neighbour/BLEU_4"} <= set(m)
    claims = s2d_claims(res)
    assert [(c.b, c.metric) for c in claims] == [("joint", "CE micro F1"), ("joint", "CE macro F1"),
                                                 ("reversed", "CE micro F1"), ("reversed", "CE macro F1")]
    assert all(c.n_seeds == 2 and c.n_items == len(res.subset) and c.low <= c.high for c in claims)
    # the per-seed differences are the table's own numbers
    by = res.by_variant()
    micro = {v: [r.scores["ce_micro_f1_u0"] for r in sorted(by[v], key=lambda r: r.seed)] for v in by}
    np.testing.assert_allclose(claims[2].per_seed, np.subtract(micro["progressive"], micro["reversed"]), atol=1e-9)
    (nn_micro, *_) = baseline_claims(res)
    assert nn_micro.n_items == len(res.references) and nn_micro.n_seeds == 2  # progressive reports on everything
    agreement = pairwise_agreement(res)
    assert agreement["pairs"] == 3 and agreement["ordered"] + agreement["undecided"] == 3
