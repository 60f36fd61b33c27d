"""One manifest schema for every dataset: load, validate, write.

A manifest is a CSV with one row per *study*; image paths are relative to the manifest's
folder. The columns (documented in ``data_manifests/SCHEMA.md``):

=================  ===========================================================================
study_id           unique per manifest
patient_id         a patient's studies all sit in one split
split              ``train`` / ``val`` / ``test``
dataset            builder name (``iu-phantom``, ``mimic-cxr`` ...): selects the rules below
view               view position of the frontal image: ``PA`` / ``AP`` (blank if unknown)
frontal            frontal image (required)
lateral            lateral image (blank if absent)
prior_frontal      the previous study's frontal image (blank if absent)
prior_lateral      the previous study's lateral image (blank if absent)
findings           FINDINGS section text
impression         IMPRESSION section text
prior_report       the previous study's report (findings + impression)
<14 CheXpert>      ``1`` positive, ``0`` negative, ``-1`` uncertain, blank not mentioned
masks              phantom finding masks (16-bit PNG, bit k = finding k), blank for real data
=================  ===========================================================================

Further columns are dataset extras and are kept as they are.

:func:`validate_manifest` checks every row and returns *every* problem at once, each naming
its row (1-based, data rows; CSV line = row + 1) and column; :func:`load_manifest` raises one
:class:`ManifestError` listing them; :func:`write_manifest` writes a temporary file and
renames it, so a failed build never leaves half a manifest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic_path
from .findings import CHEXPERT_LABELS

IMAGE_COLUMNS: tuple[str, ...] = ("frontal", "lateral", "prior_frontal", "prior_lateral")
TEXT_COLUMNS: tuple[str, ...] = ("findings", "impression", "prior_report")
LABEL_COLUMNS: tuple[str, ...] = CHEXPERT_LABELS
MANIFEST_COLUMNS: tuple[str, ...] = (
    "study_id", "patient_id", "split", "dataset", "view",
    *IMAGE_COLUMNS, *TEXT_COLUMNS, *LABEL_COLUMNS, "masks",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
VIEWS: tuple[str, ...] = ("PA", "AP", "")
_LABEL_VALUES = {"1": "1", "1.0": "1", "0": "0", "0.0": "0", "-0.0": "0", "-1": "-1", "-1.0": "-1", "": ""}


@dataclass(frozen=True)
class DatasetSpec:
    """Per-dataset validation rules (mirrored by ``data_manifests/<name>.yaml``)."""

    name: str
    requires_text: bool      # every row needs findings or impression
    has_masks: bool = False  # every row has a phantom mask file
    description: str = ""


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("iu-phantom", True, True, "IU X-Ray reports + rendered phantoms (embedded default)"),
        DatasetSpec("phantom-5x200", True, True, "5 classes x 200 phantom studies with written reports"),
        DatasetSpec("mimic-cxr", True, False, "MIMIC-CXR-JPG v2 with sectioned reports"),
        DatasetSpec("chexpert-5x200", False, False, "CheXpert 5x200 retrieval/zero-shot set (GLoRIA rule)"),
        DatasetSpec("iu-xray", True, False, "IU X-Ray with the user's real PNG images"),
        DatasetSpec("rsna", False, False, "RSNA Pneumonia Detection, patient-level labels"),
    )
}


@dataclass(frozen=True)
class Problem:
    """One validation problem. ``row`` is the 1-based data row (0: the whole file)."""

    row: int
    column: str
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else "header"
        return f"{where}, column {self.column!r}: {self.message}"


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` lists every problem found."""

    def __init__(self, path: str | os.PathLike, problems: list[Problem], limit: int = 50):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {len(problems)} problem(s)"]
        lines += [f"  {p}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  ... and {len(problems) - limit} more")
        super().__init__("\n".join(lines))


def read_manifest_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV as strings, blanks kept as ``""`` (no NaN guessing)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])


def validate_manifest(df: pd.DataFrame, root: str | os.PathLike | None = None,
                      check_files: bool = True) -> list[Problem]:
    """Check every row; return all problems (empty list when the manifest is valid).

    ``root`` is the folder image paths are relative to (the manifest's folder); with
    ``check_files`` each non-blank image and mask path must exist there.
    """
    problems: list[Problem] = []
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    for c in missing:
        problems.append(Problem(0, c, "missing column"))
    if missing:
        return problems
    df = df.astype(str).replace({"nan": ""})
    rows = np.arange(1, len(df) + 1)

    def flag(bad: np.ndarray, column: str, message) -> None:
        for r in rows[bad]:
            msg = message(r - 1) if callable(message) else message
            problems.append(Problem(int(r), column, msg))

    sid = df["study_id"].str.strip()
    flag((sid == "").to_numpy(), "study_id", "empty study id")
    dup = (sid.duplicated(keep=False) & (sid != "")).to_numpy()
    first_row = {s: i + 1 for i, s in reversed(list(enumerate(sid)))}
    flag(dup, "study_id", lambda i: f"duplicate study id {sid.iloc[i]!r} (first at row {first_row[sid.iloc[i]]})")
    flag((df["patient_id"].str.strip() == "").to_numpy(), "patient_id", "empty patient id")
    flag(~df["split"].isin(SPLITS).to_numpy(), "split",
         lambda i: f"unknown split {df['split'].iloc[i]!r} (expected one of {', '.join(SPLITS)})")
    flag(~df["view"].isin(VIEWS).to_numpy(), "view",
         lambda i: f"unknown view {df['view'].iloc[i]!r} (expected PA, AP or blank)")
    known = df["dataset"].isin(DATASETS).to_numpy()
    flag(~known, "dataset", lambda i: f"unknown dataset {df['dataset'].iloc[i]!r} (known: {', '.join(DATASETS)})")

    # a patient in two splits: report every row of such a patient that is not in its first split
    valid_split = df["split"].isin(SPLITS)
    first_split = df[valid_split].groupby("patient_id", sort=False)["split"].first()
    n_splits = df[valid_split].groupby("patient_id", sort=False)["split"].nunique()
    leaky = n_splits[n_splits > 1].index
    bad = (df["patient_id"].isin(leaky) & valid_split
           & (df["split"] != df["patient_id"].map(first_split))).to_numpy()
    flag(bad, "split", lambda i: (f"patient {df['patient_id'].iloc[i]!r} is in split "
                                  f"{df['split'].iloc[i]!r} and in {first_split[df['patient_id'].iloc[i]]!r}"))

    requires_text = df["dataset"].map(lambda d: DATASETS[d].requires_text if d in DATASETS else False)
    no_text = (df["findings"].str.strip() == "") & (df["impression"].str.strip() == "")
    flag((requires_text & no_text).to_numpy(), "findings", "empty findings and impression")
    needs_mask = df["dataset"].map(lambda d: DATASETS[d].has_masks if d in DATASETS else False)
    flag((needs_mask & (df["masks"].str.strip() == "")).to_numpy(), "masks", "empty masks path for a phantom dataset")

    for c in LABEL_COLUMNS:
        flag(~df[c].str.strip().isin(_LABEL_VALUES).to_numpy(), c,
             lambda i, c=c: f"bad label value {df[c].iloc[i]!r} (expected 1, 0, -1 or blank)")

    flag((df["frontal"].str.strip() == "").to_numpy(), "frontal", "empty frontal image path")
    if check_files:
        base = Path(root) if root is not None else Path(".")
        for c in (*IMAGE_COLUMNS, "masks"):
            vals = df[c].str.strip()
            for i in np.flatnonzero((vals != "").to_numpy()):
                if not (base / vals.iloc[i]).is_file():
                    problems.append(Problem(i + 1, c, f"missing file {vals.iloc[i]}"))
    problems.sort(key=lambda p: (p.row, MANIFEST_COLUMNS.index(p.column) if p.column in MANIFEST_COLUMNS else 99))
    return problems


def load_manifest(path: str | os.PathLike, validate: bool = True, check_files: bool = True) -> pd.DataFrame:
    """Load a manifest; raise :class:`ManifestError` listing every problem when invalid.

    Label columns become floats (1.0 / 0.0 / -1.0, NaN for blank); every other column stays
    a string. ``df.attrs["root"]`` holds the manifest's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    df = read_manifest_csv(path)
    if validate:
        problems = validate_manifest(df, path.parent, check_files=check_files)
        if problems:
            raise ManifestError(path, problems)
    for c in LABEL_COLUMNS:
        if c in df.columns:
            df[c] = pd.to_numeric(df[c].str.strip().map(lambda v: _LABEL_VALUES.get(v, v)).replace("", np.nan))
    df.attrs["root"] = str(path.parent.resolve())
    return df


def resolve(df: pd.DataFrame, column: str) -> list[str | None]:
    """Absolute paths of an image column (``None`` where blank)."""
    root = Path(df.attrs.get("root", "."))
    return [str(root / v) if isinstance(v, str) and v else None for v in df[column]]


def empty_manifest_row() -> dict[str, str]:
    return {c: "" for c in MANIFEST_COLUMNS}


def format_labels(labels: dict[str, float | int | None]) -> dict[str, str]:
    """CheXpert values (1 / 0 / -1 / None / NaN) as manifest strings."""
    out = {}
    for c in LABEL_COLUMNS:
        v = labels.get(c)
        out[c] = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(int(v))
    return out


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, validate: bool = True) -> Path:
    """Write ``df`` (schema columns first, extras after) atomically to ``path``.

    With ``validate`` (the default) the rows are validated first — files relative to the
    destination folder — and nothing is written when any problem is found.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # relative "../" image paths resolve from here
    df = df.copy()
    for c in MANIFEST_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    extras = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    df = df[[*MANIFEST_COLUMNS, *extras]].fillna("").astype(str)
    if validate:
        problems = validate_manifest(df, path.parent)
        if problems:
            raise ManifestError(path, problems)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def split_patients(patient_ids, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """Seeded patient-disjoint split: patient id -> ``train`` / ``val`` / ``test``.

    Patients are sorted before shuffling, so the result depends only on the set of ids and
    the seed, never on row order.
    """
    ids = np.array(sorted(set(map(str, patient_ids))))
    rng = np.random.default_rng(seed)
    ids = ids[rng.permutation(len(ids))]
    cuts = np.round(np.cumsum(fractions) / np.sum(fractions) * len(ids)).astype(int)
    out: dict[str, str] = {}
    start = 0
    for name, stop in zip(SPLITS, cuts):
        out.update({p: name for p in ids[start:stop]})
        start = stop
    return out
