"""Report generation around any generator (baselines, scoring) and the cached stand-ins
(the frozen aligned vision encoder, the tiny report LM)."""
from __future__ import annotations

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from medalign_lite.data.findings import CHEXPERT_LABELS
from medalign_lite.experiments.generation import (
    image_features,
    majority_report,
    nearest_neighbour_reports,
    score_key_order,
    score_reports,
)
from medalign_lite.experiments.pretrain import (
    code_fingerprint,
    default_encoder_recipe,
    encoder_cache_key,
    pretrained_vision_encoder,
)

REPORTS = [
    "The heart is enlarged. There is a small right pleural effusion.",
    "No acute cardiopulmonary abnormality. The lungs are clear.",
    "Left lower lobe consolidation consistent with pneumonia.",
    "There is a right-sided pneumothorax. No pleural effusion.",
    "Mild pulmonary edema. Cardiomegaly.",
    "A left chest tube is in place. No pneumothorax.",
]


# --------------------------------------------------------------------------- baselines


def _reference_nn(train, query, tol=1e-6):
    """One query and one training item at a time, in float64: the first index within ``tol``
    of the best cosine wins (rows that are multiples of each other tie)."""
    out = []
    for q in query.double():
        sims = [float(torch.nn.functional.cosine_similarity(q, t, dim=0)) for t in train.double()]
        best = max(sims)
        out.append(next(i for i, v in enumerate(sims) if v >= best - tol))
    return out


def test_nearest_neighbour_picks_the_most_similar_training_report():
    train = torch.eye(4) * torch.tensor([1.0, 3.0, 0.5, 2.0])[:, None]      # scale must not matter
    reports = ["r0", "r1", "r2", "r3"]
    query = torch.tensor([[0.1, 0.0, 0.9, 0.0],     # → 2
                          [0.0, 0.2, 0.0, 0.3],     # → 3
                          [5.0, 0.0, 0.0, 0.1]])    # → 0
    got, idx = nearest_neighbour_reports(train, reports, query, return_index=True)
    assert got == ["r2", "r3", "r0"]
    assert idx.tolist() == [2, 3, 0]


def test_nearest_neighbour_ties_go_to_the_lowest_index_and_agree_with_a_loop():
    torch.manual_seed(0)
    base = torch.randn(5, 16)
    train = torch.cat([base, base[[3, 1]], 2.5 * base[[3]]])   # rows 5, 7 repeat 3; row 6 repeats 1
    reports = [f"r{i}" for i in range(train.shape[0])]
    query = torch.cat([base[[3, 1]] * 0.7, torch.randn(40, 16)])
    got, idx = nearest_neighbour_reports(train, reports, query, chunk=7, return_index=True)
    assert idx[:2].tolist() == [3, 1]                       # exact ties → lowest index
    assert idx.tolist() == _reference_nn(train, query)
    assert got == [reports[i] for i in idx.tolist()]


def test_nearest_neighbour_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="training reports"):
        nearest_neighbour_reports(torch.eye(3), ["a", "b"], torch.eye(3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nearest_neighbour_reports(torch.eye(3), ["a", "b", "c"], torch.ones(2, 4))


def test_majority_report_normalises_and_breaks_ties_by_first_seen():
    train = ["No acute disease.", "Heart is enlarged.", "no acute disease", "1. No acute disease!", "",
             "Heart is enlarged."]
    assert majority_report(train) == "No acute disease."
    assert majority_report(["b.", "a.", "a", "B"]) == "b."     # 2 vs 2: the form seen first
    with pytest.raises(ValueError):
        majority_report(["", "  "])


# --------------------------------------------------------------------------- scores


def test_score_reports_identical_is_perfect_and_shuffled_is_worse():
    s = score_reports(REPORTS, REPORTS, meteor=False)
    assert s["BLEU_4"] == pytest.approx(1.0, abs=1e-6) and s["ROUGE_L"] == pytest.approx(1.0)
    assert s["ce_micro_f1_u0"] == 1.0 and s["ce_example_f1_u0"] == 1.0
    assert s["ce_micro_precision_u0"] == s["ce_micro_recall_u0"] == 1.0
    # macro averages all 14 observations; those never positive score 0 (sklearn zero_division=0)
    present = [o for o, f in s["per_observation"].items() if f > 0]
    assert all(f == 1.0 for f in s["per_observation"].values() if f > 0) and len(present) >= 5
    assert s["ce_macro_f1_u0"] == pytest.approx(len(present) / 14)
    assert set(s["per_observation"]) == set(CHEXPERT_LABELS) and s["n_reports"] == 6.0

    shifted = REPORTS[1:] + REPORTS[:1]
    t = score_reports(REPORTS, shifted, meteor=False)
    assert t["BLEU_4"] < 0.5 and t["ROUGE_L"] < s["ROUGE_L"]
    assert t["ce_micro_f1_u0"] < 0.5 and t["ce_example_f1_u0"] < 0.5
    assert sum(t["per_observation"].values()) < sum(s["per_observation"].values())


def test_score_reports_keys_policy_and_flags():
    s = score_reports(REPORTS[:3], REPORTS[:3], nlg=False)
    floats = {k for k in s if k != "per_observation"}
    assert floats == set(score_key_order()) - {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert all(isinstance(s[k], float) for k in floats)
    u = score_reports(["Possible small left effusion."], ["There may be a left pleural effusion."],
                      uncertain="one", nlg=False)
    z = score_reports(["Possible small left effusion."], ["There may be a left pleural effusion."], nlg=False)
    assert "ce_micro_f1_u1" in u and "ce_micro_f1_u0" not in u
    assert u["ce_micro_f1_u1"] == 1.0 and z["ce_micro_f1_u0"] == 0.0     # both uncertain effusion
    json.dumps(s)
    with pytest.raises(ValueError):
        score_reports(REPORTS, REPORTS[:2], nlg=False)
    with pytest.raises(ValueError):
        score_reports(REPORTS, REPORTS, uncertain="maybe", nlg=False)


def test_score_reports_handles_empty_hypotheses():
    s = score_reports(REPORTS[:2], ["", ""], meteor=False)
    assert s["ce_micro_f1_u0"] == 0.0 and s["BLEU_1"] < 0.01


def test_ce_bars_draws_one_bar_per_system_and_observation():
    from medalign_lite.viz import ce_bars

    per = {"s2d": dict.fromkeys(CHEXPERT_LABELS, 0.5), "nn": dict.fromkeys(CHEXPERT_LABELS[:10], 0.2)}
    fig = ce_bars(per, support={"Cardiomegaly": 12})
    ax = fig.axes[0]
    assert len(ax.patches) == 28 and len(ax.get_xticklabels()) == 14
    assert any("Cardiomegaly (12)" in t.get_text() for t in ax.get_xticklabels())
    matplotlib.pyplot.close(fig)


# --------------------------------------------------------------------------- frozen encoder


TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}


def _tiny_recipe(**kw):
    from medalign_lite.models.text import TextConfig

    fields = {"image_size": 32, "batch_size": 2, "max_steps": 2, "embed_dim": 16, "device": "cpu",
              "text": TextConfig(name="minilm", pretrained=False, hf_config=TINY_BERT, max_length=16),
              "text_columns": ("findings", "impression")}
    return default_encoder_recipe(**{**fields, **kw})


@pytest.fixture
def manifest_path(tiny_manifest):
    from medalign_lite.data.manifest import write_manifest

    folder, df = tiny_manifest
    return write_manifest(df, folder / "manifest.csv")


def test_pretrained_vision_encoder_trains_once_then_loads_from_cache(manifest_path, tmp_path, monkeypatch):
    from medalign_lite.data.dataset import ManifestDataset
    from medalign_lite.experiments import contrastive as recipes

    cache = tmp_path / "cache"
    recipe = _tiny_recipe()
    enc = pretrained_vision_encoder(manifest_path, recipe, cache_dir=cache)
    info = enc.alignment_info
    assert info["loaded"] is False and info["final_loss"] is not None
    files = sorted(p.name for p in cache.iterdir())
    key = encoder_cache_key(manifest_path, recipe)
    assert files == [f"{key}.json", f"{key}.safetensors"]          # no temp files or run folders left
    meta = json.loads((cache / f"{key}.json").read_text())
    assert meta["recipe"]["method"] == "convirt" and meta["steps"] == 2 and "device" not in meta["recipe"]

    # the encoder is frozen and was trained (differs from a fresh build of the same seed)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    fresh = recipes.build_model(recipe).image_encoder.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in enc.state_dict().items())

    def no_training(*a, **k):
        raise AssertionError("the second call must not train")

    monkeypatch.setattr(recipes, "train_alignment", no_training)
    again = pretrained_vision_encoder(manifest_path, _tiny_recipe(device="auto"), cache_dir=cache)
    assert again.alignment_info["loaded"] is True and again.alignment_info["cache_path"] == info["cache_path"]
    assert again.alignment_info["final_loss"] == info["final_loss"]
    assert again.alignment_info["threads"] == info["threads"] == meta["threads"] == torch.get_num_threads()
    assert again.alignment_info["created"] == meta["created"]
    sd1, sd2 = enc.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert not again.training and not any(p.requires_grad for p in again.parameters())

    # features: (N, D) unit vectors, identical from both encoders; patches keep their grid
    ds = ManifestDataset(manifest_path, split=None, image_size=32)
    f1, f2 = image_features(enc, ds, batch_size=4), image_features(again, ds, batch_size=4)
    assert f1.shape == (6, enc.global_dim) and torch.allclose(f1.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(f1, f2)
    assert enc(torch.zeros(1, 1, 32, 32)).patches.ndim == 3

    # another recipe is another cache entry (and would train)
    assert encoder_cache_key(manifest_path, _tiny_recipe(lr=1e-4)) != key
    assert encoder_cache_key(manifest_path, _tiny_recipe(device="cuda")) == key
    # a CPU's float reductions depend on the thread count: another count is another entry
    assert encoder_cache_key(manifest_path, recipe, threads=torch.get_num_threads() + 1) != key
    assert meta["code"] == code_fingerprint()
    with pytest.raises(AssertionError, match="must not train"):
        pretrained_vision_encoder(manifest_path, _tiny_recipe(seed=1), cache_dir=cache)


def test_cache_key_follows_manifest_content(manifest_path):
    recipe = _tiny_recipe()
    k1 = encoder_cache_key(manifest_path, recipe)
    text = manifest_path.read_text()
    manifest_path.write_text(text.replace("report 0", "report zero"))
    assert encoder_cache_key(manifest_path, recipe) != k1
    manifest_path.write_text(text)
    assert encoder_cache_key(manifest_path, recipe) == k1


def test_pretrain_report_lm_learns_caches_and_loads(tmp_path):
    from medalign_lite.experiments.pretrain import pretrain_report_lm
    from medalign_lite.models.llm import LLMConfig, load_causal_lm

    texts = ["the heart is normal . no effusion ."] * 24 + ["small left pleural effusion ."] * 8
    small = LLMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    folder = pretrain_report_lm(texts, small, epochs=20, batch_size=8, lr=1e-2, cache_dir=tmp_path)
    info = json.loads((folder / "pretrain.json").read_text())
    assert info["steps"] == 80 and info["final_loss"] < 1.5  # log(vocab) ≈ 7.3 at the start
    assert info["threads"] == torch.get_num_threads() and info["code"] == code_fingerprint()
    assert pretrain_report_lm(texts, small, epochs=20, batch_size=8, lr=1e-2, cache_dir=tmp_path) == folder
    assert len(list(tmp_path.iterdir())) == 1  # no temporary folder left behind
    model, tok = load_causal_lm(LLMConfig(name=str(folder)))
    enc = tok(["the heart is"], return_tensors="pt")
    with torch.no_grad():
        nxt = model(**enc).logits[0, -1].argmax()
    assert tok.decode([int(nxt)]).strip() == "normal"
    with pytest.raises(ValueError, match="tiny"):
        pretrain_report_lm(texts, LLMConfig(name="lmsys/vicuna-7b-v1.5"), cache_dir=tmp_path)


def test_code_fingerprint_ignores_docstrings_and_comments_but_not_code(tmp_path, monkeypatch):
    import ast

    from medalign_lite.experiments import pretrain

    src = "def f(x):\n    \"\"\"Doc.\"\"\"\n    return x + 1  # note\n"
    same = "def f(x):\n    \"\"\"Other words.\"\"\"\n    # a comment\n    return x + 1\n"
    other = "def f(x):\n    return x + 2\n"
    dump = [ast.dump(pretrain._strip_docstrings(ast.parse(t))) for t in (src, same, other)]
    assert dump[0] == dump[1] != dump[2]
    assert len(code_fingerprint()) == 16 and code_fingerprint() == code_fingerprint()


def test_report_curve_scores_the_generated_reports_against_their_references(monkeypatch):
    import medalign_lite.experiments.generation as gen

    refs = ["The heart is enlarged. No effusion.", "Large left pleural effusion.", "The lungs are clear."]
    written = {}

    def fake_generate(model, items, _, batch_size, progress, **kw):
        written.update(kw)
        return written.setdefault("reports", list(refs))

    monkeypatch.setattr(gen, "generate_reports", fake_generate)
    with pytest.raises(ValueError, match="3 studies but 2 references"):
        gen.ReportCurve(range(3), refs[:2])
    out = gen.ReportCurve(range(3), refs, batch_size=2, max_new_tokens=8)(None)
    assert written["num_beams"] == 1 and written["max_new_tokens"] == 8  # greedy unless told otherwise
    assert out["val_ce_micro_f1"] == 1.0 and out["val_distinct"] == 3
    written["reports"] = ["The lungs are clear."] * 3  # one template for every study
    out = gen.ReportCurve(range(3), refs)(None)
    assert out["val_distinct"] == 1 and out["val_ce_micro_f1"] < 1.0 and out["val_ce_macro_f1"] < 1.0


def test_sampled_finding_rates_count_the_samples_that_name_each_finding(monkeypatch):
    """Each round draws under its own seed (the caller's RNG untouched), generates by sampling, and
    the rate of an observation is the share of rounds whose report names it as present."""
    import numpy as np

    import medalign_lite.experiments.generation as gen

    calls, model = [], torch.nn.Linear(1, 1)  # the model only tells the device

    def fake_generate(model, items, indices, batch_size, progress, **kw):
        calls.append(kw)
        draw = torch.rand(len(items))  # the round's seeded stream decides each study's report
        return ["Large left pleural effusion." if d < p else "The lungs are clear." for d, p in zip(draw, items)]

    monkeypatch.setattr(gen, "generate_reports", fake_generate)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    probs = [0.0, 0.5, 1.0]
    rates, samples = gen.sampled_finding_rates(model, probs, k=8, seed=3, num_beams=3, max_new_tokens=9)
    assert torch.rand(1) == before  # the caller's random state is left as it was
    assert all(c["do_sample"] and c["num_beams"] == 1 and c["top_k"] == 0 and c["max_new_tokens"] == 9 for c in calls)
    eff = CHEXPERT_LABELS.index("Pleural Effusion")
    ref = []  # a plain reference: one seeded draw per round
    for r in range(8):
        torch.manual_seed(3 + r)
        ref.append((torch.rand(3) < torch.tensor(probs)).numpy())
    assert rates.shape == (3, len(CHEXPERT_LABELS)) and len(samples) == 8
    assert np.allclose(rates[:, eff], np.mean(ref, axis=0)) and rates[0, eff] == 0 and rates[2, eff] == 1
    assert 0 < rates[1, eff] < 1 and rates[:, CHEXPERT_LABELS.index("Cardiomegaly")].sum() == 0
    again, _ = gen.sampled_finding_rates(model, probs, k=8, seed=3)
    assert np.array_equal(rates, again)
    with pytest.raises(ValueError, match="k must be"):
        gen.sampled_finding_rates(model, probs, k=0)


def test_a_run_that_trained_the_recipe_stores_its_encoder_and_the_cache_loads_it(manifest_path, tmp_path, monkeypatch):
    """cache_aligned_encoder: the entry pretrained_vision_encoder would write, so that the next call
    loads instead of training; an existing entry is left as it is."""
    from medalign_lite.experiments import contrastive as recipes
    from medalign_lite.experiments.pretrain import cache_aligned_encoder

    cache, recipe = tmp_path / "cache", _tiny_recipe()
    model = recipes.build_model(recipe)
    with torch.no_grad():
        next(model.image_encoder.parameters()).add_(1.0)  # "trained": differs from a fresh build
    history = [{"loss": 2.0, "global_step": 1}, {"loss": 1.5, "global_step": 2}]
    path = cache_aligned_encoder(model, history, manifest_path, recipe, 12.5, cache_dir=cache)
    assert path.name == f"{encoder_cache_key(manifest_path, recipe)}.safetensors"
    monkeypatch.setattr(recipes, "train_alignment", lambda *a, **k: pytest.fail("a stored entry must not train"))
    enc = pretrained_vision_encoder(manifest_path, recipe, cache_dir=cache)
    assert enc.alignment_info["loaded"] is True and enc.alignment_info["final_loss"] == 1.5
    mine = model.image_encoder.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in enc.state_dict().items())
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["steps"] == 2 and meta["train_seconds"] == 12.5 and meta["threads"] == torch.get_num_threads()
    other = recipes.build_model(recipe)
    assert cache_aligned_encoder(other, history, manifest_path, recipe, 1.0, cache_dir=cache) == path
    assert json.loads(path.with_suffix(".json").read_text())["train_seconds"] == 12.5  # left as it was
