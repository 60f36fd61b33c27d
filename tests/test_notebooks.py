"""Every notebook runs in smoke mode, twice: under nbval with its default parameters (the cells
marked ``# NBVAL_CHECK_OUTPUT`` must print what ``notebook_outputs.json`` says, so a changed
count fails), and through papermill with other values of the parameters a user is invited to
change (a non-default seed among them). Both runs must write their metrics and figures.

The notebooks are committed without outputs (DESIGN.md), so the expected outputs of the checked
cells live here, in ``tests/notebook_outputs.json``; after an intended change of what such a
cell prints, regenerate them with ``UPDATE_NOTEBOOK_OUTPUTS=1 pytest tests/test_notebooks.py``
and read the diff.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = Path(__file__).with_name("notebook_outputs.json")
CHECK = "# NBVAL_CHECK_OUTPUT"
UPDATE = os.environ.get("UPDATE_NOTEBOOK_OUTPUTS") == "1"

#: Values a user is invited to change, other than the defaults (papermill parameters).
OTHER_PARAMETERS = {
    "00_data_tour": {"seed": 3, "gallery_seed": 2},
    "01_similarity_matrices": {"seed": 5, "methods": ["gloria"], "train_text": "real", "n_seeds": 1, "workers": 1,
                               "eval_every": 0},
    "02_aga_gating_iga_bcga": {"seed": 10, "train_text": "real", "ablations": ["full", "no_bcga", "gloria"],
                               "sigma_texts": ["structured"], "n_seeds": 1, "workers": 1},
    "03_exgramed_graphs": {"seed": 2, "variants": ["exgramed@10", "alpha0.5@10"], "workers": 1,
                           "overrides": ["model.solver=lap"]},
    "04_alta_adapters": {"seed": 3, "ablations": ["full", "frontal_only"], "eval_every": 0,
                         "overrides": ["model.use_mlm=false"]},
    "05_s2d_full": {"seed": 3, "ablations": ["reversed", "mlp_projector"], "workers": 1,
                    "overrides": ["model.num_beams=1"]},
    "06_benchmark": {"seed": 2, "methods": ["gloria", "s2d"], "workers": 1, "budget_scale": 2.0},
}


@pytest.fixture(scope="session")
def data_home(tmp_path_factory):
    """One data cache for the whole run. Under pytest-xdist (``make test`` runs two workers) the
    workers share it: the run's temp root is common to them, and ``ensure_dataset`` and the
    pretrained-encoder caches take turns through ``data.build_lock``, so a dataset is built once."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return tmp_path_factory.mktemp("medalign_data")
    shared = tmp_path_factory.getbasetemp().parent / "medalign_data"
    shared.mkdir(exist_ok=True)
    return shared


def _env(data_home: Path) -> dict:
    return {**os.environ, "MEDALIGN_DATA": str(data_home), "MEDALIGN_SMOKE": "1", "TQDM_DISABLE": "1",
            "MPLBACKEND": "Agg"}


def _checked(book) -> list:
    return [c for c in book.cells if c.cell_type == "code" and c.source.startswith(CHECK)]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def _record_expected(nb: Path, tmp_path: Path, data_home: Path) -> None:
    """Run the notebook (smoke, defaults) and store the printed output of its checked cells."""
    import nbformat
    import papermill

    ran = tmp_path / f"ran_{nb.name}"
    old = dict(os.environ)
    os.environ.update(_env(data_home))
    try:
        papermill.execute_notebook(str(nb), str(ran), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                                   execution_timeout=600)
    finally:
        os.environ.clear()
        os.environ.update(old)
    book = nbformat.read(str(ran), as_version=4)
    table = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else {}
    table[nb.stem] = {c.id: _stdout(c) for c in _checked(book)}
    EXPECTED.write_text(json.dumps(table, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_under_nbval(nb, tmp_path, data_home):
    import nbformat

    pytest.importorskip("nbval")
    if UPDATE:
        _record_expected(nb, tmp_path, data_home)
    expected = json.loads(EXPECTED.read_text()).get(nb.stem, {})
    book = nbformat.read(str(nb), as_version=4)
    checked = _checked(book)
    assert checked, f"{nb.name}: no cell is marked {CHECK}"
    for cell in checked:
        assert cell.id in expected, f"{nb.name} cell {cell.id}: no expected output (UPDATE_NOTEBOOK_OUTPUTS=1)"
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=expected[cell.id])]
        cell.execution_count = 1  # nbval compares only cells that ran
    copy = tmp_path / nb.name
    nbformat.write(book, str(copy))
    # the notebook's default output_dir is relative: nbval runs the kernel in the notebook's folder
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                          "--nbval-cell-timeout", "600", copy.name],
                         cwd=tmp_path, env=_env(data_home), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"nbval failed on {nb.name}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    outputs = tmp_path / "outputs" / nb.stem
    _check_metrics(nb.stem, json.loads((outputs / "metrics.json").read_text()), {})
    assert list(outputs.glob("*.png")), "a notebook writes its figures"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_with_other_parameters(nb, tmp_path, data_home, monkeypatch):
    papermill = pytest.importorskip("papermill")
    for k, v in _env(data_home).items():
        monkeypatch.setenv(k, v)
    params = OTHER_PARAMETERS[nb.stem]
    assert set(params) <= set(papermill.inspect_notebook(str(nb))), "a parameter the notebook does not have"
    out_dir = tmp_path / "out"
    papermill.execute_notebook(str(nb), str(tmp_path / nb.name), kernel_name="python3",
                               parameters={"smoke": True, "output_dir": str(out_dir), **params},
                               cwd=str(nb.parent), progress_bar=False, execution_timeout=600)
    _check_metrics(nb.stem, json.loads((out_dir / "metrics.json").read_text()), params)
    assert list(out_dir.glob("*.png")), "a notebook writes its figures"


def _check_metrics(stem: str, metrics: dict, params: dict) -> None:
    """What every smoke run must have written; ``params``: the non-default parameters it ran with."""
    assert metrics["smoke"] is True
    assert metrics and all(isinstance(k, str) for k in metrics)
    seed = params.get("seed", 0)
    if stem == "00_data_tour":
        assert metrics["n_studies"] == 40 and metrics["n_phantom_5x200"] == 50 and metrics["seed"] == seed
        assert metrics["demo_validation_problems"] >= 5
        assert 0 < metrics["frac_fully_rendered"] <= 1
    if stem == "01_similarity_matrices":
        methods = params.get("methods", ("convirt", "gloria"))
        n_seeds = min(params.get("n_seeds", 3), 2)
        assert metrics["seeds"] == [seed + i for i in range(n_seeds)]
        for name in ("random", *methods):
            assert 0 <= metrics[f"{name}/i2t_P@5"] <= 1
        for name in methods:  # every seed scored, its learning curve logged (every 2 steps in smoke mode, and the end)
            assert all(0 <= metrics[f"{name}/seed{s}/i2t_P@5"] <= 1 for s in metrics["seeds"])
            assert metrics[f"{name}/i2t_P@5_std"] >= 0
            curve = metrics[f"{name}/curve"][f"seed{seed}"]
            assert list(curve) == (["2", "3"] if params.get("eval_every", 100) else ["3"])
        assert metrics["extra_studies"] == 4000 and metrics["n_train"] > 48  # IU-Phantom + IU-Phantom-extra
        assert metrics["gloria/n_phrases"] > 0 and 0 <= metrics["gloria/mask_auroc"] <= 1
        assert 0 <= metrics["gloria/pointing_patch"] <= 1 and 0 <= metrics["untrained/pointing"] <= 1
        assert 0 <= metrics["ceiling/i2i_P@5"] <= 1  # the supervised ceiling beside the methods
        assert 0 < metrics["supervised ceiling/n_phrases"] <= metrics["gloria/n_phrases"]
        assert metrics["gloria/ceiling_phrases/phrases"] == metrics["supervised ceiling/n_phrases"]
        for name in methods:  # the class-confusion panel: rows sum to 1, the diagonal's mean is the seed's P@5
            conf = metrics[f"{name}/seed{seed}/i2t_top5/confusion"]
            assert all(abs(sum(row.values()) - 1) < 1e-3 for row in conf.values())
            diag = sum(conf[c][c] for c in conf) / len(conf)  # Phantom-5x200: every class queried equally often
            assert abs(diag - metrics[f"{name}/seed{seed}/i2t_P@5"]) < 1e-3
        assert set(metrics["ceiling/head/confusion"]) == set(conf)
    if stem == "02_aga_gating_iga_bcga":
        n_seeds = min(params.get("n_seeds", 3), 2)
        assert metrics["seeds"] == [seed + i for i in range(n_seeds)]
        for v in params.get("ablations", ("full", "no_bcga", "no_iga", "fixed_thresholds", "global_only", "gloria")):
            assert 0 <= metrics[f"{v}/i2t_P@5_mean"] <= 1 and metrics[f"{v}/i2t_P@5_std"] >= 0
            assert all(f"{v}/seed{s}/i2t_P@5" in metrics for s in metrics["seeds"])
        text = params.get("train_text", "written")
        for style in dict.fromkeys([text, *params.get("sigma_texts", ["structured"])]):
            assert 0 < metrics[f"sigma_tg/{style}"] < 1.5 and 0 < metrics[f"sigma_vg/{style}"] < 1.5
            assert 0 <= metrics[f"s_bar_tg/{style}"] <= 1
        assert metrics["grad_norm/untrained/IGA"] > 0 and metrics["full/pointing_game"] >= 0
        assert 0 <= metrics["ceiling/i2i_P@5"] <= 1 and 0 <= metrics["ceiling/pointing_game"] <= 1
        assert metrics["full/curve"][f"seed{seed}"]  # learning curves
        claim = metrics["claim/full>no_bcga/i2t_P@5"]  # the claims rule: verdict and interval
        assert claim["verdict"] in ("holds", "reversed", "undecided") and claim["low"] <= claim["diff"] <= claim["high"]
        sigma = metrics[f"claim/structured>{text}/S_bar_tg_per_pair"]  # the σ study, the same rule
        assert sigma["verdict"] in ("holds", "reversed", "undecided") and sigma["seeds"] == n_seeds
    if stem == "03_exgramed_graphs":
        variants = params.get("variants", ["exgramed@10", "exgramed@40", "exgramed@100", "llava_med@10", "llava_med@40",
                                           "llava_med@100", "alpha0.5@10", "alpha0.1@10", "no_extended@10",
                                           "infonce@10"])
        n_seeds = min(params.get("n_seeds", 3), 2)
        assert metrics["seeds"] == [seed + i for i in range(n_seeds)] and metrics["variants"] == variants
        for v in variants:  # every variant that ran is scored on Phantom-VQA
            assert 0 <= metrics[f"vqa/{v}/closed_accuracy_mean"] <= 1 and 0 <= metrics[f"vqa/{v}/open_recall_mean"] <= 1
        for floor in ("majority", "question_prior", "probe"):  # floors and ceiling beside the method
            assert 0 <= metrics[f"vqa/{floor}/closed_accuracy"] <= 1
        assert metrics["imle/cosine_lambda0.5"] > 0.5 and metrics["solver/ipfp/sigma0"] == 1.0
        assert 0 <= metrics["snapshot/before/match_accuracy"] <= 1
        claims = [k for k in metrics if k.startswith("claim/")]
        assert claims and all(metrics[k]["verdict"] in ("holds", "reversed", "undecided") for k in claims)
        assert metrics["workers"] == params.get("workers", 2) and metrics["seconds/total"] > 0
    if stem == "04_alta_adapters":
        assert metrics["seeds"] == [seed]
        assert 0 < metrics["trainable_fraction/tiny"] < 0.2  # the official set at tutorial scale
        ablations = params.get("ablations", ("full", "full_finetune", "no_masking", "frontal_only", "no_mim_mlm"))
        for v in ablations:
            assert 0 <= metrics[f"{v}/i2t_P@5_mean"] <= 1 and 0 <= metrics[f"{v}/t2i_P@5_mean"] <= 1
            assert metrics[f"{v}/seed{seed}/seconds_per_step"] > 0
        for name in ("untrained", "alta"):  # the floor beside the method, every score in range
            for key in ("i2t_P@5", "t2i_P@1", "zeroshot_auroc", "probe_auroc_100", "mask_auroc", "pointing_game"):
                assert 0 <= metrics[f"{name}/{key}"] <= 1, (name, key)
            assert metrics[f"{name}/n_phrases"] > 0
        assert 0 <= metrics["ceiling/i2i_P@5"] <= 1 and 0 <= metrics["ceiling/pointing_game"] <= 1
        assert metrics["mim_loss/frozen"] > 0 and metrics["mim_loss/alta"] > 0
        curve = metrics["full/curve"][f"seed{seed}"]  # the learning curve on the validation gallery
        assert curve and all(0 <= v <= 1 for v in curve.values())
        for a, b in (("full", "frontal_only"), ("full", "full_finetune"), ("no_masking", "full")):
            if a in ablations and b in ablations:
                c = metrics[f"claim/{a}>{b}/i2t_P@5"]
                assert c["verdict"] in ("holds", "reversed", "undecided") and c["low"] <= c["diff"] <= c["high"]
                assert c["reading"] in ("supported", "contradicted", "not shown")
    if stem == "05_s2d_full":
        variants = ("progressive", *params.get("ablations", ("joint", "single_stage", "reversed", "without_stage3",
                                                             "independent_memory", "mlp_projector")))
        assert metrics["seeds"] == [seed]
        for v in variants:  # every variant that ran has its CE F1
            assert 0 <= metrics[f"ablation/{v}/ce_micro_f1_u0_mean"] <= 1
            assert 0 <= metrics[f"ablation/{v}/seed{seed}/ce_macro_f1_u0"] <= 1
        for system in ("progressive", "nearest_neighbour", "majority"):  # the main table, whole test split
            for key in ("ce_micro_f1_u0", "ce_macro_f1_u0", "ce_example_f1_u0", "ce5_macro_f1_u0", "BLEU_4", "ROUGE_L"):
                assert 0 <= metrics[f"test/{system}/{key}"] <= 1
        for v in variants[1:]:
            c = metrics[f"claim/progressive>{v}/CE_micro_F1"]
            assert c["verdict"] in ("holds", "reversed", "undecided") and -1 <= c["low"] <= c["diff"] <= c["high"] <= 1
        nn = metrics["claim/progressive>nearest_neighbour/CE_micro_F1"]
        assert nn["items"] == metrics["n_test"] and nn["verdict"] in ("holds", "reversed", "undecided")
        assert metrics["workers"] == params.get("workers", 2)  # the default smoke run exercises the workers
        assert metrics["seconds/total"] > 0
    if stem == "06_benchmark":
        from medalign_lite.experiments.benchmark import CEILING, readme_table
        from medalign_lite.methods import get_method, list_methods
        from tests.experiments.test_benchmark import check_readme_table

        methods = params.get("methods") or list_methods()  # the registry, unless the user chose
        assert metrics["seeds"] == [seed] and metrics["methods"] == methods
        summary = metrics["summary"]
        for m in methods:
            assert summary[m]["steps"]["mean"] > 0 and summary[m]["trainable_params"]["mean"] > 0
            assert summary[m]["pairs_seen"]["mean"] == summary[m]["steps"]["mean"] * summary[m]["batch_size"]["mean"]
            if get_method(m).dual_encoder:  # every task, beside the floor and the ceiling
                for key in ("i2t_P@5", "t2i_P@1", "zeroshot_accuracy", "probe_auroc@1", "probe_auroc@100", "mask_auroc"):
                    assert 0 <= summary[m][key]["mean"] <= 1 and 0 <= summary[f"untrained {m}"][key]["mean"] <= 1
                assert 0 <= summary[CEILING]["i2t_P@5"]["mean"] <= 1
            else:
                for key in ("ce_micro_f1_u0", "ce_macro_f1_u0", "ce_example_f1_u0", "ce5_macro_f1_u0", "BLEU_4", "CIDEr"):
                    assert 0 <= summary[m][key]["mean"] <= 10
        if "s2d" in methods:
            assert {"nearest_neighbour", "majority"} <= set(summary)
        budget = metrics["plans"][methods[0]]["stage_steps"][0]
        assert budget == 3 * params.get("budget_scale", 1.0)  # smoke: 3 steps, times the scale
        claims = [k for k in metrics if k.startswith("claim/")]
        assert claims and all(metrics[k]["verdict"] in ("holds", "reversed", "undecided") for k in claims)
        assert check_readme_table(readme_table(metrics), metrics) >= len(methods)  # the README table, cell by cell
        assert metrics["run"]["smoke"] is True and metrics["run"]["command"].startswith("papermill")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(nb):
    """DESIGN.md: a parameters cell papermill can read with the four standard names, no
    outputs committed, kernelspec python3; the validation cell raises ValueError (no assert)."""
    import nbformat
    papermill = pytest.importorskip("papermill")
    params = papermill.inspect_notebook(str(nb))
    assert {"smoke", "output_dir", "seed", "device"} <= set(params), sorted(params)
    assert params["smoke"]["default"] == "False"
    book = nbformat.read(str(nb), as_version=4)
    assert book.metadata["kernelspec"]["name"] == "python3"
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code")
    code = [c for c in book.cells if c.cell_type == "code"]
    validation = code[1].source
    assert "assert " not in validation and "P.check" in validation, "parameters are checked with ValueErrors"


def test_a_bad_parameter_is_a_value_error_naming_it(tmp_path, data_home, monkeypatch):
    papermill = pytest.importorskip("papermill")
    from papermill.exceptions import PapermillExecutionError

    for k, v in _env(data_home).items():
        monkeypatch.setenv(k, v)
    nb = next(p for p in NOTEBOOKS if p.stem == "02_aga_gating_iga_bcga")
    for params, words in (({"n_seeds": 0}, "parameter n_seeds = 0: must be an integer >= 1"),
                          ({"ablations": ["full", "fuller"]}, "parameter ablations"),
                          ({"overrides": ["model.use_bcgaa=false"]}, "parameter config/overrides: unknown key"),
                          ({"config": "aga_huge"}, "parameter config/overrides: no config file 'aga_huge'")):
        with pytest.raises(PapermillExecutionError) as err:
            papermill.execute_notebook(str(nb), str(tmp_path / "bad.ipynb"), kernel_name="python3",
                                       parameters={"smoke": True, "output_dir": str(tmp_path / "bad"), **params},
                                       cwd=str(nb.parent), progress_bar=False, execution_timeout=120)
        assert err.value.ename == "ValueError" and words in err.value.evalue, err.value.evalue
