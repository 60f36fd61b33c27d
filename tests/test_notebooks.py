"""Every notebook runs end to end through papermill in smoke mode and writes metrics.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="session")
def data_home(tmp_path_factory):
    return tmp_path_factory.mktemp("medalign_data")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(nb, tmp_path, data_home, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("MEDALIGN_DATA", str(data_home))
    monkeypatch.setenv("MEDALIGN_SMOKE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out_dir = tmp_path / "out"
    papermill.execute_notebook(str(nb), str(tmp_path / nb.name), kernel_name="python3",
                               parameters={"smoke": True, "output_dir": str(out_dir)},
                               cwd=str(nb.parent), progress_bar=False, execution_timeout=600)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["smoke"] is True
    assert metrics and all(isinstance(k, str) for k in metrics)
    pngs = list(out_dir.glob("*.png"))
    assert pngs, "a notebook writes its figures"
    if nb.stem == "00_data_tour":
        assert metrics["n_studies"] == 40 and metrics["n_phantom_5x200"] == 50
        assert metrics["demo_validation_problems"] >= 5
        assert 0 < metrics["frac_fully_rendered"] <= 1
    if nb.stem == "01_similarity_matrices":
        for name in ("random", "convirt", "gloria"):
            assert 0 <= metrics[f"{name}/i2t_P@5"] <= 1
        assert metrics["gloria/n_phrases"] > 0 and 0 <= metrics["gloria/mask_auroc"] <= 1
    if nb.stem == "02_aga_gating_iga_bcga":
        for v in ("full", "no_bcga", "no_iga", "fixed_thresholds", "global_only", "gloria"):
            assert 0 <= metrics[f"{v}/i2t_P@5_mean"] <= 1 and metrics[f"{v}/i2t_P@5_std"] >= 0
            assert f"{v}/seed1/i2t_P@5" in metrics  # smoke runs two seeds
        for style in ("real", "structured"):
            assert 0 < metrics[f"sigma_tg/{style}"] < 1.5 and 0 < metrics[f"sigma_vg/{style}"] < 1.5
        assert metrics["grad_norm/untrained/IGA"] > 0 and metrics["full/pointing_game"] >= 0
    if nb.stem == "05_s2d_full":
        variants = ("progressive", "joint", "single_stage", "reversed", "without_stage3", "independent_memory",
                    "mlp_projector")
        for v in variants:  # every variant of the paper's ablation table has its CE F1 (smoke runs all of them)
            assert 0 <= metrics[f"ablation/{v}/ce_micro_f1_u0_mean"] <= 1
            assert 0 <= metrics[f"ablation/{v}/seed0/ce_macro_f1_u0"] <= 1
        for system in ("progressive", "nearest_neighbour", "majority"):  # the main table, whole test split
            for key in ("ce_micro_f1_u0", "ce_macro_f1_u0", "ce_example_f1_u0", "ce5_macro_f1_u0", "BLEU_4", "ROUGE_L"):
                assert 0 <= metrics[f"test/{system}/{key}"] <= 1
        assert metrics["claim/progressive_beats_nn/ce_micro_f1_u0"] in (True, False)
        for key in ("claim/progressive-nn/ce_micro_f1_u0", "claim/progressive-joint/ce_macro_f1_u0"):
            ci = metrics[key]  # paired bootstrap of the F1 difference
            assert -1 <= ci["low"] <= ci["high"] <= 1 and -1 <= ci["diff"] <= 1, (key, ci)
        assert metrics["workers"] == 2  # the smoke run exercises the worker processes too
        assert metrics["seconds/total_seconds"] > 0


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(nb):
    """DESIGN.md: a parameters cell papermill can read with the four standard names, no
    outputs committed, kernelspec python3."""
    import nbformat
    papermill = pytest.importorskip("papermill")
    params = papermill.inspect_notebook(str(nb))
    assert {"smoke", "output_dir", "seed", "device"} <= set(params), sorted(params)
    assert params["smoke"]["default"] == "False"
    book = nbformat.read(str(nb), as_version=4)
    assert book.metadata["kernelspec"]["name"] == "python3"
    assert not any(c.get("outputs") for c in book.cells if c.cell_type == "code")
