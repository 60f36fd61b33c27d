"""Contrastive runs: recipes from config files, trainable sets per method/ablation, the
frozen-text feature cache, the in-memory training set that the ablations of notebook 02 share,
and the variants grid with its summary table."""
from __future__ import annotations

import functools

import pytest
import torch

from medalign_lite.data.dataset import ManifestDataset
from medalign_lite.data.manifest import write_manifest
from medalign_lite.experiments.contrastive import (
    AlignmentRecipe,
    build_model,
    default_trainable,
    recipe_trainable,
    train_alignment,
)
from medalign_lite.models.vision import VisionConfig


def test_default_trainable_follows_the_ablation():
    assert "head.*" in default_trainable("aga")
    assert "head.*" not in default_trainable("aga", {"use_bcga": False})
    assert "head.*" not in default_trainable("aga", {"global_only": True})
    assert "head.*" not in default_trainable("gloria")
    assert not any(p.startswith("text_encoder") for p in default_trainable("aga", text=False))


@pytest.fixture
def manifest(tiny_manifest):
    folder, df = tiny_manifest
    df = df.assign(split="train")
    path = folder / "manifest.csv"
    write_manifest(df, path)
    return path


def _recipe(**kw):
    return AlignmentRecipe(**{"method": "aga", "vision": VisionConfig(name="tiny_cnn", image_size=32), "image_size": 32,
                              "embed_dim": 16, "batch_size": 3, "epochs": 1, "max_steps": 2, "device": "cpu", **kw})


def test_cached_text_recipe_trains_an_ablation_without_touching_the_text_encoder(manifest, tmp_path):
    recipe = _recipe(cache_text=True, augment=False, method_options={"use_bcga": False})
    model = build_model(recipe)
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    img_before = model.image_encoder.state_dict()["backbone.stem.0.weight"].clone()
    ds = ManifestDataset(manifest, split="train", image_size=32, cache=True)
    res = train_alignment(model, manifest, recipe, tmp_path / "run", dataset=ds)
    assert res.done and len(model.text_encoder._cache) == 6
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.image_encoder.state_dict()["backbone.stem.0.weight"], img_before)


def test_cached_text_refuses_a_trainable_text_encoder():
    with pytest.raises(ValueError, match="cache_text"):
        build_model(_recipe(cache_text=True, trainable=["img_*", "text_encoder.model.encoder.layer.5.*"]))


def test_run_variants_and_summary(manifest, tmp_path):
    import pandas as pd

    from medalign_lite.data.manifest import load_manifest
    from medalign_lite.experiments.variants import run_variants, summary_table

    gallery = tmp_path / "gallery.csv"
    g = load_manifest(manifest).assign(**{"class": ["Edema", "Atelectasis"] * 3})
    write_manifest(g, gallery)
    seen, encoders = [], {}
    results = run_variants({"full": _recipe(cache_text=True), "global": _recipe(method_options={"global_only": True})},
                           seeds=[0, 1], manifest=manifest, gallery_manifest=gallery, output_dir=tmp_path / "runs",
                           keep_models=(1,), on_result=lambda r: seen.append((r.name, r.seed)), ks=(1, 2), text_encoders=encoders)
    assert seen == [("full", 0), ("global", 0), ("full", 1), ("global", 1)]
    # the cached-text runs of both seeds share one frozen encoder (and its cache); the others don't
    (shared,) = encoders.values()
    assert results[2].model.text_encoder is shared and results[3].model.text_encoder is not shared
    assert [r.model is None for r in results] == [True, True, False, False]
    assert all(0.0 <= r.retrieval["i2t_P@1"] <= 1.0 and r.history for r in results)
    # seeds differ: different initial weights, so different scores or histories
    assert results[0].history[-1]["loss"] != results[2].history[-1]["loss"]
    table = summary_table([r.row() for r in results], keys=("i2t_P@1",))
    assert list(table.index) == ["full", "global"] and (table["n"] == 2).all()
    vals = pd.Series([results[0].retrieval["i2t_P@1"], results[2].retrieval["i2t_P@1"]])
    assert table.loc["full", "i2t_P@1 mean"] == pytest.approx(vals.mean())
    assert table.loc["full", "i2t_P@1 std"] == pytest.approx(vals.std(ddof=1), nan_ok=True)
    # the per-query precisions the claims rule resamples average to the P@K
    for r in results:
        assert r.retrieval["per_query"]["i2t_P@1"].mean() == pytest.approx(r.retrieval["i2t_P@1"], abs=1e-12)
        assert r.retrieval["per_query"]["t2i_P@2"].shape == (6,)
    # the within-modality diagnostics against a plain loop: each query ranks the others, never itself
    from medalign_lite.experiments.contrastive import embed, retrieval_eval

    model, classes = results[2].model, g["class"].tolist()
    e = embed(model, ManifestDataset(gallery, split=None, image_size=32))
    scores = retrieval_eval(model, gallery, 32, ks=(1, 2))
    for name, x in (("i2i", e["image"]), ("t2t", e["text"])):
        for k in (1, 2):
            hits = []
            for q in range(len(classes)):
                others = sorted((j for j in range(len(classes)) if j != q), key=lambda j: -float(x[q] @ x[j]))
                hits.append(sum(classes[j] == classes[q] for j in others[:k]) / k)
            assert scores[f"{name}_P@{k}"] == pytest.approx(sum(hits) / len(hits))


def test_run_variants_keeps_the_first_seeds_model_whatever_the_seed(manifest, tmp_path):
    """Notebook 02 with seed=10 crashed: models were kept only for seed 0 (keep_models=(0,))."""
    from medalign_lite.data.manifest import load_manifest
    from medalign_lite.experiments.variants import run_variants

    gallery = tmp_path / "gallery.csv"
    write_manifest(load_manifest(manifest).assign(**{"class": ["Edema", "Atelectasis"] * 3}), gallery)
    res = run_variants({"full": _recipe(cache_text=True)}, seeds=[10, 11], manifest=manifest, gallery_manifest=gallery,
                       output_dir=tmp_path / "runs", ks=(1,))
    assert res[0].seed == 10 and res[0].model is not None and res[1].model is None


def test_run_variants_in_workers_equals_one_process_and_logs_a_learning_curve(manifest, tmp_path):
    """Two worker processes give the runs of one process bit for bit (one intra-op thread each);
    the kept model comes back around this process's shared text encoder; the validation curve
    is logged every ``eval_every`` steps and at the end. Each text group's leader (its first run)
    encodes the reports and the rest of the group reads them, in workers as in one process."""
    from medalign_lite.data.manifest import load_manifest
    from medalign_lite.experiments.variants import RetrievalCurve, run_variants, shared_text_encoder

    gallery = tmp_path / "gallery.csv"
    write_manifest(load_manifest(manifest).assign(**{"class": ["Edema", "Atelectasis"] * 3}), gallery)
    gal = ManifestDataset(gallery, split=None, image_size=32, cache=True)
    train = ManifestDataset(manifest, split="train", image_size=32, cache=True)
    from medalign_lite.experiments.ceiling import LabelCeiling, SupervisedCeiling

    full = _recipe(cache_text=True, augment=False, epochs=2, max_steps=3)
    variants = {"full": full, "no_bcga": _recipe(cache_text=True, augment=False, epochs=2, max_steps=3,
                                                 method_options={"use_bcga": False}),
                "ceiling": SupervisedCeiling(full), "findings only": full}
    names = list(variants)
    data = {n: train for n in names} | {"findings only": train.with_text(("findings",))}  # a second text group
    kw = {"seeds": [0, 1], "manifest": manifest, "gallery_manifest": gallery, "train_dataset": data,
          "gallery_dataset": gal, "ks": (1, 2), "threads": 1, "curve": RetrievalCurve(gal, ks=(1,)), "eval_every": 2}
    one = run_variants(variants, output_dir=tmp_path / "one", workers=1, text_encoders={}, **kw)  # a fresh encoder
    seen = []
    two = run_variants(variants, output_dir=tmp_path / "two", workers=2, on_result=lambda r: seen.append(r.name), **kw)
    assert [(r.name, r.seed) for r in two] == [(n, s) for s in (0, 1) for n in names]
    assert sorted(seen) == sorted(names * 2)
    leaders = {("full", 0), ("findings only", 0)}
    for runs in (one, two):
        assert {(r.name, r.seed) for r in runs if r.encoded_texts} == leaders
        assert next(r for r in runs if (r.name, r.seed) == ("full", 0)).encoded_texts >= len(train)
    for a, b in zip(one, two):
        losses = [[h["loss"] for h in r.history if "loss" in h] for r in (a, b)]
        key = "i2i_P@1" if a.name == "ceiling" else "i2t_P@1"  # the ceiling: image→image
        assert a.retrieval[key] == b.retrieval[key] and losses[0] == losses[1] and losses[0]
        assert a.curve(f"val_{key}") == b.curve(f"val_{key}")
        assert a.curve(f"val_{key}")[0] == [2, 3]  # every 2 steps, and at the end of the 3
    for a, b in zip(one[:4], two[:4]):  # the first seed's models are kept
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        if b.name != "ceiling":
            assert b.model.text_encoder is shared_text_encoder(b.recipe.text)
    assert isinstance(two[2].model, LabelCeiling)
    assert all(r.model is None for r in one[4:] + two[4:])


def test_recipe_from_config_reads_every_section_and_checks_keys():
    from medalign_lite.config import ConfigError
    from medalign_lite.experiments.contrastive import recipe_from_config

    r = recipe_from_config("aga_tiny", ["model.use_bcga=false", "vision.image_size=64", "train.stages.0.lr=0.01",
                                        "data.text_columns=[written_findings]"], seed=3)
    assert (r.method, r.image_size, r.vision.image_size, r.lr, r.seed) == ("aga", 64, 64, 0.01, 3)
    assert r.method_options == {"use_bcga": False} and r.text_columns == ("written_findings",)
    assert r.cache_text and not r.augment and r.trainable is None and r.max_steps == 800
    assert r.extra_studies == 4000 and r.vision.precision == "auto"
    assert "head.*" not in recipe_trainable(r)  # BCGA off: its attention has nothing to train
    c = recipe_from_config("convirt_tiny")
    assert c.method == "convirt" and c.trainable == ["image_encoder.*", "img_*", "txt_*"]
    with pytest.raises(ConfigError, match="use_bcga"):
        recipe_from_config("convirt_tiny", ["model.use_bcga=false"])  # ConVIRT has no such switch
    with pytest.raises(ValueError, match="expected one of model.KEY=V"):
        recipe_from_config("aga_tiny", ["llm.name=x"])


def test_aga_variant_table_changes_only_what_it_names():
    from medalign_lite.experiments.aga import VARIANTS, variant_recipes

    recipes = variant_recipes(list(VARIANTS), overrides=["model.gamma_tg=0.999", "train.stages.0.max_steps=7"],
                              text="structured", seed=2)
    full = recipes["full"]
    assert full.method_options == {"gamma_tg": 0.999} and full.max_steps == 7 and full.seed == 2
    assert full.text_columns == ("structured_findings", "structured_impression")
    assert recipes["fixed_thresholds"].method_options == {"gamma_tg": 0.999, "fixed_thresholds": True}
    assert recipes["cross_pair"].method_options == {"gamma_tg": 0.999, "iga_scope": "batch"}
    g = recipes["gloria"]  # the cross-pair baseline: same data, budget and encoders, its own loss
    assert g.method == "gloria" and g.method_options == {} and (g.vision, g.text, g.max_steps, g.text_columns) == (
        full.vision, full.text, full.max_steps, full.text_columns)
    with pytest.raises(ValueError, match="unknown AGA variant"):
        variant_recipes(["fuller"])


def test_score_grounding_patch_game_credits_the_right_patch_the_pixel_game_cannot_hit():
    """A finding smaller than a patch, away from every patch centre: a map that picks its patch
    scores 1 in the patch game and 0 in the pixel game; a map that picks another patch scores 0
    in both. Kinds are grouped as GROUNDING_GROUPS says."""
    from medalign_lite.experiments.contrastive import score_grounding

    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, 7] = True                                          # the corner pixel of patch (0, 1) of a 2×2 grid
    right = torch.tensor([0.0, 1.0, 0.0, 0.0])                 # argmax: patch (0, 1)
    wrong = torch.tensor([0.0, 0.0, 1.0, 0.0])                 # argmax: patch (1, 0)
    big = torch.zeros(8, 8, dtype=torch.bool)
    big[4:, 4:] = True
    g = score_grounding([right, wrong, torch.tensor([0.0, 0.0, 0.0, 1.0])], [mask, mask, big],
                        ["nodule", "granuloma", "cardiomegaly"], ["a", "b", "c"], (2, 2))
    assert g["per_kind"]["nodule"]["pointing_patch"] == 1.0 and g["per_kind"]["nodule"]["pointing"] == 0.0
    assert g["per_kind"]["granuloma"]["pointing_patch"] == 0.0
    assert g["per_kind"]["cardiomegaly"]["pointing"] == 1.0 and g["per_kind"]["cardiomegaly"]["pointing_patch"] == 1.0
    assert g["groups"]["small"]["n"] == 2 and g["groups"]["small"]["pointing_patch"] == 0.5
    assert g["groups"]["large"]["n"] == 1 and g["pointing_patch"] == pytest.approx(2 / 3)
    assert g["pointing_game"] == pytest.approx(1 / 3)


def test_restrict_grounding_scores_the_same_phrases_again():
    from medalign_lite.experiments.contrastive import restrict_grounding, score_grounding

    torch.manual_seed(0)
    maps = [torch.randn(4) for _ in range(6)]
    masks = [torch.rand(8, 8) > 0.6 for _ in range(6)]
    kinds = ["nodule", "cardiomegaly", "scoliosis", "cardiomegaly", "nodule", "edema"]
    g = score_grounding(maps, masks, kinds, list("abcdef"), (2, 2))
    sub = restrict_grounding(g, {"cardiomegaly", "edema"})
    direct = score_grounding([maps[i] for i in (1, 3, 5)], [masks[i] for i in (1, 3, 5)],
                             ["cardiomegaly", "cardiomegaly", "edema"], list("bdf"), (2, 2))
    assert sub["n_phrases"] == 3 and sub["kinds"] == direct["kinds"]
    for k in ("pointing_game", "pointing_patch", "mask_auroc"):
        assert sub[k] == pytest.approx(direct[k])
    assert restrict_grounding(g, {"pneumothorax"}) == {"n_phrases": 0}


def _record(log, chain):
    log.append(chain[0])
    return [chain[0]]


def _timed(chain):
    import time

    name, sleep = chain[0]
    start = time.time()
    time.sleep(sleep)
    return [(name, start)]


def test_run_chains_starts_the_costliest_ready_chain_when_a_worker_frees():
    """Two workers: when A ends, C (ready only then, cost 9) starts before L1 and L2 (ready from
    the start, cost 1); a FIFO queue would have run them first."""
    from medalign_lite.experiments.variants import run_chains

    chains = [[("A", 0.0)], [("X", 5.0)], [("L1", 0.0)], [("L2", 0.0)], [("C", 0.0)]]
    cost = {"A": 10, "X": 8, "C": 9, "L1": 1, "L2": 1}
    out = run_chains(_timed, chains, workers=2, threads=1, cost=lambda c: cost[c[0][0]],
                     after=[None, None, None, None, 0])
    start = dict(out)
    assert sorted(start) == ["A", "C", "L1", "L2", "X"]
    assert start["A"] <= start["C"] <= min(start["L1"], start["L2"])


def test_run_chains_after_holds_a_chain_back_until_its_predecessor_ran():
    from medalign_lite.experiments.variants import run_chains

    log = []
    out = run_chains(functools.partial(_record, log), [["a"], ["b"], ["c"], ["d"]], after=[None, 2, None, 1])
    assert log == out == ["a", "c", "b", "d"]
    with pytest.raises(ValueError, match="cycle"):
        run_chains(functools.partial(_record, []), [["a"], ["b"]], after=[1, 0])
    with pytest.raises(ValueError, match="entries"):
        run_chains(functools.partial(_record, []), [["a"], ["b"]], after=[None])
