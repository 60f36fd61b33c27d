"""Contrastive runs: recipes from config files, trainable sets per method/ablation, the
frozen-text feature cache, the in-memory training set that the ablations of notebook 02 share,
and the variants grid with its summary table."""
from __future__ import annotations

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
    return AlignmentRecipe(method="aga", vision=VisionConfig(name="tiny_cnn", image_size=32), image_size=32,
                           embed_dim=16, batch_size=3, epochs=1, max_steps=2, device="cpu", **kw)


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


def test_run_variants_keeps_the_first_seeds_model_whatever_the_seed(manifest, tmp_path):
    """Notebook 02 with seed=10 crashed: models were kept only for seed 0 (keep_models=(0,))."""
    from medalign_lite.data.manifest import load_manifest
    from medalign_lite.experiments.variants import run_variants

    gallery = tmp_path / "gallery.csv"
    write_manifest(load_manifest(manifest).assign(**{"class": ["Edema", "Atelectasis"] * 3}), gallery)
    res = run_variants({"full": _recipe(cache_text=True)}, seeds=[10, 11], manifest=manifest, gallery_manifest=gallery,
                       output_dir=tmp_path / "runs", ks=(1,))
    assert res[0].seed == 10 and res[0].model is not None and res[1].model is None


def test_recipe_from_config_reads_every_section_and_checks_keys():
    from medalign_lite.config import ConfigError
    from medalign_lite.experiments.contrastive import recipe_from_config

    r = recipe_from_config("aga_tiny", ["model.use_bcga=false", "vision.image_size=64", "train.stages.0.lr=0.01",
                                        "data.text_columns=[written_findings]"], seed=3)
    assert (r.method, r.image_size, r.vision.image_size, r.lr, r.seed) == ("aga", 64, 64, 0.01, 3)
    assert r.method_options == {"use_bcga": False} and r.text_columns == ("written_findings",)
    assert r.cache_text and not r.augment and r.trainable is None and r.max_steps == 60
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
    g = recipes["gloria"]  # the cross-pair baseline: same data, budget and encoders, its own loss
    assert g.method == "gloria" and g.method_options == {} and (g.vision, g.text, g.max_steps, g.text_columns) == (
        full.vision, full.text, full.max_steps, full.text_columns)
    with pytest.raises(ValueError, match="unknown AGA variant"):
        variant_recipes(["fuller"])
