"""Notebook 06's benchmark layer: the plan enumerates the registry and scales every budget alike,
the ceiling copies the right recipe, results become tables and claims, and the README table is
written from metrics.json alone, every cell equal to its number."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medalign_lite.eval.bootstrap import paired_bootstrap
from medalign_lite.experiments import benchmark as B
from medalign_lite.experiments.benchmark.results import FLOOR_PREFIX
from medalign_lite.methods import list_methods

ROOT = Path(__file__).resolve().parents[2]


def test_the_plan_enumerates_the_registry_and_sets_each_method_s_own_knobs():
    plans = B.plan_methods()
    assert list(plans) == list_methods()  # nothing hard-coded: the registry, in its order
    for name, p in plans.items():
        assert p.config == f"{name}_tiny"
        knob = "data.extra_studies=4000" if p.contrastive else "extra_studies=4000"
        assert p.overrides[0] == knob and p.batch_size > 0
    assert plans["convirt"].steps == 1500 and plans["aga"].steps == 800  # the tutorial budgets
    assert plans["exgramed"].steps is None  # its stages are bounded by epochs


def test_budget_scale_multiplies_every_stage_of_every_method():
    base, twice = B.plan_methods(), B.plan_methods(budget_scale=2.0)
    for name in base:
        for a, b in zip(base[name].stage_steps, twice[name].stage_steps):
            assert (a is None and b is None) or b == 2 * a, name
    assert "train.stages.1.epochs=6" in twice["exgramed"].overrides  # 3 epochs → 6
    half = B.plan_methods(["s2d"], budget_scale=0.5)["s2d"]
    assert half.stage_steps == [516, 86, 86]  # s2d_tiny: 1,032 / 172 / 172


def test_a_bad_method_or_budget_is_an_error_naming_it(monkeypatch):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        B.plan_methods(["nope"])
    with pytest.raises(ValueError, match="budget_scale"):
        B.plan_methods(["convirt"], budget_scale=0)
    monkeypatch.delitem(B.GENERATOR_RUNNERS, "s2d")
    with pytest.raises(ValueError, match="s2d: neither a contrastive config"):
        B.plan_methods(["s2d"])


def test_smoke_overrides_come_from_the_method_s_module_or_notebook_01():
    plans = B.plan_methods(["convirt", "alta", "s2d"], smoke=True)
    assert list(B.SMOKE_DUAL_OVERRIDES) == plans["convirt"].overrides[1:4]
    assert any(o.startswith("mae_pretrain.") for o in plans["alta"].overrides)  # experiments.alta's
    assert "llm.num_layers=1" in plans["s2d"].overrides  # experiments.s2d's


def test_the_ceiling_copies_the_longest_budget_of_the_generic_encoders():
    from medalign_lite.experiments.contrastive import recipe_from_config

    recipes = {m: recipe_from_config(f"{m}_tiny") for m in ("convirt", "aga", "alta")}
    assert B.ceiling_recipe(recipes).method == "convirt"  # 1,500 steps; ALTA's MAE is not the generic encoder
    assert B.ceiling_recipe({"alta": recipes["alta"]}) is None


def test_interval_is_the_claims_rule_bootstrap_against_zero():
    rng = np.random.default_rng(0)
    x = rng.random((2, 300))
    low, high = B.interval(x, seed=3)
    r = paired_bootstrap(x, np.zeros_like(x[:1]), seed=3)
    assert (low, high) == (r["low"], r["high"]) and low < x.mean() < high
    assert B.interval(x[0]) == B.interval(x[:1])


def test_jobs_measure_peak_memory_on_the_runs_device():
    """A job's peak memory is :class:`medalign_lite.utils.PeakMemory` on the run's device (its own
    test, in a fresh process, is tests/test_bench.py's)."""
    from medalign_lite.experiments.benchmark.runs import _peak_memory
    from medalign_lite.utils import PeakMemory

    ctx = type("Ctx", (), {"device": "auto"})()
    mem = _peak_memory(ctx)
    assert isinstance(mem, PeakMemory) and mem.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def _results() -> B.BenchmarkResults:
    """Two dual encoders (two seeds, one with a floor), the ceiling, a generator and two
    baselines, with per-item scores the claims can read."""
    rng = np.random.default_rng(0)
    good = [(rng.random(100) < 0.8).astype(float) for _ in range(2)]
    bad = [(rng.random(100) < 0.3).astype(float) for _ in range(2)]
    refs = ["heart is enlarged.", "no acute disease.", "small left pleural effusion."] * 10
    out = []
    for name, items in (("gloria", good), ("convirt", bad)):
        for s, it in enumerate(items):
            floor = (rng.random(100) < 0.2).astype(float)
            out.append(B.JobResult(name, "dual_encoder", s, {"i2t_P@5": float(it.mean()), "zeroshot_accuracy": 0.5},
                                   {"i2t_P@5": 0.2} if s == 0 else None, {"i2t_P@5": it},
                                   {"steps": 100, "seconds_per_step": 0.1 * (s + 1)},
                                   {"floor_per_item": {"i2t_P@5": floor}} if s == 0 else {}))
    out.append(B.JobResult(B.CEILING, "ceiling", 0, {"i2t_P@5": 0.9}, None, {}, {"steps": 100}))
    out.append(B.JobResult("s2d", "report_generator", 0, {"ce_micro_f1_u0": 0.7}, None, {"reports": list(refs)}))
    out.append(B.JobResult("majority", "baseline", 0, {"ce_micro_f1_u0": 0.2}, None,
                           {"reports": ["no acute disease."] * 30}))
    out.append(B.JobResult("nearest_neighbour", "baseline", 0, {"ce_micro_f1_u0": 0.5}, None,
                           {"reports": refs[1:] + refs[:1]}))
    return B.BenchmarkResults(out, {}, [0, 1], 1.0, refs)


def test_results_summary_rows_and_relative_scores():
    res = _results()
    systems = res.systems()
    assert systems[:5] == [f"{FLOOR_PREFIX}gloria", "gloria", f"{FLOOR_PREFIX}convirt", "convirt", B.CEILING]
    s = res.summary()
    g = s["gloria"]["i2t_P@5"]
    vals = res.values("gloria", "i2t_P@5")
    assert g["n"] == 2 and g["mean"] == pytest.approx(np.mean(vals)) and g["std"] == pytest.approx(np.std(vals, ddof=1))
    assert s[f"{FLOOR_PREFIX}gloria"]["i2t_P@5"] == {"mean": 0.2, "std": None, "n": 1}
    rel = res.relative_frame(("i2t_P@5", "ce_micro_f1_u0"))
    assert rel.loc["gloria", "i2t_P@5"] == pytest.approx(g["mean"] / 0.9)
    assert rel.loc["s2d", "ce_micro_f1_u0"] == pytest.approx(0.7 / 0.5) and np.isnan(rel.loc["s2d", "i2t_P@5"])
    frame = res.long_frame(["i2t_P@5"])
    assert len(frame[frame["system"] == "gloria"]) == 2


def test_claims_decide_every_stated_ordering():
    res = _results()
    claims = {(c.a, c.b, c.metric): c for c in res.claims()}
    c = claims[("gloria", "convirt", "i2t_P@5")]  # the higher mean first
    assert c.verdict == "holds" and c.n_seeds == 2 and c.low > 0
    up = claims[("gloria", f"{FLOOR_PREFIX}gloria", "i2t_P@5")]  # above its own untrained model
    assert up.verdict == "holds" and up.n_items == 100
    # the generator copies every reference: above the majority report on both averages
    for avg in ("micro", "macro"):
        assert claims[("s2d", "majority", f"CE {avg} F1")].verdict == "holds"
        assert ("s2d", "nearest_neighbour", f"CE {avg} F1") in claims
    m = res.metrics(res.claims())
    assert m["claim/gloria>convirt/i2t_P@5"]["verdict"] == "holds"
    assert m["scores/gloria/seed1/seconds_per_step"] == 0.2


def _metrics() -> dict:
    res = _results()
    m = res.metrics()
    m["run"] = {"date": "2026-12-07", "machine": "x86_64, 2 CPUs, cpu", "command": "papermill …", "seconds": 12.5,
                "load_average": "1.0-2.0", "smoke": False}
    return json.loads(json.dumps(m))  # as read back from metrics.json


def check_readme_table(text: str, metrics: dict) -> int:
    """Parse a README table and check every cell against ``metrics["summary"]``; → rows checked."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["system", *[h for _k, h, _d in B.TABLE_COLUMNS]]
    assert set(lines[1].strip("|")) <= set("-:|")
    rows = lines[2:]
    systems = [s for s, st in metrics["summary"].items() if any(k in st for k, _h, _d in B.TABLE_COLUMNS)]
    assert [r.strip("|").split("|")[0].strip() for r in rows] == systems
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        stats = metrics["summary"][cells[0]]
        for (key, _h, digits), cell in zip(B.TABLE_COLUMNS, cells[1:]):
            st = stats.get(key)
            if not st or st.get("mean") is None:
                assert cell == "", (cells[0], key, cell)
                continue
            assert cell == B.format_cell(st, digits), (cells[0], key)  # the metrics number, as printed
            mean = float(cell.split(" ± ")[0].replace(",", ""))
            assert abs(mean - st["mean"]) <= 0.5 * 10 ** -digits + 1e-9, (cells[0], key)
            assert (" ± " in cell) == (st["n"] > 1 and st["std"] is not None), (cells[0], key)
    return len(rows)


def test_the_readme_table_is_the_metrics_numbers():
    m = _metrics()
    text = B.readme_table(m)
    assert check_readme_table(text, m) == 8  # 2 methods + their floors, the ceiling, a generator, 2 baselines
    assert "2026-12-07" in text and "x86_64, 2 CPUs" in text and "scripts/results_table.py" in text
    assert B.format_cell({"mean": 0.12345, "std": 0.01, "n": 2}) == "0.123 ± 0.010"
    assert B.format_cell({"mean": 1500.0, "std": None, "n": 1}, 0) == "1,500"
    assert B.format_cell(None) == ""


def test_write_readme_table_replaces_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{B.README_BEGIN}\nold table\n{B.README_END}\nafter\n")
    m = _metrics()
    B.write_readme_table(readme, m)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{B.README_END}\nafter\n")
    assert "old table" not in text
    body = text.split(B.README_BEGIN)[1].split(B.README_END)[0]
    check_readme_table(body, m)
    B.write_readme_table(readme, m)
    assert readme.read_text() == text  # idempotent
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="bare.md: no results table markers"):
        B.write_readme_table(tmp_path / "bare.md", m)


def test_the_script_writes_the_table_and_rejects_other_metrics(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(_metrics()))
    readme = tmp_path / "README.md"
    readme.write_text(f"{B.README_BEGIN}\n{B.README_END}\n")
    script = ROOT / "scripts" / "results_table.py"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, str(script), str(metrics), "--readme", str(readme)], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 0, run.stderr
    check_readme_table(readme.read_text(), _metrics())
    (tmp_path / "other.json").write_text(json.dumps({"smoke": True}))
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "other.json"), "--readme", str(readme)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "no 'summary'" in run.stderr


def test_the_committed_readme_has_the_markers():
    text = (ROOT / "README.md").read_text()
    assert text.count(B.README_BEGIN) == 1 and text.count(B.README_END) == 1
    assert re.search(r"06_benchmark\.ipynb.*\| ready \|", text)


def test_every_method_and_seed_is_one_job_and_exgramed_runs_its_seeds_together():
    from medalign_lite.experiments.benchmark.pool import _jobs

    plans = B.plan_methods()
    jobs = _jobs(plans, [0, 1], ceiling=True)
    assert jobs[0] == (B.ENCODER_JOB, (0,))  # S2D's and ExGra-Med's frozen encoder, aligned once
    assert jobs[1] == ("exgramed", (0, 1))  # its driver makes the seed-0 stand-ins once for every seed
    pairs = [(n, s) for n, seeds in jobs[1:] for s in seeds]
    expected = [(n, s) for n in [*plans, B.CEILING] for s in (0, 1)]
    assert sorted(pairs) == sorted(expected) and len(pairs) == len(set(pairs))
    assert not any(n == B.CEILING for n, _ in _jobs(plans, [0], ceiling=False))
    assert not any(n == B.ENCODER_JOB for n, _ in _jobs(B.plan_methods(["convirt", "aga"]), [0], ceiling=True))
    published = B.plan_methods(["s2d", "exgramed"], overrides={"s2d": ["encoder.align=false"],
                                                               "exgramed": ["encoder.align=false"]})
    assert not any(n == B.ENCODER_JOB for n, _ in _jobs(published, [0], ceiling=False))  # nothing to align


def test_the_generators_wait_for_their_encoder_and_the_longest_line_of_work_starts_first():
    from medalign_lite.experiments.benchmark.pool import _jobs, _schedule

    jobs = _jobs(B.plan_methods(), [0, 1], ceiling=True)
    after, priority = _schedule(jobs)
    names = [n for n, _ in jobs]
    enc = names.index(B.ENCODER_JOB)
    assert {names[i] for i, a in enumerate(after) if a == enc} == {"s2d", "exgramed"}
    assert all(a is None for i, a in enumerate(after) if names[i] not in ("s2d", "exgramed"))
    s2d = [i for i, n in enumerate(names) if n == "s2d"]
    assert len(s2d) == 2  # one job per seed, each after the encoder
    exg = names.index("exgramed")  # both seeds in one job: twice its seconds
    assert priority[exg] == 2 * B.JOB_SECONDS["exgramed"]
    assert priority[enc] == B.JOB_SECONDS[B.ENCODER_JOB] + max(priority[i] for i in (exg, *s2d))
    assert max(range(len(jobs)), key=priority.__getitem__) == enc


def test_the_encoder_job_makes_the_cache_entry_the_generators_load(tmp_path, monkeypatch):
    """The encoder job calls prepare_encoder as S2D's driver will: same recipe, manifests, seed."""
    from medalign_lite.experiments import s2d as S
    from medalign_lite.experiments.benchmark import runs as R

    calls = []
    monkeypatch.setattr(S, "prepare_encoder", lambda exp, manifests, seed=0, **kw: calls.append(
        (S.encoder_recipe(exp, seed), list(manifests), seed)))
    plans = B.plan_methods(["s2d", "convirt"])
    data = R.BenchmarkData([tmp_path / "iu.csv", tmp_path / "extra.csv"], tmp_path / "g.csv", tmp_path / "v.csv")
    ctx = R._Context(plans, data, tmp_path, "cpu", False, 3, False)
    assert R.run_job(ctx, (B.ENCODER_JOB, (3,))) == []
    exp = R._load_s2d(plans["s2d"])
    assert calls == [(S.encoder_recipe(exp, 3), data.train_manifests, 3)]
    assert S.encoder_recipe(exp, 3).seed == 3 and S.encoder_recipe(exp, 3).method == "convirt"


def test_the_convirt_job_is_the_generators_encoder_when_its_recipe_is_theirs():
    """At the tutorial configs ConVIRT's job trains exactly S2D's and ExGra-Med's stand-in encoder:
    no separate encoder job, the generators wait for ConVIRT's first seed; any other recipe (here
    twice the budget, or a changed learning rate) brings the encoder job back."""
    from medalign_lite.experiments.benchmark.pool import _encoder_provider, _jobs, _schedule

    plans = B.plan_methods()
    assert _encoder_provider(plans, 0) == "convirt"
    jobs = _jobs(plans, [0, 1], ceiling=True, provider="convirt")
    names = [n for n, _ in jobs]
    assert B.ENCODER_JOB not in names
    after, priority = _schedule(jobs, "convirt")
    first = jobs.index(("convirt", (0,)))
    assert {names[i] for i, a in enumerate(after) if a == first} == {"s2d", "exgramed"}
    assert after[jobs.index(("convirt", (1,)))] is None and after[first] is None
    assert priority[first] == B.JOB_SECONDS["convirt"] + max(p for i, p in enumerate(priority) if after[i] == first)
    assert _encoder_provider(B.plan_methods(budget_scale=2.0), 0) is None
    assert _encoder_provider(B.plan_methods(overrides={"convirt": ["train.stages.0.lr=3e-3"]}), 0) is None
    assert _encoder_provider(B.plan_methods(["s2d", "aga", "gloria"]), 0) is None  # no dual encoder trains it
    assert _encoder_provider(B.plan_methods(["convirt", "aga"]), 0) is None  # no generator needs it


def test_the_provider_job_stores_the_encoder_under_the_key_the_generators_read(tmp_path, monkeypatch):
    """The ConVIRT job's first seed stores its trained image encoder with the manifests and recipe
    that prepare_encoder will look up (the same cache key); other seeds and methods store nothing."""
    from medalign_lite.experiments import pretrain as PT
    from medalign_lite.experiments import s2d as S
    from medalign_lite.experiments.benchmark import runs as R
    from medalign_lite.experiments.benchmark.pool import _encoder_provider

    stored = []
    monkeypatch.setattr(PT, "cache_aligned_encoder", lambda model, history, manifests, recipe, seconds, *a:
                        stored.append((list(manifests), PT._recipe_fields(recipe), recipe.seed)))
    monkeypatch.setattr(R, "_dual_eval", lambda model, ctx, r: ({}, {}))
    monkeypatch.setattr(R, "_train_set", lambda ctx, r, views: None)
    import medalign_lite.experiments.contrastive as C

    monkeypatch.setattr(C, "train_alignment", lambda *a, **k: SimpleNamespace(history=[{"loss": 1.0, "global_step": 1}]))
    plans = B.plan_methods(["s2d", "convirt", "aga"])
    data = R.BenchmarkData([tmp_path / "iu.csv", tmp_path / "extra.csv"], tmp_path / "g.csv", tmp_path / "v.csv")
    ctx = R._Context(plans, data, tmp_path, "cpu", False, 3, False, _encoder_provider(plans, 3))
    assert ctx.encoder_provider == "convirt"
    R._dual_job(ctx, "convirt", 4)  # not the first seed
    R._dual_job(ctx, "aga", 3)      # not the provider
    assert stored == []
    R._dual_job(ctx, "convirt", 3)
    exp = R._load_s2d(plans["s2d"])
    assert stored == [(R._encoder_manifests(ctx, exp), PT._recipe_fields(S.encoder_recipe(exp, 3)), 3)]
