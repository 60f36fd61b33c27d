"""MeSH codes -> findings, CheXpert labels of a finding list."""
from __future__ import annotations

import pytest

from medalign_lite.data.findings import (CATALOGUE, CHEXPERT_LABELS, Finding, chexpert_labels,
                                         findings_from_json, findings_to_json, merge_findings,
                                         mesh_to_findings)


@pytest.mark.parametrize("code,expected", [
    ("Pulmonary Atelectasis/base/left/mild", [("atelectasis", "left", "base", "mild", "plate")]),
    ("Pulmonary Atelectasis/lower lobe/right", [("atelectasis", "right", "lower", "mild", "lobar")]),
    ("Cardiomegaly/severe", [("cardiomegaly", None, "cardiac", "severe", None)]),
    ("Cardiomegaly/borderline", [("cardiomegaly", None, "cardiac", "mild", None)]),
    ("Pleural Effusion/bilateral/small", [("pleural_effusion", "bilateral", "costophrenic", "mild", None)]),
    ("Calcified Granuloma/lung/upper lobe/left", [("granuloma", "left", "upper", "mild", "calcified")]),
    ("Calcinosis/lung/hilum/lymph nodes/right", [("calcified_lymph_node", "right", "hilar", "mild", None)]),
    ("Nodule/lung/lower lobe/bilateral", [("nodule", "left", "lower", "mild", None),
                                           ("nodule", "right", "lower", "mild", None)]),
    ("Lung/hypoinflation", [("hypoinflation", "bilateral", "diffuse", "mild", None)]),
    ("Fractures, Bone/ribs/left/healed", [("rib_fracture", "left", "lower", "mild", "healed")]),
    ("normal", []),
    ("No Indexing", []),
])
def test_mesh_codes(code, expected):
    got = [(f.kind, f.side, f.zone, f.severity, f.variant) for f in mesh_to_findings(code)]
    assert got == expected


@pytest.mark.parametrize("code", ["Technical Quality of Image Unsatisfactory ", "Aorta/ectatic",
                                  "Fractures, Bone/clavicle", "Stents/coronary vessels"])
def test_unrendered_codes_return_none(code):
    assert mesh_to_findings(code) is None


def test_merge_keeps_most_severe_and_joins_sides():
    fs = [Finding("pleural_effusion", "left", severity="mild"), Finding("pleural_effusion", "left", severity="severe"),
          Finding("pleural_effusion", "right", severity="moderate"), Finding("nodule", "left")]
    merged = merge_findings(fs)
    assert Finding("pleural_effusion", "bilateral", severity="severe") in merged
    assert Finding("nodule", "left") in merged and len(merged) == 2


def test_labels_and_json_roundtrip():
    fs = [Finding("cardiomegaly", severity="severe"), Finding("central_line", "right")]
    labels = chexpert_labels(fs)
    assert labels["Cardiomegaly"] == 1 and labels["Support Devices"] == 1 and labels["No Finding"] == 0
    assert chexpert_labels([Finding("central_line", "right")])["No Finding"] == 1
    assert chexpert_labels([Finding("degenerative_spine")])["No Finding"] == 1
    assert set(labels) == set(CHEXPERT_LABELS)
    assert findings_from_json(findings_to_json(fs)) == fs


def test_catalogue_covers_all_chexpert_observations():
    covered = {o for t in CATALOGUE.values() for o in t.chexpert}
    assert covered == set(CHEXPERT_LABELS) - {"No Finding"}


def test_bad_finding_raises():
    with pytest.raises(ValueError, match="zone"):
        Finding("pneumothorax", "left", zone="retrocardiac")
    with pytest.raises(ValueError, match="unknown finding kind"):
        Finding("unicorn")


def test_merge_one_finding_per_kind_side_zone():
    codes = ["Lung/hyperdistention", "Pulmonary Emphysema", "Lung, Hyperlucent"]
    fs = merge_findings([f for c in codes for f in mesh_to_findings(c)])
    assert [(f.kind, f.variant) for f in fs] == [("hyperinflation", "emphysema")]
