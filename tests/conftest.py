"""Shared fixtures: a tiny valid manifest with real image files, built in a temp folder."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test runs offline (no hub look-ups, downloads not allowed) from a fixed seed."""
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MEDALIGN_ALLOW_DOWNLOAD", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def tiny_manifest(tmp_path):
    """(folder, DataFrame) of a 6-study valid manifest whose image files exist."""
    from medalign_lite.data.manifest import empty_manifest_row

    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(6):
        name = f"img/s{i}.png"
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / name)
        row = empty_manifest_row()
        row.update(study_id=f"s{i}", patient_id=f"p{i // 2}", split=("train", "val", "test")[i // 2],
                   dataset="mimic-cxr", view="PA", frontal=name, findings=f"report {i}",
                   impression="No acute disease.", **{"Cardiomegaly": str(i % 2), "Edema": "-1"})
        rows.append(row)
    return tmp_path, pd.DataFrame(rows)


# --- medalign bench all at shapes small enough for seconds (tests/test_bench.py, tests/test_cli.py)
_TINY_BERT = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
_TINY_DINO = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "mlp_ratio": 2, "patch_size": 14, "num_channels": 1}


@pytest.fixture
def tiny_bench_all(monkeypatch):
    """bench_all's CPU shapes shrunk to seconds, and its training-step profile replaced by a
    recorder (bench_train_step itself is tested in tests/test_bench.py, through the notebooks'
    trainer path). Returns (the shapes, the methods the recorder was called for)."""
    from dataclasses import replace

    from medalign_lite.bench import all as bench_all_module

    tiny = replace(bench_all_module.CPU_SHAPES, name="tiny", batch_size=2, tokens=8, patches=16, gloria_dim=16,
                   aga_dim=8, aga_vision="tiny_cnn", aga_image_size=64, aga_text_hf_config=_TINY_BERT,
                   alta_config="alta_tiny", alta_tokens=8, alta_text_hf_config=_TINY_BERT, exgramed_dim=32,
                   exgramed_paper=False, exgramed_solver_batches=(4,), s2d_image_size=28, s2d_lm_hidden=32,
                   s2d_vision_hf_config=_TINY_DINO, s2d_reports=2, s2d_report_batch=2,
                   train_overrides={"s2d": ("model.memory_size=4",)})
    calls = []

    def train_step(method, sh, device):
        calls.append(method)
        stage = {"trainable_params": 5, "step_s": 0.1, "steps_per_s": 10.0,
                 "shares": {"head_loss": 0.25, "encoders": 0.5}}
        return {"config": f"{method}_tiny", "batch_size": 2, "threads": 1, "params": 10, "peak_mib": {"first": 7.0, "second": 3.0},
                "runs": {"first": {"a": stage}, "second": {"a": stage, "b": {**stage, "step_s": 0.2}}}}

    monkeypatch.setattr(bench_all_module, "CPU_SHAPES", tiny)
    monkeypatch.setattr(bench_all_module, "_train_step", train_step)
    return tiny, calls
