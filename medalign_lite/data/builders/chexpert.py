"""CheXpert 5x200 → manifest: the retrieval / zero-shot set of GLoRIA, rebuilt deterministically.

Expected layout (Stanford AIMI, CheXpert-v1.0-small or CheXpert-v1.0; nothing downloaded)::

    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    ROOT/CheXpert-v1.0-small/train.csv        (optional: used when present)

``root`` may also be the ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``) folder itself. The
label table is ``train.csv`` from the root when it has one, else the copy of CheXpert's
``train.csv`` shipped in torchxrayvision (``chexpert_train.csv.gz``, 223,414 images; the same
rows and labels as CheXpert-v1.0-small). Its ``Path`` column
(``CheXpert-v1.0-small/train/patient.../view1_frontal.jpg``) is resolved against the image
folder, whatever the first path component is called.

The rule (GLoRIA ``preprocess_chexpert_5x200_data``, research note §3), exactly:

1. frontal images only, NaN → 0;
2. for each class c of Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion:
   keep images that are exactly 1 for c and exactly 0 for the other four classes **and** for
   Enlarged Cardiomediastinum, Lung Lesion, Lung Opacity, Pneumonia, Pneumothorax, Pleural
   Other, Fracture and Support Devices (so uncertain −1 images are excluded); No Finding is
   unconstrained (GLoRIA's index skips it);
3. draw 200 per class without replacement. GLoRIA draws unseeded (``df.sample``) and MGCA
   with pandas' ``random_state=0``; we draw with ``numpy.random.default_rng(seed)``, one
   generator for the five classes in the order above, so the set is reproducible but not
   GLoRIA's or MGCA's exact images (nobody's is: GLoRIA never fixed a seed).

The pools are disjoint by construction. Pool sizes are printed and recorded in
``build_info.json``; :func:`five_by_two_hundred_pools` exposes the rule without images.

An image that is there but cannot be read (with ``size``: not decodable; without: an empty
file) is dropped, so its class has fewer than ``per_class`` rows; it is counted per class and
listed with its reason in ``build_info.json`` (``unreadable_images``) and a line says so. The
sample is not redrawn to replace it: the other rows stay the seed's. A label table that cannot
be read is one :class:`~.realdata.SourceFileError` naming it.

Rows: one per *image* (``study_id`` = ``patient00001/study1/view1_frontal``; a study can
contribute two frontal images), ``patient_id`` = ``patient00001``, ``split`` = ``test``,
``view`` = the CSV's AP/PA, findings / impression blank (CheXpert's reports are not public; the
dataset spec does not require text), labels one-hot for the five classes and the CSV's values
(blank when NaN) for the other nine, extra column ``label`` (the class name).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..findings import CHEXPERT_LABELS
from ..iu_xray import shipped_file
from ..manifest import write_manifest
from .realdata import (
    LayoutError,
    image_refs,
    label_strings,
    read_csv_table,
    require,
    unreadable_entries,
    warn_unreadable,
    write_build_info,
)

NAME = "chexpert-5x200"
CLASSES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
MUST_BE_ZERO: tuple[str, ...] = ("Enlarged Cardiomediastinum", "Lung Lesion", "Lung Opacity", "Pneumonia",
                                 "Pneumothorax", "Pleural Other", "Fracture", "Support Devices")
PER_CLASS = 200
SHIPPED_CSV = "chexpert_train.csv.gz"
IMAGE_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
LAYOUT = """\
  ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
  ROOT/CheXpert-v1.0-small/train.csv   (optional; else torchxrayvision's chexpert_train.csv.gz)
  (ROOT may be CheXpert-v1.0-small/ itself, or the full-resolution CheXpert-v1.0/)"""


def five_by_two_hundred_pools(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Class → candidate rows (GLoRIA's rule, see the module docstring), index kept.

    ``df`` has CheXpert's ``train.csv`` columns (``Frontal/Lateral`` and the label columns).
    """
    missing = [c for c in ("Frontal/Lateral", *CLASSES, *MUST_BE_ZERO) if c not in df.columns]
    if missing:
        raise ValueError(f"CheXpert table lacks columns {missing}")
    frontal = df[df["Frontal/Lateral"] == "Frontal"]
    values = frontal[list(CLASSES + MUST_BE_ZERO)].apply(pd.to_numeric, errors="coerce").fillna(0)
    others_zero = (values[list(MUST_BE_ZERO)] == 0).all(axis=1)
    pools = {}
    for c in CLASSES:
        one_hot = (values[c] == 1) & (values[[k for k in CLASSES if k != c]] == 0).all(axis=1)
        pools[c] = frontal[one_hot & others_zero]
    return pools


def sample_5x200(df: pd.DataFrame, seed: int = 0, per_class: int = PER_CLASS) -> pd.DataFrame:
    """The sampled rows with a ``label`` column, classes in :data:`CLASSES` order, each class's
    rows in table order. Raises when a pool is smaller than ``per_class``."""
    rng = np.random.default_rng(seed)
    parts = []
    for c, pool in five_by_two_hundred_pools(df).items():
        if len(pool) < per_class:
            raise ValueError(f"CheXpert 5x200: only {len(pool)} candidate images for {c!r} (need {per_class})")
        pick = np.sort(rng.choice(len(pool), size=per_class, replace=False))
        parts.append(pool.iloc[pick].assign(label=c))
    return pd.concat(parts)


def _image_base(root: Path) -> Path:
    """The folder that holds ``train/`` (ROOT, ROOT/CheXpert-v1.0-small or ROOT/CheXpert-v1.0)."""
    for base in (root, *(root / f for f in IMAGE_FOLDERS)):
        if (base / "train").is_dir():
            return base
    raise LayoutError(f"CheXpert images not found: no train/ folder in {root} or "
                      f"{' or '.join(str(root / f) for f in IMAGE_FOLDERS)}\nExpected layout:\n{LAYOUT}")


def read_table(root: Path | None = None) -> tuple[pd.DataFrame, str]:
    """(train.csv table, its source): ``root``'s own train.csv, else torchxrayvision's copy."""
    if root is not None:
        for base in (root, *(root / f for f in IMAGE_FOLDERS)):
            if (base / "train.csv").is_file():
                return read_csv_table(base / "train.csv", "CheXpert's train.csv", columns=("Path",)), \
                    str(base / "train.csv")
    path = shipped_file(SHIPPED_CSV)
    return read_csv_table(path, "torchxrayvision's CheXpert label table", columns=("Path",)), str(path)


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, per_class: int = PER_CLASS,
          workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for CheXpert 5x200 (see the module docstring).

    ``limit`` keeps N rows for a quick look, taken round robin over the classes (class order kept).
    """
    out_dir = Path(out_dir)
    root = require(root, "CheXpert root", LAYOUT, is_dir=True)
    base = _image_base(root)
    table, source = read_table(root)
    pools = five_by_two_hundred_pools(table)
    pool_sizes = {c: len(p) for c, p in pools.items()}
    print("chexpert-5x200 pool sizes: " + ", ".join(f"{c} {n}" for c, n in pool_sizes.items()))
    picked = sample_5x200(table, seed=seed, per_class=per_class)
    if limit is not None:  # round robin over the classes, so a quick look shows every class
        rank = picked.groupby("label", sort=False).cumcount().to_numpy()
        keep = np.sort(np.argsort(rank, kind="stable")[: int(limit)])
        picked = picked.iloc[keep]

    # "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg" -> "train/patient00001/..."
    paths = picked["Path"].astype(str)
    sub = paths.where(paths.str.startswith(("train/", "valid/")), paths.str.split("/", n=1).str[1])
    missing = [str(base / s) for s in sub if not (base / s).is_file()]
    if missing:
        raise LayoutError(f"{len(missing)} of {len(sub)} CheXpert 5x200 images missing, e.g. {missing[0]}\n"
                          f"Expected layout:\n{LAYOUT}")
    parts = sub.str.split("/")
    image_id = parts.str[1] + "/" + parts.str[2] + "/" + parts.str[3].str.rsplit(".", n=1).str[0]
    refs, unreadable = image_refs(base, sub.tolist(), image_id.str.replace("/", "_").tolist(), out_dir, size,
                                  progress=progress, workers=workers, desc="resize chexpert")
    readable = np.array([r != "" for r in refs], dtype=bool)
    dropped = {c: int(n) for c, n in picked.loc[~readable, "label"].value_counts().items()}
    picked, parts, image_id = picked[readable], parts[readable], image_id[readable]
    refs = [r for r in refs if r]

    out = pd.DataFrame({
        "study_id": image_id.to_numpy(),
        "patient_id": parts.str[1].to_numpy(),
        "split": "test",
        "dataset": NAME,
        "view": picked["AP/PA"].where(picked["AP/PA"].isin(["AP", "PA"]), "").to_numpy()
        if "AP/PA" in picked.columns else "",
        "frontal": refs,
    })
    for c in CHEXPERT_LABELS:
        if c in CLASSES:
            out[c] = np.where(picked["label"].to_numpy() == c, "1", "0")
        else:
            out[c] = label_strings(picked[c]).to_numpy() if c in picked.columns else ""
    out["label"] = picked["label"].to_numpy()
    out_dir.mkdir(parents=True, exist_ok=True)  # relative paths are validated from here
    path = write_manifest(out, out_dir / "manifest.csv")
    write_build_info(out_dir, {"dataset": NAME, "root": str(root), "label_table": source, "seed": seed,
                               "per_class": per_class, "pool_sizes": pool_sizes, "rows": len(out),
                               "dropped_image_unreadable": dropped,
                               "unreadable_images": unreadable_entries(unreadable)},
                     paths_outside_folder=size is None)
    if dropped:
        print("chexpert-5x200: unreadable images dropped: " + ", ".join(f"{c} {n}" for c, n in dropped.items()))
    warn_unreadable(NAME, unreadable)
    return path
