"""SLAKE 1.0 (Liu et al., 2021), English subset → manifest: one row per image, its questions in
``qa_json``.

Expected layout (the released files; nothing downloaded)::

    ROOT/train.json, ROOT/validate.json (or validation.json), ROOT/test.json
        [{"qid", "img_id", "img_name": "xmlab0/source.jpg", "question", "answer",
          "q_lang": "en"|"zh", "answer_type": "OPEN"|"CLOSED", "location", "modality", ...}]
    ROOT/imgs/<img_name>

Choices: only ``q_lang == "en"`` questions (the English subset every LLaVA-Med-style paper
reports); the released train / validate / test files give the split (``validate`` → ``val``);
``patient_id`` = ``study_id`` = ``img_name`` (SLAKE releases no patient ids; an image sits in one
file); ``modality`` and ``location`` of the image's first question are kept as extras.
"""
from __future__ import annotations

from pathlib import Path

from .realdata import LayoutError, SourceFileError, require
from .vqa import answer_type, field, read_json, rows_per_image, write_image_rows

NAME = "slake"
IMAGES = "imgs"
FILES = {"train": ("train.json",), "val": ("validate.json", "validation.json"), "test": ("test.json",)}
LAYOUT = """\
  ROOT/train.json, ROOT/validate.json (or validation.json), ROOT/test.json
  ROOT/imgs/<img_name>   (e.g. imgs/xmlab0/source.jpg)"""


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for SLAKE's English questions; ``limit`` keeps the first N
    English questions of each split file."""
    out_dir = Path(out_dir)
    root = require(root, "SLAKE root", LAYOUT, is_dir=True)
    require(root / IMAGES, "SLAKE image folder", LAYOUT, is_dir=True)
    records, counts = [], {}
    for split, names in FILES.items():
        path = next((root / n for n in names if (root / n).is_file()), None)
        if path is None:
            raise LayoutError(f"SLAKE {split} file not found: {root / names[0]}\nExpected layout:\n{LAYOUT}")
        data = read_json(path, f"the SLAKE {split} questions")
        if not isinstance(data, list):
            raise SourceFileError(f"{path}: cannot read the SLAKE {split} questions (a list of records expected)")
        english = [(i, r) for i, r in enumerate(data) if field(r, "q_lang", path, i, (str,), "en") == "en"]
        counts[split] = {"questions": len(data), "english": len(english)}
        for i, r in english[: int(limit)] if limit else english:
            answer = field(r, "answer", path, i, (str, int, float))
            records.append({"question": field(r, "question", path, i), "answer": str(answer),
                            "answer_type": answer_type(field(r, "answer_type", path, i, (str,), ""), answer),
                            "qid": str(field(r, "qid", path, i, (str, int), i)), "_split": split,
                            "_image": field(r, "img_name", path, i),
                            "modality": str(r.get("modality", "")), "location": str(r.get("location", ""))})
    rows = rows_per_image(records, NAME, lambda r: r["_split"], lambda r: r["_image"])
    first = {}
    for r in records:
        first.setdefault(r["_image"], r)
    rows["modality"] = [first[i]["modality"] for i in rows["_image"]]
    rows["location"] = [first[i]["location"] for i in rows["_image"]]
    return write_image_rows(rows, root, IMAGES, out_dir, size, progress, workers, NAME, {"files": counts})
