"""Rule-based CheXpert-style labeler: hand-written cases per observation, aggregation,
scopes, XXXX tokens, the CSV writer, and agreement with the report writer's known findings."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from medalign_lite.data.findings import (
    CATALOGUE,
    CHEXPERT_LABELS,
    SEVERITIES,
    Finding,
    chexpert_labels,
)
from medalign_lite.data.reports import write_report
from medalign_lite.text import labeler
from medalign_lite.text.labeler import (
    CHEXPERT_LEXICON,
    Lexicon,
    Term,
    bench_labeler,
    label_csv,
    label_report,
    label_reports,
    scope_spans,
)

NAN = float("nan")

# (text, {observation: expected}); observations not listed are not checked.
CASES = [
    # --- Enlarged Cardiomediastinum
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1, "No Finding": NAN}),
    ("Widening of the superior mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("The cardiomediastinal silhouette is within normal limits.", {"Enlarged Cardiomediastinum": 0}),
    ("Normal mediastinal contours.", {"Enlarged Cardiomediastinum": 0}),
    ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": -1, "No Finding": NAN}),
    ("Possible mediastinal widening.", {"Enlarged Cardiomediastinum": -1}),
    # --- Cardiomegaly
    ("Mild cardiomegaly.", {"Cardiomegaly": 1, "No Finding": NAN}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Borderline enlarged cardiac silhouette.", {"Cardiomegaly": 1}),
    ("Heart size is normal.", {"Cardiomegaly": 0, "No Finding": 1}),
    ("Normal heart size.", {"Cardiomegaly": 0}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": 0}),
    ("HEART: Normal.", {"Cardiomegaly": 0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0}),
    ("Borderline heart size.", {"Cardiomegaly": -1}),
    ("The heart may be enlarged.", {"Cardiomegaly": -1}),
    ("The heart is enlarged and the lungs are clear.", {"Cardiomegaly": 1}),
    ("There is mild cardiomegaly and the lungs are clear.", {"Cardiomegaly": 1}),
    ("The heart and lungs have XXXX XXXX in the interval.", {"Cardiomegaly": NAN}),
    ("Opacity projecting over the heart.", {"Cardiomegaly": NAN, "Lung Opacity": 1}),
    ("Congestive heart failure.", {"Edema": 1, "Cardiomegaly": -1}),
    # --- Lung Opacity
    ("Patchy left basilar airspace opacity.", {"Lung Opacity": 1}),
    ("Right lower lobe infiltrate.", {"Lung Opacity": 1}),
    ("No focal airspace disease.", {"Lung Opacity": 0}),
    ("Questionable right upper lobe opacity.", {"Lung Opacity": -1}),
    ("Radiopaque densities overlying the patient.", {"Lung Opacity": NAN}),
    # --- Lung Lesion
    ("8 mm right upper lobe nodule.", {"Lung Lesion": 1}),
    ("Calcified granuloma in the left upper lobe.", {"Lung Lesion": 1}),
    ("Right upper lobe nodular density measuring 8 mm.", {"Lung Lesion": 1, "Lung Opacity": NAN}),
    ("No suspicious pulmonary mass or nodule.", {"Lung Lesion": 0}),
    ("Findings suspicious for a mass.", {"Lung Lesion": -1}),
    ("Lytic lesion of the humerus.", {"Lung Lesion": NAN}),
    # --- Edema
    ("Mild interstitial pulmonary edema.", {"Edema": 1}),
    ("Pulmonary vascular congestion.", {"Edema": 1}),
    ("No pulmonary edema.", {"Edema": 0}),
    ("Findings may represent mild edema.", {"Edema": -1}),
    ("Prominent pulmonary vasculature.", {"Edema": -1}),
    ("Soft tissue edema of the chest wall.", {"Edema": NAN}),
    # --- Consolidation
    ("Left lower lobe consolidation with air bronchograms.", {"Consolidation": 1}),
    ("No focal consolidation.", {"Consolidation": 0}),
    ("Consolidation in the left lower lobe has resolved.", {"Consolidation": 0}),
    ("Resolved right middle lobe consolidation.", {"Consolidation": 0}),
    ("Consolidation versus atelectasis at the left base.", {"Consolidation": -1, "Atelectasis": -1}),
    # --- Pneumonia
    ("Right lower lobe pneumonia.", {"Pneumonia": 1}),
    ("No evidence of pneumonia.", {"Pneumonia": 0}),
    ("Cannot exclude pneumonia.", {"Pneumonia": -1, "No Finding": NAN}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Airspace disease concerning for pneumonia.", {"Pneumonia": -1, "Lung Opacity": 1}),
    # --- Atelectasis
    ("Bibasilar atelectasis.", {"Atelectasis": 1}),
    ("Left lower lobe plate-like atelectasis.", {"Atelectasis": 1, "Support Devices": NAN}),
    ("No atelectasis.", {"Atelectasis": 0}),
    ("Findings may represent atelectasis.", {"Atelectasis": -1, "No Finding": NAN}),
    ("Left basilar opacity may represent atelectasis.", {"Atelectasis": -1, "Lung Opacity": 1}),
    ("Atelectasis or pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Vertebral body collapse at T8.", {"Atelectasis": NAN}),
    # --- Pneumothorax
    ("Small right apical pneumothorax.", {"Pneumothorax": 1}),
    ("No pneumothorax.", {"Pneumothorax": 0}),
    ("Pneumothorax is not seen.", {"Pneumothorax": 0}),
    ("Possible tiny left apical pneumothorax.", {"Pneumothorax": -1}),
    ("Small pneumothorax with a visible pleural line at the right apex.",
     {"Pneumothorax": 1, "Support Devices": NAN}),
    # --- Pleural Effusion
    ("Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("No pleural effusion.", {"Pleural Effusion": 0, "No Finding": 1}),
    ("No change in small left pleural effusion.", {"Pleural Effusion": 1}),
    ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": 0}),
    ("Possible small right pleural effusion.", {"Pleural Effusion": -1}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": -1}),
    ("The costophrenic angles are sharp.", {"Pleural Effusion": 0}),
    ("Small pericardial effusion.", {"Pleural Effusion": NAN}),
    # --- Pleural Other
    ("Right apical pleural thickening.", {"Pleural Other": 1}),
    ("No pleural thickening.", {"Pleural Other": 0}),
    ("Pleural thickening versus small effusion.", {"Pleural Other": -1, "Pleural Effusion": -1}),
    # --- Fracture
    ("Acute nondisplaced left 8th rib fracture.", {"Fracture": 1, "No Finding": NAN}),
    ("Healed right rib fracture.", {"Fracture": 1}),
    ("No displaced rib fractures.", {"Fracture": 0}),
    ("Possible nondisplaced fracture of the left 6th rib.", {"Fracture": -1}),
    # --- Support Devices
    ("Right internal jugular central venous catheter with tip in the SVC.", {"Support Devices": 1}),
    ("Status post median sternotomy.", {"Support Devices": 1, "No Finding": 1}),
    ("No lines or tubes.", {"Support Devices": 0}),
    ("LINES/TUBES: None.", {"Support Devices": 0}),
    ("Kerley B lines.", {"Support Devices": NAN, "Edema": -1}),
    # --- scope: negation and uncertainty stop at ; but however which ...
    ("No effusion; small pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 1}),
    ("No pneumothorax, but there is a small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No consolidation; however, a small effusion is present.", {"Consolidation": 0, "Pleural Effusion": 1}),
    ("There is no pneumothorax, and there is a small right effusion.",
     {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("Small left effusion, no pneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    ("No focal consolidation, suspicious pulmonary opacity, pneumothorax or definite pleural effusion.",
     {"Consolidation": 0, "Lung Opacity": 0, "Pneumothorax": 0, "Pleural Effusion": 0, "No Finding": 1}),
    ("Possible small left effusion, but no pneumothorax.", {"Pleural Effusion": -1, "Pneumothorax": 0}),
    ("Heart size and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    # --- aggregation: positive wins, uncertain beats negative
    ("No pneumothorax. Small right pneumothorax.", {"Pneumothorax": 1}),
    ("No effusion. Possible small effusion.", {"Pleural Effusion": -1}),
    # --- No Finding
    ("Normal chest.", {"No Finding": 1}),
    ("No acute cardiopulmonary abnormality.", {"No Finding": 1}),
    ("Endotracheal tube in satisfactory position. The lungs are clear.", {"No Finding": 1, "Support Devices": 1}),
    ("Degenerative changes of the thoracic spine.", {"No Finding": 1}),
    ("Heart size is normal. Questionable left basilar atelectasis.", {"No Finding": NAN, "Atelectasis": -1}),
]


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:48] for c in CASES])
def test_hand_written_cases(text, expected):
    got = label_report(text)
    wrong = {k: (got[k], v) for k, v in expected.items() if not _same(got[k], float(v))}
    assert not wrong, f"{text!r}: (got, expected) {wrong}"


def test_every_observation_has_positive_negative_and_uncertain_cases():
    seen = {o: set() for o in CHEXPERT_LABELS}
    for _, expected in CASES:
        for o, v in expected.items():
            seen[o].add("blank" if np.isnan(v) else v)
    for o in CHEXPERT_LABELS[1:]:
        assert {1, 0} <= seen[o], o
        if o != "Support Devices":
            assert -1 in seen[o], o


def test_no_finding_is_one_or_blank_never_zero():
    values = label_reports([c[0] for c in CASES])[:, 0]
    assert set(np.unique(values[~np.isnan(values)])) == {1.0}


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_empty_text_is_all_blank(empty):
    assert all(np.isnan(v) for v in label_report(empty).values())


def test_xxxx_tokens_are_plain_words():
    assert label_report("XXXX XXXX. XXXX.")["No Finding"] == 1
    assert label_report("No XXXX, pleural effusion or pneumothorax.")["Pleural Effusion"] == 0
    assert np.isnan(label_report("Right chest XXXX tip in the SVC.")["Support Devices"])  # no device word
    out = label_report("Heart XXXX, mediastinum, XXXX, bony structures and lung XXXX are unremarkable.")
    assert out["Cardiomegaly"] == 0 and out["Enlarged Cardiomediastinum"] == 0


def test_scopes_split_at_clause_words_not_decimals():
    text = labeler.normalize("A 2.5 cm nodule, but no effusion; there is atelectasis (which is new)")
    pieces = [text[a:b].strip() for a, b in scope_spans(text)]
    assert pieces[0] == "a 2.5 cm nodule," and pieces[1] == "but no effusion"
    assert "there is atelectasis" in pieces and "which is new" in pieces


def test_label_reports_matches_label_report():
    texts = [c[0] for c in CASES[:20]]
    arr = label_reports(texts)
    assert arr.shape == (20, 14) and arr.dtype == np.float64
    for row, t in zip(arr, texts):
        assert all(_same(a, b) for a, b in zip(row, label_report(t).values()))
    assert label_reports([]).shape == (0, 14)
    assert list(label_report("x")) == list(CHEXPERT_LABELS)


def test_lexicon_order_and_literal_heads():
    assert labeler._literal_heads("(?:the )?heart(?: size)?") == ["the heart(?: size)?", "heart(?: size)?"]
    assert labeler._literal_heads("(?:a |b )+c") == ["a (?:a |b )*c", "b (?:a |b )*c"]
    with pytest.raises(ValueError, match="must start"):
        Lexicon([Term(("X",), r"\w+ly thing")])
    with pytest.raises(ValueError, match="capturing"):
        Term(("X",), r"(a|b)")
    # an unmention listed after a mention still wins at the same position
    lex = Lexicon([Term(("E",), "effusion"), Term(("E",), "pericardial effusion", "unmention"),
                   Term(("P",), "pericardial")])
    assert [m.label for m in lex.mentions("pericardial effusion. pericardial")] == ["P"]


def test_mentions_carry_offsets_into_the_text():
    text = "Small left pleural effusion. No pneumothorax."
    ms = CHEXPERT_LEXICON.mentions(text)
    assert [(m.label, m.status, text[m.start:m.end]) for m in ms] == [
        ("Pleural Effusion", 1, "effusion"), ("Pneumothorax", 0, "pneumothorax")]


# --------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------

def test_label_csv_keeps_every_row_and_column(tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"study_id": ["s1", "s2", "s3", "s4"],
                  "findings": ["Small left effusion.", "", "Cannot exclude pneumonia.", "Normal chest."],
                  "impression": ["", "No acute disease.", "", ""],
                  "Cardiomegaly": ["", "", "", ""],   # an existing (blank) label column
                  "score": ["007", "1.50", "", "x"]}).to_csv(src, index=False)
    out = label_csv(src, ["findings", "impression"], tmp_path / "out.csv")
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(df) == 4
    assert list(df.columns[:5]) == ["study_id", "findings", "impression", "Cardiomegaly", "score"]
    assert set(CHEXPERT_LABELS) <= set(df.columns) and len(df.columns) == 4 + 14
    assert df["score"].tolist() == ["007", "1.50", "", "x"]          # untouched text
    assert df["Pleural Effusion"].tolist() == ["1", "", "", ""]
    assert df["Pneumonia"].tolist() == ["", "", "-1", ""]
    assert df["No Finding"].tolist() == ["", "1", "", "1"]
    assert set(df[list(CHEXPERT_LABELS)].to_numpy().ravel()) <= {"1", "0", "-1", ""}
    # single column, same file in and out
    label_csv(out, "findings", out)
    assert pd.read_csv(out, dtype=str, keep_default_na=False)["No Finding"].tolist() == ["", "", "", "1"]


def test_label_csv_errors_name_file_and_column(tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"report": ["No effusion."]}).to_csv(src, index=False)
    with pytest.raises(KeyError, match=r"in\.csv.*'findings'"):
        label_csv(src, "findings", tmp_path / "out.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        label_csv(tmp_path / "missing.csv", "report", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_label_csv_is_atomic(tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    pd.DataFrame({"report": ["No effusion."] * 3}).to_csv(src, index=False)
    dst = tmp_path / "out.csv"
    dst.write_text("previous content\n")

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError, match="disk full"):
        label_csv(src, "report", dst)
    assert dst.read_text() == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]  # no temp file left


def test_bench_labeler_returns_a_rate():
    rate = bench_labeler([c[0] for c in CASES], repeat=1)
    assert rate > 0
    with pytest.raises(ValueError):
        bench_labeler([])


# --------------------------------------------------------------------------------------
# Agreement with the report writer's known findings
# --------------------------------------------------------------------------------------

def _random_findings(rng: random.Random) -> list[Finding]:
    out = []
    for _ in range(rng.choice([0, 1, 1, 2, 2, 3])):
        t = CATALOGUE[rng.choice(sorted(CATALOGUE))]
        out.append(Finding(t.name, rng.choice(t.sides), rng.choice(t.zones), rng.choice(SEVERITIES),
                           rng.choice(t.variants) if t.variants else None, instance=len(out)))
    return out


@pytest.fixture(scope="module")
def synthetic():
    """400 written reports (2/3 free, 1/3 structured, some with changes and resolved
    findings), their labels and the truth from ``findings.chexpert_labels``."""
    rng = random.Random(0)
    texts, truth = [], []
    for i in range(400):
        fs = _random_findings(rng)
        kinds = {f.kind for f in fs}
        changes = {k: rng.choice(["new", "worse", "better", "unchanged"]) for k in range(len(fs))
                   if rng.random() < 0.2}
        resolved = [f for f in _random_findings(rng)[:1] if f.kind not in kinds and rng.random() < 0.3]
        r = write_report(fs, rng.choice(["free", "free", "structured"]), seed=i, changes=changes,
                         resolved=resolved)
        texts.append(r.findings + "\n" + r.impression)
        truth.append([chexpert_labels(fs)[o] for o in CHEXPERT_LABELS])
    return texts, label_reports(texts), np.array(truth)


def test_synthetic_reports_agree_with_known_findings(synthetic):
    _, labels, truth = synthetic
    pos = labels == 1
    for j, o in enumerate(CHEXPERT_LABELS):
        t, p = truth[:, j] == 1, pos[:, j]
        accuracy = np.mean(t == p)
        assert accuracy >= 0.95, (o, accuracy)
        if o != "No Finding":  # every present finding is found, and found positive
            assert p[t].mean() >= 0.97, (o, p[t].mean())
    # absent kinds are never called uncertain by the writer's wording
    assert not np.any((labels == -1) & (truth == 1))


def test_synthetic_reports_have_no_false_positive(synthetic):
    """The writer's wording and the labeler's lexicons follow one convention: no observation
    is called positive that the findings do not make positive."""
    texts, labels, truth = synthetic
    fp = (labels == 1) & (truth == 0)
    assert not fp[:, 1:].any(), [texts[i] for i in np.flatnonzero(fp[:, 1:].any(1))[:3]]


@pytest.mark.slow
def test_iu_reports_agree_with_their_mesh_codes():
    """Real text: the 3,955 IU reports against their manual MeSH codes (mapped to CheXpert
    positives by the data layer). Agreement of positives per observation."""
    iu = pytest.importorskip("medalign_lite.data.iu_xray")
    from medalign_lite.data.findings import mesh_to_findings
    try:
        df = iu.load_iu_reports()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(str(e))
    labels = label_reports((df.findings + " " + df.impression).tolist())
    truth = np.array([[chexpert_labels([f for c in codes for f in (mesh_to_findings(c) or [])])[o]
                       for o in CHEXPERT_LABELS] for codes in df.mesh])
    accuracy = np.mean((labels == 1) == (truth == 1), axis=0)
    assert accuracy.min() >= 0.9, dict(zip(CHEXPERT_LABELS, accuracy.round(3)))
    assert 0.45 <= np.mean(labels[:, 0] == 1) <= 0.7
