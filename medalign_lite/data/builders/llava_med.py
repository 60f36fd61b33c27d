"""LLaVA-Med instruction-following JSON (with ExGra-Med's ``conversations_long``) → manifest:
one row per record, its conversation in ``conversations_json`` and the extended answers in
``extended_json``.

Expected layout (LLaVA-Med's ``llava_med_instruct_60k_inline_mention.json``, ExGra-Med's
extended version of it, or the stage-1 alignment file; nothing downloaded)::

    ROOT/<name>.json     [{"id", "image": "<file>", "conversations": [{"from": "human", "value": "<image>\\n…"},
                                                                   {"from": "gpt", "value": "…"}, …],
                           "conversations_long": [… the same turns, the gpt values extended …]}]
    ROOT/images/<file>

``ROOT`` may also be the JSON file itself (images then in ``images/`` beside it). The
misspelled keys ``conversatons`` / ``conversatons_long`` of the released files are read too.

Choices: turns must alternate human / gpt starting with human (a record that does not is a
:class:`~.realdata.SourceFileError` naming the file, the record and the turn); ``<image>``
tokens and surrounding newlines are removed from the questions (the model inserts the image
itself); an extended conversation must have the same number of turns, else it is dropped for
that record (counted); every row is in split ``train`` (an instruction set trains);
``patient_id`` = ``study_id`` = the record's ``id``; labels blank, no report text.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .realdata import LayoutError, SourceFileError, require
from .vqa import field, read_json, write_image_rows

NAME = "llava-med-instruct"
IMAGES = "images"
LAYOUT = """\
  ROOT/<name>.json   (LLaVA-Med instruction records, optionally with conversations_long)
  ROOT/images/<image>"""


def _turns(conv, path, index: int, key: str) -> list[tuple[str, str]]:
    if not isinstance(conv, list) or len(conv) < 2:
        raise SourceFileError(f"{path}: record {index}, field {key!r}: a list of at least two turns expected")
    out = []
    for t in range(0, len(conv) - 1, 2):
        q, a = conv[t], conv[t + 1]
        who = (field(q, "from", path, index), field(a, "from", path, index))
        if who != ("human", "gpt"):
            raise SourceFileError(f"{path}: record {index}, field {key!r}, turn {t}: expected a human turn then a "
                                  f"gpt turn, got {who[0]!r} then {who[1]!r}")
        question = field(q, "value", path, index).replace("<image>", " ").strip()
        out.append((" ".join(question.split()), field(a, "value", path, index).strip()))
    return out


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` from a LLaVA-Med instruction JSON (module docstring);
    ``limit`` keeps the first N records."""
    out_dir = Path(out_dir)
    if root is not None and Path(root).is_file():
        path, root = Path(root), Path(root).parent
    else:
        root = require(root, "LLaVA-Med instruction root", LAYOUT, is_dir=True)
        found = sorted(root.glob("*.json"))
        if len(found) != 1:
            raise LayoutError(f"expected one instruction JSON in {root}, found {len(found)} "
                              f"({', '.join(p.name for p in found) or 'none'}); pass the file itself as root\n"
                              f"Expected layout:\n{LAYOUT}")
        path = found[0]
    require(root / IMAGES, "LLaVA-Med image folder", LAYOUT, is_dir=True)
    data = read_json(path, "the instruction records")
    if not isinstance(data, list):
        raise SourceFileError(f"{path}: cannot read the instruction records (a list expected, got {type(data).__name__})")
    rows, dropped_long, seen = [], 0, set()
    for i, r in enumerate(data[: int(limit)] if limit else data):
        key = "conversations" if "conversations" in (r if isinstance(r, dict) else {}) else "conversatons"
        turns = _turns(field(r, key, path, i, (list,)), path, i, key)
        sid = str(field(r, "id", path, i, (str, int), i))
        if sid in seen:
            raise SourceFileError(f"{path}: record {i}: duplicate id {sid!r}")
        seen.add(sid)
        long_key = next((k for k in ("conversations_long", "conversatons_long") if isinstance(r, dict) and k in r), None)
        extended = ""
        if long_key is not None:
            long_turns = _turns(field(r, long_key, path, i, (list,)), path, i, long_key)
            if len(long_turns) == len(turns):
                extended = json.dumps([a for _, a in long_turns], ensure_ascii=False)
            else:
                dropped_long += 1
        rows.append({"study_id": sid, "patient_id": sid, "split": "train", "dataset": NAME,
                     "_image": field(r, "image", path, i),
                     "conversations_json": json.dumps([list(t) for t in turns], ensure_ascii=False),
                     "extended_json": extended})
    if not rows:
        raise SourceFileError(f"{path}: no instruction record")
    info = {"file": str(path), "records": len(rows), "with_extended": sum(bool(r["extended_json"]) for r in rows),
            "extended_dropped_turn_mismatch": dropped_long}
    return write_image_rows(pd.DataFrame(rows), root, IMAGES, out_dir, size, progress, workers, NAME, info)
