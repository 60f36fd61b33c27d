"""IU X-Ray: the report reader on the archive shipped in torchxrayvision, and the real-image
builder on fake image trees (the images are fake; the text is read from the installed wheel
at run time and never written into the repository)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from medalign_lite.data import iu_xray
from medalign_lite.data.manifest import read_manifest_csv, split_patients, validate_manifest


def test_reader_parses_all_reports_quickly():
    iu_xray._reports.cache_clear()
    t0 = time.perf_counter()
    df = iu_xray.load_iu_reports()
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"parsing took {elapsed:.1f}s"
    assert len(df) == 3955 and df["uid"].is_unique
    assert list(df.columns) == list(iu_xray.REPORT_COLUMNS)
    assert df["report_id"].is_monotonic_increasing
    assert df["image_ids"].map(len).sum() == 7470
    assert (df["image_ids"].map(len) == df["image_views"].map(len)).all()


def test_known_report_cxr1():
    r = iu_xray.load_iu_reports().set_index("uid").loc["CXR1"]
    assert r["report_id"] == 1
    assert r["findings"].startswith("The cardiac silhouette and mediastinum size are within normal limits")
    assert r["impression"] and r["indication"] and r["comparison"]
    assert r["mesh"] == ["normal"]
    assert r["image_ids"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
    # the DICOM metadata (id "CXR1_IM-0001-...") records both images as PA; torchxrayvision's
    # t-SNE view says the first is the lateral
    assert r["image_views"] == ["PA", "PA"]
    tsne = iu_xray.iu_image_view_table("tsne")
    assert [tsne[i] for i in r["image_ids"]] == ["LATERAL", "PA"]
    dicom = iu_xray.iu_image_view_table()
    assert dicom["CXR1_IM-0001-3001"] == dicom["CXR1_1_IM-0001-3001"] == "PA"
    assert dicom["CXR1000_IM-0003-1001"] == ""  # in a report, absent from the metadata


def test_reader_returns_copies():
    a = iu_xray.load_iu_reports()
    a.loc[0, "findings"] = "changed"
    a.loc[0, "mesh"].append("x")
    b = iu_xray.load_iu_reports()
    assert b.loc[0, "findings"] != "changed" and b.loc[0, "mesh"] == ["normal"]


def test_missing_package_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchxrayvision" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install torchxrayvision"):
        iu_xray.data_dir()


def test_reader_does_not_import_torch():
    code = ("import sys; from medalign_lite.data.iu_xray import load_iu_reports; load_iu_reports(); "
            "assert 'torch' not in sys.modules and 'torchxrayvision' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------
# builder
# --------------------------------------------------------------------------------------

def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 20), 90, np.uint8)).save(path)


def test_build_open_i_layout(tmp_path):
    from medalign_lite.data.builders import iu_xray as builder

    reports = iu_xray.load_iu_reports().iloc[:16]  # CXR16 has neither findings nor impression
    root, out = tmp_path / "NLMCXR_png", tmp_path / "out"
    for rec in reports.itertuples():
        if rec.uid != "CXR3":  # CXR3's images are missing
            for image_id in rec.image_ids:
                _png(root / f"{image_id}.png")
    builder.build(out, root=root, limit=16, size=8, progress=False)
    df = read_manifest_csv(out / "manifest.csv")
    assert validate_manifest(df, out) == []
    info = json.loads((out / "build_info.json").read_text())
    assert info["dropped_no_image_file"] == 1 and info["dropped_empty_report"] == 1 and len(df) == 14
    assert "CXR16" not in set(df["study_id"]) and "CXR3" not in set(df["study_id"])
    rows = df.set_index("study_id")
    # t-SNE views (default): CXR1's frontal is its second image, the lateral its first
    assert (rows.loc["CXR1", "image_id"], rows.loc["CXR1", "lateral"]) == (
        "CXR1_1_IM-0001-4001", "images/8/CXR1_1_IM-0001-3001.png")
    assert (rows.loc["CXR10", "view"], rows.loc["CXR10", "image_id"]) == ("AP", "CXR10_IM-0002-2001")
    # CXR2: PA + an image of unknown view -> that one is the lateral
    assert rows.loc["CXR2", "lateral"].endswith("CXR2_IM-0652-2001.png")
    assert rows.loc["CXR4", "lateral"] == ""  # PA + PA: no lateral
    assert Image.open(out / rows.loc["CXR1", "frontal"]).size == (8, 10)
    assert (df["dataset"] == "iu-xray").all() and (df["patient_id"] == df["study_id"]).all()
    assert rows.loc["CXR1", "mesh"] == "normal" and rows.loc["CXR1", "No Finding"] == "1"
    assert set(df["Cardiomegaly"]) <= {"1", "0", "-1", ""}  # labeler output, CheXpert's values
    split = split_patients(iu_xray.load_iu_reports()["uid"], seed=0)
    assert all(rows.loc[u, "split"] == split[u] for u in rows.index)
    # DICOM views: CXR1's first image is "PA"; the original images are referenced
    builder.build(tmp_path / "dicom", root=root, limit=2, views="dicom", progress=False)
    first = read_manifest_csv(tmp_path / "dicom" / "manifest.csv").iloc[0]
    assert first["frontal"] == "../NLMCXR_png/CXR1_1_IM-0001-3001.png" and first["lateral"] == ""


def test_build_r2gen_layout_and_errors(tmp_path):
    from medalign_lite.data.builders import iu_xray as builder

    root = tmp_path / "iu_xray"
    for folder, n in (("CXR1_1_IM-0001", 2), ("CXR2_IM-0652", 1)):
        for k in range(n):
            _png(root / "images" / folder / f"{k}.png")
    (root / "annotation.json").write_text(json.dumps(
        {"train": [{"id": "CXR1_1_IM-0001"}], "val": [], "test": [{"id": "CXR2_IM-0652"}]}))
    builder.build(tmp_path / "out", root=root, limit=3, split="r2gen", progress=False)
    df = read_manifest_csv(tmp_path / "out" / "manifest.csv").set_index("study_id")
    assert list(df.index) == ["CXR1", "CXR2"]
    assert df.loc["CXR1", "frontal"] == "../iu_xray/images/CXR1_1_IM-0001/0.png"
    assert df.loc["CXR1", "lateral"].endswith("CXR1_1_IM-0001/1.png") and df.loc["CXR2", "lateral"] == ""
    assert (df.loc["CXR1", "split"], df.loc["CXR2", "split"]) == ("train", "test")
    with pytest.raises(FileNotFoundError, match="IU X-Ray image folder"):
        builder.build(tmp_path / "x", root=tmp_path / "missing", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no IU X-Ray PNGs"):
        builder.build(tmp_path / "x", root=tmp_path / "empty", progress=False)
    assert not (tmp_path / "x" / "manifest.csv").exists()
