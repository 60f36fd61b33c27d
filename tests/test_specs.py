"""The YAML specs in data_manifests/ agree with the rules the validator applies."""
from __future__ import annotations

from pathlib import Path

import yaml

from medalign_lite.data.builders import BUILDERS
from medalign_lite.data.manifest import DATASETS

SPECS = Path(__file__).resolve().parents[1] / "data_manifests"


def test_one_spec_per_dataset_and_rules_agree():
    files = {p.stem: yaml.safe_load(p.read_text()) for p in SPECS.glob("*.yaml")}
    assert set(files) == set(DATASETS) == set(BUILDERS)
    for name, spec in files.items():
        assert spec["name"] == name
        assert spec["requires_text"] == DATASETS[name].requires_text, name
        assert spec["has_masks"] == DATASETS[name].has_masks, name
