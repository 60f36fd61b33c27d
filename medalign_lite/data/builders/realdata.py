"""Pieces shared by the real-data builders (MIMIC-CXR, CheXpert 5x200, IU X-Ray, RSNA).

* :class:`LayoutError`: a missing root or file, with the expected path and the official
  layout in the message.
* :func:`image_refs`: image paths for the manifest, relative to the manifest folder. With
  ``size=None`` they point at the originals (``../mimic/files/...``); with ``size`` each
  image is written once as an 8-bit grayscale PNG under ``OUT/images/<size>/<key>.png``
  (short side ``size``, never enlarged, aspect kept) and a rebuild skips files already there.
  PNGs are written under a temporary name and renamed, so an interrupted build never leaves
  a truncated image that a rebuild would trust. Resizing runs on threads (Pillow releases
  the GIL while decoding and resampling; JPEGs are decoded at reduced scale with ``draft``).
* :func:`label_strings`: CheXpert values (1 / 0 / -1 / NaN) as manifest strings, vectorised.
* :func:`write_build_info`: ``OUT/build_info.json`` (counts, pool sizes, sources, seed) next
  to the manifest, so what a build dropped or moved is recorded, not only printed.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ...utils import atomic_path, atomic_write


class LayoutError(FileNotFoundError):
    """A dataset root or one of its required files is missing."""


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


def save_resized(src: str | os.PathLike, dst: str | os.PathLike, size: int) -> None:
    """Write ``src`` as a grayscale PNG whose short side is ``size`` (never enlarged)."""
    img = read_gray(src, size)
    w, h = img.size
    scale = size / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC,
                         reducing_gap=2.0)
    with atomic_path(dst) as tmp:
        img.save(tmp, compress_level=1)


def image_refs(root: str | os.PathLike, subpaths: Sequence[str], keys: Sequence[str],
               out_dir: str | os.PathLike, size: int | None, progress: bool = True,
               workers: int | None = None, desc: str = "resize") -> list[str]:
    """Manifest paths of images ``root/subpath`` (``""`` stays ``""``).

    ``size=None``: the originals, relative to ``out_dir``. Otherwise resized PNG copies
    ``images/<size>/<key>.png`` (``key`` must identify the image within the dataset); only
    missing copies are written.
    """
    if size is None:
        prefix = rel_prefix(root, out_dir)
        return [f"{prefix}{s}" if s else "" for s in subpaths]
    size = int(size)
    folder = Path(out_dir) / "images" / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    refs, todo, seen = [], [], set()
    for sub, key in zip(subpaths, keys):
        if not sub:
            refs.append("")
            continue
        refs.append(f"images/{size}/{key}.png")
        if key not in seen:
            seen.add(key)
            dst = folder / f"{key}.png"
            if not dst.exists():
                todo.append((Path(root) / sub, dst))
    if todo:
        workers = workers or min(8, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
        try:
            with ThreadPoolExecutor(workers) as pool:
                for _ in pool.map(lambda job: save_resized(job[0], job[1], size), todo):
                    bar.update(1)
        finally:
            bar.close()
    return refs


def file_names(folder: str | os.PathLike) -> set[str]:
    """Names of the files directly in ``folder`` (one ``scandir``; empty when it is missing)."""
    try:
        with os.scandir(folder) as it:
            return {entry.name for entry in it if entry.is_file()}
    except FileNotFoundError:
        return set()


def write_build_info(out_dir: str | os.PathLike, info: dict) -> Path:
    """Write ``OUT/build_info.json`` (atomically) and return its path."""
    text = json.dumps(info, indent=2, default=str) + "\n"
    return atomic_write(Path(out_dir) / "build_info.json", lambda tmp: tmp.write_text(text))
