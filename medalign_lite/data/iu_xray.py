"""Indiana University chest X-ray reports (Open-i), read from the torchxrayvision wheel.

torchxrayvision ships, in ``torchxrayvision/data/``:

* ``NLMCXR_reports.tgz``: the 3,955 Open-i radiology reports ``ecgen-radiology/N.xml``
  (sections in ``AbstractText`` elements labelled COMPARISON / INDICATION / FINDINGS /
  IMPRESSION, manual MeSH codes in ``MeSH/major``, image ids in ``parentImage/@id``);
* ``nlmcxr_dicom_metadata.csv.gz``: DICOM headers per image (``imageid``, ``View Position``);
* ``nlmcxr_tsne_pa.csv.gz``: torchxrayvision's t-SNE-derived view (``PA`` / ``L``) for part
  of the images.

**License.** The report text is licensed CC BY-NC-ND 4.0 (see each XML's ``licenseURL``):
it is read from the installed wheel at run time, in memory, and must never be copied into
this repository (no extracted files, no fixtures, no notebook outputs committed with text).

Choices:

* The archive is read with :mod:`tarfile` in memory (never extracted); parsing all 3,955
  reports takes about a second and is cached per process (:func:`functools.lru_cache`);
  callers get a copy.
* The data folder is found with :func:`importlib.util.find_spec` so that torch and
  scikit-image (imported by ``import torchxrayvision``) are not loaded.
* Report image ids and metadata ids differ for a few reports (``CXR1_1_IM-0001-3001`` in the
  XML, ``CXR1_IM-0001-3001`` in the CSV): the lookup retries without the ``_N_`` part.
* The DICOM ``View Position`` is noisy (CXR1's two images are both recorded ``PA``; 2,586
  images have none). :func:`iu_image_view_table` gives the raw DICOM view by default and,
  with ``source="tsne"``, the t-SNE-derived view where torchxrayvision has one (``L`` →
  ``LATERAL``; ``PA`` keeps a DICOM ``AP``), the DICOM view elsewhere.
  :func:`load_iu_reports` reports the DICOM views (``image_views``).
* :func:`report_corpus` (findings + impression of every report) is what the tiny language
  models' word tokenizer is trained on; :func:`report_tokenizer` trains it once and caches
  only the derived vocabulary, in the user's cache.
"""
from __future__ import annotations

import importlib.util
import re
import tarfile
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import os

    from transformers import PreTrainedTokenizerFast

REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
DICOM_METADATA = "nlmcxr_dicom_metadata.csv.gz"
TSNE_VIEWS = "nlmcxr_tsne_pa.csv.gz"
N_REPORTS = 3955
REPORT_COLUMNS = ("uid", "report_id", "comparison", "indication", "findings", "impression", "mesh",
                  "image_ids", "image_views")


def data_dir() -> Path:
    """Folder ``torchxrayvision/data`` of the installed wheel, found without importing it."""
    try:
        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "torchxrayvision is not installed: the IU X-Ray reports and the CheXpert / RSNA label "
            "files ship inside its wheel (pip install torchxrayvision)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not folder.is_dir():
        raise FileNotFoundError(f"torchxrayvision is installed but has no data folder: {folder}")
    return folder


def shipped_file(name: str) -> Path:
    """A file of ``torchxrayvision/data``; a clear error when this torchxrayvision lacks it."""
    path = data_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this torchxrayvision version does not ship {name} "
                                "(torchxrayvision>=1.3 does)")
    return path


def _text(node: ET.Element | None) -> str:
    return (node.text or "").strip() if node is not None else ""


_ALT_ID = re.compile(r"^(CXR\d+)_\d+_")


@lru_cache(maxsize=2)
def _view_table(source: str) -> dict[str, str]:
    md = pd.read_csv(shipped_file(DICOM_METADATA), usecols=["imageid", "View Position"], dtype=str)
    table = dict(zip(md["imageid"], md["View Position"].fillna("").str.strip()))
    if source == "tsne":
        ts = pd.read_csv(shipped_file(TSNE_VIEWS), dtype=str)
        for image_id, view in zip(ts["imageid"], ts["tsne-view"].fillna("")):
            key = image_id if image_id in table else _ALT_ID.sub(r"\1_", image_id)
            if view == "L":
                table[key] = "LATERAL"
            elif view == "PA" and table.get(key, "") not in ("PA", "AP"):
                table[key] = "PA"
    return table


def _lookup(table: dict[str, str], image_id: str) -> str:
    view = table.get(image_id)
    if view is None:
        view = table.get(_ALT_ID.sub(r"\1_", image_id), "")
    return view


def iu_image_view_table(source: str = "dicom") -> dict[str, str]:
    """Image id → view position (``PA``, ``AP``, ``LATERAL``, ``LL``, ``RL`` ...; ``""`` unknown).

    Keys are the ids of the metadata CSV and, for every report image, the id as the report
    writes it (``CXR1_1_IM-0001-3001`` as well as ``CXR1_IM-0001-3001``). ``source="dicom"``:
    the DICOM ``View Position``; ``source="tsne"``: torchxrayvision's t-SNE-derived view where
    it has one (see the module docstring), the DICOM one elsewhere.
    """
    if source not in ("dicom", "tsne"):
        raise ValueError(f"unknown view source {source!r}; use 'dicom' or 'tsne'")
    table = dict(_view_table(source))
    for ids in _reports()["image_ids"]:
        for image_id in ids:
            if image_id not in table:
                table[image_id] = _lookup(table, image_id)
    return table


@lru_cache(maxsize=1)
def _reports() -> pd.DataFrame:
    views = _view_table("dicom")
    rows = []
    with tarfile.open(shipped_file(REPORTS_ARCHIVE), "r:gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            sections = {a.get("Label", "").upper(): _text(a) for a in root.iter("AbstractText")}
            uid = root.find("uId").get("id")
            image_ids = [p.get("id") for p in root.iter("parentImage")]
            rows.append({
                "uid": uid,
                "report_id": int(uid.removeprefix("CXR")),
                "comparison": sections.get("COMPARISON", ""),
                "indication": sections.get("INDICATION", ""),
                "findings": sections.get("FINDINGS", ""),
                "impression": sections.get("IMPRESSION", ""),
                "mesh": [_text(m) for m in root.iterfind("MeSH/major") if _text(m)],
                "image_ids": image_ids,
                "image_views": [_lookup(views, i) for i in image_ids],
            })
    df = pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).sort_values("report_id", ignore_index=True)
    if len(df) != N_REPORTS:
        raise ValueError(f"{REPORTS_ARCHIVE}: expected {N_REPORTS} reports, found {len(df)}")
    return df


def load_iu_reports() -> pd.DataFrame:
    """All 3,955 IU X-Ray reports, one row per report, sorted by ``report_id``.

    Columns: ``uid`` (``"CXR1"``), ``report_id`` (int), ``comparison``, ``indication``,
    ``findings``, ``impression`` (stripped text, ``""`` when empty), ``mesh`` (list of the
    manual MeSH major codes, stripped), ``image_ids`` (list, the report's order) and
    ``image_views`` (list, DICOM view per image, ``""`` when unknown). The text is CC
    BY-NC-ND 4.0: keep it out of the repository.
    """
    df = _reports().copy()
    for c in ("mesh", "image_ids", "image_views"):
        df[c] = df[c].map(list)  # callers may mutate their lists without touching the cache
    return df


def report_corpus() -> list[str]:
    """The IU X-Ray report texts (findings + impression, non-empty), in ``report_id`` order."""
    df = load_iu_reports()
    texts = (df["findings"].fillna("").str.strip() + " " + df["impression"].fillna("").str.strip()).str.strip()
    return [t for t in texts.tolist() if t]


def report_tokenizer(cache_dir: str | os.PathLike | None = None, vocab_size: int = 2000,
                     min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """The word tokenizer of :func:`report_corpus`, trained once and cached on disk.

    The cache folder is ``{cache_dir}/iu_words_v{vocab_size}_f{min_frequency}_{corpus hash}``
    (``cache_dir`` defaults to ``~/.cache/medalign_lite/tokenizers``, or ``$MEDALIGN_CACHE``);
    see :func:`medalign_lite.text.tokenizer.cached_word_tokenizer`. The report text is CC
    BY-NC-ND: only the derived vocabulary is stored, in the user's cache.
    """
    from ..text.tokenizer import cached_word_tokenizer  # imports transformers

    return cached_word_tokenizer(report_corpus(), "iu_words", cache_dir, vocab_size=vocab_size,
                                 min_frequency=min_frequency)
