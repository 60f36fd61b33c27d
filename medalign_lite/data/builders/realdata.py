"""Pieces shared by the real-data builders (MIMIC-CXR, CheXpert 5x200, IU X-Ray, RSNA).

* :class:`LayoutError`: a missing root or file, with the expected path and the official
  layout in the message. :class:`SourceFileError`: a required file that is there but cannot
  be read (a corrupt ``.csv.gz``, a table without the columns the build needs); its message
  starts with the file's path. Both are raised before anything is written.
* :func:`read_csv_table`: ``pandas.read_csv`` of a required table, its failures as one
  :class:`SourceFileError`.
* :func:`image_refs`: image paths for the manifest, relative to the manifest folder. With
  ``size=None`` they point at the originals (``../mimic/files/...``); with ``size`` each
  image is written once as an 8-bit grayscale PNG under ``OUT/images/<size>/<key>.png``
  (short side ``size``, never enlarged, aspect kept) and a rebuild skips files already there
  and whole (:func:`~.common.png_complete`). PNGs are written under a temporary name and
  renamed, so an interrupted build never leaves a truncated image that a rebuild would trust.
  Resizing runs on threads (Pillow releases the GIL while decoding and resampling; JPEGs are
  decoded at reduced scale with ``draft``).
* **Unreadable images.** A source image that cannot be decoded (truncated, corrupt, empty, a
  DICOM without pixels) does not stop the build: :func:`image_refs` gives it the ref ``""``,
  as if it were missing, and returns its path and the reason; each builder drops or blanks it
  like a missing file, counts it and lists it in ``build_info.json`` (``unreadable_images``).
  With ``size=None`` nothing is decoded, so only empty (0-byte) files are caught there. A build
  none of whose images can be read fails with one :class:`SourceFileError`.
* :func:`label_strings`: CheXpert values (1 / 0 / -1 / NaN) as manifest strings, vectorised.
* :func:`write_build_info`: ``OUT/build_info.json`` (counts, pool sizes, sources, seed) next
  to the manifest, so what a build dropped or moved is recorded, not only printed.
"""
from __future__ import annotations

import json
import lzma
import os
import sys
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ...utils import atomic_path, atomic_write
from .common import png_complete, sweep_stale_temps


class LayoutError(FileNotFoundError):
    """A dataset root or one of its required files is missing."""


class SourceFileError(OSError, ValueError):
    """A required source file exists but cannot be used: unreadable, corrupt, or without the
    columns the build needs. The message starts with the file's path (one line for the CLI);
    it is both an ``OSError`` and a ``ValueError``, like :class:`io.UnsupportedOperation`."""


def reason(error: BaseException) -> str:
    """``"TypeName: message"`` of an exception, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_csv_table(path: str | os.PathLike, what: str, columns: Sequence[str] = (), **kwargs) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)`` of a required table (compression from the file name).

    Any failure to read it (a corrupt or truncated ``.gz`` / ``.zip``, bytes that are no CSV,
    an empty file) and any of ``columns`` missing is one :class:`SourceFileError`
    ``"<path>: cannot read <what> (<reason>)"``; a missing file stays a ``FileNotFoundError``.
    """
    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, lzma.LZMAError) as e:
        # gzip.BadGzipFile and bz2's errors are OSErrors; pandas' ParserError / EmptyDataError and
        # UnicodeDecodeError are ValueErrors; a .gz cut short is an EOFError
        raise SourceFileError(f"{path}: cannot read {what} ({reason(e)})") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SourceFileError(f"{path}: cannot read {what} (no column {', '.join(map(repr, missing))}; "
                              f"it has {', '.join(map(str, df.columns[:12]))})")
    return df


def require(path: str | os.PathLike | None, what: str, layout: str, is_dir: bool = False) -> Path:
    """``path`` as a Path; :class:`LayoutError` naming it and the expected layout when absent."""
    if path is None:
        raise LayoutError(f"{what}: no path given (pass root=...). Expected layout:\n{layout}")
    p = Path(path).expanduser()
    ok = p.is_dir() if is_dir else p.is_file()
    if not ok:
        raise LayoutError(f"{what} not found: {p}\nExpected layout:\n{layout}")
    return p


def find_table(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz`` (``name`` ends in ``.csv``), whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


_LABEL_STRINGS = {1.0: "1", 0.0: "0", -1.0: "-1"}


def label_strings(values: pd.Series) -> pd.Series:
    """1 / 0 / -1 / NaN (numbers or numeric strings) → ``"1" / "0" / "-1" / ""``."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.map(_LABEL_STRINGS).fillna("").astype(str)


def rel_prefix(root: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """POSIX path of ``root`` relative to ``out_dir`` (``""`` when they are the same folder)."""
    rel = Path(os.path.relpath(Path(root).resolve(), Path(out_dir).resolve())).as_posix()
    return "" if rel == "." else rel + "/"


def read_gray(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """An image as 8-bit grayscale (``L``); DICOM through pydicom (min-max scaled,
    MONOCHROME1 inverted); 16-bit PNGs are min-max scaled, not clipped. ``size`` lets JPEG
    decoding work at reduced scale (the result is at least ``size`` on its short side)."""
    path = str(path)
    if path.lower().endswith(".dcm"):
        try:
            import pydicom
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"reading DICOM ({path}) needs pydicom: pip install pydicom") from e
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float32)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            arr = arr.max() - arr
        return Image.fromarray(_to_uint8(arr))
    img = Image.open(path)
    if size is not None and img.format == "JPEG":
        img.draft("L", (size, size))
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img, dtype=np.float32)))
    return img.convert("L")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _resized_gray(src: str | os.PathLike, size: int) -> Image.Image:
    """``src`` decoded as grayscale, short side ``size`` (never enlarged)."""
    img = read_gray(src, size)
    w, h = img.size
    scale = size / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC,
                         reducing_gap=2.0)
    return img


def save_resized(src: str | os.PathLike, dst: str | os.PathLike, size: int) -> None:
    """Write ``src`` as a grayscale PNG whose short side is ``size`` (never enlarged)."""
    img = _resized_gray(src, size)
    with atomic_path(dst) as tmp:
        img.save(tmp, compress_level=1)


def convert_image(src: str | os.PathLike, dst: str | os.PathLike, size: int) -> str | None:
    """:func:`save_resized`, but a source that cannot be decoded is not written and its
    reason is returned (``None`` on success). Failures to *write* ``dst`` (a full disk) still
    raise: they are no property of the source."""
    empty = _empty_or_missing(Path(src))
    if empty is not None:
        return empty
    try:
        img = _resized_gray(src, size)
    except (ImportError, MemoryError):  # the environment, not the file
        raise
    except Exception as e:  # noqa: BLE001 - Pillow, pydicom and numpy raise many types for a bad file
        return reason(e)
    with atomic_path(dst) as tmp:
        img.save(tmp, compress_level=1)
    return None


def _empty_or_missing(path: Path) -> str | None:
    try:
        return None if path.stat().st_size > 0 else "empty file (0 bytes)"
    except OSError as e:
        return reason(e)


def image_refs(root: str | os.PathLike, subpaths: Sequence[str], keys: Sequence[str],
               out_dir: str | os.PathLike, size: int | None, progress: bool = True,
               workers: int | None = None, desc: str = "resize") -> tuple[list[str], dict[str, str]]:
    """(manifest paths of images ``root/subpath``, unreadable images: source path → reason).

    ``size=None``: the originals, relative to ``out_dir``; an empty (0-byte) file is
    unreadable. Otherwise resized PNG copies ``images/<size>/<key>.png`` (``key`` must
    identify the image within the dataset); only copies missing or not whole are written, and
    a source that cannot be decoded is unreadable. ``""`` stays ``""``, and an unreadable
    image's ref is ``""`` too. Raises :class:`SourceFileError` when no image can be read.
    """
    root = Path(root)
    unreadable: dict[str, str] = {}
    if size is None:
        prefix = rel_prefix(root, out_dir)
        unique = list(dict.fromkeys(s for s in subpaths if s))
        bad = set()
        for sub in unique:
            why = _empty_or_missing(root / sub)
            if why is not None:
                bad.add(sub)
                unreadable[str(root / sub)] = why
        _none_readable(root, unique, unreadable)
        return [f"{prefix}{s}" if s and s not in bad else "" for s in subpaths], unreadable
    size = int(size)
    folder = Path(out_dir) / "images" / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    todo, seen = [], set()
    for sub, key in zip(subpaths, keys):
        if sub and key not in seen:
            seen.add(key)
            dst = folder / f"{key}.png"
            if not png_complete(dst):
                todo.append((root / sub, dst, key))
    bad_keys = set()
    if todo:
        sweep_stale_temps(folder)  # left by a killed build
        workers = workers or min(8, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
        try:
            with ThreadPoolExecutor(workers) as pool:
                for (src, _, key), why in zip(todo, pool.map(lambda job: convert_image(job[0], job[1], size), todo)):
                    if why is not None:
                        bad_keys.add(key)
                        unreadable[str(src)] = why
                    bar.update(1)
        finally:
            bar.close()
    _none_readable(root, seen, unreadable)
    return [f"images/{size}/{key}.png" if sub and key not in bad_keys else "" for sub, key in zip(subpaths, keys)], \
        unreadable


def _none_readable(root: Path, images, unreadable: dict[str, str]) -> None:
    if images and len(unreadable) >= len(images):
        raise SourceFileError(f"{root}: none of the {len(images)} images can be read (e.g. {an_example(unreadable)})")


def an_example(unreadable: dict[str, str]) -> str:
    """``"path: reason"`` of the first unreadable file by path."""
    path, why = min(unreadable.items())
    return f"{path}: {why}"


def unreadable_entries(unreadable: dict[str, str]) -> list[dict[str, str]]:
    """``build_info.json``'s ``unreadable_images``: ``[{"path": ..., "reason": ...}]`` by path."""
    return [{"path": p, "reason": r} for p, r in sorted(unreadable.items())]


def warn_unreadable(name: str, unreadable: dict[str, str], what: str = "image file") -> None:
    """One line on stderr when files were skipped as unreadable."""
    if unreadable:
        print(f"{name}: {len(unreadable)} unreadable {what}(s) skipped, listed in build_info.json "
              f"(e.g. {an_example(unreadable)})", file=sys.stderr)


def file_names(folder: str | os.PathLike) -> set[str]:
    """Names of the files directly in ``folder`` (one ``scandir``; empty when it is missing)."""
    try:
        with os.scandir(folder) as it:
            return {entry.name for entry in it if entry.is_file()}
    except FileNotFoundError:
        return set()


def write_build_info(out_dir: str | os.PathLike, info: dict, paths_outside_folder: bool = False) -> Path:
    """Write ``OUT/build_info.json`` (atomically) and return its path.

    ``paths_outside_folder``: the manifest points at the original images on another disk (a
    build without ``--size``); recorded as ``"paths_outside_folder": true``, which
    :func:`~medalign_lite.data.manifest.load_manifest` and ``medalign data validate`` read as
    the builder's permission for paths that leave the manifest's folder (the ``allow_absolute``
    default of ``None``)."""
    info = {**info, "paths_outside_folder": bool(paths_outside_folder)}
    text = json.dumps(info, indent=2, default=str) + "\n"
    return atomic_write(Path(out_dir) / "build_info.json", lambda tmp: tmp.write_text(text))
