"""The console entry points: label, bench, errors as one line."""
from __future__ import annotations

import pandas as pd

from medalign_lite.cli import main


def test_label_command_keeps_rows_and_columns(tmp_path, capsys):
    src = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2, 3], "report": ["No pleural effusion; small right pneumothorax.",
                                               "Heart size is normal. Lungs are clear.", ""]}).to_csv(src, index=False)
    assert main(["label", str(src), "--text-col", "report", "--out", str(tmp_path / "out.csv")]) == 0
    out = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert list(out["id"]) == ["1", "2", "3"] and len(out.columns) == 2 + 14
    assert (out.loc[0, "Pneumothorax"], out.loc[0, "Pleural Effusion"]) == ("1", "0")
    assert out.loc[1, "No Finding"] == "1" and out.loc[2, "No Finding"] == ""


def test_label_command_missing_column_is_one_line(tmp_path, capsys):
    src = tmp_path / "in.csv"
    pd.DataFrame({"id": [1]}).to_csv(src, index=False)
    assert main(["label", str(src), "--text-col", "report", "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "report" in err and str(src) in err
    assert not (tmp_path / "o.csv").exists()


def test_build_unknown_reports_root_use(tmp_path, capsys):
    assert main(["data", "build", "rsna", "--out", str(tmp_path), "--reports-root", "x"]) == 2
    assert "mimic-cxr only" in capsys.readouterr().err


def test_methods_command_lists_the_registry(capsys):
    from medalign_lite.cli import main
    from medalign_lite.methods import list_methods

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list_methods()
    assert any("s2d_tiny, s2d_full" in ln and "report_generator" in ln for ln in lines)
    assert main(["methods", "--kind", "report_generator"]) == 0
    generators = [ln.split()[0] for ln in capsys.readouterr().out.strip().splitlines()]
    assert {"s2d", "exgramed"} <= set(generators) and set(generators) == set(list_methods("report_generator"))


# --------------------------------------------------------------------------------------
# medalign data validate: exit 1 for problems, 2 for a bad command line; OSErrors as one line
# --------------------------------------------------------------------------------------

def test_validate_flags_and_exit_codes(tiny_manifest, capsys):
    import pytest

    root, df = tiny_manifest
    png = (root / "img" / "s1.png").read_bytes()
    (root / "img" / "cut.png").write_bytes(png[: len(png) // 2])
    df.loc[0, "frontal"] = "img/cut.png"
    df.to_csv(root / "m.csv", index=False)
    m = str(root / "m.csv")
    assert main(["data", "validate", m]) == 0                      # the plain check opens nothing
    assert main(["data", "validate", "--deep", "--workers", "2", m]) == 1
    err = capsys.readouterr().err
    assert "row 1, column 'frontal' (line 2): unreadable image img/cut.png" in err
    df.loc[0, "frontal"] = str(root / "img" / "s0.png")            # absolute
    df.to_csv(root / "m.csv", index=False)
    assert main(["data", "validate", m]) == 1
    assert "absolute path" in capsys.readouterr().err
    assert main(["data", "validate", "--allow-absolute", m]) == 0
    assert main(["data", "validate", "--deep", "--no-files", m]) == 2  # usage errors only are 2
    assert "--no-files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", "--workers", "0", m])
    assert e.value.code == 2
    assert main(["data", "validate", str(root / "nope.csv")]) == 1  # a missing manifest is a problem
    assert "nope.csv: 1 problem(s)" in capsys.readouterr().err


def test_os_error_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.csv"
    pd.DataFrame({"report": ["Lungs are clear."]}).to_csv(src, index=False)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out.csv"  # a folder that is a file
    assert main(["label", str(src), "--text-col", "report", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("medalign: error: ") and str(tmp_path / "afile") in err

    from medalign_lite.text import labeler

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/data/reports.csv")

    monkeypatch.setattr(labeler, "label_csv", denied)
    assert main(["label", str(src), "--text-col", "report", "--out", str(tmp_path / "o.csv")]) == 1
    assert capsys.readouterr().err.strip() == "medalign: error: /data/reports.csv: Permission denied"


def test_build_on_a_missing_root_names_it(tmp_path, capsys):
    assert main(["data", "build", "rsna", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(tmp_path / "nowhere") in err


def test_build_out_that_is_a_file_is_a_usage_error(tmp_path, capsys, monkeypatch):
    from medalign_lite.data import builders

    def never(name):
        raise AssertionError("a builder was looked up")

    monkeypatch.setattr(builders, "get_builder", never)
    f = tmp_path / "manifest.csv"
    f.write_text("keep me")
    for out in (f, f / "sub"):
        assert main(["data", "build", "iu-phantom", "--out", str(out), "--limit", "2", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("medalign: error: --out ") and "is a file" in err
    assert f.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_a_bad_manifest_inside_a_command_lists_its_problems(tmp_path, capsys, monkeypatch):
    from medalign_lite.data import builders
    from medalign_lite.data.manifest import ManifestError, Problem

    def build(out, **kwargs):
        raise ManifestError(f"{out}/manifest.csv", [Problem(3, "split", "unknown split 'x'", 4)])

    monkeypatch.setattr(builders, "get_builder", lambda name: build)
    assert main(["data", "build", "iu-phantom", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path / 'o'}/manifest.csv: 1 problem(s)", "  row 3, column 'split' (line 4): unknown split 'x'"]


def test_bench_all_prints_one_json_line_or_a_table(capsys, tiny_bench_all):
    """``medalign bench all --json``: stdout is exactly one JSON line with the asked methods'
    keys (shapes shrunk and the training-step profile replaced: tests/conftest.py)."""
    import json

    assert main(["bench", "all", "--device", "cpu", "--methods", "convirt,aga", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert list(res) == ["_meta", "convirt", "aga"] and res["_meta"]["methods"] == ["convirt", "aga"]
    assert res["aga"]["ratios"]["vs_gloria"] > 0 and res["aga"]["cost"]["trainable_params"] == 5
    assert main(["bench", "all", "--device", "cpu", "--methods", "aga"]) == 0
    out = capsys.readouterr().out
    assert "shapes tiny" in out and "vs_gloria" in out and out.count("\n") >= 4
    assert not out.lstrip().startswith("{")
