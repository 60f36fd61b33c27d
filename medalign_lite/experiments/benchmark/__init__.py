"""Notebook 06's benchmark: every registered method on identical data, every task, one table.

- :mod:`.runs` — the plan (each method's config, its tutorial budget), one job (train a method at
  a seed, evaluate it on every task it can do);
- :mod:`.pool` — the data, the jobs, their order and dependencies, the whole run in a worker pool;
- :mod:`.results` — the results as tables, decided claims, ``metrics.json`` and the README's
  "Results on IU-Phantom" table.
"""
from .pool import JOB_SECONDS, prepare_data, run_benchmark
from .results import (
    CEILING,
    README_BEGIN,
    README_END,
    TABLE_COLUMNS,
    TASKS,
    BenchmarkResults,
    JobResult,
    format_cell,
    interval,
    paper_scale_notes,
    readme_table,
    table_rows,
    write_readme_table,
)
from .runs import (
    ENCODER_JOB,
    GENERATOR_RUNNERS,
    PROBE_FRACTIONS,
    REPORT_COLUMNS,
    SMOKE_DUAL_OVERRIDES,
    BenchmarkData,
    MethodPlan,
    ceiling_recipe,
    plan_methods,
    register_runner,
    run_job,
)

__all__ = ["CEILING", "ENCODER_JOB", "GENERATOR_RUNNERS", "JOB_SECONDS", "PROBE_FRACTIONS", "README_BEGIN", "README_END", "REPORT_COLUMNS",
           "SMOKE_DUAL_OVERRIDES", "TABLE_COLUMNS", "TASKS", "BenchmarkData", "BenchmarkResults", "JobResult",
           "MethodPlan", "ceiling_recipe", "format_cell", "interval", "paper_scale_notes", "plan_methods", "prepare_data", "readme_table",
           "register_runner", "run_benchmark", "run_job", "table_rows", "write_readme_table"]
