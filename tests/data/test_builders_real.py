"""Real-data builders on small fake trees in the official layouts, plus report sectioning.

Every tree is written to ``tmp_path`` (tiny PIL images, fake CSVs and report files); no real
dataset is needed. The CheXpert pool-size test reads the label table shipped in
torchxrayvision.
"""
from __future__ import annotations

import inspect
import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medalign_lite.data.builders.realdata import save_resized
from medalign_lite.data.findings import CHEXPERT_LABELS
from medalign_lite.data.manifest import read_manifest_csv, validate_manifest
from medalign_lite.data.sections import (
    clean_report,
    normalise_whitespace,
    section_name,
    section_report,
)


def _img(path, shape=(40, 32), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


# builds that do not resize point at the originals (``../root/...``): allowed where the validator asks
_OUTSIDE = {"allow_absolute": True} if "allow_absolute" in inspect.signature(validate_manifest).parameters else {}


def _valid(out_dir):
    df = read_manifest_csv(out_dir / "manifest.csv")
    assert validate_manifest(df, out_dir, **_OUTSIDE) == []
    return df


# --------------------------------------------------------------------------------------
# report sectioning and cleaning
# --------------------------------------------------------------------------------------

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Heart size
 is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_section_report_mimic_layout():
    s = section_report(MIMIC_REPORT)
    assert s["findings"] == ("There is no focal consolidation, pleural effusion or pneumothorax. "
                             "Heart size is normal.")
    assert s["impression"] == "No acute cardiopulmonary process."
    assert s["comparison"] == "None."
    assert s["indication"] == "___F with cough // eval for pneumonia"
    assert s["technique"] == "Chest PA and lateral"  # EXAMINATION is overridden by the later TECHNIQUE
    assert s["last_paragraph"] == ""
    assert set(s) == {"findings", "impression", "comparison", "indication", "technique", "last_paragraph"}


def test_section_report_variants_and_fallback():
    assert section_report("FINDINGS: a.\n CONCLUSION: b.")["impression"] == "b."
    assert section_report(" IMPRESSON: b.")["impression"] == "b."           # misspelling
    assert section_report(" FINDNGS: a.")["findings"] == "a."
    assert section_report(" HISTORY: cough.\n INDICATION: fever.")["indication"] == "cough. fever."
    assert section_report("Findings: heart ok.\nImpression: normal")["impression"] == "normal"
    one_line = section_report("COMPARISON: None. FINDINGS: Heart normal. IMPRESSION: Normal chest.")
    assert (one_line["comparison"], one_line["findings"], one_line["impression"]) == (
        "None.", "Heart normal.", "Normal chest.")
    # a title-like header with no text, then the real findings; the last non-empty wins
    s = section_report(" CHEST, PA AND LATERAL:\n FINDINGS: first.\n FINDINGS: second.\n IMPRESSION:  \n")
    assert (s["findings"], s["impression"]) == ("second.", "")
    # no findings / impression header: MIT-LCP's last-paragraph fallback
    s = section_report("                FINAL REPORT\n PA AND LATERAL CHEST ___\n \n The lungs are clear.\n \n No effusion.")
    assert (s["findings"], s["impression"], s["last_paragraph"]) == ("", "", "The lungs are clear. No effusion.")
    s = section_report(" INDICATION: cough.\n \n The lungs are clear.")
    assert (s["indication"], s["last_paragraph"]) == ("cough.", "The lungs are clear.")
    # unknown capitalised sub-headers stay inside findings; known ignored ones end a section
    s = section_report("FINDINGS:\nHEART: Mild cardiomegaly.\nLUNGS: Clear.\nNOTIFICATION: called Dr. ___")
    assert s["findings"] == "HEART: Mild cardiomegaly. LUNGS: Clear."
    assert section_name("FINDINGS AND IMPRESSION") == "impression"
    assert section_name("CHEST, TWO VIEWS") == "findings"
    assert section_name("WET READ") is None
    assert section_report("") == dict.fromkeys(s, "")


def test_clean_report():
    assert clean_report("1. No acute process..  2. Stable  cardiomegaly (mild).") == \
        "no acute process . stable cardiomegaly mild ."
    assert clean_report("Nodule 2.5 cm; left-sided ___ effusion? XXXX.") == "nodule 2.5 cm left-sided effusion . xxxx ."
    assert clean_report("1. No acute process..", style="plain") == "No acute process."
    assert clean_report("") == ""
    assert normalise_whitespace(" a \n\t b ") == "a b" and normalise_whitespace(None) == ""
    with pytest.raises(ValueError):
        clean_report("x", style="bleu")


# --------------------------------------------------------------------------------------
# MIMIC-CXR
# --------------------------------------------------------------------------------------

def _mimic_tree(root, reports_in_root=True):
    """Three subjects. Subject 10000001 has three studies whose ids are NOT in date order."""
    images = [  # dicom, subject, study, view, date, time
        ("d1a", 10000001, 50000003, "PA", 21000101, 90000.0),   # first by date
        ("d1b", 10000001, 50000003, "LATERAL", 21000101, 90000.0),
        ("d2a", 10000001, 50000001, "AP", 21000101, 120000.5),  # same day, later time
        ("d2b", 10000001, 50000001, "AP", 21000101, 120000.5),  # second AP: first by dicom id wins
        ("d3a", 10000001, 50000002, "PA", 21000205, 80000.0),
        ("d3b", 10000001, 50000002, "LL", 21000205, 80000.0),
        ("d4a", 10000002, 50000004, "LATERAL", 21010101, 10000.0),  # no frontal: dropped
        ("d5a", 10000002, 50000005, "PA", 21010301, 10000.0),       # prior = the lateral-only study
        ("d6a", 11000003, 50000006, "PA", 21020101, 10000.0),       # empty report: dropped
        ("d7a", 11000003, 50000007, "PA", 21020301, 10000.0),       # report without headers
        ("d8a", 11000004, 50000008, "PA", 21030101, 10000.0),       # test split
        ("d9a", 11000005, 50000009, "PA", 21030101, 10000.0),       # validate split
    ]
    md = pd.DataFrame(images, columns=["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"])
    md.insert(3, "PerformedProcedureStepDescription", "CHEST (PA AND LAT)")
    md.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    split = {50000008: "test", 50000009: "validate", 50000001: "test"}  # 10000001 split 2 train / 1 test
    sp = md[["dicom_id", "study_id", "subject_id"]].assign(split=md["study_id"].map(split).fillna("train"))
    sp.to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    cx = md[["subject_id", "study_id"]].drop_duplicates().reset_index(drop=True)
    for c in CHEXPERT_LABELS:
        cx[c] = np.nan
    cx.loc[cx["study_id"] == 50000003, "Cardiomegaly"] = 1.0
    cx.loc[cx["study_id"] == 50000003, "Edema"] = -1.0
    cx.loc[cx["study_id"] == 50000003, "Pneumothorax"] = 0.0
    cx.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    for d, subj, study, *_ in images:
        _img(root / "files" / f"p{str(subj)[:2]}" / f"p{subj}" / f"s{study}" / f"{d}.jpg")
    texts = {
        50000003: " FINDINGS: Heart enlarged.\n IMPRESSION: Cardiomegaly.",
        50000001: " FINDINGS: Heart enlarged, stable.\n IMPRESSION: Stable cardiomegaly.",
        50000002: " INDICATION: cough.\n FINDINGS: Lungs clear.\n CONCLUSION: Normal.",
        50000004: " IMPRESSION: Lateral only.",
        50000005: " FINDINGS: Small effusion.",
        50000006: "                 FINAL REPORT\n EXAMINATION: CHEST\n INDICATION: none",
        50000007: "                 FINAL REPORT\n CHEST PA\n \n The lungs are clear.",
        50000008: " IMPRESSION: Test study.",
        50000009: " IMPRESSION: Val study.",
    }
    files = {f"files/p{str(s)[:2]}/p{s}/s{st}.txt": t for (_, s, st, *_r) in images
             for t in [texts[st]]}
    if reports_in_root:
        for rel, t in files.items():
            (root / rel).write_text(t)
    return files


def test_mimic_build(tmp_path, capsys):
    from medalign_lite.data.builders import mimic_cxr

    root, out = tmp_path / "mimic", tmp_path / "manifests" / "mimic"
    root.mkdir()
    _mimic_tree(root)
    mimic_cxr.build(out, root=root, progress=False)
    df = _valid(out).set_index("study_id")
    info = json.loads((out / "build_info.json").read_text())
    # no --size: the paths lead to the originals, the build says so, and its manifest loads as it is
    from medalign_lite.data.manifest import check_manifest, load_manifest
    assert info["paths_outside_folder"] is True and len(load_manifest(out / "manifest.csv")) == len(df)
    assert check_manifest(out / "manifest.csv", allow_absolute=False)  # told otherwise, the paths are problems
    # one row per study with a frontal and some text
    assert sorted(df.index) == ["50000001", "50000002", "50000003", "50000005", "50000007", "50000008", "50000009"]
    assert info["dropped_no_frontal"] == 1 and info["dropped_empty_report"] == 1
    assert "1 with empty findings and impression" in capsys.readouterr().out
    # frontal choice: PA before AP, first AP by dicom id; lateral from LATERAL / LL
    assert df.loc["50000003", "frontal"] == "../../mimic/files/p10/p10000001/s50000003/d1a.jpg"
    assert (df.loc["50000003", "view"], df.loc["50000003", "lateral"].endswith("d1b.jpg")) == ("PA", True)
    assert (df.loc["50000001", "view"], df.loc["50000001", "frontal"].endswith("d2a.jpg")) == ("AP", True)
    assert df.loc["50000002", "lateral"].endswith("d3b.jpg")
    # priors by (date, time), not by study id
    assert df.loc["50000003", "prior_frontal"] == "" and df.loc["50000003", "prior_report"] == ""
    assert df.loc["50000001", "prior_frontal"] == df.loc["50000003", "frontal"]
    assert df.loc["50000001", "prior_lateral"] == df.loc["50000003", "lateral"]
    assert df.loc["50000001", "prior_report"] == "Heart enlarged. Cardiomegaly."
    assert df.loc["50000002", "prior_frontal"] == df.loc["50000001", "frontal"]
    assert df.loc["50000002", "prior_study_id"] == "50000001"
    # the prior may be a study that makes no row itself (lateral only): its lateral and report
    assert df.loc["50000005", "prior_frontal"] == "" and df.loc["50000005", "prior_lateral"].endswith("d4a.jpg")
    assert df.loc["50000005", "prior_report"] == "Lateral only."
    # text: sections, CONCLUSION -> impression, last-paragraph fallback
    assert (df.loc["50000002", "findings"], df.loc["50000002", "impression"]) == ("Lungs clear.", "Normal.")
    assert (df.loc["50000007", "findings"], df.loc["50000007", "impression"]) == ("", "The lungs are clear.")
    # labels
    assert (df.loc["50000003", "Cardiomegaly"], df.loc["50000003", "Edema"], df.loc["50000003", "Pneumothorax"],
            df.loc["50000003", "Fracture"]) == ("1", "-1", "0", "")
    # splits: validate -> val, test apart; subject 10000001 (train, train, test) all train
    assert df.loc["50000009", "split"] == "val" and df.loc["50000008", "split"] == "test"
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.loc["50000001", "split"] == "train" and df.loc["50000001", "official_split"] == "test"
    assert info["moved_to_majority_split"] == 1
    assert df.loc["50000003", "dataset"] == "mimic-cxr" and df.loc["50000003", "patient_id"] == "10000001"


def test_mimic_reports_zip_limit_and_resize(tmp_path):
    from medalign_lite.data.builders import mimic_cxr

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    files = _mimic_tree(root, reports_in_root=False)
    with pytest.raises(FileNotFoundError, match="no report text found"):
        mimic_cxr.build(out, root=root, progress=False)
    with zipfile.ZipFile(tmp_path / "mimic-cxr-reports.zip", "w") as z:
        for rel, text in files.items():
            z.writestr(rel, text)
    mimic_cxr.build(out, root=root, reports_root=tmp_path / "mimic-cxr-reports.zip", size=16, limit=3,
                    progress=False)
    df = _valid(out)
    assert list(df["study_id"]) == ["50000003", "50000001", "50000002"]  # first 3 studies in date order
    assert df.loc[0, "frontal"] == "images/16/d1a.png"
    assert df.loc[1, "prior_frontal"] == "images/16/d1a.png"
    png = out / "images/16/d1a.png"
    assert Image.open(png).size == (16, 20)  # short side 16, aspect kept (32x40 -> 16x20)
    stamp = png.stat().st_mtime_ns
    mimic_cxr.build(out, root=root, reports_root=tmp_path / "mimic-cxr-reports.zip", size=16, limit=3,
                    progress=False)
    assert png.stat().st_mtime_ns == stamp  # the rebuild reuses resized copies


def test_mimic_errors_and_failed_build_leaves_no_manifest(tmp_path, monkeypatch):
    from medalign_lite.data.builders import mimic_cxr

    with pytest.raises(FileNotFoundError, match="MIMIC-CXR-JPG root not found"):
        mimic_cxr.build(tmp_path / "out", root=tmp_path / "nowhere", progress=False)
    root = tmp_path / "mimic"
    root.mkdir()
    _mimic_tree(root)
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split.csv"):
        mimic_cxr.build(tmp_path / "out", root=root, progress=False)
    _mimic_tree(root)
    calls = []

    def flaky(text):
        calls.append(text)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return section_report(text)

    monkeypatch.setattr(mimic_cxr, "section_report", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        mimic_cxr.build(out, root=root, progress=False)
    assert not (out / "manifest.csv").exists()
    # a failed rebuild keeps the previous manifest as it was, and leaves no temporary file
    monkeypatch.setattr(mimic_cxr, "section_report", section_report)
    mimic_cxr.build(out, root=root, progress=False)
    before = (out / "manifest.csv").read_bytes()
    calls.clear()
    monkeypatch.setattr(mimic_cxr, "section_report", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        mimic_cxr.build(out, root=root, limit=2, progress=False)
    assert (out / "manifest.csv").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["build_info.json", "manifest.csv"]


def _synthetic_metadata(n_images=20_000, seed=0):
    rng = np.random.default_rng(seed)
    n_studies = n_images // 2
    study = np.arange(50_000_000, 50_000_000 + n_studies)
    subject = 10_000_000 + rng.integers(0, n_studies // 3, n_studies)
    date = 21000101 + rng.integers(0, 2000, n_studies)
    md = pd.DataFrame({
        "dicom_id": [f"{i:08x}-img" for i in range(n_images)],
        "subject_id": np.repeat(subject, 2), "study_id": np.repeat(study, 2),
        "ViewPosition": np.where(np.arange(n_images) % 2 == 0, rng.choice(["PA", "AP"], n_images), "LATERAL"),
        "StudyDate": np.repeat(date, 2), "StudyTime": np.repeat(rng.uniform(0, 235959, n_studies), 2)})
    sp = md[["dicom_id", "study_id", "subject_id"]].assign(split=rng.choice(["train", "validate", "test"], n_images))
    cx = md[["subject_id", "study_id"]].drop_duplicates().assign(**{c: 1.0 for c in CHEXPERT_LABELS})
    return md, sp, cx


def test_mimic_study_table_is_fast_and_consistent():
    from medalign_lite.data.builders.mimic_cxr import study_table

    md, sp, cx = _synthetic_metadata()
    t0 = time.perf_counter()
    st = study_table(md, sp, cx)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, f"study_table took {elapsed:.1f}s for 20k images"
    assert len(st) == 10_000 and (st["frontal_dicom"] != "").all() and (st["lateral_dicom"] != "").all()
    # priors: same subject, not later
    by_id = st.set_index("study_id")
    has = st[st["prior_study_id"] >= 0]
    prior = by_id.loc[has["prior_study_id"]]
    assert (prior["subject_id"].to_numpy() == has["subject_id"].to_numpy()).all()
    assert (prior["StudyDate"].to_numpy() <= has["StudyDate"].to_numpy()).all()
    assert (prior["frontal_dicom"].to_numpy() == has["prior_frontal_dicom"].to_numpy()).all()
    assert (st.groupby("subject_id")["split"].nunique() == 1).all()  # majority fix: patient-disjoint
    assert st["moved"].sum() > 0


# --------------------------------------------------------------------------------------
# CheXpert 5x200
# --------------------------------------------------------------------------------------

CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def _chexpert_row(patient, cls=None, frontal=True, **labels):
    row = {"Path": f"CheXpert-v1.0-small/train/patient{patient:05d}/study1/view1_{'frontal' if frontal else 'lateral'}.jpg",
           "Sex": "Female", "Age": 50, "Frontal/Lateral": "Frontal" if frontal else "Lateral",
           "AP/PA": "PA" if frontal else np.nan, **{c: np.nan for c in CHEXPERT_LABELS}}
    if cls:
        row[cls] = 1.0
    row.update(labels)
    return row


def test_chexpert_pool_rule():
    from medalign_lite.data.builders.chexpert import five_by_two_hundred_pools

    rows = [
        _chexpert_row(1, "Edema"),                                # NaN elsewhere -> 0: kept
        _chexpert_row(2, "Edema", Atelectasis=-1.0),       # uncertain other class: excluded
        _chexpert_row(3, "Edema", **{"Lung Opacity": 1.0}),       # Lung Opacity positive: excluded
        _chexpert_row(4, "Edema", frontal=False),                 # lateral: excluded
        _chexpert_row(5, "Edema", **{"No Finding": 1.0}),         # No Finding unconstrained: kept
        _chexpert_row(6, "Edema", Cardiomegaly=1.0),       # two classes: excluded
        _chexpert_row(7, Edema=-1.0),                      # uncertain class itself: excluded
        _chexpert_row(8, "Cardiomegaly", **{"Support Devices": 0.0, "Pneumothorax": 0.0}),  # kept
        _chexpert_row(9, "Cardiomegaly", **{"Support Devices": 1.0}),                      # excluded
    ]
    pools = five_by_two_hundred_pools(pd.DataFrame(rows))
    assert list(pools) == list(CLASSES)
    assert list(pools["Edema"].index) == [0, 4]
    assert list(pools["Cardiomegaly"].index) == [7]
    assert len(pools["Atelectasis"]) == len(pools["Consolidation"]) == len(pools["Pleural Effusion"]) == 0


def test_chexpert_pool_sizes_of_shipped_csv():
    from medalign_lite.data.builders.chexpert import (
        five_by_two_hundred_pools,
        read_table,
    )

    table, source = read_table(None)
    assert source.endswith("chexpert_train.csv.gz")
    sizes = {c: len(p) for c, p in five_by_two_hundred_pools(table).items()}
    assert sizes == {"Atelectasis": 1087, "Cardiomegaly": 1034, "Consolidation": 537, "Edema": 2257,
                     "Pleural Effusion": 2425}


def _chexpert_tree(root, per_class=6):
    rows, k = [], 1
    for cls in CLASSES:
        for _ in range(per_class):
            rows.append(_chexpert_row(k, cls))
            k += 1
    rows.append(_chexpert_row(k, "Edema", Pneumonia=-1.0))  # never sampled
    rows.append(_chexpert_row(k + 1, "Edema", frontal=False))
    df = pd.DataFrame(rows)
    base = root / "CheXpert-v1.0-small"
    base.mkdir(parents=True)
    df.to_csv(base / "train.csv", index=False)
    for p in df["Path"]:
        _img(root / p)
    return df


def test_chexpert_build(tmp_path, capsys):
    from medalign_lite.data.builders import chexpert

    root = tmp_path / "chexpert"
    _chexpert_tree(root)
    out1, out2, out3 = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    chexpert.build(out1, root=root, per_class=4, seed=0, progress=False)
    assert "Edema 6" in capsys.readouterr().out
    df = _valid(out1)
    assert len(df) == 20 and (df["split"] == "test").all() and (df["dataset"] == "chexpert-5x200").all()
    assert df["label"].value_counts().to_dict() == dict.fromkeys(CLASSES, 4)
    for c in CLASSES:  # one-hot over the five classes
        assert ((df[c] == "1") == (df["label"] == c)).all() and set(df[c]) <= {"0", "1"}
    assert (df["Lung Opacity"] == "").all() and (df["findings"] == "").all()
    assert df.loc[0, "frontal"].startswith("../chexpert/CheXpert-v1.0-small/train/patient")
    assert json.loads((out1 / "build_info.json").read_text())["pool_sizes"]["Edema"] == 6
    # determinism by seed; root may be the CheXpert-v1.0-small folder itself
    chexpert.build(out2, root=root / "CheXpert-v1.0-small", per_class=4, seed=0, progress=False)
    chexpert.build(out3, root=root, per_class=4, seed=1, progress=False)
    assert list(_valid(out2)["study_id"]) == list(df["study_id"])
    assert list(_valid(out3)["study_id"]) != list(df["study_id"])
    with pytest.raises(ValueError, match="only 6 candidate images"):
        chexpert.build(tmp_path / "d", root=root, per_class=7, progress=False)
    assert not (tmp_path / "d" / "manifest.csv").exists()


def test_chexpert_missing_images(tmp_path):
    from medalign_lite.data.builders import chexpert

    with pytest.raises(FileNotFoundError, match="CheXpert root"):
        chexpert.build(tmp_path / "out", root=None, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        chexpert.build(tmp_path / "out", root=tmp_path / "empty", progress=False)


# --------------------------------------------------------------------------------------
# RSNA
# --------------------------------------------------------------------------------------

def _rsna_tree(root, n=40):
    ids = [f"{i:04d}abcd-0000-0000-0000-000000000000" for i in range(n)]
    rows = []
    for i, pid in enumerate(ids):
        if i % 4 == 0:  # positive with two boxes
            rows += [{"patientId": pid, "x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "Target": 1},
                     {"patientId": pid, "x": 50.0, "y": 60.0, "width": 70.0, "height": 80.0, "Target": 1}]
        else:
            rows.append({"patientId": pid, "x": np.nan, "y": np.nan, "width": np.nan, "height": np.nan, "Target": 0})
    pd.DataFrame(rows).sample(frac=1, random_state=1).to_csv(root / "stage_2_train_labels.csv", index=False)
    for i, pid in enumerate(ids[:-2]):  # the last two have no image
        _img(root / "stage_2_train_images" / f"{pid}.{'png' if i % 2 else 'jpg'}")
    (root / "stage_2_train_images" / f"{ids[1]}.dcm").write_bytes(b"")  # .png wins over .dcm
    return ids


def test_rsna_build(tmp_path):
    from medalign_lite.data.builders import rsna

    root, out = tmp_path / "rsna", tmp_path / "out"
    root.mkdir()
    ids = _rsna_tree(root)
    rsna.build(out, root=root, progress=False)
    df = _valid(out).set_index("study_id")
    assert len(df) == 38 and ids[-1] not in df.index
    assert json.loads((out / "build_info.json").read_text())["dropped_image_missing"] == 2
    assert df.loc[ids[0], "Pneumonia"] == df.loc[ids[0], "Lung Opacity"] == "1"
    assert sorted(json.loads(df.loc[ids[0], "boxes"])) == [[10, 20, 30, 40], [50, 60, 70, 80]]  # file order
    assert df.loc[ids[1], "Pneumonia"] == "0" and json.loads(df.loc[ids[1], "boxes"]) == []
    assert df.loc[ids[1], "frontal"].endswith(".png") and df.loc[ids[2], "frontal"].endswith(".jpg")
    assert (df["Cardiomegaly"] == "").all() and (df["dataset"] == "rsna").all()
    # 70/15/15 over all 40 patients before dropping: 28 / 6 / 6
    split = rsna.gloria_split(ids, seed=0)
    assert pd.Series(split).value_counts().to_dict() == {"train": 28, "val": 6, "test": 6}
    assert all(df.loc[p, "split"] == split[p] for p in df.index)


def test_rsna_split_matches_gloria_sklearn():
    from sklearn.model_selection import train_test_split

    from medalign_lite.data.builders.rsna import gloria_split

    ids = [f"p{i:05d}" for i in range(1001)]
    train, hold = train_test_split(np.array(ids), test_size=0.15 * 2, random_state=0)
    test, val = train_test_split(hold, test_size=0.5, random_state=0)
    ours = gloria_split(reversed(ids), seed=0)  # order of the input does not matter
    assert ours == {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val"), **dict.fromkeys(test, "test")}


def test_rsna_shipped_labels_and_missing_images(tmp_path):
    from medalign_lite.data.builders import rsna

    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no RSNA image found"):
        rsna.build(tmp_path / "out", root=root, progress=False)  # labels from torchxrayvision
    with pytest.raises(FileNotFoundError, match="stage_2_train_images"):
        rsna.build(tmp_path / "out", root=tmp_path, progress=False)


def _write_dicom(path, arr, monochrome1=False):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_rsna_dicom_images_resized(tmp_path):
    pytest.importorskip("pydicom")
    from medalign_lite.data.builders import rsna

    root, out = tmp_path / "rsna", tmp_path / "out"
    ramp = np.tile(np.arange(0, 4000, 100), (30, 1))  # 30 x 40, 12-bit
    ids = ["aaaa", "bbbb"]
    pd.DataFrame({"patientId": ids, "x": [1.0, np.nan], "y": [2.0, np.nan], "width": [3.0, np.nan],
                  "height": [4.0, np.nan], "Target": [1, 0]}).to_csv(tmp_path / "labels.csv", index=False)
    root.mkdir()
    (tmp_path / "labels.csv").rename(root / "stage_2_train_labels.csv")
    _write_dicom(root / "stage_2_train_images" / "aaaa.dcm", ramp)
    _write_dicom(root / "stage_2_train_images" / "bbbb.dcm", ramp, monochrome1=True)
    rsna.build(out, root=root, size=15, progress=False)
    df = _valid(out).set_index("study_id")
    a = np.asarray(Image.open(out / df.loc["aaaa", "frontal"]))
    b = np.asarray(Image.open(out / df.loc["bbbb", "frontal"]))
    assert a.shape == (15, 20) and a.dtype == np.uint8
    assert a[0, 0] < 20 and a[0, -1] > 235 and b[0, 0] > 235 and b[0, -1] < 20  # scaled; MONOCHROME1 inverted


def test_chexpert_limit_keeps_every_class(tmp_path):
    from medalign_lite.data.builders import chexpert

    root = tmp_path / "chexpert"
    _chexpert_tree(root)
    chexpert.build(tmp_path / "out", root=root, per_class=4, limit=7, progress=False)
    df = _valid(tmp_path / "out")
    assert len(df) == 7 and set(df["label"]) == set(CLASSES)


# --------------------------------------------------------------------------------------
# unreadable sources: a bad image is skipped and listed, a bad required table is one error
# --------------------------------------------------------------------------------------

def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _mimic_image(root, subject, study, dicom):
    return root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"


def _unreadable(info):
    return {e["path"]: e["reason"] for e in info["unreadable_images"]}


def test_mimic_unreadable_images_are_skipped_and_listed(tmp_path, capsys):
    """A truncated JPEG used to abort the whole build with "OSError: Truncated File Read",
    naming no file; now its study goes like one whose JPEG is missing, and the file is listed."""
    from medalign_lite.data.builders import mimic_cxr

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    _mimic_tree(root)
    d1a = _mimic_image(root, 10000001, 50000003, "d1a")          # frontal of 50000003, prior of 50000001
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 160), dtype=np.uint8)).save(d1a, quality=95)
    _truncate(d1a, 0.3)                                           # "Truncated File Read" at 0.3
    d3b = _mimic_image(root, 10000001, 50000002, "d3b")          # lateral of 50000002
    d3b.write_bytes(b"")
    d8a = _mimic_image(root, 11000004, 50000008, "d8a")          # frontal of the only test study
    d8a.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG" * 4)
    with pytest.raises(OSError, match="Truncated File Read|truncated"):  # what aborted the build before
        save_resized(d1a, tmp_path / "x.png", 16)
    mimic_cxr.build(out, root=root, size=16, progress=False)
    df = _valid(out).set_index("study_id")
    info = json.loads((out / "build_info.json").read_text())
    assert "50000003" not in df.index and "50000008" not in df.index        # dropped: frontal unreadable
    assert sorted(df.index) == ["50000001", "50000002", "50000005", "50000007", "50000009"]
    assert df.loc["50000001", "prior_frontal"] == "" and df.loc["50000001", "prior_lateral"] == "images/16/d1b.png"
    assert df.loc["50000002", "lateral"] == "" and df.loc["50000002", "frontal"] == "images/16/d3a.png"
    assert (info["dropped_frontal_file_unreadable"], info["blanked_unreadable_image_files"]) == (2, 2)
    bad = _unreadable(info)
    assert set(bad) == {str(d1a), str(d3b), str(d8a)}
    assert "truncated" in bad[str(d1a)].lower() and bad[str(d8a)].startswith(("UnidentifiedImageError", "OSError"))
    assert info["unreadable_reports"] == []
    captured = capsys.readouterr()
    assert "2 with it unreadable" in captured.out
    assert "3 unreadable image file(s) skipped" in captured.err and str(d3b) in captured.err  # first by path
    assert not any((out / "images" / "16").glob("d1a*")) and not list(out.rglob("*.tmp*"))
    # the rebuild decides the same (the bad files are tried again, the good copies reused)
    stamp = (out / "images/16/d2a.png").stat().st_mtime_ns
    mimic_cxr.build(out, root=root, size=16, progress=False)
    assert sorted(_valid(out)["study_id"]) == sorted(df.index)
    assert (out / "images/16/d2a.png").stat().st_mtime_ns == stamp
    # a fixed file comes back
    _img(d1a)
    mimic_cxr.build(out, root=root, size=16, progress=False)
    assert "50000003" in set(_valid(out)["study_id"])
    assert str(d1a) not in _unreadable(json.loads((out / "build_info.json").read_text()))


def test_mimic_originals_empty_files_are_unreadable(tmp_path):
    """Without ``size`` nothing is decoded, but an empty file is never put in a manifest."""
    from medalign_lite.data.builders import mimic_cxr

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    _mimic_tree(root)
    _mimic_image(root, 10000001, 50000002, "d3b").write_bytes(b"")   # a lateral
    _mimic_image(root, 11000005, 50000009, "d9a").write_bytes(b"")   # a frontal
    mimic_cxr.build(out, root=root, progress=False)
    df = _valid(out).set_index("study_id")
    info = json.loads((out / "build_info.json").read_text())
    assert "50000009" not in df.index and df.loc["50000002", "lateral"] == ""
    assert set(_unreadable(info).values()) == {"empty file (0 bytes)"}
    assert (info["dropped_frontal_file_unreadable"], info["blanked_unreadable_image_files"]) == (1, 1)


def test_resized_copy_damaged_in_the_cache_is_written_again(tmp_path):
    from medalign_lite.data.builders import mimic_cxr

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    _mimic_tree(root)
    mimic_cxr.build(out, root=root, size=16, limit=3, progress=False)
    copy = out / "images/16/d1a.png"
    good = copy.read_bytes()
    _truncate(copy)
    stale = out / "images/16/.d2a.png.q8w_e7r6.tmp.png"  # what a killed build leaves
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    mimic_cxr.build(out, root=root, size=16, limit=3, progress=False)
    assert copy.read_bytes() == good and not stale.exists()


def test_mimic_all_images_unreadable_is_one_error(tmp_path):
    from medalign_lite.data.builders import mimic_cxr
    from medalign_lite.data.builders.realdata import SourceFileError

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    _mimic_tree(root)
    for p in (root / "files").rglob("*.jpg"):
        p.write_bytes(b"not a jpeg")
    with pytest.raises(SourceFileError, match="none of the 11 images can be read"):
        mimic_cxr.build(out, root=root, size=16, progress=False)
    assert not (out / "manifest.csv").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "no split column", "plain csv named .gz"])
def test_mimic_corrupt_metadata_is_one_error_naming_the_file(tmp_path, damage, capsys):
    from medalign_lite.cli import main
    from medalign_lite.data.builders import mimic_cxr
    from medalign_lite.data.builders.realdata import SourceFileError

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    _mimic_tree(root)
    bad = root / ("mimic-cxr-2.0.0-split.csv.gz" if damage == "no split column" else "mimic-cxr-2.0.0-metadata.csv.gz")
    if damage == "garbage":
        bad.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)   # a gzip header, then noise
    elif damage == "truncated":
        _truncate(bad)
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "no split column":
        pd.read_csv(bad).drop(columns="split").to_csv(bad, index=False)
    else:
        bad.write_text(pd.read_csv(bad).to_csv(index=False))           # gunzipped, name kept
    with pytest.raises(SourceFileError) as err:
        mimic_cxr.build(out, root=root, size=16, progress=False)
    assert str(err.value).startswith(f"{bad}: cannot read the MIMIC-CXR-JPG")
    assert isinstance(err.value, OSError) and isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)
    if damage == "no split column":
        assert "no column 'split'" in str(err.value)
    assert not out.exists()  # nothing created
    # the command line prints one line naming the file, no traceback
    capsys.readouterr()
    assert main(["data", "build", "mimic-cxr", "--root", str(root), "--out", str(out), "--size", "16",
                 "--quiet"]) != 0
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and str(bad) in err_lines[0]
    assert not out.exists()


def test_mimic_corrupt_reports_zip(tmp_path):
    from medalign_lite.data.builders import mimic_cxr
    from medalign_lite.data.builders.realdata import SourceFileError

    root, out = tmp_path / "mimic", tmp_path / "out"
    root.mkdir()
    files = _mimic_tree(root, reports_in_root=False)
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for rel, text in files.items():
            z.writestr(rel, text * 20)
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])                       # cut short: no central directory
    with pytest.raises(SourceFileError, match=f"^{archive}: cannot read the MIMIC-CXR reports archive"):
        mimic_cxr.build(out, root=root, reports_root=archive, progress=False)
    # one damaged member: that report counts as missing, and is listed
    member = "files/p10/p10000001/s50000002.txt"
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        info = z.getinfo(member)
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    damaged = bytearray(good)
    damaged[start + 5] ^= 0xFF
    archive.write_bytes(bytes(damaged))
    mimic_cxr.build(out, root=root, reports_root=archive, progress=False)
    df = _valid(out).set_index("study_id")
    info = json.loads((out / "build_info.json").read_text())
    assert "50000002" not in df.index and info["missing_report_files"] == 1
    assert [e["path"] for e in info["unreadable_reports"]] == [f"{archive}:{member}"]


def test_chexpert_unreadable_image_dropped_and_counted(tmp_path, capsys):
    from medalign_lite.data.builders import chexpert

    root, out = tmp_path / "chexpert", tmp_path / "out"
    table = _chexpert_tree(root)
    chexpert.build(tmp_path / "first", root=root, per_class=4, seed=0, progress=False)
    first = _valid(tmp_path / "first")
    victim = root / "CheXpert-v1.0-small" / first.loc[0, "frontal"].split("CheXpert-v1.0-small/", 1)[1]
    assert victim.is_file() and str(victim.relative_to(root)) in set(table["Path"])
    _truncate(victim)
    chexpert.build(out, root=root, per_class=4, seed=0, size=16, progress=False)
    df = _valid(out)
    info = json.loads((out / "build_info.json").read_text())
    assert len(df) == 19 and list(df["study_id"]) == list(first["study_id"].iloc[1:])  # the rest as drawn
    assert info["dropped_image_unreadable"] == {first.loc[0, "label"]: 1} and info["rows"] == 19
    assert list(_unreadable(info)) == [str(victim)]
    assert "unreadable images dropped" in capsys.readouterr().out


def test_chexpert_corrupt_label_table(tmp_path):
    from medalign_lite.data.builders import chexpert
    from medalign_lite.data.builders.realdata import SourceFileError

    root = tmp_path / "chexpert"
    _chexpert_tree(root)
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    csv.write_bytes(b"\xff\xfe\x00garbage\x00\n\x80\x81")
    with pytest.raises(SourceFileError, match=f"^{csv}: cannot read CheXpert's train.csv"):
        chexpert.build(tmp_path / "out", root=root, per_class=4, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the broken header
def test_rsna_unreadable_images_and_labels(tmp_path):
    pytest.importorskip("pydicom")
    from medalign_lite.data.builders import rsna
    from medalign_lite.data.builders.realdata import SourceFileError

    root, out = tmp_path / "rsna", tmp_path / "out"
    root.mkdir()
    ids = _rsna_tree(root, n=12)
    images = root / "stage_2_train_images"
    (images / f"{ids[2]}.jpg").write_bytes(b"")                              # empty
    _truncate(images / f"{ids[3]}.png")                                       # truncated PNG
    (images / f"{ids[4]}.jpg").unlink()
    _write_dicom(images / f"{ids[4]}.dcm", np.tile(np.arange(0, 4000, 100), (30, 1)))
    _truncate(images / f"{ids[4]}.dcm", 0.6)                                  # DICOM without all its pixels
    (images / f"{ids[6]}.jpg").unlink()
    (images / f"{ids[6]}.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 10)  # a broken header
    rsna.build(out, root=root, size=15, progress=False)
    df = _valid(out).set_index("study_id")
    info = json.loads((out / "build_info.json").read_text())
    lost = {ids[2], ids[3], ids[4], ids[6]}
    assert set(df.index) == set(ids[:-2]) - lost
    assert (info["dropped_image_missing"], info["dropped_image_unreadable"], info["rows"]) == (2, 4, 6)
    bad = _unreadable(info)
    assert {Path(p).stem for p in bad} == lost and bad[str(images / f"{ids[2]}.jpg")] == "empty file (0 bytes)"
    assert bad[str(images / f"{ids[3]}.png")] == "OSError: image file is truncated"
    assert "pixel data" in bad[str(images / f"{ids[4]}.dcm")]
    # the label table: unreadable -> one error naming it, nothing written
    labels = root / "stage_2_train_labels.csv"
    labels.write_text("patientId,Target\n\"unterminated,1\n")
    with pytest.raises(SourceFileError, match=f"^{labels}: cannot read the RSNA label table"):
        rsna.build(tmp_path / "out2", root=root, progress=False)
    assert not (tmp_path / "out2").exists()


def _iu_tree(root, n=6):
    from medalign_lite.data.iu_xray import load_iu_reports

    reports = load_iu_reports().iloc[:n]
    for rec in reports.itertuples():
        for image_id in rec.image_ids:
            _img(root / f"{image_id}.png", (24, 20), 90)
    return reports


def test_iu_xray_unreadable_images(tmp_path):
    from medalign_lite.data.builders import iu_xray

    root, out = tmp_path / "NLMCXR_png", tmp_path / "out"
    _iu_tree(root)
    iu_xray.build(tmp_path / "first", root=root, limit=6, size=8, progress=False)
    first = _valid(tmp_path / "first").set_index("study_id")
    frontal = root / f"{first.loc['CXR1', 'image_id']}.png"
    lateral = root / Path(first.loc["CXR2", "lateral"]).name
    _truncate(frontal)
    lateral.write_bytes(b"")
    iu_xray.build(out, root=root, limit=6, size=8, progress=False)
    df = _valid(out).set_index("study_id")
    info = json.loads((out / "build_info.json").read_text())
    assert "CXR1" not in df.index and set(df.index) == set(first.index) - {"CXR1"}
    assert df.loc["CXR2", "lateral"] == "" and df.loc["CXR2", "frontal"] == first.loc["CXR2", "frontal"]
    assert (info["dropped_frontal_unreadable"], info["blanked_lateral_unreadable"]) == (1, 1)
    assert set(_unreadable(info)) == {str(frontal), str(lateral)}


def test_iu_xray_corrupt_annotation(tmp_path):
    from medalign_lite.data.builders import iu_xray
    from medalign_lite.data.builders.realdata import SourceFileError

    root = tmp_path / "iu_xray"
    _img(root / "images" / "CXR1_1_IM-0001" / "0.png")
    (root / "annotation.json").write_text('{"train": [{"id": "CXR1_1_IM-0001"}')  # cut short
    with pytest.raises(SourceFileError, match=f"^{root / 'annotation.json'}: cannot read R2Gen's annotation.json"):
        iu_xray.build(tmp_path / "out", root=root, split="r2gen", progress=False)
    assert not (tmp_path / "out").exists()
