"""Manifest validation: every problem kind names its row and column (and line, from a file); paths stay
inside the manifest's folder; --deep decodes the files; writes are atomic."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medalign_lite.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    check_manifest,
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


# --------------------------------------------------------------------------------------
# paths and files: relative, inside the manifest's folder, non-empty; --deep decodes them
# --------------------------------------------------------------------------------------

def _noise_png(path, shape=(64, 64), dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, shape).astype(dtype)).save(path)
    return path


def _kinds(problems):
    return {(p.row, p.column) for p in problems}


def test_paths_must_stay_inside_the_manifest_folder(tiny_manifest):
    root, df = tiny_manifest
    outside = _noise_png(root.parent / f"{root.name}-outside.png")
    df.loc[0, "frontal"] = "../../etc/passwd"
    df.loc[1, "frontal"] = str(root / "img" / "s1.png")  # absolute, and the file is there
    df.loc[2, "frontal"] = f"../{outside.name}"           # relative, there, but out of the folder
    df.loc[3, "lateral"] = "img/../img/s3.png"            # '..' that stays inside is fine
    problems = validate_manifest(df, root)
    assert _kinds(problems) == {(1, "frontal"), (2, "frontal"), (3, "frontal")}, problems
    assert "leaves the manifest's folder" in problems[0].message and "--allow-absolute" in problems[0].message
    assert problems[1].message.startswith("absolute path")
    # the same paths without touching the disk (--no-files): the form alone decides
    assert _kinds(validate_manifest(df, root, check_files=False)) == _kinds(problems)
    # data on another disk: allowed explicitly, then only the file that is not there is left
    allowed = validate_manifest(df, root, allow_absolute=True)
    assert [(p.row, p.column) for p in allowed] == [(1, "frontal")] and "missing file" in allowed[0].message
    df.loc[0, "frontal"] = "img/s0.png"
    df.to_csv(root / "m.csv", index=False)
    with pytest.raises(ManifestError) as e:
        load_manifest(root / "m.csv")
    assert _kinds(e.value.problems) == {(2, "frontal"), (3, "frontal")}
    loaded = load_manifest(root / "m.csv", allow_absolute=True)
    assert loaded.loc[2, "frontal"] == f"../{outside.name}"


def test_links_out_of_the_folder_are_outside(tiny_manifest, tmp_path_factory):
    root, df = tiny_manifest
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    _noise_png(elsewhere / "x.png")
    (root / "ext").symlink_to(elsewhere, target_is_directory=True)
    (root / "img" / "link.png").symlink_to(elsewhere / "x.png")
    (root / "img" / "inner.png").symlink_to(root / "img" / "s0.png")
    df.loc[0, "frontal"] = "ext/x.png"       # a linked folder leading out
    df.loc[1, "frontal"] = "img/link.png"    # a linked file leading out
    df.loc[2, "frontal"] = "img/inner.png"   # a link that stays inside
    problems = validate_manifest(df, root)
    assert _kinds(problems) == {(1, "frontal"), (2, "frontal")}
    assert all("leaves the manifest's folder" in p.message and str(elsewhere) in p.message for p in problems)
    assert validate_manifest(df, root, allow_absolute=True) == []


def test_empty_files_and_folders_are_problems_without_deep(tiny_manifest):
    root, df = tiny_manifest
    (root / "img" / "zero.png").write_bytes(b"")
    df.loc[0, "frontal"] = "img/zero.png"
    df.loc[1, "frontal"] = "img"
    df.loc[2, "frontal"] = "img/s2.png/"
    problems = validate_manifest(df, root)
    assert [(p.row, p.column) for p in problems] == [(1, "frontal"), (2, "frontal"), (3, "frontal")]
    assert "empty file img/zero.png (0 bytes)" in problems[0].message
    assert "is a folder" in problems[1].message and "ends with a slash" in problems[2].message


def _deep_case(root, df):
    """Rows 1-5 each hold one file that only --deep can tell is bad; row 6 is good."""
    from medalign_lite.data.masks import save_masks

    img = root / "img"
    (img / "table.png").write_text("study_id,split\ns0,train\n")          # a CSV named as an image
    (img / "cut.png").write_bytes(_noise_png(img / "big.png").read_bytes()[:100])  # a PNG cut at 100 bytes
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64)).astype(np.uint8)).save(img / "big.jpg")
    (img / "cut.jpg").write_bytes((img / "big.jpg").read_bytes()[:1500])
    _noise_png(img / "mask8.png", (16, 16))                                 # 8-bit: not a bitfield mask
    save_masks(img / "mask_small.png", np.ones((2, 8, 8), bool))           # 16-bit, 8x8 beside a 16x16 image
    save_masks(img / "mask_ok.png", np.ones((2, 16, 16), bool))
    df.loc[0, "frontal"] = "img/table.png"
    df.loc[1, "frontal"] = "img/cut.png"
    df.loc[2, "frontal"] = "img/cut.jpg"
    df.loc[3, "masks"] = "img/mask8.png"
    df.loc[4, "masks"] = "img/mask_small.png"
    df.loc[5, "masks"] = "img/mask_ok.png"
    return df


def test_deep_opens_every_image_and_mask(tiny_manifest):
    root, df = tiny_manifest
    df = _deep_case(root, df)
    assert validate_manifest(df, root) == []  # every file is there and non-empty
    problems = validate_manifest(df, root, deep=True, workers=1)
    assert [(p.row, p.column) for p in problems] == [(1, "frontal"), (2, "frontal"), (3, "frontal"),
                                                    (4, "masks"), (5, "masks")], problems
    words = ["unreadable image img/table.png", "unreadable image img/cut.png", "unreadable image img/cut.jpg",
             "not a 16-bit PNG", "is 8x8, the frontal image 16x16"]
    for p, w in zip(problems, words):
        assert w in p.message, p
    with pytest.raises(ValueError, match="check_files"):
        validate_manifest(df, root, check_files=False, deep=True)


def test_deep_in_worker_processes_gives_the_same_problems_in_row_order(tiny_manifest, monkeypatch):
    from medalign_lite.data import manifest

    root, df = tiny_manifest
    df = _deep_case(root, df)
    one = validate_manifest(df, root, deep=True, workers=1)
    monkeypatch.setattr(manifest, "_DEEP_INLINE_FILES", 0)  # a pool even for six rows
    two = validate_manifest(df, root, deep=True, workers=2)
    assert two == one and len(one) == 5


# --------------------------------------------------------------------------------------
# the file itself: read in one streaming csv pass, structure problems with their line
# --------------------------------------------------------------------------------------

def _lines(df) -> list[bytes]:
    return df.to_csv(index=False).encode().splitlines()


def _problems_of(path):
    """check_manifest's problems, load_manifest's ManifestError and the CLI's exit status agree."""
    problems = check_manifest(path)
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.problems == problems
    r = subprocess.run([sys.executable, "-m", "medalign_lite.cli", "data", "validate", str(path)],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and str(path) in r.stderr, r.stderr
    return problems


def test_empty_and_header_only_files_are_problems(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "blank.csv").write_bytes(b"\n\n")
    (tmp_path / "header.csv").write_text(",".join(f'"{c}"' if " " in c else c for c in MANIFEST_COLUMNS) + "\n")
    for name in ("empty.csv", "blank.csv"):
        assert [str(p) for p in _problems_of(tmp_path / name)] == ["file: empty file: no header and no rows"]
    assert [str(p) for p in _problems_of(tmp_path / "header.csv")] == ["file: no data rows (only a header)"]


def test_missing_manifest_and_folder_are_problems(tmp_path):
    assert [str(p) for p in _problems_of(tmp_path / "nope.csv")] == ["file: No such file or directory"]
    assert [str(p) for p in _problems_of(tmp_path)] == ["file: is a folder, not a manifest file"]


def test_bytes_that_are_not_utf8_are_named_by_row_column_and_line(tiny_manifest):
    root, df = tiny_manifest
    lines = _lines(df)
    lines[3] = lines[3].replace(b"report 2", b"report\xff 2")
    (root / "m.csv").write_bytes(b"\n".join(lines) + b"\n")
    problems = _problems_of(root / "m.csv")
    assert [str(p) for p in problems] == [
        "row 3, column 'findings' (line 4): bytes that are not UTF-8 (0xff at character 7 of the field)"]


def test_rows_with_too_few_or_too_many_fields(tiny_manifest):
    root, df = tiny_manifest
    lines = _lines(df)
    cut = MANIFEST_COLUMNS.index("impression") + 1
    lines[2] = b",".join(lines[2].split(b",")[:cut])  # a MIMIC-CXR row cut after its impression
    lines[4] = lines[4] + b",extra"
    (root / "m.csv").write_bytes(b"\n".join(lines) + b"\n")
    problems = _problems_of(root / "m.csv")
    n = len(MANIFEST_COLUMNS)
    assert [str(p) for p in problems] == [
        (f"row 2, column 'prior_report' (line 3): {cut} field(s), the header has {n}: "
         "the row ends after column 'impression'"),
        f"row 4, column 'masks' (line 5): {n + 1} fields, the header has {n}: 1 more after the last column"]
    with pytest.raises(ManifestError):
        load_manifest(root / "m.csv", validate=False)  # structure is checked even then


def test_lines_count_quoted_newlines_and_a_bom_is_fine(tiny_manifest):
    root, df = tiny_manifest
    df.loc[1, "findings"] = "Heart normal.\nLungs clear."  # row 2 spans lines 3-4
    df.loc[3, "view"] = "XYZ"
    (root / "m.csv").write_bytes(b"\xef\xbb\xbf" + df.to_csv(index=False).encode())
    problems = check_manifest(root / "m.csv")
    assert [str(p) for p in problems] == [
        "row 4, column 'view' (line 6): unknown view 'XYZ' (expected PA, AP or blank)"]
    df.loc[3, "view"] = "PA"
    (root / "m.csv").write_bytes(b"\xef\xbb\xbf" + df.to_csv(index=False).encode())
    assert load_manifest(root / "m.csv").loc[1, "findings"] == "Heart normal.\nLungs clear."


def test_duplicate_column_names(tiny_manifest):
    root, df = tiny_manifest
    lines = _lines(df)
    lines[0] = lines[0].replace(b"lateral", b"frontal", 1)
    (root / "m.csv").write_bytes(b"\n".join(lines) + b"\n")
    problems = _problems_of(root / "m.csv")
    assert (0, "frontal") in _kinds(problems) and (0, "lateral") in _kinds(problems)
    assert "duplicate column name" in str(problems[0]) and "(line 1)" in str(problems[0])


def test_load_strips_paths_and_raises_only_manifest_error_for_labels(tiny_manifest):
    root, df = tiny_manifest
    df.loc[0, "frontal"] = "  img/s0.png "
    df.to_csv(root / "m.csv", index=False)
    assert load_manifest(root / "m.csv").loc[0, "frontal"] == "img/s0.png"  # what was checked is what loads
    df.loc[1, "Edema"] = "maybe"
    df.to_csv(root / "m.csv", index=False)
    with pytest.raises(ManifestError) as e:
        load_manifest(root / "m.csv", validate=False)  # labels must become numbers, even unvalidated
    assert [(p.row, p.column) for p in e.value.problems] == [(2, "Edema")]


def test_paths_outside_the_folder_load_when_the_builder_declared_them(tmp_path):
    import json

    import numpy as np
    import pandas as pd
    from PIL import Image

    from medalign_lite.data.manifest import (
        ManifestError,
        check_manifest,
        empty_manifest_row,
        load_manifest,
    )

    (tmp_path / "orig").mkdir()
    (tmp_path / "out").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "orig" / "a.png")
    row = empty_manifest_row()
    row.update(study_id="s1", patient_id="p1", split="train", frontal="../orig/a.png", findings="x", view="PA",
               dataset="mimic-cxr")
    path = write_manifest(pd.DataFrame([row]), tmp_path / "out" / "manifest.csv", allow_absolute=True)
    assert "leaves the manifest's folder" in str(check_manifest(path)[0])  # nobody allowed it
    with pytest.raises(ManifestError):
        load_manifest(path)
    (tmp_path / "out" / "build_info.json").write_text(json.dumps({"paths_outside_folder": True}))
    assert check_manifest(path) == [] and len(load_manifest(path)) == 1
    assert check_manifest(path, allow_absolute=False)  # an explicit False still decides
    (tmp_path / "out" / "build_info.json").write_text("{not json")
    assert check_manifest(path)  # an unreadable build_info declares nothing
