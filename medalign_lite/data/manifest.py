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
its row (1-based, data rows) and column; image and mask paths must be relative and stay in
the manifest's folder (``allow_absolute=True`` for data on another disk), and name non-empty
files (``deep=True``: files that decode). :func:`check_manifest` does the same for a file,
reading it in one streaming pass of the csv module first, so that an empty file, a file
with only a header, bytes that are not UTF-8 and rows with too few or too many fields are
problems too, each with its CSV line (a quoted report can span lines). :func:`load_manifest`
raises one :class:`ManifestError` listing them, and no other exception for a bad file;
:func:`write_manifest` writes a temporary file and renames it, so a failed build never
leaves half a manifest.
"""
from __future__ import annotations

import csv
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

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
        DatasetSpec("iu-phantom-extra", True, True, "more IU-Phantom training studies, kind-balanced"),
        DatasetSpec("phantom-5x200", True, True, "5 classes x 200 phantom studies with written reports"),
        DatasetSpec("mimic-cxr", True, False, "MIMIC-CXR-JPG v2 with sectioned reports"),
        DatasetSpec("chexpert-5x200", False, False, "CheXpert 5x200 retrieval/zero-shot set (GLoRIA rule)"),
        DatasetSpec("iu-xray", True, False, "IU X-Ray with the user's real PNG images"),
        DatasetSpec("rsna", False, False, "RSNA Pneumonia Detection, patient-level labels"),
    )
}


@dataclass(frozen=True)
class Problem:
    """One validation problem.

    ``row`` is the 1-based data row (0: the header, or the whole file when ``column`` is
    ``""``); ``line`` the CSV line the row starts on, when the problem came from a file
    (a quoted report can span lines, so a row's line is not always ``row + 1``).
    """

    row: int
    column: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else ("header" if self.column else "file")
        column = f", column {self.column!r}" if self.column else ""
        line = f" (line {self.line})" if self.line else ""
        return f"{where}{column}{line}: {self.message}"


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


# --------------------------------------------------------------------------------------
# reading: one streaming pass of the csv module (structure problems with line and column)
# --------------------------------------------------------------------------------------

_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept as surrogates


@dataclass
class _Table:
    """A manifest file as read: every row as long as the header, and what was wrong."""

    header: list[str] | None  # None: no header (empty or unreadable file)
    rows: list[list[str]]
    lines: list[int]          # CSV line each data row starts on
    header_line: int
    problems: list[Problem]
    broken: set[int]          # rows whose fields do not line up with the header

    def frame(self) -> pd.DataFrame:
        header = self.header or []
        cols = list(zip(*self.rows)) if self.rows else [()] * len(header)
        return pd.DataFrame({name: list(col) for name, col in zip(header, cols)}, columns=header, dtype=str)

    def locate(self, problems: list[Problem]) -> list[Problem]:
        """``problems`` with the CSV line of their row filled in."""
        out = []
        for p in problems:
            if p.line is None and 0 < p.row <= len(self.lines):
                p = replace(p, line=self.lines[p.row - 1])
            elif p.line is None and p.row == 0 and p.column and self.header is not None:
                p = replace(p, line=self.header_line)
            out.append(p)
        return out


def _os_reason(e: OSError) -> str:
    if isinstance(e, IsADirectoryError):
        return "is a folder, not a manifest file"
    return e.strerror or str(e)


def _read_table(path: str | os.PathLike) -> _Table:
    """Read a manifest CSV with the csv module, streaming; never raises for the file's content.

    Reported as problems: a file that cannot be opened, an empty file, bytes that are not
    UTF-8 (their row, column and position; they read as U+FFFD), a duplicate column name, a
    row with fewer or more fields than the header, and lines the csv module rejects. Blank
    lines are skipped (as pandas does). A UTF-8 byte-order mark is allowed.
    """
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            return _scan(f)
    except OSError as e:  # cannot open (missing, a folder, no permission) or read
        return _Table(None, [], [], 0, [Problem(0, "", _os_reason(e))], set())


def _scan(f) -> _Table:
    problems: list[Problem] = []
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    broken: set[int] = set()
    header_line = 0
    line_no = 0
    undecoded: list[int] = []  # lines holding bytes that are not UTF-8

    def physical_lines():
        nonlocal line_no
        for text in f:
            line_no += 1
            if _UNDECODED.search(text):
                undecoded.append(line_no)
            yield text

    def fix_bytes(rec: list[str], row: int, line: int) -> None:
        for j, value in enumerate(rec):
            m = _UNDECODED.search(value)
            if m:
                name = header[j] if header is not None and j < len(header) else f"field {j + 1}"
                byte = ord(m.group()) - 0xDC00
                problems.append(Problem(row, _UNDECODED.sub("\ufffd", name),
                                        f"bytes that are not UTF-8 (0x{byte:02x} at character {m.start() + 1} "
                                        f"of the field)", line))
                rec[j] = _UNDECODED.sub("\ufffd", value)
        undecoded.clear()

    reader = csv.reader(physical_lines())
    while True:
        start = line_no + 1
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # the reader drops the record and goes on with the next line
            if header is None:
                problems.append(Problem(0, "", f"unreadable header: {e}", start))
                header, header_line = [], start
            else:
                rows.append([""] * len(header))
                lines.append(start)
                broken.add(len(rows))
                problems.append(Problem(len(rows), "", f"unreadable row: {e}", start))
            undecoded.clear()
            continue
        except OSError as e:
            problems.append(Problem(0, "", f"read failed after line {line_no}: {_os_reason(e)}"))
            break
        if not rec:
            continue  # a blank line
        if header is None:
            header, header_line = rec, start
            if undecoded:
                fix_bytes(header, 0, start)
            seen: dict[str, int] = {}
            for j, name in enumerate(header):
                if name in seen:
                    problems.append(Problem(0, name, f"duplicate column name (fields {seen[name] + 1} and {j + 1})",
                                            start))
                    k = 1
                    while f"{name}.{k}" in seen or f"{name}.{k}" in header:
                        k += 1
                    header[j] = f"{name}.{k}"
                seen.setdefault(header[j], j)
            continue
        rows.append(rec)
        lines.append(start)
        row = len(rows)
        if undecoded:
            fix_bytes(rec, row, start)
        n = len(header)
        if len(rec) != n and n:
            broken.add(row)
            if len(rec) < n:
                problems.append(Problem(row, header[len(rec)], (
                    f"{len(rec)} field(s), the header has {n}: the row ends after column "
                    f"{header[len(rec) - 1]!r}"), start))
                rec.extend([""] * (n - len(rec)))
            else:
                problems.append(Problem(row, header[-1], (
                    f"{len(rec)} fields, the header has {n}: {len(rec) - n} more after the last column"), start))
                del rec[n:]
    if header is None and not problems:
        problems.append(Problem(0, "", "empty file: no header and no rows"))
    return _Table(header, rows, lines, header_line, problems, broken)


def read_manifest_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV as strings, blanks kept as ``""`` (no NaN guessing).

    Raises :class:`ManifestError` when the file itself is wrong (cannot be read, empty,
    not UTF-8, rows with too few or too many fields); the rows' content is not validated.
    """
    table = _read_table(path)
    if table.problems or table.header is None:
        raise ManifestError(path, table.problems)
    return table.frame()


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------

_ABSOLUTE = re.compile(r"^(?:[\\/]|[A-Za-z]:[\\/])")  # POSIX, UNC, a Windows drive
PATH_COLUMNS: tuple[str, ...] = (*IMAGE_COLUMNS, "masks")
_DEEP_INLINE_FILES = 400  # fewer image files than this: no worker processes (their start costs more)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


class _Resolver:
    """Real paths of folders under one root, one ``lstat`` per distinct folder (cached)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)
        self.cache = {self.root: self.real_root}

    def folder(self, d: str) -> str:
        real = self.cache.get(d)
        if real is None:
            parent, name = os.path.split(d)
            if parent == d:
                return d
            full = os.path.join(self.folder(parent), name)
            try:
                link = stat.S_ISLNK(os.lstat(full).st_mode)
            except OSError:
                link = False
            real = os.path.realpath(full) if link else full
            self.cache[d] = real
        return real


def _check_paths(df: pd.DataFrame, root: str | os.PathLike | None, check_files: bool,
                 allow_absolute: bool) -> tuple[list[Problem], list[tuple[int, str, str]]]:
    """Path-form and file problems of the image and mask columns, and the files to open (row, column, path).

    A path must be relative and stay inside ``root`` once resolved (``..`` and symlinks
    included) unless ``allow_absolute``; with ``check_files`` it must name a non-empty
    regular file.
    """
    problems: list[Problem] = []
    files: list[tuple[int, str, str]] = []
    res = _Resolver(str(root) if root is not None else ".")
    hint = " (allow it with allow_absolute=True / --allow-absolute)"
    for c in PATH_COLUMNS:
        vals = df[c].str.strip().to_numpy()
        for i in np.flatnonzero(vals != ""):
            rel = vals[i]
            if "\x00" in rel:
                problems.append(Problem(i + 1, c, f"path {rel!r} holds a NUL character"))
                continue
            if _ABSOLUTE.match(rel) and not allow_absolute:
                problems.append(Problem(i + 1, c, f"absolute path {rel}: image paths are relative to the "
                                                  f"manifest's folder{hint}"))
                continue
            full = os.path.join(res.root, rel)  # an absolute rel stays itself, as in the dataset's root / rel
            if not allow_absolute:
                if not check_files:  # no look at the disk: the path's form only
                    real = os.path.normpath(full)
                    inside = _inside(real, res.root)
                elif ".." in rel.replace("\\", "/").split("/"):
                    real = os.path.realpath(full)
                    inside = _inside(real, res.real_root)
                else:  # the common case: one lstat per distinct folder
                    full = os.path.normpath(full)
                    real = os.path.join(res.folder(os.path.dirname(full)), os.path.basename(full))
                    inside = _inside(real, res.real_root)
                if not inside:
                    problems.append(Problem(i + 1, c, f"path {rel} leaves the manifest's folder (it resolves to "
                                                      f"{real}){hint}"))
                    continue
                full = real
            if not check_files:
                continue
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    if not allow_absolute:
                        real = os.path.realpath(full)
                        if not _inside(real, res.real_root):
                            problems.append(Problem(i + 1, c, f"path {rel} leaves the manifest's folder (a link "
                                                              f"to {real}){hint}"))
                            continue
                    st = os.stat(full)
            except FileNotFoundError:
                problems.append(Problem(i + 1, c, f"missing file {rel}"))
                continue
            except OSError as e:
                problems.append(Problem(i + 1, c, f"cannot read {rel}: {_os_reason(e)}"))
                continue
            if rel.endswith(("/", "\\")):
                problems.append(Problem(i + 1, c, f"{rel} ends with a slash: not a file's path"))
            elif stat.S_ISDIR(st.st_mode):
                problems.append(Problem(i + 1, c, f"{rel} is a folder, not an image file"))
            elif not stat.S_ISREG(st.st_mode):
                problems.append(Problem(i + 1, c, f"{rel} is not a regular file"))
            elif st.st_size == 0:
                problems.append(Problem(i + 1, c, f"empty file {rel} (0 bytes)"))
            else:
                files.append((i + 1, c, full))
    return problems, files


def _open_image(path: str) -> tuple[str, tuple[int, int], str]:
    """(format, (width, height), mode) of an image after checking that it decodes.

    PNG: every chunk is read and its checksum checked up to ``IEND`` (PIL's ``verify``: it
    catches truncation and flipped bytes, about 30 µs for a 224 px file, without
    decompressing); other formats are decoded (JPEG at 1/8 scale, which still reads every
    byte). DICOM needs pydicom: its header and pixel data element are read.
    """
    if path.lower().endswith(".dcm"):
        try:
            import pydicom
        except ImportError as e:
            raise OSError("reading DICOM needs pydicom (pip install pydicom)") from e
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise OSError("DICOM file without pixel data")
        return "DICOM", (int(ds.Columns), int(ds.Rows)), str(getattr(ds, "PhotometricInterpretation", ""))
    with Image.open(path) as im:
        fmt, size, mode = im.format or "?", im.size, im.mode
        if fmt == "PNG":
            im.verify()
        else:
            if fmt == "JPEG":
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    return fmt, size, mode


_MASK_MODES = ("I;16", "I;16B", "I;16L", "I")


def _deep_check_rows(rows: list[tuple[int, list[tuple[str, str, str]]]]) -> list[tuple[int, str, str]]:
    """Open every image and mask of some rows: ``[(row, [(column, path, shown), ...]), ...]``
    -> ``[(row, column, message), ...]`` (a worker-process function: plain tuples in and out)."""
    out = []
    for row, files in rows:
        sizes = {}
        for column, path, shown in files:
            try:
                fmt, size, mode = _open_image(path)
            except Exception as e:  # noqa: BLE001 - any decoder failure is the file's problem
                reason = "not an image Pillow can identify" if isinstance(e, UnidentifiedImageError) else str(e)
                what = "mask" if column == "masks" else "image"
                out.append((row, column, f"unreadable {what} {shown}: {reason or type(e).__name__}"))
                continue
            sizes[column] = size
            if column == "masks":
                if fmt != "PNG" or mode not in _MASK_MODES:
                    out.append((row, column, f"mask {shown} is a {fmt} of mode {mode}, not a 16-bit PNG (I;16)"))
                elif "frontal" in sizes and size != sizes["frontal"]:
                    (w, h), (fw, fh) = size, sizes["frontal"]
                    out.append((row, column, f"mask {shown} is {w}x{h}, the frontal image {fw}x{fh}"))
    return out


def _deep_check(files: list[tuple[int, str, str]], shown: dict[tuple[int, str], str],
                workers: int | None) -> list[Problem]:
    by_row: dict[int, list[tuple[str, str, str]]] = {}
    for row, column, path in files:
        by_row.setdefault(row, []).append((column, path, shown[(row, column)]))
    items = [(row, sorted(fs, key=lambda f: PATH_COLUMNS.index(f[0]))) for row, fs in sorted(by_row.items())]
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1 or len(files) < _DEEP_INLINE_FILES:
        found = _deep_check_rows(items)
    else:
        # the builders' pool: its workers exit when this process dies
        from .builders.common import worker_pool

        size = -(-len(items) // (workers * 8))  # 8 chunks a worker: balanced, few round trips
        chunks = [items[k:k + size] for k in range(0, len(items), size)]
        with worker_pool(min(workers, len(chunks))) as pool:
            found = [p for part in pool.map(_deep_check_rows, chunks) for p in part]  # in row order
    return [Problem(row, column, message) for row, column, message in found]


def _column_order(p: Problem) -> tuple[int, int]:
    return p.row, MANIFEST_COLUMNS.index(p.column) if p.column in MANIFEST_COLUMNS else len(MANIFEST_COLUMNS)


def validate_manifest(df: pd.DataFrame, root: str | os.PathLike | None = None,
                      check_files: bool = True, *, deep: bool = False, allow_absolute: bool = False,
                      workers: int | None = None) -> list[Problem]:
    """Check every row; return all problems (empty list when the manifest is valid).

    ``root`` is the folder image paths are relative to (the manifest's folder). Image and
    mask paths must be relative and stay inside it once resolved (``..`` and symlinks
    included); ``allow_absolute=True`` accepts absolute paths and paths leading out of it
    (a real dataset on another disk). With ``check_files`` each non-blank path must name a
    non-empty file; with ``deep`` too, every image and mask is opened and decoded (see
    :func:`_open_image`; masks must be 16-bit PNGs the size of the frontal image), in
    ``workers`` processes (default: the usable CPUs, at most 8; problems come back in row
    order whatever the number).
    """
    if deep and not check_files:
        raise ValueError("deep=True opens the files: it needs check_files=True")
    problems: list[Problem] = []
    columns = list(df.columns)
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    for c in missing:
        problems.append(Problem(0, c, "missing column"))
    for c in MANIFEST_COLUMNS:
        if columns.count(c) > 1:
            problems.append(Problem(0, c, f"column appears {columns.count(c)} times"))
    if len(df) == 0:
        problems.append(Problem(0, "", "no data rows (only a header)"))
    if problems:
        return problems
    df = df.astype(object).where(df.notna(), "").astype(str)  # NaN (a loaded blank label) -> ""
    rows = np.arange(1, len(df) + 1)

    def flag(bad, column: str, message) -> None:
        for r in rows[np.asarray(bad, dtype=bool)]:
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

    requires_text = df["dataset"].map(lambda d: DATASETS[d].requires_text if d in DATASETS else False).to_numpy(bool)
    no_text = ((df["findings"].str.strip() == "") & (df["impression"].str.strip() == "")).to_numpy(bool)
    flag(requires_text & no_text, "findings", "empty findings and impression")
    needs_mask = df["dataset"].map(lambda d: DATASETS[d].has_masks if d in DATASETS else False).to_numpy(bool)
    flag(needs_mask & (df["masks"].str.strip() == "").to_numpy(bool), "masks", "empty masks path for a phantom dataset")

    for c in LABEL_COLUMNS:
        flag(~df[c].str.strip().isin(_LABEL_VALUES).to_numpy(), c,
             lambda i, c=c: f"bad label value {df[c].iloc[i]!r} (expected 1, 0, -1 or blank)")

    flag((df["frontal"].str.strip() == "").to_numpy(), "frontal", "empty frontal image path")
    path_problems, files = _check_paths(df, root, check_files, allow_absolute)
    problems += path_problems
    if deep and files:
        shown = {(row, c): df[c].iloc[row - 1].strip() for row, c, _ in files}
        problems += _deep_check(files, shown, workers)
    problems.sort(key=_column_order)
    return problems


def _label_problems(df: pd.DataFrame) -> list[Problem]:
    out = []
    for c in LABEL_COLUMNS:
        if c in df.columns:
            bad = ~df[c].str.strip().isin(_LABEL_VALUES).to_numpy()
            out += [Problem(int(i) + 1, c, f"bad label value {df[c].iloc[i]!r} (expected 1, 0, -1 or blank)")
                    for i in np.flatnonzero(bad)]
    return out


def declared_outside(manifest: str | os.PathLike) -> bool:
    """Whether the builder of ``manifest`` declared that its image paths leave the folder (a
    real-data build without ``--size`` points at the originals): ``"paths_outside_folder": true``
    in the ``build_info.json`` beside it. An unreadable or absent file declares nothing."""
    import json

    info = Path(manifest).parent / "build_info.json"
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("paths_outside_folder") is True
    except (OSError, ValueError, AttributeError):
        return False


def _read_and_check(path: str | os.PathLike, validate: bool, check_files: bool, deep: bool,
                    allow_absolute: bool | None, workers: int | None) -> tuple[pd.DataFrame | None, list[Problem]]:
    if allow_absolute is None:
        allow_absolute = declared_outside(path)
    if deep and not check_files:
        raise ValueError("deep=True opens the files: it needs check_files=True")
    table = _read_table(path)
    if table.header is None:
        return None, table.problems
    df = table.frame()
    if validate:
        found = validate_manifest(df, Path(path).parent, check_files, deep=deep, allow_absolute=allow_absolute,
                                  workers=workers)
    else:
        found = _label_problems(df)  # labels still become numbers
    found = [p for p in found if p.row not in table.broken]  # a shifted row's contents mean nothing
    problems = sorted(table.problems + found, key=_column_order)
    return df, table.locate(problems)


def check_manifest(path: str | os.PathLike, check_files: bool = True, *, deep: bool = False,
                   allow_absolute: bool | None = None, workers: int | None = None) -> list[Problem]:
    """Every problem of the manifest file ``path`` (empty list when valid); never raises for the file.

    The file is read with :func:`read_manifest_csv`'s reader (structure problems: a file that
    cannot be opened, an empty file, bytes that are not UTF-8, rows with too few or too many
    fields, duplicate column names), then its rows are validated by :func:`validate_manifest`
    (same options). Every problem with a row carries its CSV line. What
    ``medalign data validate`` prints. ``allow_absolute=None`` (the default) allows paths
    outside the folder only when the builder declared them (:func:`declared_outside`).
    """
    return _read_and_check(path, True, check_files, deep, allow_absolute, workers)[1]


def load_manifest(path: str | os.PathLike, validate: bool = True, check_files: bool = True, *,
                  deep: bool = False, allow_absolute: bool | None = None, workers: int | None = None) -> pd.DataFrame:
    """Load a manifest; raise :class:`ManifestError` listing every problem when invalid.

    :class:`ManifestError` is the only exception for anything wrong with the file (missing,
    unreadable, empty, not UTF-8, ragged rows, bad contents); the options are those of
    :func:`validate_manifest`. With ``validate=False`` only the file's structure and the
    label values (they must become numbers) are checked. Label columns become floats
    (1.0 / 0.0 / -1.0, NaN for blank); every other column stays a string, image and mask
    paths stripped of surrounding blanks. ``df.attrs["root"]`` holds the manifest's folder.
    ``allow_absolute=None`` (the default): paths outside the folder only when the builder
    declared them in ``build_info.json`` (:func:`declared_outside`); True or False decides.
    """
    path = Path(path)
    df, problems = _read_and_check(path, validate, check_files, deep, allow_absolute, workers)
    if problems or df is None:
        raise ManifestError(path, problems)
    for c in PATH_COLUMNS:
        if c in df.columns:
            df[c] = df[c].str.strip()
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


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, validate: bool = True,
                   allow_absolute: bool = True) -> Path:
    """Write ``df`` (schema columns first, extras after) atomically to ``path``.

    With ``validate`` (the default) the rows are validated first — files relative to the
    destination folder — and nothing is written when any problem is found.
    ``allow_absolute`` is True here: a real-data builder that does not resize points at the
    originals (``../mimic/files/...``), which the user asked for with ``--root``; whoever
    loads such a manifest allows it again (``load_manifest(..., allow_absolute=True)``,
    ``medalign data validate --allow-absolute``).

    Line breaks inside a value are written as ``\n``: pandas does not quote a value with a
    bare ``\r`` in it, and a reader takes that ``\r`` for the end of the row.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # relative "../" image paths resolve from here
    df = df.copy()
    for c in MANIFEST_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    extras = [c for c in df.columns if c not in MANIFEST_COLUMNS]
    df = df[[*MANIFEST_COLUMNS, *extras]]
    df = df.astype(object).where(df.notna(), "").astype(str)
    for c in df.columns:
        if df[c].str.contains("\r", regex=False).any():
            df[c] = df[c].str.replace("\r\n", "\n", regex=False).str.replace("\r", "\n", regex=False)
    if validate:
        problems = validate_manifest(df, path.parent, allow_absolute=allow_absolute)
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
