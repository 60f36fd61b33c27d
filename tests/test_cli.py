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
    assert [ln.split()[0] for ln in capsys.readouterr().out.strip().splitlines()] == ["s2d"]
