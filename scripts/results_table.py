#!/usr/bin/env python
"""Write the README's "Results on IU-Phantom" table from notebook 06's metrics.json.

    python scripts/results_table.py outputs/06_benchmark/metrics.json [--readme README.md] [--print]

The table goes between the README's results-table markers (``experiments.benchmark.README_BEGIN``
/ ``README_END``), with the date, machine and command of the run that produced the metrics; every
cell is a number of that metrics.json (``summary``), never typed by hand. ``--print`` writes the
table to stdout instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from medalign_lite.experiments.benchmark import readme_table, write_readme_table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path, help="notebook 06's metrics.json")
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    ap.add_argument("--print", action="store_true", help="print the table instead of writing the README")
    args = ap.parse_args(argv)
    try:
        metrics = json.loads(args.metrics.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"{args.metrics}: cannot read metrics ({e})", file=sys.stderr)
        return 2
    if "summary" not in metrics:
        print(f"{args.metrics}: no 'summary' (not notebook 06's metrics.json?)", file=sys.stderr)
        return 2
    if args.print:
        print(readme_table(metrics))
        return 0
    try:
        write_readme_table(args.readme, metrics)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote the results table of {args.metrics} into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
