"""Pieces shared by the VQA and instruction builders (Phantom-VQA, VQA-RAD, SLAKE, PathVQA,
LLaVA-Med instruction JSON).

A VQA dataset becomes one manifest row per *image* (the manifest's study) whose questions sit
in the extra column ``qa_json``: a JSON list of ``{"question", "answer", "answer_type", "qid"}``
(``answer_type`` ``"CLOSED"`` for yes / no questions, ``"OPEN"`` otherwise: LLaVA-Med's
convention). An instruction dataset keeps each image's conversation in ``conversations_json``
(a JSON list of ``[question, answer]`` pairs, image tokens removed) and ExGra-Med's extended
answers in ``extended_json`` (one per turn, or ``""`` when the source has none).

:func:`read_json` reads a required JSON source, any failure one
:class:`~.realdata.SourceFileError` naming the file; :func:`field` reads one record's field,
a missing or mistyped one a ``SourceFileError`` naming the file, the record and the field.
:func:`vqa_items` flattens a manifest's ``qa_json`` into (study index, question, answer,
answer type) rows for evaluation.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..findings import CHEXPERT_LABELS
from ..manifest import write_manifest
from .realdata import (
    SourceFileError,
    image_refs,
    reason,
    unreadable_entries,
    warn_unreadable,
    write_build_info,
)

__all__ = ["ANSWER_TYPES", "answer_type", "field", "gray_png", "qa_json", "read_json", "rows_per_image", "vqa_items",
           "write_image_rows"]

ANSWER_TYPES = ("CLOSED", "OPEN")


def read_json(path: str | os.PathLike, what: str):
    """The parsed JSON of a required source file; unreadable or not JSON: one
    :class:`SourceFileError` ``"<path>: cannot read <what> (<reason>)"`` (a missing file stays
    a ``FileNotFoundError``)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SourceFileError(f"{path}: cannot read {what} ({reason(e)})") from e


def field(record, name: str, path, index: int, kinds=(str,), default=...):
    """``record[name]`` of record ``index`` of the file ``path``, checked to be one of ``kinds``
    (``default`` when given and the field is absent)."""
    if not isinstance(record, dict):
        raise SourceFileError(f"{path}: record {index} is a {type(record).__name__}, not an object")
    if name not in record:
        if default is not ...:
            return default
        raise SourceFileError(f"{path}: record {index} has no field {name!r} (it has {', '.join(map(repr, record))})")
    value = record[name]
    if not isinstance(value, kinds):
        raise SourceFileError(f"{path}: record {index}, field {name!r}: expected "
                              f"{' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


def answer_type(given, answer: str) -> str:
    """``CLOSED`` / ``OPEN`` from a dataset's own label (any case, spaces), else from the
    answer: yes / no answers are closed (PathVQA has no label)."""
    t = str(given or "").strip().upper()
    if t in ANSWER_TYPES:
        return t
    return "CLOSED" if str(answer).strip().lower() in ("yes", "no") else "OPEN"


def qa_json(items: Sequence[dict]) -> str:
    """The ``qa_json`` cell of one image: its questions as compact JSON."""
    return json.dumps([{"question": str(q["question"]).strip(), "answer": str(q["answer"]).strip(),
                        "answer_type": q["answer_type"], "qid": str(q.get("qid", ""))} for q in items],
                      separators=(",", ":"), ensure_ascii=False)


def vqa_items(df: pd.DataFrame) -> pd.DataFrame:
    """One row per question of a VQA manifest (its ``qa_json`` column): ``index`` (the study's
    row in ``df``), ``study_id``, ``question``, ``answer``, ``answer_type``, ``qid`` and, for
    Phantom-VQA, ``kind`` (what the question asks)."""
    if "qa_json" not in df.columns:
        raise ValueError(f"not a VQA manifest: no qa_json column (columns: {list(df.columns)})")
    rows = []
    for i, (sid, cell) in enumerate(zip(df["study_id"], df["qa_json"])):
        for q in json.loads(cell or "[]"):
            rows.append({"index": i, "study_id": sid, **q})
    return pd.DataFrame(rows, columns=["index", "study_id", "question", "answer", "answer_type", "qid", "kind"])


def gray_png(data: bytes, dst: Path, size: int | None) -> str | None:
    """Decode image bytes (PNG / JPEG) and write them to ``dst`` as a grayscale PNG (short side
    ``size``, never enlarged; ``None`` keeps the size); the reason when they cannot be decoded."""
    import io

    from PIL import Image

    from ...utils import atomic_path

    try:
        with Image.open(io.BytesIO(data)) as im:
            img = im.convert("L")
        if size is not None and min(img.size) > size:
            scale = size / min(img.size)
            img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                             Image.Resampling.BICUBIC)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes
        return reason(e)
    with atomic_path(dst) as tmp:
        img.save(tmp, format="PNG", compress_level=1)
    return None


def rows_per_image(records: Sequence[dict], dataset: str, split_of_record, image_of_record) -> pd.DataFrame:
    """Group question records by (image, split) into manifest rows: ``study_id`` =
    ``<image>`` (``<image>#<split>`` when the image's questions fall in several splits, as
    VQA-RAD's do), ``patient_id`` = ``study_id`` (no patient ids are released), ``_image``,
    ``split``, ``qa_json``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((image_of_record(r), split_of_record(r)), []).append(r)
    splits_of: dict[str, set[str]] = {}
    for image, split in groups:
        splits_of.setdefault(image, set()).add(split)
    rows = []
    for (image, split), qs in groups.items():
        sid = image if len(splits_of[image]) == 1 else f"{image}#{split}"
        rows.append({"study_id": sid, "patient_id": sid, "split": split, "dataset": dataset, "_image": image,
                     "qa_json": qa_json(qs)})
    return pd.DataFrame(rows)


def write_image_rows(rows: pd.DataFrame, root: Path, images: str, out_dir: Path, size, progress, workers, name: str,
                     info: dict) -> Path:
    """Resolve the rows' images ``root/images/<_image>`` (resized copies with ``size``, else the
    originals), drop rows whose image cannot be read, write the manifest (no ``_image``) and
    ``build_info.json`` (with ``info``)."""
    subpaths = [f"{images}/{i}" for i in rows["_image"]]
    keys = [str(i).replace("/", "_").rsplit(".", 1)[0] for i in rows["_image"]]
    refs, unreadable = image_refs(root, subpaths, keys, out_dir, size, progress=progress, workers=workers,
                                  desc=f"resize {name}")
    keep = [r != "" for r in refs]
    rows = rows[keep].reset_index(drop=True)
    rows["frontal"] = [r for r in refs if r]
    for c in CHEXPERT_LABELS:
        rows[c] = ""
    rows["view"] = ""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(rows.drop(columns=["_image"]), out_dir / "manifest.csv")
    splits = {k: int(v) for k, v in rows["split"].value_counts().items()}
    write_build_info(out_dir, {"dataset": name, "root": str(root), **info, "rows": len(rows), "splits": splits,
                               "dropped_image_unreadable": len(keep) - len(rows),
                               "unreadable_images": unreadable_entries(unreadable)},
                     paths_outside_folder=size is None)
    if progress:
        print(f"{name}: {len(rows)} images {splits}, {info}")
    warn_unreadable(name, unreadable)
    return manifest
