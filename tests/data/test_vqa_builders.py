"""ExGra-Med's data: instruction conversations and extended answers written from findings,
Phantom-VQA (patient-disjoint, known answers), and the real-format builders (LLaVA-Med
instruction JSON with conversations_long, VQA-RAD, SLAKE English subset, PathVQA from Parquet)
on small fake files made here."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medalign_lite.data.builders import get_builder
from medalign_lite.data.builders.realdata import LayoutError, SourceFileError
from medalign_lite.data.builders.vqa import vqa_items
from medalign_lite.data.findings import Finding, findings_from_json
from medalign_lite.data.instructions import (
    QUESTION_KINDS,
    caption_conversation,
    study_conversation,
    vqa_questions,
)
from medalign_lite.data.manifest import load_manifest, split_patients

EFFUSION = Finding("pleural_effusion", "left", severity="moderate")
NODULE = Finding("nodule", "right", "upper", severity="mild")
HEART = Finding("cardiomegaly", severity="severe")


# --- conversations from findings ---------------------------------------------------------------


def test_conversation_answers_follow_the_findings():
    findings = [EFFUSION, NODULE, HEART]
    for seed in range(40):
        conv = study_conversation(findings, seed, turns=4)
        assert len(conv) == 4 and len({t.kind for t in conv}) == 4
        for t in conv:
            assert t.extended.startswith(t.answer) and len(t.extended) >= len(t.answer)
            if t.kind == "presence":
                assert t.key == "yes" and t.answer.startswith("yes")
            elif t.kind == "absence":
                assert t.key == "no" and not any(n in t.question for n in ("pleural effusion", "nodule", "cardiomegaly"))
            elif t.kind == "side":
                assert t.key in ("left", "right") and t.key in t.answer
                assert ("effusion" in t.question) == (t.key == "left")
            elif t.kind == "severity":
                assert t.key in ("moderate", "mild", "severe") and t.key in t.answer
                want = {"pleural effusion": "moderate", "nodule": "mild", "cardiomegaly": "severe"}
                assert any(want[k] == t.key for k in want if k in t.question)
            elif t.kind == "normal":
                assert t.key == "no"
            elif t.kind == "abnormality":
                assert t.key == "pleural effusion and nodule and cardiomegaly"
    assert study_conversation(findings, 3) == study_conversation(findings, 3)  # a pure function of the seed
    assert study_conversation(findings, 3) != study_conversation(findings, 4)


def test_extended_answers_are_the_writers_restatement_of_the_same_finding():
    conv = study_conversation([EFFUSION, HEART], 0, turns=len(QUESTION_KINDS))
    for t in conv:
        extra = t.extended[len(t.answer):].lower()
        if t.kind in ("presence", "side", "severity", "zone") and "effusion" in t.question:
            assert "effusion" in extra and "cardiomegaly" not in extra and "heart" not in extra
        if t.kind == "describe":
            assert "effusion" in extra and ("cardiomegaly" in extra or "cardiac" in extra)


def test_a_normal_study_gets_no_finding_questions():
    conv = study_conversation([], 1, turns=8)
    assert {t.kind for t in conv} == {"describe", "absence", "abnormality", "normal"}
    assert next(t for t in conv if t.kind == "normal").key == "yes"
    assert next(t for t in conv if t.kind == "abnormality").key == "none"
    qs = vqa_questions([], 2)
    assert [t.key for t in qs if t.answer_type == "CLOSED"] == ["no", "yes"]


def test_vqa_questions_closed_and_open():
    qs = vqa_questions([EFFUSION, NODULE], 5)
    kinds = [t.kind for t in qs]
    assert kinds == ["presence", "absence", "normal", "side", "severity", "abnormality"]
    closed = {t.kind: t.key for t in qs if t.answer_type == "CLOSED"}
    assert closed == {"presence": "yes", "absence": "no", "normal": "no"}
    assert all(t.answer_type == "OPEN" for t in qs if t.kind in ("side", "severity", "abnormality"))
    assert caption_conversation("The heart is normal.", 0)[0][1] == "The heart is normal."


# --- Phantom-VQA ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pvqa(tmp_path_factory):
    out = tmp_path_factory.mktemp("pvqa")
    return get_builder("phantom-vqa")(out, size=48, limit=12, seed=0, progress=False, workers=1)


def test_phantom_vqa_is_iu_phantoms_test_split_with_new_patients(pvqa):
    from medalign_lite.data.builders.common import patient_seed
    from medalign_lite.data.iu_xray import load_iu_reports

    df = load_manifest(pvqa)
    assert len(df) == 12 and set(df["split"]) == {"test"} and set(df["dataset"]) == {"phantom-vqa"}
    reports = load_iu_reports()
    reports = reports[(reports["findings"].str.strip() != "") | (reports["impression"].str.strip() != "")]
    test_uids = {u for u, s in split_patients(reports["uid"], seed=0).items() if s == "test"}  # iu-phantom's
    uid_of = dict(zip(reports["report_id"].astype(str), reports["uid"]))
    assert all(uid_of[r] in test_uids for r in df["report_id"])  # only test-split reports
    from medalign_lite.data.builders import iu_phantom_extra, phantom_5x200, phantom_vqa

    ours = {patient_seed(0, phantom_vqa.PATIENT_OFFSET + int(r)) for r in df["report_id"]}
    others = ({patient_seed(0, i) for i in range(10_000)}  # IU-Phantom (report ids), IU-Phantom-extra, Phantom-5x200
              | {patient_seed(0, iu_phantom_extra.PATIENT_OFFSET + j) for j in range(iu_phantom_extra.DEFAULT_STUDIES)}
              | {patient_seed(0, phantom_5x200.PATIENT_OFFSET + i) for i in range(1000)})
    assert len(ours) == len(df) and not ours & others  # new patients, whatever else a run trains on
    items = vqa_items(df)
    assert len(items) >= 3 * len(df) and set(items["answer_type"]) == {"CLOSED", "OPEN"}
    for i, row in df.iterrows():  # answers follow the rendered findings
        fs = findings_from_json(row["findings_json"])
        mine = items[items["index"] == i]
        normal = mine[mine["kind"] == "normal"]["answer"].item()
        assert normal == ("yes" if not fs else "no")
        if fs:
            assert mine[mine["kind"] == "presence"]["answer"].item() == "yes"


# --- real formats on fake files -----------------------------------------------------------------


def _png(path, value=100, size=(20, 16), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1] + ((3,) if mode == "RGB" else ()), value, np.uint8), mode).save(path)


def test_vqa_rad_split_by_phrase_type_and_shared_images(tmp_path):
    root = tmp_path / "rad"
    folder = root / "VQA_RAD Image Folder"
    for name in ("synpic1.jpg", "synpic2.jpg"):
        _png(folder / name)
    recs = [{"qid": 1, "image_name": "synpic1.jpg", "question": "is there a mass?", "answer": "yes",
             "answer_type": "CLOSED", "phrase_type": "freeform"},
            {"qid": 2, "image_name": "synpic1.jpg", "question": "where is the mass?", "answer": "left lung",
             "answer_type": "OPEN ", "phrase_type": "test_freeform"},
            {"qid": 3, "image_name": "synpic2.jpg", "question": "is this a ct?", "answer": "no",
             "answer_type": "closed", "phrase_type": "para"}]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(recs))
    df = load_manifest(get_builder("vqa-rad")(tmp_path / "out", root=root, size=12, progress=False))
    assert sorted(df["study_id"]) == ["synpic1.jpg#test", "synpic1.jpg#train", "synpic2.jpg"]
    assert dict(zip(df["study_id"], df["split"]))["synpic1.jpg#test"] == "test"
    items = vqa_items(df)
    assert dict(zip(items["qid"], items["answer_type"])) == {"1": "CLOSED", "2": "OPEN", "3": "CLOSED"}
    with Image.open(Path(df.attrs["root"]) / df["frontal"].iloc[0]) as im:
        assert min(im.size) == 12 and im.mode == "L"
    bad = [dict(recs[0]), {"qid": 9, "image_name": "synpic2.jpg", "answer": "yes"}]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(bad))
    with pytest.raises(SourceFileError, match=r"VQA_RAD Dataset Public.json: record 1 has no field 'question'"):
        get_builder("vqa-rad")(tmp_path / "out2", root=root, progress=False)
    assert not (tmp_path / "out2" / "manifest.csv").exists()
    (root / "VQA_RAD Dataset Public.json").write_text("[{not json")
    with pytest.raises(SourceFileError, match="cannot read the VQA-RAD questions"):
        get_builder("vqa-rad")(tmp_path / "out3", root=root, progress=False)


def test_slake_keeps_english_questions_and_the_released_splits(tmp_path):
    root = tmp_path / "slake"
    for i in range(3):
        _png(root / "imgs" / f"xmlab{i}" / "source.jpg", 30 * i)
    def rec(qid, img, lang, q="Which organ is abnormal?", a="Lung", t="OPEN"):
        return {"qid": qid, "img_id": img, "img_name": f"xmlab{img}/source.jpg", "question": q, "answer": a,
                "q_lang": lang, "answer_type": t, "modality": "CT", "location": "Chest"}
    (root / "train.json").write_text(json.dumps([rec(1, 0, "en"), rec(2, 0, "zh", "哪个器官", "肺")]))
    (root / "validate.json").write_text(json.dumps([rec(3, 1, "en", "Is it normal?", "No", "CLOSED")]))
    (root / "test.json").write_text(json.dumps([rec(4, 2, "zh"), rec(5, 2, "en")]))
    df = load_manifest(get_builder("slake")(tmp_path / "out", root=root, progress=False))
    assert dict(zip(df["study_id"], df["split"])) == {"xmlab0/source.jpg": "train", "xmlab1/source.jpg": "val",
                                                     "xmlab2/source.jpg": "test"}
    items = vqa_items(df)
    assert sorted(items["qid"]) == ["1", "3", "5"] and set(df["modality"]) == {"CT"}
    (root / "test.json").unlink()
    with pytest.raises(LayoutError, match="SLAKE test file not found"):
        get_builder("slake")(tmp_path / "out2", root=root, progress=False)


def test_pathvqa_from_parquet_never_pickle(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path / "pvqa" / "data"
    root.mkdir(parents=True)

    def img(v):
        b = io.BytesIO()
        Image.fromarray(np.full((10, 14, 3), v, np.uint8), "RGB").save(b, format="PNG")
        return {"bytes": b.getvalue(), "path": None}

    for split, rows in {"train": [(img(10), "is this a nucleus?", "yes"), (img(10), "what is shown?", "mitosis"),
                                  (img(80), "is there necrosis?", "no")],
                        "validation": [(img(120), "what organ?", "liver")],
                        "test": [({"bytes": b"not an image", "path": None}, "q?", "a"), (img(200), "any fibrosis?", "no")]}.items():
        table = pa.table({"image": [r[0] for r in rows], "question": [r[1] for r in rows], "answer": [r[2] for r in rows]})
        pq.write_table(table, root / f"{split}-00000-of-00001.parquet")
    (tmp_path / "pvqa" / "pvqa.pkl").write_bytes(b"\x80\x04 never opened")
    out = get_builder("pathvqa")(tmp_path / "out", root=tmp_path / "pvqa", progress=False)
    df = load_manifest(out)
    assert sorted(df["split"]) == ["test", "train", "train", "val"]  # two training images (one asked twice)
    items = vqa_items(df)
    assert len(items) == 5 and dict(zip(items["answer"], items["answer_type"]))["mitosis"] == "OPEN"
    assert set(items[items["answer"].isin(["yes", "no"])]["answer_type"]) == {"CLOSED"}
    info = json.loads((out.parent / "build_info.json").read_text())
    assert len(info["unreadable_images"]) == 1 and "test" in info["unreadable_images"][0]["path"]
    with Image.open(Path(df.attrs["root"]) / df["frontal"].iloc[0]) as im:
        assert im.mode == "L"


def test_llava_med_instruction_json_with_conversations_long(tmp_path):
    root = tmp_path / "llava"
    _png(root / "images" / "a.jpg")
    _png(root / "images" / "b.jpg")
    conv = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A chest CT."},
            {"from": "human", "value": "Any mass?"}, {"from": "gpt", "value": "No mass."}]
    long = [dict(t) for t in conv]
    long[1]["value"] = "A chest CT scan in the axial plane."
    long[3]["value"] = "No mass is visible in the lungs."
    recs = [{"id": "r1", "image": "a.jpg", "conversations": conv, "conversations_long": long},
            {"id": "r2", "image": "b.jpg", "conversatons": conv[:2]}]
    (root / "instruct.json").write_text(json.dumps(recs))
    df = load_manifest(get_builder("llava-med-instruct")(tmp_path / "out", root=root, progress=False))
    assert list(df["study_id"]) == ["r1", "r2"] and set(df["split"]) == {"train"}
    assert json.loads(df["conversations_json"].iloc[0]) == [["What is shown?", "A chest CT."], ["Any mass?", "No mass."]]
    assert json.loads(df["extended_json"].iloc[0]) == ["A chest CT scan in the axial plane.",
                                                       "No mass is visible in the lungs."]
    assert df["extended_json"].iloc[1] == ""
    recs[0]["conversations"] = [conv[1], conv[0]]
    (root / "instruct.json").write_text(json.dumps(recs))
    with pytest.raises(SourceFileError, match="record 0, field 'conversations', turn 0: expected a human turn"):
        get_builder("llava-med-instruct")(tmp_path / "out2", root=root / "instruct.json", progress=False)


def test_vqa_items_needs_a_vqa_manifest():
    with pytest.raises(ValueError, match="no qa_json column"):
        vqa_items(pd.DataFrame({"study_id": ["a"]}))
