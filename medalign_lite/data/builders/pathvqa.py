"""PathVQA (He et al., 2020) from a local Parquet copy → manifest: one row per image, its
questions in ``qa_json``.

The original release is a set of Python pickles; **pickles are never opened here** (loading
one runs arbitrary code). The Parquet copy (the layout of the Hugging Face dataset
``flaviagiammarino/path-vqa``, columns ``image`` {``bytes``, ``path``}, ``question``,
``answer``) is read with pyarrow instead::

    ROOT/**/train-*.parquet, ROOT/**/validation-*.parquet (or val-*), ROOT/**/test-*.parquet

Choices: images are embedded bytes, written once as grayscale PNGs to
``OUT/images/<size or orig>/<key>.png`` (the key is a hash of the bytes: the same image asked
about several times is one row; PathVQA's images are colour, and the pipeline reads
grayscale); the split comes from the file name (``validation`` → ``val``); answers ``yes`` /
``no`` are closed questions (PathVQA has no answer-type field), the rest open; ``patient_id``
= ``study_id``. Needs ``pyarrow`` (``pip install pyarrow``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from ..findings import CHEXPERT_LABELS
from ..manifest import write_manifest
from .common import png_complete
from .realdata import (
    LayoutError,
    SourceFileError,
    reason,
    require,
    unreadable_entries,
    warn_unreadable,
    write_build_info,
)
from .vqa import answer_type, gray_png, rows_per_image

NAME = "pathvqa"
SPLITS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
LAYOUT = """\
  ROOT/**/train-*.parquet, ROOT/**/validation-*.parquet, ROOT/**/test-*.parquet
  columns: image {bytes, path}, question, answer   (the Hugging Face Parquet layout; never the pickles)"""


def _split_of(path: Path) -> str | None:
    stem = path.name.lower()
    for split, prefixes in SPLITS.items():
        if any(stem.startswith((p + "-", p + ".")) for p in prefixes):
            return split
    return None


def _read(path: Path) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    try:
        table = pq.read_table(path, columns=["image", "question", "answer"])
    except (OSError, ValueError, KeyError) as e:  # ArrowInvalid is a ValueError; a missing column KeyError-like
        raise SourceFileError(f"{path}: cannot read the PathVQA questions ({reason(e)})") from e
    return table.to_pandas()


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for PathVQA from Parquet files; ``limit`` keeps the first N
    questions of each split."""
    out_dir = Path(out_dir)
    root = require(root, "PathVQA root", LAYOUT, is_dir=True)
    files = sorted(p for p in root.rglob("*.parquet") if _split_of(p))
    if not files:
        raise LayoutError(f"no PathVQA Parquet file under {root}\nExpected layout:\n{LAYOUT}")
    folder = out_dir / "images" / (str(int(size)) if size else "orig")
    folder.mkdir(parents=True, exist_ok=True)
    records, unreadable, written, per_split = [], {}, {}, {}
    for path in files:
        split = _split_of(path)
        df = _read(path)
        if limit:
            df = df.iloc[: max(0, int(limit) - per_split.get(split, 0))]
        per_split[split] = per_split.get(split, 0) + len(df)
        for i, (img, q, a) in enumerate(zip(df["image"], df["question"], df["answer"])):
            data = img.get("bytes") if isinstance(img, dict) else None
            if not data:
                unreadable[f"{path}#{i}"] = "no image bytes"
                continue
            key = hashlib.sha256(data).hexdigest()[:20]
            if key not in written:
                dst = folder / f"{key}.png"
                written[key] = None if png_complete(dst) else gray_png(data, dst, int(size) if size else None)
            if written[key] is not None:
                unreadable[f"{path}#{i}"] = written[key]
                continue
            records.append({"question": str(q), "answer": str(a), "answer_type": answer_type(None, a),
                            "qid": f"{split}-{i}", "_split": split, "_image": key})
    if not records:
        raise SourceFileError(f"{root}: no PathVQA question with a readable image")
    rows = rows_per_image(records, NAME, lambda r: r["_split"], lambda r: r["_image"])
    rows["frontal"] = [f"images/{folder.name}/{k}.png" for k in rows["_image"]]
    for c in CHEXPERT_LABELS:
        rows[c] = ""
    rows["view"] = ""
    manifest = write_manifest(rows.drop(columns=["_image"]), out_dir / "manifest.csv")
    splits = {k: int(v) for k, v in rows["split"].value_counts().items()}
    write_build_info(out_dir, {"dataset": NAME, "root": str(root), "files": [str(f) for f in files],
                               "questions": len(records), "rows": len(rows), "splits": splits,
                               "unreadable_images": unreadable_entries(unreadable)})
    if progress:
        print(f"pathvqa: {len(rows)} images {splits}, {len(records)} questions")
    warn_unreadable(NAME, unreadable, "question image")
    return manifest
