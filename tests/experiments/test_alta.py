"""ALTA's experiments layer: variant recipes from the config (and the MAE folder), the claims'
reading of a verdict, the cached masked autoencoder (trained once, keyed, loadable), the
four-view training set, and zero-shot / probe evaluation of a dual encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medalign_lite.data.manifest import write_manifest
from medalign_lite.experiments.alta import (
    CLAIMS,
    VARIANTS,
    alta_claims,
    mae_settings,
    paper_reading,
    prepare_mae,
    seconds_per_step,
    train_dataset,
    variant_recipes,
)
from medalign_lite.experiments.claims import Claim
from medalign_lite.experiments.pretrain import MAEPretrainConfig, pretrained_mae
from medalign_lite.experiments.variants import RunResult
from medalign_lite.models.mae import build_mae
from medalign_lite.models.vision import VisionConfig
from tests.methods.fakes import TINY_MAE


def test_variant_recipes_apply_each_variants_overrides_and_the_mae():
    rs = variant_recipes(list(VARIANTS), "alta_tiny", ["train.stages.0.max_steps=7", "mae_pretrain.epochs=2"],
                         seed=3, mae="/some/mae")
    assert all(r.method == "alta" and r.max_steps == 7 and r.seed == 3 and r.vision.pretrained == "/some/mae"
               for r in rs.values())
    assert rs["full"].trainable is None and rs["full_finetune"].trainable == ["*"]
    assert rs["full_finetune"].method_options["adapters"] is False
    assert rs["no_masking"].method_options["mask_ratio"] == 0.0
    assert rs["frontal_only"].method_options["views"] == ("frontal",)
    assert rs["no_mim_mlm"].method_options == {**rs["full"].method_options, "use_mim": False, "use_mlm": False}
    assert mae_settings("alta_tiny", ["mae_pretrain.epochs=2"]).epochs == 2
    with pytest.raises(ValueError, match="unknown ALTA variant"):
        variant_recipes(["fuller"])
    with pytest.raises(ValueError, match="unknown key 'epochz'"):
        variant_recipes(["full"], overrides=["mae_pretrain.epochz=2"])
    assert prepare_mae("unused.csv", "alta_full") is None  # paper scale names its weights (MRM)


def test_the_tutorial_config_runs_its_max_steps_and_pools_what_its_encoders_trained():
    """alta_tiny once stopped after one epoch (85 steps) while it announced max_steps 150, and read
    the CLS of an MAE that never trains its CLS and of MiniLM, a mean-pooling sentence encoder."""
    r = variant_recipes(["full"], "alta_tiny")["full"]
    steps_per_epoch = 2749 // r.batch_size  # IU-Phantom's 2,749 training studies, drop_last
    assert r.extra_studies == 0 and r.epochs * steps_per_epoch >= r.max_steps
    assert r.method_options["image_pooling"] == "mean" and r.text.pooling == "mean"
    paper = variant_recipes(["full"], "alta_full")["full"]
    assert "image_pooling" not in paper.method_options and paper.text.pooling == "cls"  # the code's CLS


def _run(name, seed, hits):
    return RunResult(name, seed, None, None, [{"global_step": 10, "time": 5.0}],
                     {"per_query": {"i2t_P@5": np.asarray(hits, dtype=float)}}, 1.0)


def test_claims_read_each_verdict_against_the_papers_sentence():
    good, bad = [1.0] * 40, [0.0] * 40
    claims = {c.name: c for c in alta_claims([_run("full", 0, good), _run("full_finetune", 0, bad),
                                              _run("no_masking", 0, good), _run("frontal_only", 0, good)])}
    assert claims["adapters > full fine-tuning"].verdict == "holds"
    assert claims["adapters > full fine-tuning"].extra["reading"] == "supported"
    assert claims["no masking > masking 0.75"].verdict == "undecided"  # equal: masking cost nothing measurable
    assert claims["no masking > masking 0.75"].extra["reading"] == "not shown"
    assert "with MIM + MLM > without" not in claims  # its variant did not run
    masked_worse = Claim("no masking > masking 0.75", "no_masking", "full", "i2t_P@5", "holds", 0.1, 0.05, 0.2,
                         [0.1], 1, 40)
    assert paper_reading(masked_worse) == "contradicted"
    assert {c[0] for c in CLAIMS} >= {"adapters > full fine-tuning", "four views > current frontal"}
    assert seconds_per_step([{"global_step": 4, "time": 2.0}, {"global_step": 10, "time": 5.0}]) == 0.5
    # an interval that starts at a learning-curve evaluation carries the evaluation's time: left out
    with_curve = [{"global_step": 5, "time": 1.0}, {"global_step": 5, "eval/val_i2t_P@5": 0.3, "time": 1.0},
                  {"global_step": 10, "time": 9.0}]
    assert seconds_per_step(with_curve) == 0.2  # not the median of 0.2 and 1.6


@pytest.fixture
def four_view_manifest(tiny_manifest):
    folder, df = tiny_manifest
    df = df.assign(split="train", lateral=df["frontal"], prior_frontal=df["frontal"], prior_lateral="",
                   written_findings="Heart size is normal.", written_impression="No acute disease.")
    df.loc[0, "lateral"] = ""
    path = folder / "manifest.csv"
    write_manifest(df, path)
    return path


def test_pretrained_mae_trains_once_and_loads(four_view_manifest, tmp_path):
    vision = VisionConfig(name="vit_mae", image_size=16, hf_config=TINY_MAE)
    settings = MAEPretrainConfig(epochs=1, batch_size=2, max_steps=2)
    folder = pretrained_mae(four_view_manifest, vision, settings, cache_dir=tmp_path, device="cpu")
    info = (folder / "pretrain.json").read_text()
    assert '"steps": 2' in info and folder.name.startswith("mae-16px-")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert pretrained_mae(four_view_manifest, vision, settings, cache_dir=tmp_path) == folder  # cached
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    other = pretrained_mae(four_view_manifest, vision, MAEPretrainConfig(epochs=1, batch_size=2, max_steps=1),
                           cache_dir=tmp_path, device="cpu")
    assert other != folder  # other settings, another entry
    mae = build_mae(VisionConfig(name="vit_mae", pretrained=str(folder), image_size=16))
    assert mae.config.hidden_size == 16
    with pytest.raises(ValueError, match="trains a random MAE"):
        pretrained_mae(four_view_manifest, VisionConfig(name="vit_mae", pretrained=str(folder)), settings,
                       cache_dir=tmp_path)


def test_train_dataset_loads_the_four_views(four_view_manifest):
    r = variant_recipes(["full"], "alta_tiny", ["vision.image_size=16"])["full"]
    ds = train_dataset(four_view_manifest, r)
    item = ds[0]
    assert set(item) >= {"frontal", "prior_frontal"} and "lateral" not in item and "prior_lateral" not in item
    assert "lateral" in ds[1] and ds[1]["frontal"].shape == (1, 16, 16)


def test_zero_shot_and_probe_evaluate_any_dual_encoder(tiny_manifest):
    from medalign_lite.data.dataset import ManifestDataset
    from medalign_lite.eval.zeroshot import CHEXPERT_5X200_CLASSES
    from medalign_lite.experiments.transfer import probe_eval, zero_shot_eval

    from ..methods.fakes import FakeImageEncoder

    folder, df = tiny_manifest
    df = df.assign(**{"class": [CHEXPERT_5X200_CLASSES[i % 5] for i in range(len(df))]})
    write_manifest(df, folder / "m.csv")
    gallery = ManifestDataset(folder / "m.csv", split=None, image_size=16)

    class Model(torch.nn.Module):  # any encoder pair with the dual-encoder interface
        def __init__(self):
            super().__init__()
            self.image_encoder = FakeImageEncoder()
            self.w = torch.nn.Linear(12, 4)

        def tokenize(self, texts):
            return {"input_ids": torch.tensor([[len(t) % 4, len(t) % 5] for t in texts])}

        def encode_text(self, input_ids):
            return torch.nn.functional.normalize(torch.nn.functional.one_hot(input_ids[:, 0], 4).float() + 0.1, dim=-1)

        def encode_image(self, images):
            return torch.nn.functional.normalize(self.w(self.image_encoder(images).pooled), dim=-1)

    zs = zero_shot_eval(Model(), gallery, n_prompts=3)
    assert 0 <= zs["auroc"] <= 1 and set(zs["per_class_auroc"]) == set(CHEXPERT_5X200_CLASSES)
    df2 = df.assign(split=["train"] * 4 + ["test"] * 2, Cardiomegaly=["1", "0"] * 3)
    write_manifest(df2, folder / "p.csv")
    pr = probe_eval(Model(), folder / "p.csv", 16, fractions=(1.0,))
    assert 0 <= pr[1.0] <= 1 and "Cardiomegaly" in pr["per_class"]
