"""Manifest validation: every problem kind names its row and column; writes are atomic."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from medalign_lite.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    load_manifest,
    split_patients,
    validate_manifest,
    write_manifest,
)
from medalign_lite.utils import atomic_path


def test_valid_manifest_has_no_problem(tiny_manifest):
    root, df = tiny_manifest
    assert validate_manifest(df, root) == []
    path = write_manifest(df, root / "manifest.csv")
    loaded = load_manifest(path)
    assert list(loaded.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert loaded["Cardiomegaly"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert loaded["Edema"].eq(-1.0).all() and loaded["Pneumonia"].isna().all()


# (column, bad value, row index, expected words in the message)
BAD = [
    ("frontal", "img/missing.png", 1, "missing file"),
    ("findings", "", 2, "empty findings and impression"),
    ("view", "LATERALISH", 3, "unknown view"),
    ("study_id", "s0", 4, "duplicate study id"),
    ("Cardiomegaly", "2", 5, "bad label value"),
    ("split", "validate", 0, "unknown split"),
]


@pytest.mark.parametrize("column,value,index,words", BAD)
def test_each_problem_names_row_and_column(tiny_manifest, column, value, index, words):
    root, df = tiny_manifest
    df.loc[index, column] = value
    if column == "findings":
        df.loc[index, "impression"] = ""
    problems = validate_manifest(df, root)
    hits = [p for p in problems if p.row == index + 1 and p.column == column]
    assert hits, problems
    assert words in hits[0].message


def test_patient_in_two_splits(tiny_manifest):
    root, df = tiny_manifest
    df.loc[1, "split"] = "test"  # patient p0 now in train (row 1) and test (row 2)
    problems = validate_manifest(df, root)
    assert [(p.row, p.column) for p in problems] == [(2, "split")]
    assert "p0" in problems[0].message


def test_every_problem_reported_at_once_and_load_raises(tiny_manifest):
    root, df = tiny_manifest
    for column, value, index, _ in BAD:
        df.loc[index, column] = value
    df.loc[2, "impression"] = ""
    df.to_csv(root / "bad.csv", index=False)
    with pytest.raises(ManifestError) as e:
        load_manifest(root / "bad.csv")
    found = {(p.row, p.column) for p in e.value.problems}
    assert {(i + 1, c) for c, _, i, _ in BAD} <= found
    assert "row 4, column 'view'" in str(e.value)


def test_missing_column_is_reported(tiny_manifest):
    root, df = tiny_manifest
    problems = validate_manifest(df.drop(columns=["split"]), root)
    assert [(p.row, p.column) for p in problems] == [(0, "split")]


def test_write_is_atomic(tiny_manifest):
    root, df = tiny_manifest
    target = root / "out" / "manifest.csv"
    bad = df.copy()
    bad.loc[0, "split"] = "nope"
    with pytest.raises(ManifestError):
        write_manifest(bad, target)
    assert not target.exists()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a manifest")
        raise RuntimeError("build failed midway")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_split_patients_is_seeded_and_disjoint():
    ids = [f"p{i}" for i in range(1000)]
    a, b = split_patients(ids, seed=3), split_patients(list(reversed(ids)), seed=3)
    assert a == b  # order of the input does not matter
    assert a != split_patients(ids, seed=4)
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 700 and counts["val"] == 150 and counts["test"] == 150


def test_cli_validate_exit_codes(tiny_manifest):
    root, df = tiny_manifest
    df.loc[3, "view"] = "XYZ"
    df.to_csv(root / "bad.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "medalign_lite.cli", "data", "validate", str(root / "bad.csv")],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 1
    assert "row 4, column 'view'" in r.stderr
    df.loc[3, "view"] = "PA"
    df.to_csv(root / "good.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "medalign_lite.cli", "data", "validate", str(root / "good.csv")],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
