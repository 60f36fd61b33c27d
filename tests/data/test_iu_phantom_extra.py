"""IU-Phantom-extra: kind-balanced new training studies from IU-Phantom's training finding lists;
several manifests read as one dataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medalign_lite.data.builders import get_builder
from medalign_lite.data.builders.iu_phantom_extra import PATIENT_OFFSET, kind_balanced_picks, training_finding_lists
from medalign_lite.data.dataset import ManifestDataset, combine_manifests
from medalign_lite.data.findings import Finding, findings_to_json
from medalign_lite.data.manifest import LABEL_COLUMNS, PATH_COLUMNS, load_manifest


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    out = tmp_path_factory.mktemp("extra")
    return get_builder("iu-phantom-extra")(out, size=32, limit=10, seed=0, progress=False, workers=1)


def test_extra_studies_copy_training_finding_lists(extra):
    df = load_manifest(extra)  # validates files, labels, text
    assert len(df) == 10 and set(df["split"]) == {"train"} and set(df["dataset"]) == {"iu-phantom-extra"}
    lists, ids = training_finding_lists(0)
    by_id = dict(zip(ids, lists))
    for _, r in df.iterrows():
        assert r["findings_json"] == findings_to_json(by_id[r["source_report_id"]])  # an abnormal training list
        assert int(r["n_findings"]) >= 1
        assert r["findings"] == r["written_findings"] and r["impression"] == r["written_impression"]
        assert r["prior_report"] and r["structured_findings"]
    assert df["study_id"].str.startswith("extra-").all()


def test_source_reports_are_abnormal_training_studies_of_the_same_split():
    from medalign_lite.data.iu_xray import load_iu_reports
    from medalign_lite.data.manifest import split_patients

    lists, ids = training_finding_lists(0)
    reports = load_iu_reports()
    reports = reports[(reports["findings"].str.strip() != "") | (reports["impression"].str.strip() != "")]
    splits = split_patients(reports["uid"], seed=0)
    uid = dict(zip(reports["report_id"].astype(str), reports["uid"]))
    assert all(splits[uid[i]] == "train" for i in ids) and all(lists)
    assert len(ids) > 500  # about 39 % of the 2,749 training studies are abnormal
    assert training_finding_lists(1)[1] != ids  # another build seed, another split


def test_a_smaller_build_is_a_prefix_of_a_larger_one(extra, tmp_path):
    small = load_manifest(get_builder("iu-phantom-extra")(tmp_path, size=32, limit=4, seed=0, progress=False,
                                                          workers=1))
    big = load_manifest(extra)
    cols = [c for c in small.columns if c not in PATH_COLUMNS]
    assert small[cols].equals(big[cols].iloc[:4])
    r = small.iloc[3]
    assert np.array_equal(np.asarray(Image.open(tmp_path / r["frontal"])),
                          np.asarray(Image.open(extra.parent / big.iloc[3]["frontal"])))


def test_kind_balanced_picks_draw_rare_kinds_as_often_as_common_ones():
    common, rare = Finding("cardiomegaly"), Finding("edema")
    lists = [[common]] * 99 + [[rare]]
    picks = kind_balanced_picks(lists, 2000, seed=0)
    share = np.mean([p == 99 for p in picks])
    assert 0.45 < share < 0.55  # 1 % of the lists, half of the draws (binomial sd 0.011)
    assert kind_balanced_picks(lists, 50, seed=0) == picks[:50]  # study j depends on (seed, j) only
    assert kind_balanced_picks(lists, 50, seed=1) != picks[:50]
    assert PATIENT_OFFSET > 10_000_000  # beyond IU report ids and Phantom-5x200's patients


def test_combined_manifests_read_as_one_dataset(extra, tmp_path):
    iu = get_builder("iu-phantom")(tmp_path / "iu", size=32, limit=6, seed=0, progress=False, workers=1)
    df = combine_manifests([iu, extra])
    assert len(df) == 16 and list(df["study_id"][:6]) == list(load_manifest(iu)["study_id"])
    for c in ("frontal", "masks"):
        assert all(p.startswith("/") for p in df[c])
    assert pd.isna(df.loc[0, "source_report_id"]) is False and df.loc[0, "source_report_id"] == ""
    assert df[list(LABEL_COLUMNS)].dtypes.map(lambda t: t.kind in "fi").all()  # labels stay numbers
    ds = ManifestDataset([iu, extra], split="train", text_columns=("written_findings",), masks=True, image_size=32)
    n_iu = int((load_manifest(iu)["split"] == "train").sum())
    assert len(ds) == n_iu + 10
    item = ds[len(ds) - 1]
    assert item["study_id"] == "extra-00009" and item["frontal"].shape == (1, 32, 32)
    assert item["finding_masks"].shape[0] == len(item["finding_names"]) >= 1
    with pytest.raises(ValueError, match="study id 'extra-00000' is in both"):
        combine_manifests([extra, extra])
