"""Instruction-following data, extended captions and VQA questions written from a study's
ground-truth findings (ExGra-Med's data, offline).

LLaVA-Med instruction-tunes on 60 K GPT-4-written conversations about PubMed figures, and
ExGra-Med adds an *extended caption* per answer: GPT-4's longer rewrite of it
(``conversations_long``; the official prompt asks for a "better answer", at most twice as long,
keeping the medical terms). Here both are written from what the phantom shows, its finding
list, with no model in the loop:

- :func:`study_conversation` — a conversation of ``turns`` question–answer pairs about one
  study, drawn (seeded) from the question kinds of :data:`QUESTION_KINDS`: presence of a
  finding the study has ("yes, …"), of one it lacks ("no, …"), its side, its zone, its
  severity, "which abnormality", "is this normal", "describe the findings".
- the **extended answers** (:class:`Turn.extended`) are the report writer's
  (:mod:`medalign_lite.data.reports`, free style, another seed) longer restatement of the same
  findings: the short answer, then the writer's sentences about the finding asked about (or
  its normal statements and pertinent negatives, or its whole report for "describe"). **This
  is the offline stand-in for the paper's GPT-4 rewrites**: richer wording of the same facts,
  never a new fact.
- :func:`vqa_questions` — Phantom-VQA's evaluation questions with known answers: closed
  (yes / no) presence, absence and normality questions, open side, severity and abnormality
  questions (LLaVA-Med's ``answer_type`` ``CLOSED`` / ``OPEN``).
- :func:`caption_conversation` — stage 1's data: one "describe" instruction with the study's
  caption (LLaVA-Med's alignment stage: figure captions).

Answers use the writer's canonical words (``describe``), the CheXpert-style finding names of
:data:`QA_NAMES`, and mild / moderate / severe for severity; a "yes" answer avoids the letters
"no" where it can ("unremarkable", not "normal": LLaVA-Med's closed-question rule looks for the
true answer as a substring, and "no" is inside "normal"; it is still inside "nodule"). Everything
is a pure function of (findings, seed).
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .findings import CATALOGUE, Finding, findings_from_json

__all__ = [
    "ABSENT_CANDIDATES",
    "DESCRIBE_QUESTIONS",
    "QA_NAMES",
    "QUESTION_KINDS",
    "Turn",
    "caption_conversation",
    "conversation_from_json",
    "conversation_to_json",
    "prevalence",
    "study_conversation",
    "vqa_questions",
]

#: What a question is about. ``presence`` / ``absence`` / ``normal`` are closed (yes / no).
QUESTION_KINDS: tuple[str, ...] = ("describe", "presence", "absence", "side", "zone", "severity", "abnormality",
                                   "normal")
CLOSED_KINDS = frozenset({"presence", "absence", "normal"})

#: How a question names each finding kind (with its article).
QA_NAMES: dict[str, str] = {
    "consolidation": "consolidation", "airspace_opacity": "an airspace opacity", "pneumonia": "pneumonia",
    "atelectasis": "atelectasis", "edema": "pulmonary edema", "vascular_congestion": "vascular congestion",
    "interstitial_markings": "increased interstitial markings", "scarring": "scarring", "nodule": "a nodule",
    "mass": "a mass", "granuloma": "a granuloma", "hyperinflation": "hyperinflation",
    "hypoinflation": "low lung volumes", "pleural_effusion": "a pleural effusion", "pneumothorax": "a pneumothorax",
    "pleural_thickening": "pleural thickening", "cardiomegaly": "cardiomegaly",
    "enlarged_cardiomediastinum": "a widened mediastinum", "tortuous_aorta": "a tortuous aorta",
    "aortic_calcification": "aortic calcification", "calcified_lymph_node": "calcified lymph nodes",
    "hiatal_hernia": "a hiatal hernia", "elevated_hemidiaphragm": "an elevated hemidiaphragm",
    "rib_fracture": "a rib fracture", "degenerative_spine": "degenerative change of the spine",
    "scoliosis": "scoliosis", "central_line": "a central venous catheter", "endotracheal_tube": "an endotracheal tube",
    "pacemaker": "a pacemaker", "sternotomy_wires": "sternotomy wires",
}
#: Kinds an absence question asks about (common and visible; one the study lacks is drawn).
ABSENT_CANDIDATES: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation",
                                      "atelectasis", "edema", "nodule", "airspace_opacity", "granuloma",
                                      "hyperinflation", "pacemaker", "scoliosis")
DESCRIBE_QUESTIONS: tuple[str, ...] = ("describe the findings of this chest x-ray.", "what does this radiograph show?",
                                       "summarize the findings of this image.")
_NORMAL = "no acute abnormality"


@dataclass(frozen=True)
class Turn:
    """One question with its short answer, the extended answer (the writer's longer
    restatement) and, for evaluation, the answer's key words.

    ``answer_type`` is ``"CLOSED"`` (yes / no) or ``"OPEN"``; ``key`` the ground truth VQA
    scoring compares with (``"yes"``, ``"left"``, ``"pleural effusion"``)."""

    kind: str
    question: str
    answer: str
    extended: str
    key: str
    answer_type: str

    def to_dict(self) -> dict:
        return asdict(self)


def _name(kind: str) -> str:
    """The bare name (no article) of a kind: "pleural effusion"."""
    return re.sub(r"^(a|an) ", "", QA_NAMES[kind])


def _sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text`` (split after '.', keeping the period)."""
    out, start = [], 0
    for m in re.finditer(r"\.(\s+|$)", text):
        out.append((start, m.start() + 1))
        start = m.end()
    if start < len(text.strip()):
        out.append((start, len(text)))
    return out


class _Writer:
    """The report writer's free-style text of one study (a seed other than the conversation's),
    cut into sentences that name a finding (by its span) and sentences that name none."""

    def __init__(self, findings: Sequence[Finding], seed: int):
        from .reports import write_report

        self.report = write_report(list(findings), style="free", seed=seed)
        text = self.report.findings
        self.sentences = [text[a:b].strip() for a, b in _sentences(text)]
        bounds = _sentences(text)
        self.about: dict[int, list[str]] = {}
        named = set()
        for s in self.report.spans:
            if s.section != "findings":
                continue
            for k, (a, b) in enumerate(bounds):
                if a <= s.start < b:
                    self.about.setdefault(s.finding, []).append(self.sentences[k])
                    named.add(k)
        self.plain = [t for k, t in enumerate(self.sentences) if k not in named and t]

    def of(self, i: int) -> str:
        return " ".join(dict.fromkeys(self.about.get(i, [])))

    def full(self) -> str:
        return f"{self.report.findings} {self.report.impression}".strip()


def _describe_all(findings: Sequence[Finding]) -> str:
    from .reports import describe

    return "; ".join(describe(f) for f in findings) if findings else _NORMAL


def _turn(kind: str, findings: Sequence[Finding], rng: random.Random, writer: _Writer,
          absent_weights: Mapping[str, float] | None = None) -> Turn | None:
    """One turn of ``kind`` about the study, or None when the study has nothing to ask it about."""
    from .reports import describe, finding_phrase

    idx = list(range(len(findings)))
    if kind == "describe":
        short = _describe_all(findings) + "."
        return Turn(kind, rng.choice(DESCRIBE_QUESTIONS), short, f"{short} {writer.full()}", short.rstrip("."), "OPEN")
    if kind == "normal":
        yes = not findings
        short = "yes, the study is unremarkable." if yes else f"no, there is {_describe_all(findings)}."
        return Turn(kind, "is this chest x-ray normal?", short, f"{short} {writer.report.impression}",
                    "yes" if yes else "no", "CLOSED")
    if kind == "abnormality":
        key = " and ".join(dict.fromkeys(_name(f.kind) for f in findings)) if findings else "none"
        short = f"{key}." if findings else "none."
        return Turn(kind, "what abnormality is seen?", short, f"{short} {writer.report.impression}", key, "OPEN")
    if kind == "absence":
        present = {f.kind for f in findings}
        if absent_weights:
            options = [k for k in absent_weights if k not in present and absent_weights[k] > 0]
            k = rng.choices(options, weights=[absent_weights[o] for o in options])[0]
        else:
            k = rng.choice([k for k in ABSENT_CANDIDATES if k not in present])
        short = f"no, there is no {_name(k)}."
        context = " ".join(writer.plain[:2])
        return Turn(kind, f"is there {QA_NAMES[k]}?", short, f"{short} {context}".strip(), "no", "CLOSED")
    if not idx:
        return None
    if kind == "side":
        idx = [i for i in idx if findings[i].side in ("left", "right", "bilateral")
               and len(CATALOGUE[findings[i].kind].sides) > 1]  # edema is always bilateral: nothing to ask
    elif kind == "zone":
        idx = [i for i in idx if len(CATALOGUE[findings[i].kind].zones) > 1 and finding_phrase(findings[i]).anatomy]
    if not idx:
        return None
    i = rng.choice(idx)
    f = findings[i]
    name = _name(f.kind)
    if kind == "presence":
        short = f"yes, there is {describe(f)}."
        q, key, atype = f"is there {QA_NAMES[f.kind]}?", "yes", "CLOSED"
    elif kind == "side":
        key = f.side
        short = f"{'both sides' if key == 'bilateral' else 'the ' + key + ' side'}, {key}."
        q, atype = f"which side is the {name} on?", "OPEN"
    elif kind == "zone":
        key = finding_phrase(f).anatomy
        short = f"the {key}."
        q, atype = f"where is the {name}?", "OPEN"
    elif kind == "severity":
        key = f.severity
        short = f"{key}."
        q, atype = f"how severe is the {name}?", "OPEN"
    else:
        raise ValueError(f"unknown question kind {kind!r}; choose from {QUESTION_KINDS}")
    return Turn(kind, q, short, f"{short} {writer.of(i)}".strip(), key, atype)


def study_conversation(findings: Sequence[Finding], seed: int, turns: int = 4,
                       kinds: Sequence[str] = QUESTION_KINDS,
                       absent_weights: Mapping[str, float] | None = None) -> list[Turn]:
    """An instruction-following conversation about one study: ``turns`` turns of distinct
    kinds drawn (seeded) from ``kinds`` among those the study can answer (a study without
    findings gets no side / zone / severity / presence questions).

    ``absent_weights`` (kind → weight): an absence question asks about a kind the study lacks
    drawn with these weights — :func:`prevalence` of a dataset makes each kind asked about as
    often when absent as when present, so that "is there X?" cannot be answered from X alone
    (None: uniformly from :data:`ABSENT_CANDIDATES`)."""
    bad = [k for k in kinds if k not in QUESTION_KINDS]
    if bad or turns < 1:
        raise ValueError(f"turns must be >= 1 and kinds from {QUESTION_KINDS}; got {turns}, {bad}")
    rng = random.Random(seed)
    writer = _Writer(findings, seed + 7919)
    order = list(kinds)
    rng.shuffle(order)
    out = []
    for kind in order:
        t = _turn(kind, findings, rng, writer, absent_weights)
        if t is not None:
            out.append(t)
        if len(out) == turns:
            break
    return out


def vqa_questions(findings: Sequence[Finding], seed: int, absent_weights: Mapping[str, float] | None = None
                  ) -> list[Turn]:
    """Phantom-VQA's questions for one study, with known answers: closed — presence of one of
    its findings (yes; when it has one), absence of a kind it lacks (no; drawn with
    ``absent_weights``, see :func:`study_conversation`), "is this normal"; open — side and
    severity of one finding (when it has one), "what abnormality"."""
    rng = random.Random(seed)
    writer = _Writer(findings, seed + 7919)
    kinds = ("presence", "absence", "normal", "side", "severity", "abnormality")
    return [t for t in (_turn(k, findings, rng, writer, absent_weights) for k in kinds) if t is not None]


def prevalence(studies: Sequence[Sequence[Finding]]) -> dict[str, float]:
    """Studies with each kind of :data:`QA_NAMES` among ``studies``, divided by the studies
    lacking it (the odds a study has it): absence questions drawn with these weights ask about
    each kind about as often as presence questions do. Every kind gets at least a small weight."""
    n = max(1, len(studies))
    has = {k: sum(any(f.kind == k for f in fs) for fs in studies) for k in QA_NAMES}
    return {k: max(c, 0.5) / max(n - c, 1) for k, c in has.items()}


def caption_conversation(caption: str, seed: int) -> list[tuple[str, str]]:
    """Stage 1's single turn: a "describe" instruction (seeded) and the caption."""
    return [(random.Random(seed).choice(DESCRIBE_QUESTIONS), caption.strip())]


def conversation_to_json(turns: Sequence[Turn]) -> str:
    return json.dumps([t.to_dict() for t in turns], separators=(",", ":"))


def conversation_from_json(text: str) -> list[Turn]:
    return [Turn(**d) for d in json.loads(text)] if text else []


def conversation_of(findings_json: str, seed: int, turns: int = 4) -> list[Turn]:
    """:func:`study_conversation` of a manifest's ``findings_json`` cell."""
    return study_conversation(findings_from_json(findings_json), seed, turns)
