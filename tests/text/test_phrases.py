"""Key phrases: observation / status / anatomy tuples, their text, the writer's canonical
wording of every catalogue finding, and tuple-level F1."""
from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from medalign_lite.data.findings import CATALOGUE, SEVERITIES, Finding
from medalign_lite.data.reports import finding_phrase, write_report
from medalign_lite.text import labeler, phrases
from medalign_lite.text.phrases import (
    KeyPhrase,
    extract_phrases,
    find_anatomy,
    phrase_f1,
)


def texts(report: str) -> list[str]:
    return [p.text() for p in extract_phrases(report)]


@pytest.mark.parametrize("report, expected", [
    ("Small left pleural effusion. No pneumothorax.", ["left pleural effusion", "no pneumothorax"]),
    ("Bibasilar atelectasis.", ["bilateral base atelectasis"]),
    ("Consolidation in the left lower lobe has resolved.", ["no left lower lobe consolidation"]),
    ("Possible right lower lobe pneumonia.", ["possible right lower lobe pneumonia"]),
    ("Cannot exclude pneumonia.", ["possible pneumonia"]),
    ("Heart size is normal. The mediastinum is widened.", ["no cardiomegaly", "widened mediastinum"]),
    ("Left lower lobe opacity which may represent atelectasis.",
     ["left lower lobe opacity", "possible left lower lobe atelectasis"]),
    ("Right internal jugular central venous catheter with tip in the SVC.", ["right catheter"]),
    ("There is a fracture of the left anterior 9th rib.", ["left rib fracture"]),
    ("Moderately elevated right hemidiaphragm.", ["right hemidiaphragm elevation"]),
    ("Calcified granuloma in the right upper lobe.", ["right upper lobe granuloma"]),
    ("Patchy opacity in the left retrocardiac region.", ["retrocardiac opacity"]),
    ("Effusions bilaterally.", ["bilateral pleural effusion"]),
    ("Left lower lobe consolidation and small effusion.", ["left lower lobe consolidation", "pleural effusion"]),
    ("Stable tortuous thoracic aorta. Emphysema.", ["tortuous aorta", "emphysema"]),
    ("No focal consolidation, pleural effusion or pneumothorax. No pneumothorax.",
     ["no consolidation", "no pleural effusion", "no pneumothorax"]),  # de-duplicated
    ("Lungs are clear.", []),
    ("", []),
])
def test_extract_phrases(report, expected):
    assert texts(report) == expected


def test_key_phrase_text_and_validation():
    assert KeyPhrase("consolidation", "present", "left lower lobe").text() == "left lower lobe consolidation"
    assert KeyPhrase("pleural effusion", "absent").text() == "no pleural effusion"
    assert KeyPhrase("atelectasis", "uncertain", "right base").text() == "possible right base atelectasis"
    with pytest.raises(ValueError):
        KeyPhrase("edema", "maybe")
    with pytest.raises(dataclasses.FrozenInstanceError):
        KeyPhrase("edema", "present").status = "absent"


@pytest.mark.parametrize("words, canonical", [
    ("bibasilar", "bilateral base"), ("bibasal", "bilateral base"), ("both lung bases", "bilateral base"),
    ("left basilar", "left base"), ("right lung base", "right base"), ("left lower lobe", "left lower lobe"),
    ("left lower lung zone", "left lower lobe"), ("both upper lobes", "bilateral upper lobe"),
    ("lower lobes bilaterally", "bilateral lower lobe"), ("right middle lobe", "right middle lobe"),
    ("lingular", "lingula"), ("biapical", "bilateral apex"), ("right apex", "right apex"),
    ("left apical", "left apex"), ("right hilar", "right hilum"), ("both hila", "bilateral hilum"),
    ("retrocardiac", "retrocardiac"), ("left costophrenic angle", "left costophrenic angle"),
    ("right hemidiaphragm", "right hemidiaphragm"), ("aortic arch", "aorta"), ("thoracic spine", "spine"),
    ("left 8th rib", "left rib"), ("left-sided", "left"), ("trachea", "trachea"),
    ("cardiac silhouette", "cardiac silhouette"), ("mediastinum", "mediastinum"),
])
def test_anatomy_is_normalised(words, canonical):
    found = find_anatomy(labeler.normalize(words))
    assert [a[2] for a in found] == [canonical]


def test_status_comes_from_the_labeler_machinery():
    assert isinstance(phrases.OBSERVATION_LEXICON, labeler.Lexicon)
    for report in ("No effusion; small pneumothorax.", "Findings may represent atelectasis.",
                   "Cannot exclude pneumonia.", "Stable cardiomediastinal silhouette."):
        want = {(m.label, m.status) for m in labeler.CHEXPERT_LEXICON.mentions(report)}
        got = {p.status for p in extract_phrases(report)}
        assert got == {phrases._STATUS_NAME[s] for _, s in want}, report


def _all_catalogue_findings():
    for kind, t in CATALOGUE.items():
        for side, zone, variant in itertools.product(t.sides, t.zones, t.variants or (None,)):
            yield Finding(kind, side, zone, "moderate", variant)


def test_structured_wording_of_every_catalogue_finding_gives_its_phrase():
    misses = []
    for f in _all_catalogue_findings():
        r = write_report([f], "structured")
        if finding_phrase(f) not in extract_phrases(r.findings):
            misses.append((r.phrase(r.spans[0]), finding_phrase(f).text(), texts(r.findings)))
    assert not misses, misses[:5]


def test_free_wording_agrees_with_finding_phrases():
    """Free text uses synonyms (apical pneumothorax, left-sided pacemaker ...): measure the
    share of findings whose exact tuple, and whose (observation, status), is extracted."""
    rng = random.Random(1)
    findings = list(_all_catalogue_findings())
    exact = loose = 0
    for i, f in enumerate(findings):
        f = f.with_severity(rng.choice(SEVERITIES))
        r = write_report([f], "free", seed=i)
        got = extract_phrases(r.findings + " " + r.impression)
        want = finding_phrase(f)
        exact += want in got
        loose += any((p.observation, p.status) == (want.observation, want.status) for p in got)
    assert exact / len(findings) >= 0.95
    assert loose / len(findings) >= 0.99


def test_finding_phrase_examples():
    assert finding_phrase(Finding("consolidation", "left", "lower")).text() == "left lower lobe consolidation"
    assert finding_phrase(Finding("atelectasis", "bilateral", "base")).text() == "bilateral base atelectasis"
    assert finding_phrase(Finding("pleural_effusion", "right")).text() == "right pleural effusion"
    assert finding_phrase(Finding("cardiomegaly")).text() == "cardiomegaly"
    assert finding_phrase(Finding("hyperinflation", variant="emphysema")).text() == "emphysema"
    assert finding_phrase(Finding("rib_fracture", "left", "lower")).text() == "left rib fracture"


# --------------------------------------------------------------------------------------
# phrase_f1
# --------------------------------------------------------------------------------------

def test_phrase_f1_identical_and_disjoint():
    refs = ["Small left pleural effusion. No pneumothorax.", "Bibasilar atelectasis."]
    assert phrase_f1(refs, refs) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 3, "n_ref": 3, "n_hyp": 3}
    out = phrase_f1(refs, ["Cardiomegaly.", "Right upper lobe nodule."])
    assert out["precision"] == out["recall"] == out["f1"] == 0.0


def test_phrase_f1_micro_counts_and_anatomy_variant():
    refs = ["Small left pleural effusion. No pneumothorax.",     # {left effusion, no ptx}
            "Right lower lobe consolidation."]                    # {rll consolidation}
    hyps = ["Small right pleural effusion. No pneumothorax. Cardiomegaly.",  # wrong side, ptx ok, extra
            "Right lower lobe consolidation."]
    out = phrase_f1(refs, hyps)
    assert (out["tp"], out["n_ref"], out["n_hyp"]) == (2, 3, 4)
    assert out["precision"] == pytest.approx(2 / 4) and out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    loose = phrase_f1(refs, hyps, anatomy=False)          # the side no longer matters
    assert (loose["tp"], loose["n_ref"], loose["n_hyp"]) == (3, 3, 4)


def test_phrase_f1_edge_cases():
    assert phrase_f1([], [])["f1"] == 0.0
    assert phrase_f1(["Lungs are clear."], ["Lungs are clear."])["f1"] == 0.0  # no tuples: zero division -> 0
    with pytest.raises(ValueError, match="2 references but 1"):
        phrase_f1(["a", "b"], ["a"])
