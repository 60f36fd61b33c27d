"""RSNA Pneumonia Detection Challenge → manifest (patient-level labels, GLoRIA's split).

Expected layout (Kaggle ``rsna-pneumonia-detection-challenge``; nothing downloaded)::

    ROOT/stage_2_train_labels.csv          patientId, x, y, width, height, Target
    ROOT/stage_2_train_images/<patientId>.dcm   (or .png / .jpg with the same stem)

When ROOT has no ``stage_2_train_labels.csv`` the copy shipped in torchxrayvision
(``kaggle_stage_2_train_labels.csv.zip``) is used. The view (AP / PA) comes from the DICOM
headers table torchxrayvision also ships (``kaggle_stage_2_train_images_dicom_headers.csv.gz``),
so no DICOM has to be opened to build the manifest.

Choices:

* **One row per patient** (RSNA has one image per patient). Label = 1 when the patient has
  any box (``Target`` max). RSNA's positive class is *Lung Opacity* (opacities suggestive
  of pneumonia, as read by the annotating radiologists); GLoRIA / BioViL / MGCA call the task
  pneumonia, so both ``Pneumonia`` and ``Lung Opacity`` carry the label; the other twelve
  observations are blank (not assessed). Extra column ``boxes``: JSON list of ``[x, y, w,
  h]`` in pixels of the original 1024x1024 image (``[]`` for negatives).
* **Image files**: ``.png`` first, then ``.jpg``, then ``.dcm`` (the manifest points at the
  first that exists; a decoded format needs no pydicom). Reading ``.dcm`` (for ``size=`` here,
  or later by the dataset) needs ``pydicom``. Patients without an image file are dropped and
  counted, and so are those whose image cannot be read (with ``size``: not decodable; without:
  an empty file), which are also listed with their reasons in ``build_info.json``
  (``unreadable_images``). A label or header table that cannot be read is one
  :class:`~.realdata.SourceFileError` naming it, before anything is written.
* **Split**, 70 / 15 / 15 exactly as GLoRIA's ``preprocess_pneumonia_data``: patients sorted
  by id (its ``groupby``), ``train_test_split(test_size=0.3, random_state=seed)``, then the
  30 % hold-out split in halves with the same seed, the *first* half being GLoRIA's test set
  and the second its validation set. It is reimplemented with
  ``numpy.random.RandomState`` (what scikit-learn's ``ShuffleSplit`` uses), so for the full
  26,684 patients and ``seed=0`` it is GLoRIA's split patient for patient (18,678 / 4,003 /
  4,003; the test checks it against scikit-learn). The split is drawn over every patient of
  the label table before ``limit`` or missing images drop any, so it never depends on them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..findings import CHEXPERT_LABELS
from ..iu_xray import shipped_file
from ..manifest import write_manifest
from .realdata import (
    LayoutError,
    file_names,
    image_refs,
    read_csv_table,
    require,
    unreadable_entries,
    warn_unreadable,
    write_build_info,
)

NAME = "rsna"
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"
SHIPPED_LABELS = "kaggle_stage_2_train_labels.csv.zip"
SHIPPED_HEADERS = "kaggle_stage_2_train_images_dicom_headers.csv.gz"
EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")
POSITIVE = ("Pneumonia", "Lung Opacity")
LAYOUT = """\
  ROOT/stage_2_train_labels.csv   (optional; else torchxrayvision's kaggle_stage_2_train_labels.csv.zip)
  ROOT/stage_2_train_images/<patientId>.dcm   (or .png / .jpg)"""


def patient_table(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per patient, sorted by id: ``patientId``, ``Target`` (0/1), ``boxes`` (JSON)."""
    df = labels.copy()
    df["Target"] = pd.to_numeric(df["Target"]).fillna(0).astype(int)
    pos = df[df["Target"] == 1]
    boxes = pos.groupby("patientId")[["x", "y", "width", "height"]].apply(
        lambda b: json.dumps([[float(v) for v in r] for r in b.to_numpy()]))
    out = df.groupby("patientId", sort=True)["Target"].max().reset_index()
    out["boxes"] = out["patientId"].map(boxes).fillna("[]")
    return out


def gloria_split(patient_ids, seed: int = 0, holdout: float = 0.3) -> dict[str, str]:
    """GLoRIA's RSNA split (see the module docstring): patient id → train / val / test.

    Equivalent to ``train_test_split(ids, test_size=holdout, random_state=seed)`` followed by
    ``test, val = train_test_split(hold_out, test_size=0.5, random_state=seed)`` on the
    sorted ids.
    """
    ids = np.array(sorted(set(map(str, patient_ids))))
    n_hold = math.ceil(holdout * len(ids))
    perm = np.random.RandomState(seed).permutation(len(ids))
    hold, train = ids[perm[:n_hold]], ids[perm[n_hold:]]
    n_second = math.ceil(0.5 * len(hold))
    perm2 = np.random.RandomState(seed).permutation(len(hold))
    val, test = hold[perm2[:n_second]], hold[perm2[n_second:]]  # GLoRIA: "test_df, valid_df = ..."
    out = dict.fromkeys(train.tolist(), "train")
    out.update(dict.fromkeys(val.tolist(), "val"))
    out.update(dict.fromkeys(test.tolist(), "test"))
    return out


def build(out_dir, root=None, size=None, limit=None, seed=0, progress=True, workers: int | None = None) -> Path:
    """Write ``out_dir/manifest.csv`` for RSNA Pneumonia (see the module docstring).

    ``limit`` keeps the first N patients by id.
    """
    out_dir = Path(out_dir)
    root = require(root, "RSNA root", LAYOUT, is_dir=True)
    images = require(root / IMAGES, "RSNA image folder", LAYOUT, is_dir=True)
    labels_path = root / LABELS_CSV if (root / LABELS_CSV).is_file() else shipped_file(SHIPPED_LABELS)
    patients = patient_table(read_csv_table(labels_path, "the RSNA label table",
                                            columns=("patientId", "x", "y", "width", "height", "Target")))
    split_of = gloria_split(patients["patientId"], seed=seed)
    if limit is not None:
        patients = patients.iloc[: int(limit)]

    names = file_names(images)
    def image_of(pid: str) -> str:
        return next((f"{IMAGES}/{pid}{ext}" for ext in EXTENSIONS if f"{pid}{ext}" in names), "")
    patients["_image"] = patients["patientId"].map(image_of)
    missing = int((patients["_image"] == "").sum())
    patients = patients[patients["_image"] != ""]
    if patients.empty:
        raise LayoutError(f"no RSNA image found in {images} (looked for <patientId>{'/'.join(EXTENSIONS)})\n"
                          f"Expected layout:\n{LAYOUT}")
    try:
        headers = read_csv_table(shipped_file(SHIPPED_HEADERS), "torchxrayvision's RSNA DICOM header table",
                                 usecols=["PatientID", "ViewPosition"], dtype=str)
        view_of = dict(zip(headers["PatientID"], headers["ViewPosition"].fillna("").str.strip()))
    except FileNotFoundError:
        view_of = {}

    refs, unreadable = image_refs(root, patients["_image"].tolist(), patients["patientId"].tolist(), out_dir, size,
                                  progress=progress, workers=workers, desc="resize rsna")
    readable = [r != "" for r in refs]  # an unreadable image counts like a missing one
    patients, refs = patients[readable], [r for r in refs if r]  # none readable: image_refs raised
    label = patients["Target"].astype(str).to_numpy()
    out = pd.DataFrame({
        "study_id": patients["patientId"].to_numpy(),
        "patient_id": patients["patientId"].to_numpy(),
        "split": patients["patientId"].map(split_of).to_numpy(),
        "dataset": NAME,
        "view": patients["patientId"].map(lambda p: view_of.get(p, "")).where(lambda v: v.isin(["AP", "PA"]), "")
        .to_numpy(),
        "frontal": refs,
        **{c: (label if c in POSITIVE else "") for c in CHEXPERT_LABELS},
        "boxes": patients["boxes"].to_numpy(),
    })
    out_dir.mkdir(parents=True, exist_ok=True)  # relative paths are validated from here
    path = write_manifest(out, out_dir / "manifest.csv")
    info = {"dataset": NAME, "root": str(root), "labels": str(labels_path), "seed": seed,
            "patients": len(split_of), "rows": len(out), "dropped_image_missing": missing,
            "dropped_image_unreadable": len(readable) - len(out), "unreadable_images": unreadable_entries(unreadable),
            "positives": int((label == "1").sum()),
            "splits": {k: int(v) for k, v in out["split"].value_counts().items()}}
    write_build_info(out_dir, info, paths_outside_folder=size is None)
    print(f"rsna: {info['rows']} patients {info['splits']}, {info['positives']} positive; "
          f"{missing} dropped without an image file, {info['dropped_image_unreadable']} with it unreadable")
    warn_unreadable(NAME, unreadable)
    return path
