"""Torch dataset over a manifest, the typed :class:`Batch`, collate and transforms.

``ManifestDataset(manifest, split="train", views=("frontal", "lateral"), masks=True)`` yields
one dict per study; :class:`Collate` stacks them into a :class:`Batch` and, given a
tokenizer, tokenises the texts. Geometric augmentation is applied *jointly* to a study's
current and prior images of the same view and to its finding masks (torchvision's
``transforms.v2`` draws one set of parameters per call), so a mask stays on its finding and a
prior stays registered to its current image, as ALTA's temporal inputs need.

Optional inputs follow one rule: a field is ``None`` when it was not asked for or when no
study of the batch has it; when only some studies have it, the missing ones are zeros and the
``*_present`` mask says which are real (ALTA replaces them with a learned missing token).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .manifest import LABEL_COLUMNS, PATH_COLUMNS, load_manifest
from .masks import load_masks

#: Chest X-ray intensity statistics (ALTA/MRM use these for 8-bit radiographs).
CXR_MEAN, CXR_STD = 0.4785, 0.2834
OPTIONAL_VIEWS = ("lateral", "prior_frontal", "prior_lateral")


@dataclass
class Batch:
    """A collated batch. Shapes: B batch, C channels, H×W pixels, T tokens, K findings.

    Attributes:
        images: (B, C, H, W) current frontal images, normalised.
        texts: B report texts.
        study_ids: B study ids.
        labels: (B, 14) CheXpert labels, 1 / 0 / -1, NaN where blank.
        input_ids, attention_mask: (B, T) when a tokenizer was given to :class:`Collate`.
        word_ids: (B, T) word index of each token (-1 for special tokens and padding) when the
            tokenizer provides it (text encoders that merge word pieces need it).
        lateral, prior_frontal, prior_lateral: (B, C, H, W) or None; ``*_present`` (B,) bool.
        prior_reports: B prior report texts ("" where none) or None.
        key_phrases: B lists of key phrases or None (filled by the text engine later).
        finding_masks: (B, K, H, W) bool, padded over K; ``finding_valid`` (B, K) bool says
            which are real; ``finding_names`` the B lists of finding kinds. None for real data.
    """

    images: torch.Tensor
    texts: list[str]
    study_ids: list[str]
    labels: torch.Tensor
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    word_ids: torch.Tensor | None = None
    lateral: torch.Tensor | None = None
    lateral_present: torch.Tensor | None = None
    prior_frontal: torch.Tensor | None = None
    prior_frontal_present: torch.Tensor | None = None
    prior_lateral: torch.Tensor | None = None
    prior_lateral_present: torch.Tensor | None = None
    prior_reports: list[str] | None = None
    key_phrases: list[list[str]] | None = None
    finding_masks: torch.Tensor | None = None
    finding_valid: torch.Tensor | None = None
    finding_names: list[list[str]] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return Batch(**moved)


def read_image(path: str) -> Image.Image:
    """Open a radiograph as 8-bit grayscale (PNG/JPEG; DICOM through pydicom if installed)."""
    if path.lower().endswith(".dcm"):
        try:
            import pydicom
        except ImportError as e:  # pragma: no cover - depends on the user's environment
            raise ImportError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from e
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float32)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            a = 1.0 - a
        return Image.fromarray((a * 255).astype(np.uint8))
    with Image.open(path) as im:
        return im.convert("L")


def build_transform(image_size: int, train: bool, mean: float = CXR_MEAN, std: float = CXR_STD,
                    channels: int = 1) -> Callable:
    """Joint transform for (image, [prior], [masks]) tuples.

    Train: random resized crop (scale 0.8–1, aspect 0.9–1.1), rotation ±5°, translation 5 %,
    brightness/contrast jitter 0.2 (images only). Eval: resize + centre crop. Then float in
    [0, 1], normalised with ``mean``/``std``, repeated to ``channels``.
    """
    geo = ([v2.RandomResizedCrop(image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomAffine(degrees=5, translate=(0.05, 0.05))] if train
           else [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
    photo = [v2.ColorJitter(brightness=0.2, contrast=0.2)] if train else []
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean] * 1, [std] * 1)]
    if channels == 3:
        tail.append(v2.Lambda(lambda x: x.expand(3, -1, -1) if isinstance(x, tv_tensors.Image) else x))
    return v2.Compose([*geo, *photo, *tail])


def combine_manifests(manifests: Sequence[str | Path | pd.DataFrame]) -> pd.DataFrame:
    """Several manifests as one table (e.g. IU-Phantom and IU-Phantom-extra for training):
    rows in order, each image and mask path made absolute from its own manifest's folder, a
    column missing from one manifest blank in its rows. Study ids must be unique across them
    (a ``ValueError`` names the first duplicate and both manifests)."""
    frames, origin = [], {}
    for m in manifests:
        df = (m if isinstance(m, pd.DataFrame) else load_manifest(m)).copy()
        root = Path(df.attrs.get("root", "."))
        name = str(m) if not isinstance(m, pd.DataFrame) else str(root)
        for sid in df["study_id"]:
            if sid in origin:
                raise ValueError(f"study id {sid!r} is in both {origin[sid]} and {name}: manifests combined "
                                 "for one dataset need distinct study ids")
            origin[sid] = name
        for c in PATH_COLUMNS:
            if c in df.columns:
                df[c] = [str(root / v) if isinstance(v, str) and v else v for v in df[c]]
        frames.append(df)
    if not frames:
        raise ValueError("no manifest to combine")
    out = pd.concat(frames, ignore_index=True)
    text = [c for c in out.columns if c not in LABEL_COLUMNS]
    out[text] = out[text].fillna("")
    out.attrs["root"] = frames[0].attrs.get("root", ".")
    return out


class ManifestDataset(Dataset):
    """Studies of one split of a manifest.

    Args:
        manifest: path of a manifest CSV, a loaded DataFrame (``df.attrs["root"]`` set), or a
            list of either, read as one (:func:`combine_manifests`).
        split: ``train`` / ``val`` / ``test``, or None for every row.
        views: image columns to load; ``frontal`` always, plus any of ``lateral``,
            ``prior_frontal``, ``prior_lateral``.
        text_columns: columns joined (with a space) into the report text. The default is
            findings then impression; IU-Phantom also offers ``written_*`` and
            ``structured_*``.
        masks: load the phantom finding masks (phantom datasets only).
        prior_report: include the prior report text.
        image_size, train, channels, mean, std: see :func:`build_transform`.
        cache: keep every item in memory after its first load (eval transforms only: a
            training transform is random, so caching it would freeze one augmentation). For
            the many short runs of an ablation on one dataset; 2,749 studies at 96 px are
            about 100 MB.

    ``deterministic`` is True when reading an item draws no random number (the eval
    transform, no custom one): the trainer then reads it without seeding generators for it.
    """

    def __init__(self, manifest: str | Path | pd.DataFrame | Sequence[str | Path | pd.DataFrame],
                 split: str | None = "train",
                 views: Sequence[str] = ("frontal",), text_columns: Sequence[str] = ("findings", "impression"),
                 masks: bool = False, prior_report: bool = False, image_size: int = 224,
                 train: bool = False, channels: int = 1, mean: float = CXR_MEAN, std: float = CXR_STD,
                 transform: Callable | None = None, cache: bool = False):
        if cache and (train or transform is not None):
            raise ValueError("cache=True needs the deterministic eval transform (train=False, no custom transform)")
        if isinstance(manifest, (list, tuple)):
            df = combine_manifests(manifest)
        else:
            df = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
        self.root = Path(df.attrs.get("root", "."))
        unknown = [v for v in views if v != "frontal" and v not in OPTIONAL_VIEWS]
        if unknown:
            raise ValueError(f"unknown view column(s) {unknown}; choose from frontal, {', '.join(OPTIONAL_VIEWS)}")
        missing = [c for c in text_columns if c not in df.columns]
        if missing:
            raise ValueError(f"text column(s) {missing} not in the manifest (columns: {list(df.columns)})")
        if masks and "findings_json" not in df.columns:
            raise ValueError("masks=True needs a phantom manifest (no findings_json column)")
        self.df = (df[df["split"] == split] if split else df).reset_index(drop=True)
        self.views = tuple(v for v in views if v != "frontal")
        self.text_columns = tuple(text_columns)
        self.masks = masks
        self.prior_report = prior_report
        self.transform = transform or build_transform(image_size, train, mean, std, channels)
        self.deterministic = not train and transform is None
        self.labels = torch.tensor(self.df[list(LABEL_COLUMNS)].to_numpy(dtype=np.float32))
        self.texts = [" ".join(t for t in (str(row[c]).strip() for c in self.text_columns) if t)
                      for _, row in self.df[list(self.text_columns)].iterrows()]
        self._items: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.df)

    def _image(self, rel: str) -> tv_tensors.Image:
        arr = np.asarray(read_image(str(self.root / rel)))
        return tv_tensors.Image(torch.from_numpy(arr.copy())[None])

    def __getitem__(self, i: int) -> dict:
        if self._items is not None:
            if i not in self._items:
                self._items[i] = self._load(i)
            return {**self._items[i], "text": self.texts[i]}  # the text is this dataset's own (see with_text)
        return self._load(i)

    def with_text(self, text_columns: Sequence[str]) -> ManifestDataset:
        """The same studies, images and item cache, reading the report from ``text_columns``
        instead (e.g. the same phantoms with free-text and with structured reports: one
        in-memory copy of the images for both)."""
        missing = [c for c in text_columns if c not in self.df.columns]
        if missing:
            raise ValueError(f"text column(s) {missing} not in the manifest (columns: {list(self.df.columns)})")
        other = copy.copy(self)
        other.text_columns = tuple(text_columns)
        other.texts = [" ".join(t for t in (str(row[c]).strip() for c in other.text_columns) if t)
                       for _, row in self.df[list(other.text_columns)].iterrows()]
        return other

    def _load(self, i: int) -> dict:
        row = self.df.iloc[i]
        item: dict = {"study_id": row["study_id"], "text": self.texts[i], "labels": self.labels[i]}
        frontal = self._image(row["frontal"])
        group = [frontal]
        has_prior = "prior_frontal" in self.views and bool(row["prior_frontal"])
        if has_prior:
            group.append(self._image(row["prior_frontal"]))
        if self.masks:
            names = [d["kind"] for d in json.loads(row["findings_json"] or "[]")]
            m = load_masks(str(self.root / row["masks"]), len(names))
            if m.shape[1:] != tuple(frontal.shape[1:]):
                raise ValueError(f"{row['masks']}: mask size {m.shape[1:]} != image size {tuple(frontal.shape[1:])}")
            group.append(tv_tensors.Mask(torch.from_numpy(m)))
            item["finding_names"] = names
        out = self.transform(*group)
        out = out if isinstance(out, tuple) else (out,)
        item["frontal"] = out[0].as_subclass(torch.Tensor)
        if has_prior:
            item["prior_frontal"] = out[1].as_subclass(torch.Tensor)
        if self.masks:
            item["finding_masks"] = out[-1].as_subclass(torch.Tensor).bool()
        lat = "lateral" in self.views and bool(row["lateral"])
        plat = "prior_lateral" in self.views and bool(row["prior_lateral"])
        if lat or plat:
            lgroup = [self._image(row[c]) for c, ok in (("lateral", lat), ("prior_lateral", plat)) if ok]
            lout = self.transform(*lgroup)
            lout = lout if isinstance(lout, tuple) else (lout,)
            k = 0
            for c, ok in (("lateral", lat), ("prior_lateral", plat)):
                if ok:
                    item[c] = lout[k].as_subclass(torch.Tensor)
                    k += 1
        if self.prior_report:
            item["prior_report"] = str(row.get("prior_report", "") or "")
        return item


class Collate:
    """Stack dataset items into a :class:`Batch`; tokenise texts when given a tokenizer.

    ``tokenizer`` is any callable ``tokenizer(list[str], **tokenizer_kwargs)`` returning a
    mapping with ``input_ids`` and ``attention_mask`` tensors (and optionally ``word_ids``):
    a text encoder's ``tokenize``, or a Hugging Face tokenizer with
    ``padding=True, truncation=True, return_tensors="pt"`` passed as keyword arguments.
    """

    def __init__(self, tokenizer: Callable | None = None, **tokenizer_kwargs):
        self.tokenizer = tokenizer
        self.tokenizer_kwargs = tokenizer_kwargs

    def __call__(self, items: list[dict]) -> Batch:
        images = torch.stack([it["frontal"] for it in items])
        batch = Batch(images=images, texts=[it["text"] for it in items],
                      study_ids=[it["study_id"] for it in items],
                      labels=torch.stack([it["labels"] for it in items]))
        for view in OPTIONAL_VIEWS:
            present = torch.tensor([view in it for it in items])
            if present.any():
                zeros = torch.zeros_like(images[0])
                setattr(batch, view, torch.stack([it.get(view, zeros) for it in items]))
                setattr(batch, f"{view}_present", present)
        if "prior_report" in items[0]:
            batch.prior_reports = [it["prior_report"] for it in items]
        if "finding_masks" in items[0]:
            k = max(1, max(it["finding_masks"].shape[0] for it in items))
            h, w = images.shape[-2:]
            masks = torch.zeros(len(items), k, h, w, dtype=torch.bool)
            valid = torch.zeros(len(items), k, dtype=torch.bool)
            for b, it in enumerate(items):  # collate-time padding, not a model forward
                n = it["finding_masks"].shape[0]
                masks[b, :n] = it["finding_masks"]
                valid[b, :n] = True
            batch.finding_masks, batch.finding_valid = masks, valid
            batch.finding_names = [it["finding_names"] for it in items]
        if self.tokenizer is not None:
            tok = self.tokenizer(batch.texts, **self.tokenizer_kwargs)
            batch.input_ids, batch.attention_mask = tok["input_ids"], tok["attention_mask"]
            batch.word_ids = tok.get("word_ids")
        return batch

