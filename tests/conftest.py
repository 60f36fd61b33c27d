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
