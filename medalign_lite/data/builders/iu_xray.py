"""IU X-Ray (Open-i) with the user's real images → manifest.

The report text always comes from the archive shipped in torchxrayvision
(:func:`~medalign_lite.data.iu_xray.load_iu_reports`, CC BY-NC-ND 4.0: the manifest this
writes contains it and must stay out of the repository). Only the images come from ``root``.
Two image layouts are supported::

    Open-i PNGs (NLMCXR_png.tgz extracted), named by image id:
        ROOT/CXR1_1_IM-0001-3001.png            (or ROOT/images/CXR1_1_IM-0001-3001.png)
    R2Gen's iu_xray folder:
        ROOT/images/CXR1_1_IM-0001/0.png, 1.png
        ROOT/annotation.json                    (only needed for split="r2gen")

Choices:

* One row per report; IU has one study per patient, so ``patient_id`` = ``study_id`` = the
  report uid (``CXR1``).
* **Views** (Open-i layout). The DICOM view positions are noisy (see
  :mod:`medalign_lite.data.iu_xray`); by default (``views="tsne"``) torchxrayvision's
  t-SNE-derived view overrides them where it exists. Frontal = the first available image
  coded PA, else AP, else the first available image of unknown view (``view`` blank; the
  number of such rows is recorded as ``frontal_unknown_view``). Lateral = the first other
  image coded LATERAL / LL / RL; failing that, when exactly two images are available, a
  frontal of known view and another of unknown view, the other one (IU studies are "PA and
  lateral"; counted as ``lateral_unknown_view``). Reports none of whose images is on disk
  (104 reports have no image at all) or whose images are all laterals are dropped and counted.
* **Unreadable images** (with ``size``: a PNG that cannot be decoded; without: an empty file)
  count like missing ones: a report whose chosen frontal is unreadable is dropped, an
  unreadable lateral is left blank; both are counted and listed with their reasons in
  ``build_info.json`` (``unreadable_images``).
* **R2Gen layout**: ``0.png`` is taken as the frontal and ``1.png`` as the lateral, R2Gen's
  convention (not checked image by image); ``view`` is blank.
* **Split**: ``split="seeded"`` (default): a seeded patient-disjoint 70/15/15 split over all
  3,955 report uids (:func:`~medalign_lite.data.manifest.split_patients`), so a report keeps
  its split whatever images a user has; ``split="r2gen"``: the train/val/test lists of R2Gen's
  ``annotation.json`` (reports it does not list are dropped and counted).
* **Text**: findings and impression as written (whitespace normalised; IU's ``XXXX``
  anonymisation kept). Reports with neither are dropped and counted (28 in the archive).
* **Labels** come from the package's rule-based CheXpert-style labeler
  (:mod:`medalign_lite.text.labeler`, a proxy for the CheXpert labeler) run on findings +
  impression: 1 / 0 / -1 / blank as CheXpert writes them. The MeSH codes are kept in the extra
  column ``mesh`` (``|``-separated); the frontal's image id in ``image_id``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ...text.labeler import label_reports
from ..findings import CHEXPERT_LABELS
from ..iu_xray import iu_image_view_table, load_iu_reports
from ..manifest import split_patients, write_manifest
from ..sections import normalise_whitespace
from .realdata import (
    LayoutError,
    SourceFileError,
    an_example,
    file_names,
    image_refs,
    label_strings,
    reason,
    require,
    unreadable_entries,
    warn_unreadable,
    write_build_info,
)

NAME = "iu-xray"
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL", "RL", "LARGE LATERAL")
LAYOUT = """\
  ROOT/CXR1_1_IM-0001-3001.png   (Open-i NLMCXR_png, named by image id; or under ROOT/images/)
  or R2Gen's layout: ROOT/images/CXR1_1_IM-0001/0.png, 1.png (+ ROOT/annotation.json for split="r2gen")"""
_SERIES = re.compile(r"-\d+$")


def _pick_open_i(ids: list[str], views: list[str], available) -> tuple[str, str, str, bool]:
    """(frontal id, its view, lateral id, lateral by elimination) among the available images
    (``""`` when none)."""
    have = [(i, v) for i, v in zip(ids, views) if available(i)]
    frontal = next(((i, v) for want in FRONTAL_VIEWS for i, v in have if v == want), None)
    if frontal is None:
        frontal = next(((i, "") for i, v in have if v not in LATERAL_VIEWS), ("", ""))
    lateral = next((i for i, v in have if v in LATERAL_VIEWS and i != frontal[0]), "")
    guessed = False
    if not lateral and frontal[1] and len(have) == 2:  # "PA and lateral": the other, unknown one
        other = next((i, v) for i, v in have if i != frontal[0])
        lateral, guessed = (other[0], True) if other[1] == "" else ("", False)
    return frontal[0], frontal[1], lateral, guessed


def _r2gen_splits(root: Path) -> dict[str, str]:
    path = require(root / "annotation.json", "R2Gen annotation.json", LAYOUT)
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SourceFileError(f"{path}: cannot read R2Gen's annotation.json ({reason(e)})") from e
    if not isinstance(ann, dict):
        raise SourceFileError(f"{path}: cannot read R2Gen's annotation.json (a JSON object with train / val / "
                              f"test lists expected, not {type(ann).__name__})")
    return {item["id"]: {"validate": "val"}.get(name, name)
            for name in ("train", "val", "test") for item in ann.get(name, [])}


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, views: str = "tsne",
          split: str = "seeded", workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for IU X-Ray with real images (see the module docstring).

    ``limit`` keeps the first N reports (by report number) before the image checks.
    """
    if split not in ("seeded", "r2gen"):
        raise ValueError(f"unknown split {split!r}; use 'seeded' or 'r2gen'")
    out_dir = Path(out_dir)
    root = require(root, "IU X-Ray image folder", LAYOUT, is_dir=True)
    reports = load_iu_reports()
    split_of = split_patients(reports["uid"], seed=seed)
    if limit is not None:
        reports = reports.iloc[: int(limit)]
    view_of = iu_image_view_table(views)

    flat = {"": file_names(root), "images/": file_names(root / "images")}
    r2gen = not any(n.endswith(".png") and n.startswith("CXR") for names in flat.values() for n in names)
    if r2gen and not (root / "images").is_dir():
        raise LayoutError(f"no IU X-Ray PNGs in {root}\nExpected layout:\n{LAYOUT}")
    if split == "r2gen":
        split_of = _r2gen_splits(root)

    def flat_path(image_id: str) -> str:
        return next((f"{d}{image_id}.png" for d, names in flat.items() if f"{image_id}.png" in names), "")

    rows = []
    counts = {"reports": len(reports), "dropped_no_image_file": 0, "dropped_only_lateral": 0,
              "dropped_empty_report": 0, "dropped_not_in_r2gen_split": 0, "frontal_unknown_view": 0,
              "lateral_unknown_view": 0, "dropped_frontal_unreadable": 0, "blanked_lateral_unreadable": 0}
    for rec in tqdm(reports.itertuples(index=False), total=len(reports), desc="iu-xray", unit="report",
                    disable=not progress):
        if r2gen:
            folder = next((f for f in dict.fromkeys(_SERIES.sub("", i) for i in rec.image_ids)
                           if (root / "images" / f / "0.png").is_file()), "")
            has_lateral = bool(folder) and (root / "images" / folder / "1.png").is_file()
            frontal, lateral = (f"images/{folder}/0.png" if folder else ""), (
                f"images/{folder}/1.png" if has_lateral else "")
            view, image_id, guessed = "", folder, False
            keys = (f"{folder}_0", f"{folder}_1" if has_lateral else "")
        else:
            fid, view, lid, guessed = _pick_open_i(rec.image_ids, [view_of.get(i, "") for i in rec.image_ids],
                                                   lambda i: bool(flat_path(i)))
            if not fid and any(flat_path(i) for i in rec.image_ids):
                counts["dropped_only_lateral"] += 1
                continue
            frontal, lateral = (flat_path(fid) if fid else ""), (flat_path(lid) if lid else "")
            image_id, keys = fid, (fid, lid)
        if not frontal:
            counts["dropped_no_image_file"] += 1
            continue
        findings, impression = normalise_whitespace(rec.findings), normalise_whitespace(rec.impression)
        if not findings and not impression:
            counts["dropped_empty_report"] += 1
            continue
        # R2Gen annotation ids are image folders: the image id without its trailing "-NNNN"
        split_key = rec.uid if split == "seeded" else (image_id if r2gen else _SERIES.sub("", image_id))
        if split_key not in split_of:
            counts["dropped_not_in_r2gen_split"] += 1
            continue
        counts["frontal_unknown_view"] += int(not view)
        counts["lateral_unknown_view"] += int(guessed)
        rows.append({"study_id": rec.uid, "patient_id": rec.uid, "split": split_of[split_key], "dataset": NAME,
                     "view": view if view in FRONTAL_VIEWS else "", "findings": findings,
                     "impression": impression, "mesh": "|".join(rec.mesh), "image_id": image_id,
                     "_frontal": frontal, "_lateral": lateral, "_fkey": keys[0], "_lkey": keys[1]})
    if not rows:
        raise LayoutError(f"none of the IU X-Ray report images was found in {root}\nExpected layout:\n{LAYOUT}")
    df = pd.DataFrame(rows)
    n = len(df)
    refs, unreadable = image_refs(root, df["_frontal"].tolist() + df["_lateral"].tolist(),
                                  df["_fkey"].tolist() + df["_lkey"].tolist(), out_dir, size, progress=progress,
                                  workers=workers, desc="resize iu-xray")
    df["frontal"], df["lateral"] = refs[:n], refs[n:]
    # an unreadable image counts like a missing one: no frontal, no row; an unreadable lateral is blank
    frontal_lost = df["frontal"] == ""
    counts["dropped_frontal_unreadable"] = int(frontal_lost.sum())
    counts["blanked_lateral_unreadable"] = int(((df["_lateral"] != "") & (df["lateral"] == "") & ~frontal_lost).sum())
    df = df[~frontal_lost].reset_index(drop=True)
    if df.empty:
        raise SourceFileError(f"{root}: no report left with a readable frontal image "
                              f"({len(unreadable)} unreadable, e.g. {an_example(unreadable)})")
    n = len(df)
    df = df.drop(columns=["_frontal", "_lateral", "_fkey", "_lkey"])
    labels = label_reports((df["findings"] + " " + df["impression"]).tolist())
    for j, c in enumerate(CHEXPERT_LABELS):
        df[c] = label_strings(pd.Series(labels[:, j]))
    out_dir.mkdir(parents=True, exist_ok=True)  # relative paths are validated from here
    path = write_manifest(df, out_dir / "manifest.csv")
    counts.update(rows=int(n), layout="r2gen" if r2gen else "open-i", views=views, split=split, seed=seed,
                  splits={k: int(v) for k, v in df["split"].value_counts().items()})
    write_build_info(out_dir, {"dataset": NAME, "root": str(root), **counts,
                               "unreadable_images": unreadable_entries(unreadable)},
                     paths_outside_folder=size is None)
    print(f"iu-xray: {n} reports {counts['splits']}; dropped {counts['dropped_empty_report']} with empty "
          f"findings and impression, {counts['dropped_no_image_file']} without an image on disk, "
          f"{counts['dropped_only_lateral']} with laterals only, {counts['dropped_frontal_unreadable']} with the "
          f"frontal unreadable; {counts['frontal_unknown_view']} frontals of unknown view")
    warn_unreadable(NAME, unreadable)
    return path
