"""IU-Phantom and Phantom-5x200 builders on a few studies: manifests, cache, labels, splits."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from medalign_lite.data.builders import get_builder
from medalign_lite.data.dataset import Batch, Collate, ManifestDataset
from medalign_lite.data.findings import chexpert_labels, findings_from_json
from medalign_lite.data.manifest import LABEL_COLUMNS, load_manifest
from medalign_lite.data.masks import load_masks


@pytest.fixture(scope="module")
def iu(tmp_path_factory):
    out = tmp_path_factory.mktemp("iu")
    path = get_builder("iu-phantom")(out, size=64, limit=24, seed=0, progress=False, workers=1)
    return path


def test_iu_phantom_manifest(iu):
    df = load_manifest(iu)  # validates: files exist, labels, splits
    assert len(df) == 24 and set(df["dataset"]) == {"iu-phantom"}
    for c in ("frontal", "lateral", "prior_frontal", "prior_lateral", "masks"):
        assert (df[c] != "").all(), c
    assert df["prior_report"].str.len().gt(0).all()
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    root = df.attrs["root"]
    for _, r in df.iterrows():
        fs = findings_from_json(r["findings_json"])
        labels = chexpert_labels(fs)
        assert [r[c] for c in LABEL_COLUMNS] == [float(labels[c]) for c in LABEL_COLUMNS]
        masks = load_masks(os.path.join(root, r["masks"]), len(fs))
        assert masks.shape == (len(fs), 64, 64)
        assert all(m.any() for m in masks), r["study_id"]
        assert len(json.loads(r["prior_changes"])["changes"]) == len(fs)


def test_iu_phantom_rebuild_uses_cache(iu):
    out = iu.parent
    images = sorted((out / "renders").rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in images}
    get_builder("iu-phantom")(out, size=64, limit=24, seed=0, progress=False, workers=1)
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "renders").rglob("*.png"))} == before


def test_rebuild_renders_damaged_cache_files_again(tmp_path):
    """A truncated, empty or corrupted PNG in the render cache is not reused: it is rendered again,
    the whole files are left alone."""
    from PIL import Image

    from medalign_lite.data.builders.common import png_complete

    build = get_builder("iu-phantom")
    out = build(tmp_path, size=48, limit=3, seed=0, progress=False, workers=1).parent
    images = sorted((out / "renders").rglob("*.png"))
    assert len(images) == 15 and all(png_complete(p) for p in images)
    original = {p: p.read_bytes() for p in images}
    frontal, mask, lateral, prior = (next(p for p in images if p.name.endswith(k)) for k in
                                     ("_frontal.png", "_masks.png", "_lateral.png", "_prior_frontal.png"))
    frontal.write_bytes(original[frontal][: len(original[frontal]) // 2])   # cut short
    mask.write_bytes(original[mask][:-2])                                    # only the IEND CRC missing
    lateral.write_bytes(b"")                                                 # empty
    bad = bytearray(original[prior])
    bad[60] ^= 0xFF                                                          # a flipped byte in IDAT
    prior.write_bytes(bytes(bad))
    damaged = {frontal, mask, lateral, prior}
    assert not any(png_complete(p) for p in damaged)
    stamps = {p: p.stat().st_mtime_ns for p in images if p not in damaged}
    build(out, size=48, limit=3, seed=0, progress=False, workers=1)
    assert {p: p.read_bytes() for p in images} == original  # re-rendered to the same bytes
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # and nothing else touched
    Image.open(frontal).load()
    assert not png_complete(tmp_path / "missing.png")
    assert [p.name for p in (out / "renders").rglob("*") if ".tmp" in p.name] == []


def test_rebuild_sweeps_temporary_files_of_a_killed_build(tmp_path):
    """A killed build leaves the temporary file it was writing (``.<name>.<8 chars>.tmp.png``);
    the next build that renders there removes those an hour old and keeps younger ones (another
    process may be writing them)."""
    build = get_builder("iu-phantom")
    out = build(tmp_path, size=48, limit=2, seed=0, progress=False, workers=1).parent
    cache = next((out / "renders").iterdir())
    stale, fresh, other = cache / ".CXR1_frontal.png.k3j_9x2q.tmp.png", cache / ".CXR1_lateral.png.a1b2c3d4.tmp.png", \
        cache / ".notes.txt"
    for p in (stale, fresh, other):
        p.write_bytes(b"half a png")
    old = os.stat(stale).st_mtime - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    build(out, size=48, limit=2, seed=0, progress=False, workers=1)  # nothing to render: nothing swept
    assert stale.exists()
    (cache / "CXR1_frontal.png").write_bytes(b"")
    build(out, size=48, limit=2, seed=0, progress=False, workers=1)
    assert not stale.exists() and fresh.exists() and other.exists()


def test_iu_phantom_is_deterministic(iu, tmp_path):
    other = get_builder("iu-phantom")(tmp_path, size=64, limit=24, seed=0, progress=False, workers=2)
    a, b = load_manifest(iu), load_manifest(other)
    cols = [c for c in a.columns if c not in ("frontal", "lateral", "prior_frontal", "prior_lateral", "masks")]
    assert a[cols].equals(b[cols])
    r = a.iloc[3]
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(iu.parent / r["frontal"])),
                          np.asarray(Image.open(other.parent / r["frontal"])))


def test_phantom_5x200(tmp_path, iu):
    path = get_builder("phantom-5x200")(tmp_path, size=64, limit=25, seed=0, progress=False, workers=1)
    df = load_manifest(path)
    assert df["class"].value_counts().to_dict() == {c: 5 for c in df["class"].unique()} and len(df) == 25
    for _, r in df.iterrows():
        assert r[r["class"]] == 1.0 and sum(r[c] for c in LABEL_COLUMNS) == 1.0
    assert set(df["patient_id"]).isdisjoint(load_manifest(iu)["patient_id"])
    assert (df["split"] == "test").all()


def test_dataset_and_collate(iu):
    ds = ManifestDataset(iu, split=None, views=("frontal", "lateral", "prior_frontal", "prior_lateral"),
                         masks=True, prior_report=True, image_size=64)
    tok = lambda texts, **kw: {"input_ids": torch.ones(len(texts), 7, dtype=torch.long),
                               "attention_mask": torch.ones(len(texts), 7, dtype=torch.long)}
    batch = Collate(tok)([ds[i] for i in range(4)])
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.images.shape == (4, 1, 64, 64) and batch.lateral.shape == (4, 1, 64, 64)
    assert batch.prior_frontal_present.all() and batch.labels.shape == (4, 14)
    assert batch.input_ids.shape == (4, 7) and len(batch.prior_reports) == 4
    k = batch.finding_masks.shape[1]
    assert batch.finding_valid.sum(1).tolist() == [len(n) for n in batch.finding_names]
    # eval transform at the stored size leaves masks exactly as on disk
    r = ds.df.iloc[0]
    disk = load_masks(os.path.join(ds.root, r["masks"]), len(batch.finding_names[0]))
    assert torch.equal(batch.finding_masks[0, : disk.shape[0]], torch.from_numpy(disk))
    assert k >= disk.shape[0]
    # optional inputs not asked for are None, not dummy tensors
    plain = Collate()([ManifestDataset(iu, split=None, image_size=64)[0]])
    assert plain.lateral is None and plain.finding_masks is None and plain.input_ids is None


def test_train_transform_moves_masks_with_image(iu):
    ds = ManifestDataset(iu, split=None, masks=True, image_size=64, train=True, mean=0.0, std=1.0)
    torch.manual_seed(0)
    i = int(np.argmax([len(json.loads(s)) for s in ds.df["findings_json"]]))
    a = ds[i]
    torch.manual_seed(0)
    b = ds[i]
    assert torch.equal(a["frontal"], b["frontal"]) and torch.equal(a["finding_masks"], b["finding_masks"])
    assert a["finding_masks"].shape[-2:] == a["frontal"].shape[-2:]


def test_item_cache_returns_the_same_items_and_refuses_random_transforms(iu, monkeypatch):
    plain = ManifestDataset(iu, split=None, masks=True, image_size=48)
    cached = ManifestDataset(iu, split=None, masks=True, image_size=48, cache=True)
    first = [cached[i] for i in range(3)]
    monkeypatch.setattr(cached, "_load", lambda i: pytest.fail("second access must not reload"))
    for i in range(3):
        a, b, c = plain[i], cached[i], first[i]
        assert torch.equal(a["frontal"], b["frontal"]) and torch.equal(a["finding_masks"], b["finding_masks"])
        assert b["text"] == a["text"] and b is not c  # a fresh dict each time
    with pytest.raises(ValueError, match="train=False"):
        ManifestDataset(iu, split=None, image_size=48, train=True, cache=True)
    # the eval transform draws no random number: the trainer reads such items without seeding
    assert plain.deterministic and cached.deterministic
    assert not ManifestDataset(iu, split=None, image_size=48, train=True).deterministic
    assert not ManifestDataset(iu, split=None, image_size=48, transform=lambda *x: x).deterministic
    torch.manual_seed(0)
    state = torch.get_rng_state()
    plain[0]
    assert torch.equal(torch.get_rng_state(), state)


def test_with_text_reads_another_report_style_and_shares_the_image_cache(iu, monkeypatch):
    written = ManifestDataset(iu, split=None, text_columns=("written_findings",), image_size=48, cache=True)
    first = written[2]
    structured = written.with_text(("structured_findings",))
    monkeypatch.setattr(written, "_load", lambda i: pytest.fail("the shared cache must serve the item"))
    monkeypatch.setattr(structured, "_load", lambda i: pytest.fail("the shared cache must serve the item"))
    item = structured[2]
    assert item["text"] == structured.df.iloc[2]["structured_findings"] != first["text"]
    assert written[2]["text"] == first["text"] == written.df.iloc[2]["written_findings"]
    assert torch.equal(item["frontal"], first["frontal"])
    with pytest.raises(ValueError, match="not in the manifest"):
        written.with_text(("no_such_column",))
