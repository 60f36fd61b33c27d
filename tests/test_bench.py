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


def test_peak_memory_sees_an_allocation_freed_inside_the_block():
    """In a fresh process: in a long one (this suite) the allocator may serve the block from
    memory an earlier test freed, which PeakMemory rightly reads as no growth (its docstring)."""
    import subprocess
    import sys

    code = ("import time, torch\n"
            "from medalign_lite.bench import PeakMemory\n"
            "with PeakMemory('cpu') as m:\n"
            "    x = torch.ones(16 * 2**20)  # 64 MiB, written, then freed before the block ends\n"
            "    time.sleep(0.05)\n"
            "    del x\n"
            "print(m.mib, m.method)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    mib, method = out.stdout.split(" ", 1)
    assert 48 <= float(mib) < 1024 and "VmHWM" in method  # this machine: Linux, the peak reset at entry


@pytest.fixture(scope="module")
def small_iu():
    from medalign_lite.data import ensure_dataset

    return ensure_dataset("iu-phantom", size=64, limit=48, seed=0, progress=False)


def test_aga_step_profile_through_the_notebook_path(small_iu, capsys):
    from medalign_lite.cli import main
    from medalign_lite.experiments.aga import SMOKE_OVERRIDES

    res = bench_train_step("aga", steps=2, warmup=1, overrides=SMOKE_OVERRIDES, manifest=small_iu)
    assert set(res["runs"]) == {"first", "second"} and res["batch_size"] == 8
    assert set(res["peak_mib"]) == {"first", "second"} and all(v >= 0 for v in res["peak_mib"].values())
    # the frozen MiniLM counts in the model's parameters, not in the trained ones
    assert 0 < res["runs"]["second"]["aga"]["trainable_params"] < res["params"]
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
def test_exgramed_step_profile_is_stage_two_with_the_graph_loss(small_iu):
    from medalign_lite.experiments.exgramed import SMOKE_OVERRIDES

    res = bench_train_step("exgramed", steps=1, warmup=0, overrides=SMOKE_OVERRIDES, manifest=small_iu)
    assert res["threads"] == 1 and list(res["budget_steps"]) == ["stage2_instruct"]
    (s,) = res["runs"]["second"].values()
    assert s["head_loss_s"] > 0 and {"lm", "aligner"} <= set(s["forward_by_module_s"])


@pytest.mark.slow
def test_s2d_step_profile_covers_the_curriculum(small_iu):
    from medalign_lite.experiments.s2d import SMOKE_OVERRIDES

    res = bench_train_step("s2d", steps=1, warmup=0, overrides=SMOKE_OVERRIDES, manifest=small_iu)
    assert res["threads"] == 1  # notebook 05 trains in one-thread workers
    stages = ["stage1_image", "stage2_reference", "stage3_phrases"]
    assert list(res["budget_steps"]) == stages and list(res["runs"]["second"]) == stages
    for s in res["runs"]["second"].values():
        assert s["head_loss_s"] > 0 and {"lm", "sma_v"} <= set(s["forward_by_module_s"])


# --------------------------------------------------------------------------------------
# medalign bench all: every registered method in one run, at shapes small enough for seconds
# --------------------------------------------------------------------------------------

def test_bench_all_has_every_registered_method_and_the_ratios(tiny_bench_all):
    from medalign_lite.bench import bench_all
    from medalign_lite.methods import list_methods

    _, calls = tiny_bench_all
    res = bench_all("cpu", log=lambda line: None)
    assert list(res) == ["_meta", *list_methods()] and calls == list_methods()
    meta = res["_meta"]
    assert meta["shapes_name"] == "tiny" and meta["shapes"]["batch_size"] == 2 and meta["device_type"] == "cpu"
    assert len(meta["load_avg_start"]) == 3 and len(meta["load_avg_end"]) == 3 and meta["torch"]
    ref = meta["gloria_reference"]
    assert (ref["B"], ref["T"], ref["P"], ref["D"]) == (2, 8, 16, 16) and ref["seconds"] > 0
    for name in list_methods():
        e = res[name]
        assert e["cost"]["step_s"] == 0.2 and e["cost"]["stage"] == "b"  # the later run's last stage
        assert e["cost"]["trainable_params"] == 5 and e["cost"]["peak_mib"] == 7.0  # the larger run's
        assert "train_step" in e["benches"] and set(e["benches"]) == set(e["results"])
    r = {name: res[name]["ratios"] for name in list_methods()}
    aga = res["aga"]["results"]["aga"]
    assert r["aga"]["vs_gloria"] == pytest.approx(aga["head_s"] / ref["seconds"])
    assert r["aga"]["head_share"] == pytest.approx(aga["head_s"] / aga["encoders_s"])
    assert aga["gloria_s"] == {}  # GLoRIA is measured once, for every vs_gloria
    assert r["gloria"]["head_share"] == pytest.approx(ref["seconds"] / aga["encoders_s"])
    local = res["alta"]["results"]["alta_local"]
    assert (local["views"], local["patches_per_view"], local["P"]) == (4, 16, 64)  # 8x8 patches, 0.75 masked
    assert r["alta"]["vs_gloria"] == pytest.approx(local["seconds"] / ref["seconds"])
    for key in ("step_ratio", "flop_ratio", "memory_ratio", "trainable_fraction"):
        assert r["alta"][key] == res["alta"]["results"]["alta"][key]
    assert r["exgramed"]["aligner_share"] == res["exgramed"]["results"]["exgramed"]["tiny"]["aligner_share"]
    assert r["exgramed"]["vs_gloria"] > 0 and r["s2d"]["vs_gloria"] > 0 and r["s2d"]["aligner_share"] > 0
    assert res["s2d"]["results"]["s2d_aligner"]["P"] == 4  # 28 px / 14: 2 x 2 patches
    assert "vs_gloria" not in r["convirt"] and "no local loss" in r["convirt"]["note"]
    json.dumps(res, allow_nan=False)  # strict JSON


def test_bench_all_names_an_unknown_method_and_the_known_ones(monkeypatch, capsys):
    from medalign_lite.bench import all as bench_all_module
    from medalign_lite.cli import main
    from medalign_lite.methods import list_methods

    def never(*a, **k):
        raise AssertionError("a bench ran")

    monkeypatch.setattr(bench_all_module, "_run_bench", never)
    monkeypatch.setattr(bench_all_module, "_train_step", never)
    known = ", ".join(list_methods())  # the package's order
    assert {"convirt", "gloria", "aga", "s2d", "exgramed", "alta"} <= set(list_methods())
    with pytest.raises(ValueError) as e:
        bench_all_module.bench_all("cpu", methods=["aga", "nope"])
    assert str(e.value) == f"unknown method(s) 'nope'; registered methods: {known}"
    assert main(["bench", "all", "--methods", "aga,nope,glorai", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.count("\n") == 0 and "'nope', 'glorai'" in err and err.endswith(f"registered methods: {known}")


def test_bench_s2d_step_extrapolates_in_layers_and_counts_exactly(monkeypatch, capsys):
    """The paper-scale S2D step at a small LM shape: on a CPU it measures 1 and 3 layers and
    extrapolates to the shape's depth; the extrapolated parameter counts equal a real model's,
    later stages add their soft tokens and trainable SMAs, and the CLI prints the result."""
    from medalign_lite.bench import s2d_step
    from medalign_lite.cli import main

    shape = {"hidden": 64, "layers": 4, "heads": 4, "intermediate": 96, "vocab_size": 700}
    kw = {"batch_size": 2, "report_tokens": 12, "aux_tokens": 10, "dtype": "float32", "repeats": 1,
          "lm_shape": shape, "patches": (9, 32)}
    one = s2d_step.bench_s2d_step(stage=1, **kw)
    assert [p["layers"] for p in one["points"]] == [1, 3] and "linear in layers" in one["extrapolated"]
    real = s2d_step._step_point(layers=4, stage=1, batch_size=2, report_tokens=12, aux_tokens=10, device="cpu",
                                dtype="float32", checkpointing=True, repeats=1, config="s2d_full", shape=shape,
                                patches=(9, 32))
    assert (one["params"], one["trainable_params"]) == (real["params"], real["trainable_params"])
    assert one["step_s"] > 0 and one["tokens_per_s"] == one["lm_tokens"] / one["step_s"]
    assert one["report_tokens"] == 2 * 12 and one["lm_tokens"] == 2 * one["sequence"]  # nothing padded
    three = s2d_step.bench_s2d_step(stage=3, layers=2, **kw)
    assert three["extrapolated"] == "measured with 2 layers only"
    assert three["sequence"] == one["sequence"] + 2 * 64  # + the reference's and the phrases' 64 soft tokens
    lora_per_layer = (one["points"][1]["trainable_params"] - one["points"][0]["trainable_params"]) // 2
    assert three["trainable_params"] > one["points"][0]["trainable_params"] + lora_per_layer  # + SMA_t and SMA_p
    monkeypatch.setattr(s2d_step, "bench_s2d_step", lambda *a, **k: one)
    capsys.readouterr()
    assert main(["bench", "s2d-step", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "linear in layers from 1 and 3 to 4" in "\n".join(out) and json.loads(out[-1])["step_s"] == one["step_s"]
