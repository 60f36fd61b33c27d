"""Fuzzing the manifest reader and validator with broken copies of a valid manifest.

Random byte edits (bytes that are not UTF-8, NULs, quotes, commas, newlines), insertions,
deletions and truncations of the file, and dropped columns and duplicated rows of its table.
Whatever the file: :func:`check_manifest`, :func:`validate_manifest` and
``medalign data validate`` report problems and never raise; :func:`load_manifest` raises
:class:`ManifestError` exactly when problems are reported, and what it returns validates.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medalign_lite.cli import main
from medalign_lite.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    Problem,
    check_manifest,
    empty_manifest_row,
    load_manifest,
    read_manifest_csv,
    validate_manifest,
    write_manifest,
)
from medalign_lite.data.masks import save_masks


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(folder, valid DataFrame): phantom rows with masks, real-data rows, a multi-line report,
    a comma and a quote in a report, an extra column."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "img").mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(np.full((16, 16), 30 * i, np.uint8)).save(root / "img" / f"s{i}.png")
        row = empty_manifest_row()
        phantom = i < 3
        if phantom:
            save_masks(root / "img" / f"s{i}_masks.png", np.ones((1, 16, 16), bool))
        row.update(study_id=f"s{i}", patient_id=f"p{i // 2}", split=("train", "val", "test")[i // 2],
                   dataset="iu-phantom" if phantom else "mimic-cxr", view="PA", frontal=f"img/s{i}.png",
                   lateral=f"img/s{(i + 1) % 6}.png" if i % 2 else "", findings=f"Report {i}, \"quoted\".",
                   impression="Heart normal.\nLungs clear." if i == 2 else "No acute disease.",
                   masks=f"img/s{i}_masks.png" if phantom else "",
                   **{"Cardiomegaly": str(i % 2), "Edema": "-1", "No Finding": "1.0" if i == 4 else ""})
        row["extra_note"] = f"note {i}"
        rows.append(row)
    df = pd.DataFrame(rows)
    assert validate_manifest(df, root) == []
    return root, df


_BYTES = st.one_of(st.sampled_from(list(b'\xff\xc3\x80\x00",\n\r -1./')), st.integers(0, 255))
_EDIT = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4000), _BYTES),
    st.tuples(st.just("insert"), st.integers(0, 4000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 4000), st.integers(1, 60)),
    st.tuples(st.just("truncate"), st.integers(0, 4000), st.just(0)),
)


def _edit(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in edits:
        pos = pos % (len(b) + 1)
        if kind == "set" and b:
            b[min(pos, len(b) - 1)] = arg
        elif kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        elif kind == "truncate":
            del b[pos:]
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drop=st.one_of(st.just([]), st.lists(st.sampled_from([*MANIFEST_COLUMNS, "extra_note"]), min_size=1,
                                             max_size=3, unique=True)),
       dup=st.one_of(st.just([]), st.lists(st.integers(0, 5), min_size=1, max_size=3)),
       edits=st.one_of(st.just([]), st.lists(_EDIT, min_size=1, max_size=4)))
def test_broken_manifests_are_reported_never_raised(base, drop, dup, edits):
    root, df = base
    table = df.drop(columns=drop)
    table = pd.concat([table, table.iloc[dup]], ignore_index=True)
    assert all(isinstance(p, Problem) for p in validate_manifest(table, root))  # a DataFrame as given
    data = _edit(table.to_csv(index=False).encode(), edits)
    path = root / "manifest.csv"
    path.write_bytes(data)

    problems = check_manifest(path)
    assert all(isinstance(p, Problem) and str(p) for p in problems)
    try:
        read = read_manifest_csv(path)
    except ManifestError as e:
        assert e.problems
    else:
        assert all(isinstance(p, Problem) for p in validate_manifest(read, root))

    try:
        loaded = load_manifest(path)
    except ManifestError as e:
        assert e.problems == problems and problems
    else:
        assert problems == []
        assert validate_manifest(loaded, root) == []  # every row it returns validates
        assert len(loaded) >= 1

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["data", "validate", str(path)])
    assert rc == (1 if problems else 0), err.getvalue()
    assert "Traceback" not in err.getvalue()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(_EDIT, min_size=1, max_size=3))
def test_deep_check_of_broken_manifests_never_raises(base, edits):
    root, df = base
    path = root / "deep.csv"
    path.write_bytes(_edit(df.to_csv(index=False).encode(), edits))
    problems = check_manifest(path, deep=True, workers=1)
    try:
        load_manifest(path, deep=True, workers=1)
    except ManifestError as e:
        assert e.problems == problems
    else:
        assert problems == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30),
                      min_size=3, max_size=3),
       row=st.integers(0, 5))
def test_any_report_text_round_trips(base, texts, row):
    """Quotes, commas, NULs, line breaks and non-ASCII in the text columns load back as
    :func:`write_manifest` wrote them (a CR becomes a LF: pandas leaves a bare CR unquoted)."""
    root, df = base
    table = df.copy()
    columns = ["findings", "prior_report", "extra_note"]
    table.loc[row, columns] = texts
    path = root / "text.csv"
    if not texts[0].strip() and not table.loc[row, "impression"].strip():
        with pytest.raises(ManifestError) as e:
            write_manifest(table, path)
        assert [(p.row, p.column) for p in e.value.problems] == [(row + 1, "findings")]
        return
    write_manifest(table, path)
    assert check_manifest(path) == []
    written = [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts]
    assert load_manifest(path).loc[row, columns].tolist() == written
