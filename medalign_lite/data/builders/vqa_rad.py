"""VQA-RAD (Lau et al., 2018) → manifest: one row per image and split, its questions in ``qa_json``.

Expected layout (the released files; nothing downloaded)::

    ROOT/VQA_RAD Dataset Public.json      [{"qid", "image_name", "question", "answer",
                                            "answer_type": "CLOSED"|"OPEN", "phrase_type", ...}]
    ROOT/VQA_RAD Image Folder/<image_name>

Choices:

* **Split**: the released one — a question whose ``phrase_type`` starts with ``test``
  (``test_freeform``, ``test_para``) is a test question, every other one a training question.
  VQA-RAD asks test questions about images that also have training questions (a known
  property of the release, kept as released): such an image becomes two rows,
  ``<image>#train`` and ``<image>#test``, so that each row has one split.
* **Answer type**: the released ``answer_type`` (trimmed, upper-cased; a few entries carry
  spaces); missing → closed for yes / no answers.
* ``patient_id`` = ``study_id`` (no patient ids are released); labels blank; no report text.
* Images: ``size`` writes grayscale PNG copies (``images/<size>/``); without it the manifest
  points at the originals (``build_info.json`` says so).
"""
from __future__ import annotations

from pathlib import Path

from .realdata import SourceFileError, require
from .vqa import answer_type, field, read_json, rows_per_image, write_image_rows

NAME = "vqa-rad"
JSON = "VQA_RAD Dataset Public.json"
IMAGES = "VQA_RAD Image Folder"
LAYOUT = f"""\
  ROOT/{JSON}
  ROOT/{IMAGES}/<image_name>"""


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for VQA-RAD (module docstring); ``limit`` keeps the first
    N questions of the file."""
    out_dir = Path(out_dir)
    root = require(root, "VQA-RAD root", LAYOUT, is_dir=True)
    path = require(root / JSON, "VQA-RAD question file", LAYOUT)
    require(root / IMAGES, "VQA-RAD image folder", LAYOUT, is_dir=True)
    data = read_json(path, "the VQA-RAD questions")
    if not isinstance(data, list):
        raise SourceFileError(f"{path}: cannot read the VQA-RAD questions (a list of records expected, "
                              f"got {type(data).__name__})")
    records = []
    for i, r in enumerate(data[: int(limit)] if limit else data):
        answer = field(r, "answer", path, i, (str, int, float))
        records.append({"question": field(r, "question", path, i), "answer": str(answer),
                        "answer_type": answer_type(field(r, "answer_type", path, i, (str,), ""), answer),
                        "qid": str(field(r, "qid", path, i, (str, int), i)),
                        "_image": field(r, "image_name", path, i),
                        "_split": "test" if str(field(r, "phrase_type", path, i, (str,), "")).startswith("test")
                        else "train"})
    rows = rows_per_image(records, NAME, lambda r: r["_split"], lambda r: r["_image"])
    return write_image_rows(rows, root, IMAGES, out_dir, size, progress, workers, NAME, {"questions": len(records)})
