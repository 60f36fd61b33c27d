"""Report writer: spans name their findings, negatives never deny a present finding,
wording varies in free text and not in structured text, comparison language."""
from __future__ import annotations

import doctest
import itertools
import json
import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalign_lite.data import reports
from medalign_lite.data.findings import CATALOGUE, SEVERITIES, Finding
from medalign_lite.data.reports import (CHANGES, STYLES, Span, WrittenReport, describe,
                                        write_report)

# a word that identifies each kind inside its own phrase
KIND_WORDS = {
    "consolidation": r"consolidat", "airspace_opacity": r"opacit|airspace", "pneumonia": r"pneumonia",
    "atelectasis": r"atelecta", "edema": r"edema", "vascular_congestion": r"vascular congestion",
    "interstitial_markings": r"interstitial", "scarring": r"scarring", "nodule": r"nodul",
    "mass": r"\bmass\b", "granuloma": r"granuloma", "hyperinflation": r"hyperinfl|hyperexpan|emphysem",
    "hypoinflation": r"lung volumes|hypoinflated", "pleural_effusion": r"effusion",
    "pneumothorax": r"pneumothorax", "pleural_thickening": r"pleural thickening",
    "cardiomegaly": r"cardiomegaly|enlarge", "enlarged_cardiomediastinum": r"mediastin",
    "tortuous_aorta": r"tortu", "aortic_calcification": r"aort", "calcified_lymph_node": r"lymph nodes",
    "hiatal_hernia": r"hiatal hernia", "elevated_hemidiaphragm": r"hemidiaphragm",
    "rib_fracture": r"rib fracture|fracture of the .* rib", "degenerative_spine": r"degenerative|spondylosis",
    "scoliosis": r"scoliosis", "central_line": r"catheter|central line", "endotracheal_tube": r"endotracheal|ET tube",
    "pacemaker": r"pacemaker", "sternotomy_wires": r"sternotomy",
}
SIDE_WORDS = {"left": r"\bleft|lingula|retrocardiac|levoconvex",
              "right": r"\bright|dextroconvex",
              "bilateral": r"\bbilateral|\bboth\b|\bbi(basilar|basal|apical)"}
# sentences that would deny a kind (checked only in sentences carrying a negation cue)
DENIALS = {
    "pleural_effusion": r"effusion", "pneumothorax": r"pneumothorax",
    "consolidation": r"consolidation|airspace|lungs are", "pneumonia": r"consolidation|airspace|lungs are",
    "airspace_opacity": r"consolidation|airspace|lungs are", "edema": r"edema|lungs are",
    "vascular_congestion": r"edema|lungs are", "cardiomegaly": r"heart|cardiac|cardiomediastinal",
    "enlarged_cardiomediastinum": r"mediastin", "tortuous_aorta": r"mediastin",
    "hiatal_hernia": r"mediastin", "calcified_lymph_node": r"mediastin",
    "rib_fracture": r"osseous|bony", "degenerative_spine": r"osseous structures|bony thorax",
    "scoliosis": r"osseous structures|bony thorax",
    **{k: r"lungs are" for k in ("atelectasis", "nodule", "mass", "granuloma", "scarring",
                                 "interstitial_markings", "hyperinflation", "hypoinflation")},
}
NEGATION = re.compile(r"\bno\b|\bnot\b|without|normal|clear|unremarkable|intact", re.I)
HEADERS = ("LINES/TUBES", "HEART", "MEDIASTINUM", "LUNGS", "PLEURA", "DIAPHRAGM", "BONES")
IMPORTANT = {"pneumothorax", "mass", "enlarged_cardiomediastinum", "consolidation", "pneumonia",
             "edema", "pleural_effusion", "airspace_opacity", "nodule", "cardiomegaly",
             "vascular_congestion", "atelectasis", "central_line", "endotracheal_tube"}
SAMPLE = [Finding("pleural_effusion", "left", severity="moderate"), Finding("cardiomegaly"),
          Finding("granuloma", "right", "upper", variant="calcified"), Finding("central_line", "right")]


def sentences(text: str) -> list[tuple[int, int, str]]:
    """(start, end, sentence) split at '. ' / newlines (never inside '1.2 cm')."""
    out, start = [], 0
    for m in re.finditer(r"(?<=\.)\s+|\n", text):
        out.append((start, m.start(), text[start:m.start()]))
        start = m.end()
    if start < len(text):
        out.append((start, len(text), text[start:]))
    return out


def check_spans(r: WrittenReport, n_findings: int) -> None:
    """Spans lie inside their text, are trimmed and non-overlapping; each finding has
    exactly one span in the findings section; the text holds no template debris."""
    for section in ("findings", "impression"):
        text = getattr(r, section)
        assert not re.search(r"[\[\]{}@]|  | [.,]", text), text
        here = sorted((s for s in r.spans if s.section == section), key=lambda s: s.start)
        for s in here:
            assert 0 <= s.start < s.end <= len(text), (s, text)
            assert r.phrase(s) == r.phrase(s).strip() and r.phrase(s)[-1] not in ".,", r.phrase(s)
            assert 0 <= s.finding < n_findings
        for a, b in itertools.pairwise(here):
            assert a.end <= b.start, (r.phrase(a), r.phrase(b))
        for a, b, sent in sentences(text):
            assert sent[:1].isupper() or sent[:1].isdigit(), (sent, text)
    counts = [sum(s.finding == i and s.section == "findings" for s in r.spans) for i in range(n_findings)]
    assert counts == [1] * n_findings, (counts, r.findings)


def all_single_findings():
    for kind, t in CATALOGUE.items():
        for side, zone, variant in itertools.product(t.sides, t.zones, t.variants or (None,)):
            for severity in SEVERITIES:
                yield Finding(kind, side, zone, severity, variant)


def test_every_kind_side_zone_variant_is_named_in_its_span():
    seen_kinds = set()
    for k, f in enumerate(all_single_findings()):
        for style in STYLES:
            r = write_report([f], style=style, seed=k)
            check_spans(r, 1)
            for s in r.spans:
                phrase = r.phrase(s)
                assert re.search(KIND_WORDS[f.kind], phrase, re.I), (f, style, phrase)
                if len(f.type.sides) > 1:
                    assert re.search(SIDE_WORDS[f.side], phrase, re.I), (f, style, phrase)
                    if f.side in ("left", "right"):
                        other = "right" if f.side == "left" else "left"
                        assert not re.search(rf"\b{other}\b", phrase, re.I), (f, phrase)
            in_impression = any(s.section == "impression" for s in r.spans)
            important = f.kind in IMPORTANT and f.variant != "healed" or (f.kind, f.variant) == ("rib_fracture", "acute")
            if important:
                assert in_impression, (f, style, r.impression)
            seen_kinds.add(f.kind)
    assert seen_kinds == set(CATALOGUE)


@pytest.mark.parametrize("finding,pattern", [
    (Finding("pleural_effusion", "left", severity="mild"), r"^(small|tiny) left (pleural )?effusion$|^(small|tiny) layering"),
    (Finding("pleural_effusion", "right", severity="moderate"), r"moderate"),
    (Finding("pleural_effusion", "bilateral", severity="severe"), r"^large .*bilateral .*effusions$"),
    (Finding("pneumothorax", "left", severity="severe"), r"^large left"),
    (Finding("cardiomegaly", severity="mild"), r"mild|borderline"),
    (Finding("cardiomegaly", severity="severe"), r"marked|severe"),
    (Finding("nodule", "left", "upper", severity="mild"), r"\b[0-9] mm\b"),
    (Finding("nodule", "left", "upper", severity="moderate"), r"\b1\.[0-9] cm|\b1[0-9] mm"),
    (Finding("mass", "right", "hilar", severity="moderate"), r"\b[45](\.5)? cm\b"),
    (Finding("granuloma", "right", "upper", variant="calcified"), r"calcified granuloma|calcified right"),
    (Finding("atelectasis", "left", "base", variant="plate"), r"plate-?like|subsegmental|linear|discoid"),
    (Finding("atelectasis", "bilateral", "base"), r"bibasilar|bibasal|bilateral basilar|both lung bases|lung bases bilaterally"),
    (Finding("consolidation", "left", "lingula"), r"lingula"),
    (Finding("consolidation", "left", "retrocardiac"), r"retrocardiac"),
    (Finding("consolidation", "right", "lower"), r"right lower (lobe|lung)"),
    (Finding("edema", "bilateral", "perihilar"), r"edema"),
    (Finding("scarring", "bilateral", "apex"), r"biapical|bilateral apical|both apices|apices bilaterally"),
    (Finding("rib_fracture", "left", "middle", variant="healed"), r"healed.* left .*[567]th rib"),
    (Finding("rib_fracture", "right", "lower", variant="acute", severity="mild"), r"nondisplaced"),
])
def test_modifier_words(finding, pattern):
    for seed in range(12):
        phrase = describe(finding, seed)
        assert re.search(pattern, phrase), (finding, phrase)
        r = write_report([finding], seed=seed)
        assert re.search(pattern, r.phrase(r.spans[0]), re.I) or finding.kind == "cardiomegaly", r.findings


def test_healed_fracture_never_called_acute():
    f = Finding("rib_fracture", "left", "upper", variant="healed")
    for seed in range(20):
        r = write_report([f], seed=seed)
        assert "acute" not in r.phrase(r.spans[0])
        assert re.search(r"No acute|No active", r.impression)


def test_describe_accepts_seeds_generators_and_canonical():
    f = Finding("pleural_effusion", "left", severity="moderate")
    assert describe(f) == describe(f, None) == "moderate left pleural effusion"
    assert describe(f, severity=False) == "left pleural effusion"
    assert describe(f, 3) == describe(f, 3)
    phrases = {describe(f, random.Random(s)) for s in range(20)} | {describe(f, np.random.default_rng(s)) for s in range(20)}
    assert len(phrases) >= 3 and all("left" in p and "effusion" in p for p in phrases)
    with pytest.raises(TypeError):
        describe(f, "seed")


def test_deterministic_and_varied():
    for style in STYLES:
        assert write_report(SAMPLE, style, seed=7).to_dict() == write_report(SAMPLE, style, seed=7).to_dict()
    free = {write_report(SAMPLE, "free", seed=s).findings for s in range(20)}
    assert len(free) >= 18
    impressions = {write_report(SAMPLE, "free", seed=s).impression for s in range(20)}
    assert len(impressions) >= 8
    structured = {write_report(SAMPLE, "structured", seed=s).findings for s in range(20)}
    assert len(structured) == 1  # fixed vocabulary: the seed changes nothing


def test_structured_layout():
    r = write_report(SAMPLE, "structured")
    lines = r.findings.split("\n")
    assert [line.split(":")[0] for line in lines] == list(HEADERS)
    assert lines[0] == "LINES/TUBES: Right internal jugular central venous catheter."
    assert lines[1] == "HEART: Mild cardiomegaly."
    assert lines[4] == "PLEURA: Moderate left pleural effusion."
    assert lines[2] == "MEDIASTINUM: Normal." and lines[6] == "BONES: Normal."
    assert r.impression.split("\n")[0] == "1. Moderate left pleural effusion."
    empty = write_report([], "structured")
    assert empty.findings.split("\n")[0] == "LINES/TUBES: None."
    assert all(line.endswith(": Normal.") for line in empty.findings.split("\n")[1:])
    assert empty.impression == "No acute cardiopulmonary abnormality." and empty.spans == []


def test_bilateral_count_nouns_are_plural():
    r = write_report([Finding("pleural_effusion", "bilateral", severity="mild")], "structured")
    assert "PLEURA: Small bilateral pleural effusions." in r.findings
    for seed in range(10):
        r = write_report([Finding("airspace_opacity", "bilateral", "base")], seed=seed)
        assert not re.search(r"\b(is|has|a|an) \S*\s*(patchy|streaky|subtle|faint)", r.findings), r.findings


@pytest.mark.parametrize("style", STYLES)
def test_normal_study_asserts_nothing(style):
    texts = set()
    for seed in range(40):
        r = write_report([], style, seed=seed)
        texts.add(r.findings)
        assert r.spans == [] and r.findings and r.impression
        for section in (r.findings, r.impression):
            for _, _, sent in sentences(section):
                if any(re.search(w, sent, re.I) for w in KIND_WORDS.values()):
                    assert NEGATION.search(sent), sent
        assert re.search(r"No acute|No active", r.impression)
    if style == "free":
        assert len(texts) >= 20
        assert any("lungs are clear" in t.lower() for t in texts)
        assert any(re.search(r"No .*(effusion|pneumothorax)", t) for t in texts)


def negating_sentences(r: WrittenReport):
    """Sentences of the findings text that carry a negation cue and name no present finding
    (resolved findings of the prior are not negatives)."""
    covered = [(s.start, s.end) for s in r.spans if s.section == "findings"]
    for a, b, sent in sentences(r.findings):
        if re.search(r"resol|no longer", sent):
            continue
        if NEGATION.search(sent) and not any(a <= s < b for s, _ in covered):
            yield sent


@pytest.mark.parametrize("kind", sorted(DENIALS))
def test_negatives_never_deny_a_present_finding(kind):
    t = CATALOGUE[kind]
    found_negatives = 0
    for seed, side in itertools.product(range(25), t.sides):
        f = Finding(kind, side, variant="acute" if kind == "rib_fracture" else None)
        r = write_report([f, Finding("degenerative_spine") if kind != "degenerative_spine" else Finding("cardiomegaly")],
                         seed=seed)
        for sent in negating_sentences(r):
            found_negatives += 1
            assert not re.search(DENIALS[kind], sent, re.I), (f, sent, r.findings)
    assert found_negatives > 0  # the negatives are there, just not about this finding


def test_no_acute_only_when_nothing_acute():
    chronic = [Finding("granuloma", "left", "upper"), Finding("degenerative_spine")]
    for seed in range(15):
        assert re.search(r"No acute|No active", write_report(chronic, seed=seed).impression)
        r = write_report(chronic + [Finding("pneumothorax", "right")], seed=seed)
        assert not re.search(r"No acute|No active", r.impression)
        first = min((s for s in r.spans if s.section == "impression"), key=lambda s: s.start)
        assert first.finding == 2  # most important first


def test_negatives_flag():
    f = [Finding("cardiomegaly", severity="moderate")]
    for seed in range(15):
        r = write_report(f, seed=seed, negatives=False)
        assert not NEGATION.search(r.findings), r.findings
    assert write_report([], seed=0, negatives=False).findings  # a normal study still says so


CHANGE_WORDS = {"new": r"\bnew\b|development", "worse": r"increas|worsen", "better": r"improv|decreas",
                "unchanged": r"unchanged|stable|again noted"}


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("change", CHANGES)
def test_change_language(style, change):
    findings = [Finding("pleural_effusion", "right", severity="mild"), Finding("consolidation", "left", "lower")]
    resolved = [Finding("pneumothorax", "left")]
    for seed in range(10):
        r = write_report(findings, style, seed=seed, changes={0: change}, resolved=resolved)
        check_spans(r, 2)
        span = next(s for s in r.spans if s.section == "findings" and s.finding == 0)
        sent = next(x for a, b, x in sentences(r.findings) if a <= span.start < b)
        assert re.search(CHANGE_WORDS[change], sent, re.I), (sent, r.findings)
        assert re.search(r"left(-sided| apical)? pneumothorax", r.findings) and re.search(r"resol|no longer", r.findings, re.I)
        assert re.search(r"resol", r.impression, re.I), r.impression
        if change != "unchanged":
            span = next(s for s in r.spans if s.section == "impression" and s.finding == 0)
            sent = next(x for a, b, x in sentences(r.impression) if a <= span.start < b)
            assert re.search(CHANGE_WORDS[change], sent, re.I), (sent, r.impression)
        # the resolved finding's severity is not restated, nor is it given a span
        assert "small left pneumothorax" not in r.findings.lower()


def test_structured_resolved_example():
    r = write_report([Finding("pleural_effusion", "right")], "structured", changes={0: "new"},
                     resolved=[Finding("consolidation", "left", "lower")])
    assert "PLEURA: New small right pleural effusion." in r.findings
    assert "LUNGS: Resolved left lower lobe consolidation." in r.findings


def test_duplicate_findings_get_their_own_spans():
    fs = [Finding("granuloma", "right", "upper", instance=i) for i in range(3)]
    for seed in range(10):
        r = write_report(fs, seed=seed)
        check_spans(r, 3)


def test_errors_and_serialisation():
    with pytest.raises(ValueError, match="telegraphic"):
        write_report(SAMPLE, style="telegraphic")
    with pytest.raises(ValueError, match="sideways"):
        write_report(SAMPLE, changes={0: "sideways"})
    with pytest.raises(ValueError, match="index"):
        write_report(SAMPLE, changes={9: "new"})
    with pytest.raises(TypeError):
        write_report(["pleural_effusion"])
    r = write_report(SAMPLE, seed=2)
    d = json.loads(json.dumps(r.to_dict()))
    assert WrittenReport.from_dict(d) == r
    assert isinstance(r.spans[0], Span) and set(d["spans"][0]) == {"finding", "section", "start", "end"}


def test_module_examples():
    assert doctest.testmod(reports).failed == 0


# --- property test ----------------------------------------------------------------------

@st.composite
def findings_st(draw):
    kind = draw(st.sampled_from(sorted(CATALOGUE)))
    t = CATALOGUE[kind]
    return Finding(kind, draw(st.sampled_from(t.sides)), draw(st.sampled_from(t.zones)),
                   draw(st.sampled_from(SEVERITIES)), draw(st.sampled_from(t.variants or (None,))),
                   draw(st.integers(0, 2)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fs=st.lists(findings_st(), max_size=8), resolved=st.lists(findings_st(), max_size=2),
       style=st.sampled_from(STYLES), seed=st.integers(0, 2**31), negatives=st.booleans(), data=st.data())
def test_property_spans_valid(fs, resolved, style, seed, negatives, data):
    changes = data.draw(st.dictionaries(st.integers(0, max(len(fs) - 1, 0)), st.sampled_from(CHANGES))) if fs else {}
    r = write_report(fs, style, seed=seed, changes=changes, negatives=negatives, resolved=resolved)
    check_spans(r, len(fs))
    for s in r.spans:
        assert re.search(KIND_WORDS[fs[s.finding].kind], r.phrase(s), re.I), r.phrase(s)
    present = {f.kind for f in fs}
    for kind in present & set(DENIALS):
        if kind == "rib_fracture" and all(f.variant == "healed" for f in fs if f.kind == kind):
            continue
        for sent in negating_sentences(r):
            assert not re.search(DENIALS[kind], sent, re.I), (kind, sent, r.findings)
