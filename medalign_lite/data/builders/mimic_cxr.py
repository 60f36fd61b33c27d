"""MIMIC-CXR-JPG v2 → manifest (one row per study, with the subject's prior study).

Expected layout (PhysioNet, credentialed access; nothing is downloaded here)::

    ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition,
                                             StudyDate, StudyTime, ...
    ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split
    ROOT/mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, 14 CheXpert labels
    ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg
    ROOT/files/p10/p10000032/s50414267.txt   report (MIMIC-CXR v2.0.0 ``mimic-cxr-reports.zip``
                                             extracted into ROOT) — or ``reports_root=``:
                                             a folder with the same ``files/pXX/pID/sID.txt``
                                             tree (or that ``files`` folder itself), or the
                                             ``mimic-cxr-reports.zip`` file, read in place.

Rows and choices:

* **Images.** Frontal = a ``PA`` image if the study has one, else ``AP`` (the first by
  ``dicom_id`` when there are several; ``view`` says which). Lateral = the first ``LATERAL``
  / ``LL`` image by ``dicom_id``. Studies without a PA/AP image are dropped and counted;
  with a partial download, studies whose frontal JPEG is missing are dropped and counted and
  a missing lateral / prior image is left blank (counted). An image that is there but cannot
  be read (truncated, corrupt, empty; decoded only when ``size`` is given) is treated the same
  way, counted apart and listed with its reason in ``build_info.json``. A metadata table that
  cannot be read (a corrupt ``.csv.gz``) stops the build before it writes anything, with one
  :class:`~.realdata.SourceFileError` naming the file.
* **Prior study** (ALTA's temporal input, research note §1.4): the subject's previous study
  in the metadata by (``StudyDate``, ``StudyTime``, ``study_id``), whether or not that study
  itself makes a row; ``prior_frontal`` / ``prior_lateral`` are its images (blank when it
  has none) and ``prior_report`` its findings + impression.
* **Text** from :func:`~medalign_lite.data.sections.section_report`. When a report has no
  findings and no impression, its ``last_paragraph`` is used as the impression (MIT-LCP's
  fallback; ``use_last_paragraph=False`` turns that off, as in MGCA). Studies left with
  neither section are dropped and counted; a missing report file counts as empty, and so does
  one that cannot be read (listed in ``build_info.json``'s ``unreadable_reports``).
* **Labels** from ``-chexpert.csv`` (1 / 0 / -1 / blank), joined on the integer study id.
* **Split.** The official split, ``validate`` → ``val`` and ``test`` kept apart (MGCA merges
  them; we never do). The official split is assigned per study; if a subject has studies in
  two splits, every study of that subject goes to the subject's majority split (ties: test,
  then val, then train, so evaluation sets do not shrink), the manifest stays
  patient-disjoint as the validator requires, and the number of moved studies is printed
  and recorded (the original is kept in the ``official_split`` column).
* Extras: ``dicom_id`` (frontal), ``study_date``, ``prior_study_id``, ``official_split``.
* ``limit=N`` keeps the first N studies in (subject, date) order — whole patient histories,
  so priors stay inside the subset.

:func:`study_table` does all the metadata work with pandas (no per-row loops); only reading
and sectioning the report files is a per-study loop.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..findings import CHEXPERT_LABELS
from ..manifest import write_manifest
from ..sections import normalise_whitespace, section_report
from .realdata import (
    LayoutError,
    SourceFileError,
    an_example,
    find_table,
    image_refs,
    label_strings,
    read_csv_table,
    reason,
    require,
    unreadable_entries,
    warn_unreadable,
    write_build_info,
)

NAME = "mimic-cxr"
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL")
IMAGE_SLOTS = ("frontal", "lateral", "prior_frontal", "prior_lateral")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_TIE_ORDER = ("test", "val", "train")  # a subject split evenly goes to the first of these
LAYOUT = """\
  ROOT/mimic-cxr-2.0.0-metadata.csv.gz   (or .csv)
  ROOT/mimic-cxr-2.0.0-split.csv.gz
  ROOT/mimic-cxr-2.0.0-chexpert.csv.gz
  ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg      (MIMIC-CXR-JPG v2.0.0)
  ROOT/files/p10/p10000032/s50414267.txt                 (MIMIC-CXR v2.0.0 reports; or reports_root=)"""


def read_tables(root: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(metadata, split, chexpert) tables of a MIMIC-CXR-JPG root."""
    root = require(root, "MIMIC-CXR-JPG root", LAYOUT, is_dir=True)
    paths = {}
    for name in (METADATA, SPLIT, CHEXPERT):
        paths[name] = find_table(root, name)
        if paths[name] is None:
            raise LayoutError(f"{root / name}(.gz) not found (MIMIC-CXR-JPG v2.0.0). Expected layout:\n{LAYOUT}")
    ids = {"subject_id": "int64", "study_id": "int64"}
    md = read_csv_table(paths[METADATA], "the MIMIC-CXR-JPG metadata table",
                        dtype={"dicom_id": str, "ViewPosition": str, **ids},
                        usecols=["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"])
    sp = read_csv_table(paths[SPLIT], "the MIMIC-CXR-JPG split table", columns=("study_id", "split"),
                        dtype={"dicom_id": str, "split": str, **ids})
    cx = read_csv_table(paths[CHEXPERT], "the MIMIC-CXR-JPG CheXpert label table", columns=("study_id",), dtype=ids)
    return md, sp, cx


def study_table(metadata: pd.DataFrame, split: pd.DataFrame, chexpert: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per study (all studies of the metadata), vectorised.

    Columns: ``subject_id``, ``study_id``, ``StudyDate``, ``StudyTime``, ``frontal_dicom``,
    ``view``, ``lateral_dicom`` (``""`` when absent), ``prior_study_id`` (``-1`` for a first
    study), ``prior_frontal_dicom``, ``prior_lateral_dicom``, ``official_split`` and ``split``
    (after the majority fix; ``""`` for studies absent from the split table), ``moved``, and
    the 14 CheXpert label strings. Sorted by (subject, date, time, study id).
    """
    md = metadata[["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"]].copy()
    md["ViewPosition"] = md["ViewPosition"].fillna("").astype(str).str.strip().str.upper()

    fr = md[md["ViewPosition"].isin(FRONTAL_VIEWS)].assign(_rank=lambda d: (d["ViewPosition"] != "PA").astype(int))
    fr = fr.sort_values(["study_id", "_rank", "dicom_id"]).drop_duplicates("study_id")
    fr = fr.set_index("study_id")[["dicom_id", "ViewPosition"]].rename(
        columns={"dicom_id": "frontal_dicom", "ViewPosition": "view"})
    la = md[md["ViewPosition"].isin(LATERAL_VIEWS)].sort_values(["study_id", "dicom_id"]).drop_duplicates("study_id")
    la = la.set_index("study_id")[["dicom_id"]].rename(columns={"dicom_id": "lateral_dicom"})

    st = (md.sort_values(["study_id", "StudyDate", "StudyTime"]).drop_duplicates("study_id")
          [["subject_id", "study_id", "StudyDate", "StudyTime"]])
    st = st.join(fr, on="study_id").join(la, on="study_id")
    for c in ("frontal_dicom", "view", "lateral_dicom"):
        st[c] = st[c].fillna("")
    st = st.sort_values(["subject_id", "StudyDate", "StudyTime", "study_id"], ignore_index=True)

    prior = st.groupby("subject_id", sort=False)["study_id"].shift(1)
    st["prior_study_id"] = prior.fillna(-1).astype("int64")
    has_prior = st["prior_study_id"].to_numpy() >= 0
    prev = np.r_[0, np.arange(len(st) - 1)]  # the row before (same subject where has_prior)
    for c in ("frontal_dicom", "lateral_dicom"):
        vals = st[c].to_numpy(dtype=object)
        st[f"prior_{c}"] = np.where(has_prior, vals[prev], "")

    sp = split[["study_id", "split"]].drop_duplicates("study_id").set_index("study_id")["split"]
    st["official_split"] = st["study_id"].map(sp).fillna("").map(lambda s: SPLIT_NAMES.get(str(s).strip(), ""))
    st["split"] = _majority_split(st)
    st["moved"] = (st["split"] != st["official_split"]) & (st["official_split"] != "")

    labels = pd.DataFrame(index=st.index)
    if chexpert is not None:
        cx = chexpert.drop_duplicates("study_id").set_index("study_id")
        for c in CHEXPERT_LABELS:
            labels[c] = label_strings(st["study_id"].map(cx[c])) if c in cx.columns else ""
    else:
        for c in CHEXPERT_LABELS:
            labels[c] = ""
    return pd.concat([st, labels], axis=1)


def _majority_split(st: pd.DataFrame) -> pd.Series:
    """Every study of a subject in the subject's majority split (ties: test, val, train)."""
    known = st[st["official_split"] != ""]
    counts = known.groupby(["subject_id", "official_split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(_TIE_ORDER), fill_value=0)
    # a tiny bonus per column position breaks ties in _TIE_ORDER without changing majorities
    score = counts.to_numpy() * 4 + np.array([2, 1, 0])
    choice = pd.Series(np.array(_TIE_ORDER)[score.argmax(axis=1)], index=counts.index)
    return st["subject_id"].map(choice).where(st["official_split"] != "", "").fillna("")


class _Reports:
    """Report text by (subject, study) from a folder tree or ``mimic-cxr-reports.zip``."""

    def __init__(self, source: Path):
        self.source = source
        self.zip = None
        self.unreadable: dict[str, str] = {}  # report path -> reason
        if source.is_file():
            try:
                self.zip = zipfile.ZipFile(source)
            except (OSError, zipfile.BadZipFile) as e:
                raise SourceFileError(f"{source}: cannot read the MIMIC-CXR reports archive ({reason(e)}); "
                                      f"expected mimic-cxr-reports.zip or a folder") from e
            self.members = {"/".join(n.split("/")[-3:]): n for n in self.zip.namelist() if n.endswith(".txt")}
        else:  # ROOT (holding files/) or the files/ folder itself
            self.base = source if source.name == "files" and not (source / "files").is_dir() else source / "files"

    def relpath(self, subject: int, study: int) -> str:
        s = str(subject)
        return f"p{s[:2]}/p{s}/s{study}.txt"

    def read(self, subject: int, study: int) -> str | None:
        """The report's text; ``None`` when it is missing or cannot be read (then recorded in
        ``unreadable``)."""
        rel = self.relpath(subject, study)
        if self.zip is not None:
            name = self.members.get(rel)
            if name is None:
                return None
            try:
                return self.zip.read(name).decode("utf-8", errors="replace")
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a damaged member (bad CRC)
                self.unreadable[f"{self.source}:{name}"] = reason(e)
                return None
        try:
            return (self.base / rel).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:  # unreadable (permissions, an I/O error)
            self.unreadable[str(self.base / rel)] = reason(e)
            return None


def _image_subpath(subject: pd.Series, study: pd.Series, dicom: pd.Series) -> pd.Series:
    s = subject.astype(str)
    path = "files/p" + s.str[:2] + "/p" + s + "/s" + study.astype(str) + "/" + dicom + ".jpg"
    return path.where(dicom != "", "")


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, reports_root=None,
          use_last_paragraph: bool = True, workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for MIMIC-CXR-JPG (see the module docstring).

    ``seed`` is unused (the official split is kept); it is accepted for a uniform builder API.
    """
    del seed
    out_dir = Path(out_dir)
    md, sp, cx = read_tables(root)
    root = Path(root).expanduser()
    reports = _Reports(Path(reports_root).expanduser() if reports_root is not None else root)
    if reports_root is not None and not Path(reports_root).expanduser().exists():
        raise LayoutError(f"reports_root not found: {reports_root}\nExpected layout:\n{LAYOUT}")

    st = study_table(md, sp, cx)
    info: dict = {"dataset": NAME, "root": str(root), "reports_root": str(reports_root or root),
                  "studies_in_metadata": len(st)}
    rows = st[(st["frontal_dicom"] != "") & (st["split"] != "")]
    info["dropped_no_frontal"] = int((st["frontal_dicom"] == "").sum())
    info["dropped_not_in_split_table"] = int(((st["frontal_dicom"] != "") & (st["split"] == "")).sum())
    if limit is not None:
        rows = rows.iloc[: int(limit)]
    info["moved_to_majority_split"] = int(rows["moved"].sum())

    # images that exist on disk (partial downloads are common): frontal required
    for c in IMAGE_SLOTS:
        study = rows["prior_study_id"] if c.startswith("prior") else rows["study_id"]
        rows = rows.assign(**{f"_{c}": _image_subpath(rows["subject_id"], study, rows[f"{c}_dicom"])})
    exists = {}
    paths = pd.unique(rows[[f"_{c}" for c in IMAGE_SLOTS]].to_numpy().ravel())
    base = str(root)
    for p in tqdm(paths, desc="check images", unit="img", disable=not progress):
        if p:
            exists[p] = os.path.isfile(f"{base}/{p}")
    ok_frontal = rows["_frontal"].map(exists).astype(bool)
    info["dropped_frontal_file_missing"] = int((~ok_frontal).sum())
    rows = rows[ok_frontal].copy()
    blanked = 0
    for c in ("_lateral", "_prior_frontal", "_prior_lateral"):
        missing = (rows[c] != "") & ~rows[c].map(exists).fillna(False).astype(bool)
        blanked += int(missing.sum())
        rows.loc[missing, c] = ""
    info["blanked_missing_image_files"] = blanked
    if rows.empty:
        raise LayoutError(f"no study with a frontal JPEG found under {root / 'files'}\nExpected layout:\n{LAYOUT}")

    # reports: the rows' own and their priors'
    need = pd.concat([rows[["subject_id", "study_id"]],
                      rows.loc[rows["prior_study_id"] >= 0, ["subject_id", "prior_study_id"]]
                      .rename(columns={"prior_study_id": "study_id"})]).drop_duplicates("study_id")
    text: dict[int, tuple[str, str]] = {}
    missing_reports = 0
    for subject, study in tqdm(zip(need["subject_id"].tolist(), need["study_id"].tolist()), total=len(need),
                               desc="section reports", unit="report", disable=not progress):
        raw = reports.read(subject, study)
        if raw is None:
            missing_reports += 1
            text[study] = ("", "")
            continue
        sec = section_report(raw)
        impression = sec["impression"] or (sec["last_paragraph"] if use_last_paragraph and not sec["findings"] else "")
        text[study] = (sec["findings"], impression)
    if missing_reports == len(need):
        where = reports.source
        raise LayoutError(f"no report text found (looked for {where}/files/{reports.relpath(*need.iloc[0])} ...); "
                          f"pass reports_root= (the MIMIC-CXR reports tree or mimic-cxr-reports.zip).\n"
                          f"Expected layout:\n{LAYOUT}")
    info["missing_report_files"] = missing_reports

    findings = rows["study_id"].map(lambda s: text[s][0])
    impression = rows["study_id"].map(lambda s: text[s][1])
    empty = (findings == "") & (impression == "")
    info["dropped_empty_report"] = int(empty.sum())
    prior_report = rows["prior_study_id"].map(
        lambda s: normalise_whitespace(" ".join(text[s])) if s >= 0 else "")
    keep = ~empty.to_numpy()
    rows, findings, impression, prior_report = rows[keep], findings[keep], impression[keep], prior_report[keep]

    flat_subs = pd.concat([rows[f"_{c}"] for c in IMAGE_SLOTS]).tolist()
    flat_keys = pd.concat([rows[f"{c}_dicom"] for c in IMAGE_SLOTS]).tolist()
    refs, unreadable = image_refs(root, flat_subs, flat_keys, out_dir, size, progress=progress, workers=workers,
                                  desc="resize mimic-cxr")
    # an unreadable image counts like a missing one: no frontal, no row; else the slot is blank
    n = len(rows)
    slot_refs = {c: np.array(refs[i * n:(i + 1) * n], dtype=object) for i, c in enumerate(IMAGE_SLOTS)}
    lost = {c: (rows[f"_{c}"].to_numpy() != "") & (slot_refs[c] == "") for c in IMAGE_SLOTS}
    keep = ~lost["frontal"]
    info["dropped_frontal_file_unreadable"] = int((~keep).sum())
    info["blanked_unreadable_image_files"] = int(sum(lost[c][keep].sum() for c in IMAGE_SLOTS[1:]))
    info["unreadable_images"] = unreadable_entries(unreadable)
    info["unreadable_reports"] = unreadable_entries(reports.unreadable)
    if not keep.any():
        raise SourceFileError(f"{root / 'files'}: no study left with a readable frontal JPEG "
                              f"({len(unreadable)} unreadable images, e.g. {an_example(unreadable)})")
    rows, findings, impression, prior_report = rows[keep], findings[keep], impression[keep], prior_report[keep]
    slot_refs = {c: v[keep] for c, v in slot_refs.items()}
    n = len(rows)
    out = pd.DataFrame({
        "study_id": rows["study_id"].astype(str).to_numpy(),
        "patient_id": rows["subject_id"].astype(str).to_numpy(),
        "split": rows["split"].to_numpy(),
        "dataset": NAME,
        "view": rows["view"].to_numpy(),
        **slot_refs,
        "findings": findings.to_numpy(), "impression": impression.to_numpy(),
        "prior_report": prior_report.to_numpy(),
        **{c: rows[c].to_numpy() for c in CHEXPERT_LABELS},
        "masks": "",
        "dicom_id": rows["frontal_dicom"].to_numpy(),
        "study_date": rows["StudyDate"].astype(str).to_numpy(),
        "prior_study_id": np.where(rows["prior_study_id"] >= 0, rows["prior_study_id"].astype(str), ""),
        "official_split": rows["official_split"].to_numpy(),
    })
    info["rows"] = len(out)
    info["splits"] = {k: int(v) for k, v in out["split"].value_counts().items()}
    out_dir.mkdir(parents=True, exist_ok=True)  # relative paths are validated from here
    path = write_manifest(out, out_dir / "manifest.csv")
    write_build_info(out_dir, info, paths_outside_folder=size is None)
    _report(info)
    warn_unreadable(NAME, unreadable)
    warn_unreadable(NAME, reports.unreadable, "report file")
    return path


def _report(info: dict) -> None:
    print(f"mimic-cxr: {info['rows']} studies {info['splits']}; dropped: "
          f"{info['dropped_no_frontal']} without PA/AP image, {info['dropped_frontal_file_missing']} with the "
          f"frontal JPEG missing, {info['dropped_frontal_file_unreadable']} with it unreadable, "
          f"{info['dropped_empty_report']} with empty findings and impression "
          f"({info['missing_report_files']} report files missing); "
          f"{info['moved_to_majority_split']} studies moved to their subject's majority split")
