"""Key phrases: ``(observation, status, anatomy)`` tuples from report text (RadGraph-lite).

RadGraph (and F1-RadGraph) need a downloaded model. This is the offline substitute of the
research notes (``research/alta-s2d-report-eval.md`` §4, option 1): a lexicon of
observations, an anatomy lexicon, the status of each observation from the CheXpert-style
labeler's negation / uncertainty machinery (:mod:`medalign_lite.text.labeler`, reused, not
copied), and anatomy linked by same-sentence proximity. The tuples serve two purposes:

* S2D-ALIGN stage-3 inputs: :meth:`KeyPhrase.text` gives "left lower lobe consolidation",
  "no pleural effusion", "possible right base atelectasis";
* an offline tuple-level F1 between generated and reference reports (:func:`phrase_f1`),
  micro-averaged over the corpus, with (``anatomy=True``) or without anatomy.

Pipeline for one report:

1. Observations: :data:`OBSERVATION_LEXICON`, a :class:`~medalign_lite.text.labeler.Lexicon`
   over the 14 CheXpert observations split into finer findings (opacity, consolidation,
   pleural effusion, cardiomegaly, widened mediastinum, ...) plus nodule, mass, granuloma,
   emphysema, hyperinflation, low lung volumes, fibrosis, scarring, interstitial markings,
   calcification, calcified lymph nodes, tortuous aorta, hiatal hernia, elevation (of a
   hemidiaphragm), scoliosis, degenerative changes, lymphadenopathy and devices (catheter,
   endotracheal tube, tube, pacemaker, sternotomy wires, surgical clips, support device).
   Status: present (1) / absent (0) / uncertain (-1), exactly as the labeler decides it;
   "heart size is normal" gives ``("cardiomegaly", "absent", None)``.
2. Anatomy: one regex over the sentence finds zones with their side ("left lower lobe",
   "bibasilar", "right apex", "lingula", "retrocardiac", "left costophrenic angle",
   "aortic arch", "thoracic spine", "left 8th rib", bare "left" / "bilateral" ...) and
   normalises them to ``"{side} {zone}"``: "bibasilar" → "bilateral base", "both upper
   lobes" → "bilateral upper lobe", "left lower lung zone" → "left lower lobe", "aortic
   arch" → "aorta", "left 8th rib" → "left rib", "left-sided" → "left".
3. Linking: an observation takes the nearest anatomy of its sentence that either precedes
   it as a modifier (at most four words between, none of "and / with / or / no / but" or a
   comma: "small *left* pleural effusion", "*right internal jugular* central venous
   catheter") or follows it after a preposition ("consolidation *in the left lower lobe*",
   "fracture *of the left anterior 9th rib*", "effusions *bilaterally*"), or lies inside
   its mention ("calcified *right hilar* lymph nodes"); a tie goes to the preceding one.
   Observations whose place is part of their name (:data:`INTRINSIC`: cardiomegaly,
   widened mediastinum, tortuous aorta, hiatal hernia, scoliosis, low lung volumes,
   hyperinflation) take no anatomy.

A report's phrases are de-duplicated, first occurrence kept, in text order. The phrase the
report writer's canonical wording of a phantom finding should yield (ground truth for tests
and key phrases for phantom data) is the writer's to say: ``finding_phrase`` in
``data/reports.py`` (text never imports data).

>>> [p.text() for p in extract_phrases("Small left pleural effusion. No pneumothorax.")]
['left pleural effusion', 'no pneumothorax']
>>> extract_phrases("Bibasilar atelectasis.")
[KeyPhrase(observation='atelectasis', status='present', anatomy='bilateral base')]
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .labeler import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    Lexicon,
    Term,
    normalize,
    sentence_spans,
)

__all__ = [
    "ANATOMY_ZONES",
    "INTRINSIC",
    "OBSERVATION_LEXICON",
    "OBSERVATION_TERMS",
    "STATUSES",
    "KeyPhrase",
    "extract_phrases",
    "find_anatomy",
    "phrase_f1",
]

STATUSES: tuple[str, ...] = ("present", "absent", "uncertain")
_STATUS_NAME = {POSITIVE: "present", NEGATIVE: "absent", UNCERTAIN: "uncertain"}
_PREFIX = {"present": "", "absent": "no ", "uncertain": "possible "}


@dataclass(frozen=True, order=True)
class KeyPhrase:
    """One key phrase: an observation, its status and (maybe) where it is.

    Attributes:
        observation: canonical observation name ("pleural effusion").
        status: "present", "absent" or "uncertain".
        anatomy: canonical anatomy ("left lower lobe", "bilateral base") or None.
    """

    observation: str
    status: str
    anatomy: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"KeyPhrase status {self.status!r} not in {STATUSES}")

    def text(self) -> str:
        """A short phrase: "left lower lobe consolidation", "no pleural effusion",
        "possible right base atelectasis"."""
        where = f"{self.anatomy} " if self.anatomy else ""
        return f"{_PREFIX[self.status]}{where}{self.observation}"


# ---------------------------------------------------------------------------------------
# Observation lexicon (statuses come from the labeler's machinery)
# ---------------------------------------------------------------------------------------

def _t(observation: str, kind: str, *patterns: str) -> list[Term]:
    return [Term((observation,), p, kind) for p in patterns]


_DENSITY = r"(?:densit(?:y|ies)|opacit(?:y|ies))"
_COP = r"(?:is|are|was|were|appears?|remains?|seems?)"
_ADV = r"(?:(?:\w+ly|borderline|again|now|slightly|still)\s+)*"
_HEART = r"(?:the )?(?:heart(?: size| shadow)?|cardiac (?:silhouette|shadow|size|contour)s?)"
_MEDIASTINUM = r"(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|width))"

OBSERVATION_TERMS: tuple[Term, ...] = tuple(
    # unmentions (as in the labeler)
    _t("support device", "unmention",
       r"(?:pleural|septal|fissure|skin|azygoesophageal|paraspinal|(?:anterior |posterior )?junction) lines?",
       r"plate-?like", r"(?:nipple|skin) markers?")
    + _t("opacity", "unmention", rf"(?:bone|bony|osseous|soft[- ]tissue|metallic|radiopaque|sclerotic|"
                                 rf"breast|nipple) {_DENSITY}")
    + _t("mass", "unmention", r"mass effect", r"(?:breast|bone|osseous|lytic|sclerotic|skin) (?:mass(?:es)?|"
                              r"lesions?)")
    + _t("edema", "unmention", r"(?:soft[- ]tissue|subcutaneous|chest wall|peripheral) edema")
    + _t("atelectasis", "unmention", r"(?:vertebral|compression|tracheal|airway|spinal) collapse")
    + _t("pleural effusion", "unmention", r"(?:pericardial|joint) effusions?")
    # mentions
    + _t("widened mediastinum", "mention",
         rf"(?:widened|widening of|enlarged|enlargement of|prominent) {_MEDIASTINUM}",
         r"(?:cardio)?mediastinal (?:widening|enlargement)",
         rf"{_MEDIASTINUM} {_COP} {_ADV}(?:widened|enlarged|wide|prominent)")
    + _t("cardiomegaly", "mention",
         r"cardiomegaly", r"cardiac enlargement",
         r"(?:enlarged|enlargement of) (?:the )?(?:cardiac silhouette|cardiac shadow|heart(?: size)?)",
         rf"{_HEART} {_COP} {_ADV}(?:enlarged|increased|large|prominent)")
    + _t("calcified lymph nodes", "mention", r"calcified (?:[\w-]+ ){0,2}?(?:lymph )?nodes",
         r"(?:lymph )?nodal calcifications?")
    + _t("calcification", "mention",
         r"(?:atherosclerotic |vascular |aortic )?calcifications?", r"calcified (?:aortic )?(?:knob|arch|aorta)",
         r"(?:aortic )?atherosclerosis", r"atherosclerotic (?:changes?|disease)",
         r"(?:the )?(?:thoracic )?(?:aorta|aortic arch|aortic knob) (?:is |appears )?(?:\w+ly )?calcified")
    + _t("granuloma", "mention", r"granulom(?:a|as|ata|atous(?: disease| changes?)?)")
    + _t("nodule", "mention", rf"nodul(?:e|es|ar {_DENSITY}|ar opacification)", r"nodular densit(?:y|ies)")
    + _t("mass", "mention", r"mass(?:es)?", r"tumou?rs?", r"neoplasms?", r"carcinomas?")
    + _t("lesion", "mention", r"(?:pulmonary |lung |cavitary )?lesions?")
    + _t("consolidation", "mention", r"(?:air[- ]?space )?consolidat(?:ion|ions|ed|ive)")
    + _t("pneumonia", "mention", r"(?:broncho)?pneumonias?", r"pneumonitis", r"infection",
         r"infectious(?: process)?")
    + _t("interstitial markings", "mention",
         r"interstitial (?:markings?|prominence|opacit(?:y|ies)|pattern|lung disease|changes?|thickening)",
         r"reticular (?:markings?|opacit(?:y|ies)|pattern)", r"reticulonodular (?:markings?|opacit(?:y|ies))")
    + _t("opacity", "mention",
         r"opacit(?:y|ies)", r"opacification", r"infiltrat(?:e|es|ion|ions)",
         r"(?:air[- ]?space|alveolar) (?:disease|process|filling)", r"densit(?:y|ies)", r"haziness",
         r"ground[- ]glass")
    + _t("vascular congestion", "mention", r"(?:pulmonary |vascular |venous |central )+congestion")
    + _t("edema", "mention", r"(?:interstitial |alveolar |pulmonary )*edema", r"(?:congestive )?heart failure",
         r"chf")
    + _t("atelectasis", "mention", r"atelecta(?:sis|ses|tic)", r"collapsed?")
    + _t("pneumothorax", "mention", r"(?:hydro)?pneumothora(?:x|ces)")
    + _t("pleural effusion", "mention", r"(?:pleural )?effusions?", r"pleural fluid", r"hydrothorax")
    + _t("pleural thickening", "mention", r"pleural (?:thickening|plaques?|calcifications?)",
         r"thickening of the (?:\w+ )?pleura", r"fibrothorax", r"apical (?:pleural )?cap(?:ping|s)?")
    + _t("scarring", "mention", r"(?:pleuro-?parenchymal |pleural[- ]parenchymal |parenchymal |pleural )?"
                                r"scar(?:ring|s)?", r"cicatri(?:x|ces)")
    + _t("fibrosis", "mention", r"(?:pulmonary |interstitial )?fibros(?:is|es)", r"fibrotic (?:changes?|disease)")
    + _t("emphysema", "mention", r"emphysema", r"emphysematous(?: changes?| lungs?)?", r"changes of emphysema",
         r"copd", r"chronic obstructive pulmonary disease", r"bullae", r"bullous (?:changes?|disease)")
    + _t("hyperinflation", "mention", r"hyperinflat(?:ion|ed)(?: lungs)?", r"hyperexpan(?:sion|ded)(?: lungs)?",
         r"lungs (?:are |appear |remain )?(?:\w+ly )?(?:hyperinflated|hyperexpanded)")
    + _t("low lung volumes", "mention", r"(?:low|diminished|decreased|reduced) lung volumes?",
         r"lung volumes (?:are |remain )?(?:\w+ly )?(?:low|diminished|decreased|reduced)",
         r"hypoinflat(?:ion|ed)(?: lungs)?", r"hypoventilat(?:ion|ory)")
    + _t("tortuous aorta", "mention", r"tortuous (?:thoracic |descending )?aorta", r"tortuosity of the "
         r"(?:thoracic |descending )?aorta", r"(?:thoracic |descending )?aorta (?:is |appears |remains )?"
         r"(?:\w+ly )?tortuous", r"(?:aortic )?tortuosity")
    + _t("hiatal hernia", "mention", r"hiatal hernias?", r"hiatus hernias?")
    + _t("elevation", "mention", r"elevat(?:ed|ion of the) (?:left |right )?(?:hemidiaphragm|diaphragm)",
         r"(?:left |right )?hemidiaphragm (?:is |appears |remains )?(?:\w+ly )?elevated",
         r"(?:left |right )?hemidiaphragm(?:atic)? elevation", r"eventration")
    + _t("scoliosis", "mention", r"(?:levo|dextro)?scoliosis", r"(?:levo|dextro)?scoliotic curvature",
         r"(?:levo|dextro)convex (?:thoracic )?scoliosis")
    + _t("degenerative changes", "mention", r"degenerative (?:changes?|disease|disc disease|joint disease)",
         r"spondylosis", r"osteophytes?", r"(?:osteo)?arthritis", r"spondylitic changes?")
    + _t("fracture", "mention", r"fractures?", r"fractured", r"fx")
    + _t("lymphadenopathy", "mention", r"(?:lymph)?adenopathy", r"enlarged (?:lymph )?nodes")
    + _t("endotracheal tube", "mention", r"endotracheal tubes?", r"et tubes?", r"ett")
    + _t("catheter", "mention", r"(?:central venous |central |venous |picc |dialysis |swan[- ]ganz )?catheters?",
         r"central lines?", r"picc(?: lines?)?", r"port(?:-a-cath|acath)?", r"mediport")
    + _t("pacemaker", "mention", r"pacemakers?", r"pacers?", r"icds?", r"aicds?", r"defibrillators?")
    + _t("sternotomy wires", "mention", r"(?:median )?sternotomy(?: wires| sutures)?")
    + _t("surgical clips", "mention", r"(?:surgical |vascular |cholecystectomy )?clips?")
    + _t("tube", "mention", r"(?:nasogastric |orogastric |feeding |chest |ng |og |enteric )?tubes?",
         r"tracheostomy(?: tube)?")
    + _t("support device", "mention", r"lines?/tubes?", r"support devices?", r"lines?", r"devices?", r"stents?",
         r"hardware", r"drains?", r"wires?", r"leads", r"valve replacement", r"prosthetic valves?")
    # hedged (at most uncertain)
    + _t("vascular congestion", "hedged",
         r"(?:pulmonary )?vascular (?:prominence|engorgement|indistinctness|redistribution)",
         r"(?:prominent|prominence of the|indistinct) (?:central )?(?:pulmonary |lung )?(?:vasculature|vascularity|"
         r"vessels)", r"cephalization")
    + _t("pleural effusion", "hedged",
         r"blunt(?:ing|ed) (?:of )?(?:the )?(?:(?:left|right|bilateral|both|posterior|lateral)\s+)*costophrenic "
         r"(?:angles?|sulcus|sulci|recess(?:es)?)")
    # anatomic (counted when negated or uncertain)
    + _t("cardiomegaly", "anatomic", _HEART)
    + _t("widened mediastinum", "anatomic", _MEDIASTINUM, r"mediastinal and hilar contours?")
)
"""The observation lexicon: ``Term.labels[0]`` is the canonical observation name."""

OBSERVATION_LEXICON = Lexicon(OBSERVATION_TERMS)

INTRINSIC: frozenset[str] = frozenset({
    "cardiomegaly", "widened mediastinum", "tortuous aorta", "hiatal hernia", "scoliosis", "low lung volumes",
    "hyperinflation", "endotracheal tube", "sternotomy wires"})
"""Observations whose place is part of their name: no anatomy is linked to them."""


# ---------------------------------------------------------------------------------------
# Anatomy
# ---------------------------------------------------------------------------------------

_SIDE = r"(?:(?:left|right|bilateral)(?:-sided)?\s+)?"
#: Canonical zone -> regex (the side, if any, is read from the matched words).
ANATOMY_ZONES: dict[str, str] = {
    "retrocardiac": r"(?:left\s+)?retrocardiac(?: left lower lobe| region| space)?|behind the heart",
    "paracardiac": rf"{_SIDE}paracardiac(?: regions?)?",
    "middle lobe": r"(?:right\s+)?middle lobe",
    "upper lobe": rf"{_SIDE}upper (?:lobes?|lung(?: zones?| fields?)?)(?: bilaterally)?|both upper (?:lobes|lungs)",
    "lower lobe": rf"{_SIDE}lower (?:lobes?|lung(?: zones?| fields?)?)(?: bilaterally)?|both lower (?:lobes|lungs)",
    "midlung": rf"{_SIDE}mid ?lungs?(?: zones?| fields?)?|both midlung zones",
    "lingula": r"lingula(?:r)?",
    "perihilar": rf"{_SIDE}perihilar(?: regions?)?|both perihilar regions",
    "hilum": rf"{_SIDE}hil(?:um|ar|a)(?: bilaterally)?|both hila",
    "base": rf"bibasilar|bibasal|{_SIDE}(?:basilar|basal|(?:lung )?bases?)(?: bilaterally)?|both (?:lung )?bases",
    "apex": rf"biapical|{_SIDE}(?:apical|(?:lung )?ap(?:ex|ices))(?: bilaterally)?|both (?:lung )?apices",
    "costophrenic angle": rf"{_SIDE}(?:(?:posterior|lateral)\s+)?costophrenic (?:angles?|sulcus|sulci|recess(?:es)?)",
    "hemidiaphragm": rf"{_SIDE}hemidiaphragms?|{_SIDE}diaphragms?",
    "paratracheal": rf"{_SIDE}paratracheal(?: regions?)?",
    "chest wall": rf"{_SIDE}(?:lateral )?chest wall",
    "rib": rf"{_SIDE}(?:(?:anterior|posterior|lateral)\s+)?(?:\d+(?:st|nd|rd|th)\s+)?ribs?",
    "aorta": r"(?:thoracic |descending )?aort(?:a|ic arch|ic knob|ic)",
    "spine": r"(?:thoracic |lumbar |cervical |thoracolumbar )?spine|(?:thoracic )?vertebra(?:e|l bod(?:y|ies))?",
    "mediastinum": r"(?:superior )?mediastinum",
    "cardiac silhouette": r"cardiac silhouette|heart",
    "trachea": r"trachea",
    "clavicle": rf"{_SIDE}clavicles?",
    "lung": rf"{_SIDE}(?:lungs?|hemithorax)(?: bilaterally)?|both lungs",
    "": r"(?:left|right)(?:-sided)?|bilateral(?:ly)?",
}
_ZONE_NAMES = list(ANATOMY_ZONES)
_ANATOMY_RE = re.compile(r"\b(?:" + "|".join(f"(?P<z{i}>{p})" for i, p in enumerate(ANATOMY_ZONES.values()))
                         + r")\b")
_BILATERAL_WORDS = re.compile(r"\b(?:bilateral(?:ly)?|both|bi(?:basilar|basal|apical))\b|\b(?:lobes|lungs|bases|"
                              r"apices|hila|regions|zones|angles|sulci|recesses|hemidiaphragms|diaphragms|ribs)\b")
_SIDE_WORDS = re.compile(r"\b(left|right)\b")
_UNSIDED = {"retrocardiac", "lingula", "aorta", "spine", "mediastinum", "cardiac silhouette", "trachea"}


def _canonical(zone: str, matched: str) -> str:
    if zone == "middle lobe":
        return "right middle lobe"
    if zone in _UNSIDED:
        return zone
    m = _SIDE_WORDS.search(matched)
    side = m.group(1) if m else ("bilateral" if _BILATERAL_WORDS.search(matched) else "")
    return f"{side} {zone}".strip() or matched


def find_anatomy(text: str, lo: int = 0, hi: int | None = None) -> list[tuple[int, int, str]]:
    """``(start, end, canonical)`` of every anatomy mention in ``text[lo:hi]`` (normalised).

    >>> [a[2] for a in find_anatomy("bibasilar and left lower lung zone opacities, right-sided effusion")]
    ['bilateral base', 'left lower lobe', 'right']
    """
    hi = len(text) if hi is None else hi
    out = []
    for m in _ANATOMY_RE.finditer(text, lo, hi):
        zone = _ZONE_NAMES[int(m.lastgroup[1:])]
        out.append((m.start(), m.end(), _canonical(zone, m.group())))
    return out


# Gap between a preceding anatomy and its observation: up to four modifier words.
_BEFORE_GAP = re.compile(r"(?:-sided)?\s*(?:(?!(?:and|with|or|no|but|of|in|is|are)\b)[\w./-]+\s+){0,4}")
# Gap between an observation and a following anatomy: a preposition (after up to three words).
_AFTER_GAP = re.compile(r"(?:\s+(?!(?:and|with|or|no|but)\b)[\w-]+){0,3}?\s+(?:in|within|of|at|along|involving|"
                        r"over|overlying|throughout|near|adjacent to|projecting over|to)\s+(?:the\s+|both\s+)?"
                        r"(?:[\w-]+\s+){0,2}?")


def _link(text: str, start: int, end: int, anatomy: list[tuple[int, int, str]]) -> str | None:
    best, best_d = None, None
    for a, b, name in anatomy:
        if a < end and b > start:  # inside the mention
            d = 0
        elif b <= start and _BEFORE_GAP.fullmatch(text, b, start):
            d = start - b
        elif a >= end and (_AFTER_GAP.fullmatch(text, end, a)
                           or (text.startswith("bilaterally", a) and not text[end:a].strip())):
            d = a - end + 0.5  # ties go to the preceding anatomy
        else:
            continue
        if best_d is None or d < best_d:
            best, best_d = name, d
    return best


def extract_phrases(text: str | None) -> list[KeyPhrase]:
    """Key phrases of one report, de-duplicated, in text order (see the module docstring).

    >>> [p.text() for p in extract_phrases("Possible right lower lobe pneumonia. Heart size is normal.")]
    ['possible right lower lobe pneumonia', 'no cardiomegaly']
    """
    t = normalize(text)
    mentions = OBSERVATION_LEXICON.mentions(t, normalized=True)
    if not mentions:
        return []
    sentences = sentence_spans(t)
    anatomy_of: dict[int, list] = {}
    out: dict[KeyPhrase, None] = {}
    k = 0
    for m in mentions:
        while k + 1 < len(sentences) and sentences[k][1] <= m.start:
            k += 1
        anatomy = None
        if m.label not in INTRINSIC:
            if k not in anatomy_of:
                anatomy_of[k] = find_anatomy(t, *sentences[k])
            anatomy = _link(t, m.start, m.end, anatomy_of[k])
        out.setdefault(KeyPhrase(m.label, _STATUS_NAME[m.status], anatomy))
    return list(out)


def phrase_f1(refs: Sequence[str], hyps: Sequence[str], anatomy: bool = True) -> dict[str, float]:
    """Tuple-level precision / recall / F1 of key phrases, micro-averaged over the corpus.

    Each report's tuples are a set (``(observation, status, anatomy)``, or
    ``(observation, status)`` with ``anatomy=False``); TP = |ref ∩ hyp| summed over
    reports, precision = TP / Σ|hyp|, recall = TP / Σ|ref|. A zero denominator gives 0
    (sklearn's ``zero_division=0``), so two empty corpora score 0, not 1.

    Returns:
        ``{"precision", "recall", "f1", "tp", "n_ref", "n_hyp"}``.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"phrase_f1: {len(refs)} references but {len(hyps)} hypotheses")

    def key(p: KeyPhrase):
        return (p.observation, p.status, p.anatomy) if anatomy else (p.observation, p.status)

    tp = n_ref = n_hyp = 0
    for r, h in zip(refs, hyps):
        rs = {key(p) for p in extract_phrases(r)}
        hs = {key(p) for p in extract_phrases(h)}
        tp += len(rs & hs)
        n_ref += len(rs)
        n_hyp += len(hs)
    precision = tp / n_hyp if n_hyp else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "n_ref": n_ref, "n_hyp": n_hyp}
