"""The floor / method / ceiling tables of the contrastive notebooks."""
from __future__ import annotations

import math

import pytest

from medalign_lite.experiments.tables import grounding_table, retrieval_table


def test_retrieval_table_means_stds_and_the_share_of_the_ceiling():
    systems = {"untrained": [{"i2t_P@5": 0.2, "t2i_P@5": 0.21}],
               "gloria": [{"i2t_P@5": 0.5, "t2i_P@5": 0.6}, {"i2t_P@5": 0.7, "t2i_P@5": 0.6}]}
    t = retrieval_table(systems, ceiling={"i2i_P@5": 0.8, "i2i_P@1": 0.9}, keys=("i2t_P@1", "i2t_P@5", "t2i_P@5"))
    assert list(t.index) == ["untrained", "gloria", "supervised ceiling (image→image)"]
    assert t.loc["gloria", "i2t_P@5 mean"] == pytest.approx(0.6) and t.loc["gloria", "i2t_P@5 std"] == pytest.approx(0.1414, abs=1e-4)
    assert t.loc["gloria", "i2t_P@5 / ceiling"] == pytest.approx(0.75) and t.loc["gloria", "seeds"] == 2
    assert math.isnan(t.loc["untrained", "i2t_P@5 std"]) and math.isnan(t.loc["gloria", "i2t_P@1 mean"])
    assert t.loc["supervised ceiling (image→image)", "i2t_P@5 mean"] == 0.8
    assert t.loc["supervised ceiling (image→image)", "i2t_P@1 mean"] == 0.9
    seeds = retrieval_table(systems, ceiling=[{"i2i_P@5": 0.8}, {"i2i_P@5": 0.6}], keys=("i2t_P@5",))
    row = seeds.loc["supervised ceiling (image→image)"]
    assert row["i2t_P@5 mean"] == pytest.approx(0.7) and row["seeds"] == 2 and row["i2t_P@5 std"] > 0
    assert seeds.loc["gloria", "i2t_P@5 / ceiling"] == pytest.approx(0.6 / 0.7)


def test_grounding_table_groups_and_ratios_to_ceiling_and_floor():
    def g(pg, patch, large):
        return {"pointing_game": pg, "pointing_patch": patch, "mask_auroc": 0.6, "n_phrases": 10,
                "groups": {"large": {"n": 4, "pointing": large, "pointing_patch": large, "mask_auroc": 0.7},
                           "small": {"n": 2, "pointing": 0.0, "pointing_patch": 0.5, "mask_auroc": 0.5}}}

    t = grounding_table({"untrained": [g(0.05, 0.1, 0.1)], "gloria": [g(0.2, 0.3, 0.5), g(0.3, 0.4, 0.7)],
                         "ceiling": [g(0.25, 0.5, 0.8)]}, ceiling="ceiling", floor="untrained")
    assert t.loc["gloria", "pointing"] == pytest.approx(0.25) and t.loc["gloria", "large: pointing"] == pytest.approx(0.6)
    assert t.loc["gloria", "pointing / ceiling"] == pytest.approx(1.0) and t.loc["gloria", "pointing / floor"] == pytest.approx(5.0)
    assert t.loc["gloria", "large: n"] == 4 and t.loc["gloria", "seeds"] == 2
    assert "pointing std" in t.columns and t.loc["ceiling", "pointing / ceiling"] == 1.0
