"""medalign bench train-step: the phase shares add up and split forward/backward between the
encoders and the head as the hooks saw them; every registered method has a setup; a real
(smoke-sized) AGA step and S2D curriculum are profiled through the notebooks' own trainer path."""
from __future__ import annotations

import json
import math

import pytest

from medalign_lite.bench.train_step import (
    SETUPS,
    bench_train_step,
    summarize_steps,
    train_step_setup,
)
from medalign_lite.train import PHASES


def _step(**kw) -> dict:
    s = {"data": 0.01, "forward": 0.05, "backward": 0.10, "optimizer": 0.02, "other": 0.001,
         "forward/image_encoder": 0.03, "forward/head": 0.015, "marks": {"encoders": 0.04}}
    s.update(kw)
    return s


def test_summary_splits_forward_and_backward_between_encoders_and_head():
    steps = [_step(), _step(), _step(data=1.0), _step(checkpoint=True, other=5.0)]
    s = summarize_steps(steps[1:], encoders=("image_encoder",), skip=0)  # the last one wrote a checkpoint
    assert s["steps"] == 2  # the checkpoint step is left out
    mean_data = (0.01 + 1.0) / 2
    assert s["data_s"] == pytest.approx(mean_data)
    # encoders: their forward (0.03) + the backward after the first encoder output got its gradient (0.10 - 0.04)
    assert s["encoders_s"] == pytest.approx(0.03 + 0.06)
    # head/loss: the rest of the forward (0.02) + the backward before that moment (0.04)
    assert s["head_loss_s"] == pytest.approx(0.02 + 0.04)
    assert sum(s["shares"].values()) == pytest.approx(1.0)
    assert s["step_s"] == pytest.approx(sum(s["phases_s"][p] for p in PHASES))
    assert s["steps_per_s"] == pytest.approx(1 / s["step_s"])
    assert s["forward_by_module_s"]["(rest of forward)"] == pytest.approx(0.05 - 0.045)
    no_mark = summarize_steps([_step(marks={})], encoders=("image_encoder",))  # no encoder output needs a gradient
    assert no_mark["head_loss_s"] == pytest.approx(0.02 + 0.10) and no_mark["encoders_s"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="no step"):
        summarize_steps(steps[:2], encoders=(), skip=2)


def test_every_registered_method_has_a_training_step_setup():
    """A registered method is profiled through its tutorial config as a contrastive recipe, or
    registers its notebook's setup (bench.train_step.register_setup) — otherwise this fails."""
    from medalign_lite.config import config_path, read_yaml
    from medalign_lite.methods import get_method, list_methods

    for name in list_methods():
        spec = get_method(name)
        raw = read_yaml(config_path(spec.config_name("tiny")))
        contrastive = raw.get("method") == name and spec.dual_encoder
        assert contrastive or name in SETUPS, (
            f"{name}: no training-step setup; register one with medalign_lite.bench.train_step.register_setup")


def test_unknown_setup_is_a_clear_error(monkeypatch):
    from medalign_lite.bench import train_step

    monkeypatch.setattr(train_step, "SETUPS", {})
    with pytest.raises(ValueError, match="no training-step setup for 's2d'"):
        train_step_setup("s2d")


@pytest.fixture(scope="module")
def small_iu():
    from medalign_lite.data import ensure_dataset

    return ensure_dataset("iu-phantom", size=64, limit=48, seed=0, progress=False)


def test_aga_step_profile_through_the_notebook_path(small_iu, capsys):
    from medalign_lite.cli import main
    from medalign_lite.experiments.aga import SMOKE_OVERRIDES

    res = bench_train_step("aga", steps=2, warmup=1, overrides=SMOKE_OVERRIDES, manifest=small_iu)
    assert set(res["runs"]) == {"first", "second"} and res["batch_size"] == 8
    assert res["budget_steps"] == {"aga": 3}  # the smoke config's max_steps
    for run in res["runs"].values():
        s = run["aga"]
        assert s["steps"] == 2 and math.isfinite(s["steps_per_s"])
        assert s["encoders_s"] > 0 and s["head_loss_s"] > 0 and s["optimizer_s"] > 0
        assert {"image_encoder", "text_encoder", "head"} <= set(s["forward_by_module_s"])
        assert sum(s["shares"].values()) == pytest.approx(1.0)
        assert s["checkpoint_s"] > 0  # the run's last step wrote its checkpoint, timed apart
    # the frozen MiniLM encodes each report once: the second run reads its cache
    first, second = (res["runs"][r]["aga"]["forward_by_module_s"]["text_encoder"] for r in ("first", "second"))
    assert second < first
    rc = main(["bench", "train-step", "--method", "aga", "--steps", "1", "--warmup", "0", "--manifest", str(small_iu),
               "--json", *[x for o in SMOKE_OVERRIDES for x in ("--set", o)]])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("steps/s" in line and "head/loss" in line for line in lines)
    assert json.loads(lines[-1])["method"] == "aga"


@pytest.mark.slow
def test_s2d_step_profile_covers_the_curriculum(small_iu):
    from medalign_lite.experiments.s2d import SMOKE_OVERRIDES

    res = bench_train_step("s2d", steps=1, warmup=0, overrides=SMOKE_OVERRIDES, manifest=small_iu)
    assert res["threads"] == 1  # notebook 05 trains in one-thread workers
    stages = ["stage1_image", "stage2_reference", "stage3_phrases"]
    assert list(res["budget_steps"]) == stages and list(res["runs"]["second"]) == stages
    for s in res["runs"]["second"].values():
        assert s["head_loss_s"] > 0 and {"lm", "sma_v"} <= set(s["forward_by_module_s"])
