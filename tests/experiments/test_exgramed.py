"""ExGra-Med's experiment layer: the configs and their stages, the instruction data of a phantom
and of a LLaVA-Med manifest, nested data fractions, the text-only floors and the probe ceiling,
the mechanism checks the notebook draws (I-MLE against finite differences, solver accuracy
against noise), and a two-variant run end to end at smoke size."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medalign_lite.data.builders import get_builder
from medalign_lite.experiments.exgramed import (
    SMOKE_OVERRIDES,
    VARIANTS,
    ConversationItems,
    fraction_indices,
    imle_gradient_check,
    load_exgramed_experiment,
    load_instruction_data,
    solver_noise_curve,
)
from medalign_lite.experiments.exgramed_runs import majority_answers


@pytest.fixture(scope="module")
def iu(tmp_path_factory):
    return get_builder("iu-phantom")(tmp_path_factory.mktemp("iu"), size=48, limit=40, seed=0, progress=False,
                                     workers=1)


def test_configs_load_with_their_two_stages():
    tiny = load_exgramed_experiment("exgramed_tiny")
    assert [s.inputs.get("align", True) for s in tiny.train.stages] == [False, True]
    assert tiny.train.stages[0].trainable == ["projector.*"] and tiny.model.alpha == 1.0 and tiny.train.batch_size == 16
    full = load_exgramed_experiment("exgramed_full")
    assert full.train.stages[1].lr == 2e-5 and full.train.stages[1].epochs == 3 and full.train.precision == "bf16"
    assert full.model.lora is False and "lm.*" in full.train.stages[1].trainable and full.vision.hidden_layer == -2
    smoke = load_exgramed_experiment("exgramed_tiny", SMOKE_OVERRIDES)
    assert smoke.train.stages[1].max_steps == 3 and smoke.llm.hidden_size == 32
    with pytest.raises(ValueError, match="train.stages"):
        load_exgramed_experiment("exgramed_tiny", ["train.stages.0.inputs={align: true}"])


def test_fractions_are_nested_and_seeded():
    a, b, c = (fraction_indices(100, f, seed=3) for f in (0.1, 0.4, 1.0))
    assert len(a) == 10 and len(b) == 40 and c == list(range(100))
    assert set(a) <= set(b) and fraction_indices(100, 0.1, seed=3) == a and fraction_indices(100, 0.1, seed=4) != a
    assert fraction_indices(5, 0.01) and len(fraction_indices(5, 0.01)) == 1
    with pytest.raises(ValueError):
        fraction_indices(10, 0.0)
    assert {v.fraction for v in VARIANTS.values()} == {0.1, 0.4, 1.0}


def test_instruction_data_of_a_phantom_manifest(iu):
    data = load_instruction_data(iu, turns=3, seed=0)
    n = len(data.study_ids)
    assert n == len(data.captions) == len(data.conversations) == len(data.findings) > 20
    for rec, cap in zip(data.conversations, data.captions):
        assert len(rec["conversation"]) == len(rec["extended"]) == len(rec["keys"]) == 3
        assert len(cap["conversation"]) == 1 and cap["conversation"][0][1]
    items = ConversationItems(np.zeros((n, 4, 2)), data.study_ids, data.conversations, [0, 2])
    assert len(items) == 2 and items[1]["study_id"] == data.study_ids[2] and "keys" in items[1]
    assert load_instruction_data(iu, turns=3, seed=0).conversations == data.conversations


def test_instruction_data_of_a_llava_med_manifest(tmp_path):
    from PIL import Image

    root = tmp_path / "llava"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "a.png")
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A CT."},
            {"from": "human", "value": "Any mass?"}, {"from": "gpt", "value": "No."}]
    long = [dict(t, value=t["value"] + " More.") if t["from"] == "gpt" else t for t in conv]
    (root / "x.json").write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": conv,
                                              "conversations_long": long}]))
    manifest = get_builder("llava-med-instruct")(tmp_path / "out", root=root, progress=False)
    data = load_instruction_data(manifest)
    assert data.conversations[0]["conversation"] == [("What is it?", "A CT."), ("Any mass?", "No.")]
    assert data.conversations[0]["extended"] == ["A CT. More.", "No. More."]
    assert data.captions[0]["conversation"] == [("What is it?", "A CT.")] and data.findings is None


def test_majority_floors_by_template_and_by_question():
    convs = [{"conversation": [("is there a nodule?", "yes."), ("which side is the nodule on?", "left.")],
              "keys": [("presence", "yes"), ("side", "left")]},
             {"conversation": [("is there cardiomegaly?", "no."), ("is there a nodule?", "no.")],
              "keys": [("absence", "no"), ("absence", "no")]},
             {"conversation": [("is there cardiomegaly?", "no.")], "keys": [("absence", "no")]}]
    table = pd.DataFrame({"kind": ["presence", "side", "severity"],
                          "question": ["is there a nodule?", "which side is the nodule on?", "how severe is it?"],
                          "answer_type": ["CLOSED", "OPEN", "OPEN"]})
    assert majority_answers(convs, table) == ["no", "left", "none"]  # "is there X?": 3 no, 1 yes
    per_q = majority_answers(convs, table, per_question=True)
    assert per_q[1:] == ["left", "none"] and per_q[0] in ("yes", "no")  # the nodule question: 1 yes, 1 no


def test_imle_check_and_solver_curve_the_notebook_draws():
    check = imle_gradient_check(samples=20_000, lams=(0.5, 80.0))
    assert check["fd"].shape == (4, 4) and check["cosines"][0.5] > 0.95
    curve = solver_noise_curve(sigmas=(0.0, 1.0, 4.0), trials=8)
    assert curve["lap"][0] == curve["ipfp"][0] == 1.0
    assert curve["lap"][-1] < curve["lap"][0] and curve["ipfp"][-1] < curve["ipfp"][0]


@pytest.mark.slow
def test_a_two_variant_run_end_to_end(iu, tmp_path):
    """Smoke size: stage 1 once, ExGra-Med and the α = 0 baseline at 10 %, VQA scored for both and
    the floors, the claims rule on the pair, metrics flat. (The smoke stand-ins are cached where
    the notebooks' smoke runs cache theirs.)"""
    from medalign_lite.experiments.exgramed_runs import exgramed_claims, run_exgramed

    vqa = get_builder("phantom-vqa")(tmp_path / "pvqa", size=48, limit=6, seed=0, progress=False, workers=1)
    exp = load_exgramed_experiment("exgramed_tiny", [*SMOKE_OVERRIDES, "vision.image_size=48"])
    res = run_exgramed(exp, iu, vqa, tmp_path / "run", variants=["exgramed@10", "llava_med@10"], device="cpu",
                       keep_models=("exgramed@10",))
    assert [r.name for r in res.runs] == ["exgramed@10", "llava_med@10"]
    n_q = len(res.questions)
    for r in res.runs:
        assert len(r.answers) == n_q and r.contributions.shape == (n_q, 4)
        assert 0 <= r.scores["closed_accuracy"] <= 1 and r.n_train == 3  # 10 % of ~28 training studies
    assert any("align_loss" in h for h in res.runs[0].history) and not any("align_loss" in h for h in res.runs[1].history)
    assert res.runs[0].model is not None and res.runs[1].model is None
    assert {"majority", "question_prior", "probe"} <= set(res.baselines)
    claims = exgramed_claims(res)
    assert [c.name for c in claims] == ["ExGra-Med 10 % > baseline 10 %"]
    m = res.metrics()
    assert "vqa/exgramed@10/closed_accuracy_mean" in m and "vqa/majority/closed_accuracy" in m
    from medalign_lite.experiments.exgramed_runs import baseline_claims

    strict = baseline_claims(res, "exgramed@10", strict=True)
    assert [c.b for c in strict] == ["majority_strict", "probe_strict", "llava_med@10_strict"]
