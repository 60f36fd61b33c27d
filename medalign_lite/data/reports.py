"""Radiology report writer: findings -> report text, with the character span of every finding.

The phantom renderer draws one mask per :class:`~medalign_lite.data.findings.Finding`; this
module writes the report that goes with the image and records, for each finding, where in
the text the phrase naming it sits. Phrase <-> mask pairs are the ground truth for grounding
and for the local alignment losses.

Two styles, because AGA observes that structured reports produce higher similarity
thresholds than free text:

* ``"free"`` — narrative prose in the manner of IU X-Ray / MIMIC reports: heart and
  mediastinum, then lungs, pleura, diaphragm, bones and devices; varied sentence templates
  and synonyms; pertinent negatives for absent key observations ("No focal consolidation,
  pleural effusion or pneumothorax."), never for a present one.
* ``"structured"`` — one line per anatomical section (``LINES/TUBES:``, ``HEART:`` ...),
  terse canonical phrases, ``Normal.`` / ``None.`` for sections without findings. The wording
  is fixed: the seed changes nothing.

Both write an impression (most important findings first; "No acute cardiopulmonary
abnormality." when nothing acute is present) with spans as well, and comparison language
when the study is described relative to a prior (``changes`` / ``resolved``).

Everything the writer says lives in tables, in :mod:`medalign_lite.data.report_phrases`
(importable from here too): :data:`KIND_TEXT` (per kind: noun-phrase templates, kind-specific
sentences, severity scale, report section, impression priority), :data:`LOCATIONS` (side x
zone -> "left lower lobe", "bibasilar", "lingular" ...), :data:`SEVERITY_WORDS`,
:data:`REPORT_SECTIONS` and :data:`NORMALS` (normal statements with the kinds that would make
them false), and the sentence templates. This module is the writer's logic.

:func:`finding_phrase` says which key phrase (``(observation, status, anatomy)``, see
:mod:`medalign_lite.text.phrases`) the canonical wording of a finding names: ground truth
for the phrase extractor and key phrases for phantom data.

Template mini-language (sentences): ``[...]`` marks the span; ``@`` is the indefinite
article of the next word when the noun phrase takes one ("a", "an" or nothing); ``{be}``,
``{has}``, ``{the}`` agree with the noun phrase (``{the}`` is "the " for count nouns and
plurals, empty for mass nouns). Noun-phrase fields: ``{sev}`` / ``{sevly}`` severity
adjective / adverb, ``{side}``, ``{loc}`` / ``{locn}`` location as adjective / noun phrase,
``{s}`` / ``{y}`` plural endings for bilateral count nouns, plus a few kind-specific ones.

Example:

>>> from medalign_lite.data.findings import Finding
>>> r = write_report([Finding("pleural_effusion", "left", severity="moderate"),
...                   Finding("cardiomegaly")], style="structured")
>>> print(r.findings)
LINES/TUBES: None.
HEART: Mild cardiomegaly.
MEDIASTINUM: Normal.
LUNGS: Normal.
PLEURA: Moderate left pleural effusion.
DIAPHRAGM: Normal.
BONES: Normal.
>>> [r.phrase(s) for s in r.spans]
['Mild cardiomegaly', 'Moderate left pleural effusion', 'Moderate left pleural effusion', 'Mild cardiomegaly']
>>> describe(Finding("granuloma", "right", "upper"))
'calcified granuloma in the right upper lobe'
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .findings import Finding
from .report_phrases import (
    ADVERBS,
    CHANGED,
    COUNT,
    DEFAULT_LOCATION,
    DUPLICATE,
    FREE_ORDER,
    IMPRESSION,
    IMPRESSION_RESOLVED,
    KIND_PHRASE,
    KIND_TEXT,
    LOCATIONS,
    MASS,
    NEGATABLE,
    NEGATIVE_LISTS,
    NO_ACUTE,
    NORMALS,
    PLAIN,
    PLURAL,
    REPORT_SECTIONS,
    RESOLVED,
    RIBS,
    SEVERITY_WORDS,
    STRUCTURED_PREFIX,
    ZONE_ANATOMY,
    ZONE_NOUN,
    KindText,
    Normal,
    NounPhrase,
)

if TYPE_CHECKING:
    from ..text.phrases import KeyPhrase

__all__ = [
    "CHANGES",
    "KIND_TEXT",
    "LOCATIONS",
    "NORMALS",
    "REPORT_SECTIONS",
    "SEVERITY_WORDS",
    "STYLES",
    "Span",
    "WrittenReport",
    "describe",
    "finding_phrase",
    "write_report",
]

STYLES: tuple[str, ...] = ("free", "structured")
CHANGES: tuple[str, ...] = ("new", "worse", "better", "unchanged")
"""Values of ``write_report(changes=...)``: how a finding compares with the prior study."""


# ---------------------------------------------------------------------------------------
# Output types
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Span:
    """Where the phrase naming finding ``finding`` sits: ``text[start:end]`` of ``section``.

    ``finding`` indexes the findings list given to :func:`write_report` (and the renderer's
    masks, which come in the same order); ``section`` is ``"findings"`` or ``"impression"``.
    """

    finding: int
    section: str
    start: int
    end: int


@dataclass
class WrittenReport:
    """A written report: the two sections, the spans, the style.

    >>> r = write_report([Finding("pneumothorax", "right", severity="mild")], style="structured")
    >>> [(s.section, r.phrase(s)) for s in r.spans]
    [('findings', 'Small right pneumothorax'), ('impression', 'Small right pneumothorax')]
    """

    findings: str
    impression: str
    spans: list[Span]
    style: str

    def phrase(self, span: Span) -> str:
        """The text a span covers."""
        return getattr(self, span.section)[span.start:span.end]

    def to_dict(self) -> dict:
        """JSON-serialisable form (spans as dicts); :meth:`from_dict` inverts it."""
        return {"findings": self.findings, "impression": self.impression, "style": self.style,
                "spans": [asdict(s) for s in self.spans]}

    @classmethod
    def from_dict(cls, d: Mapping) -> WrittenReport:
        return cls(d["findings"], d["impression"], [Span(**s) for s in d["spans"]], d["style"])


# ---------------------------------------------------------------------------------------
# Randomness: one picker interface for random.Random, numpy Generators and "canonical"
# ---------------------------------------------------------------------------------------

class _Picker:
    """Random choices from a ``random.Random`` (or anything with ``random()``)."""

    def __init__(self, rng) -> None:
        self.rng = rng

    def choice(self, options: Sequence):
        return options[min(int(self.rng.random() * len(options)), len(options) - 1)]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


class _Canonical(_Picker):
    """Always the first option: the fixed vocabulary of the structured style."""

    def __init__(self) -> None:
        super().__init__(None)

    def choice(self, options: Sequence):
        return options[0]

    def chance(self, p: float) -> bool:
        return False


def _picker(rng) -> _Picker:
    if isinstance(rng, _Picker):
        return rng
    if rng is None:
        return _Canonical()
    if isinstance(rng, int):
        return _Picker(random.Random(rng))
    if hasattr(rng, "random"):  # random.Random, numpy Generator / RandomState
        return _Picker(rng)
    raise TypeError(f"rng must be None, an int seed, random.Random or a numpy Generator, got {type(rng)}")


# ---------------------------------------------------------------------------------------
# Noun phrases and sentences
# ---------------------------------------------------------------------------------------

def _variant_entry(table, variant):
    return table[variant] if isinstance(table, Mapping) else table


def _location(zone: str, side: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (LOCATIONS.get((zone, side or "*")) or LOCATIONS.get((zone, "*")) or DEFAULT_LOCATION)


def _fields(f: Finding, pick: _Picker, severity: bool = True) -> dict[str, str]:
    """Template fields of one finding (severity word, side, location, plural endings ...)."""
    t = KIND_TEXT[f.kind]
    sev = pick.choice(SEVERITY_WORDS[t.scale][f.severity]) if severity else ""
    side = f.side or ""
    adj, noun = _location(f.zone, f.side)
    bilateral = f.side == "bilateral"
    fields = {
        "sev": sev, "sevly": ADVERBS.get(sev, sev), "side": side,
        "loc": pick.choice(adj).format(side=side), "locn": pick.choice(noun).format(side=side),
        "s": "s" if bilateral else "", "y": "ies" if bilateral else "y",
        "cpa": "costophrenic angles" if bilateral else f"{side} costophrenic angle",
        "rib": pick.choice(RIBS.get(f.zone, ("",))),
        "convex": {"left": "levoconvex", "right": "dextroconvex"}.get(side, ""),
    }
    fields.update({k: pick.choice(v) for k, v in t.extra.items()})
    return fields


def _grammar(np: NounPhrase, f: Finding) -> str:
    return PLURAL if np.grammar == COUNT and f.side == "bilateral" else np.grammar


def _tidy(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\[ ", "[", s)
    s = re.sub(r" \]", "]", s)
    return re.sub(r" ([.,])", r"\1", s)


def _noun_phrase(f: Finding, pick: _Picker, fields: Mapping[str, str]) -> tuple[str, str]:
    """(phrase, grammar) of one finding: a noun template filled with ``fields``."""
    np = pick.choice(_variant_entry(KIND_TEXT[f.kind].nouns, f.variant))
    return _tidy(np.template.format(**fields)), _grammar(np, f)


def describe(finding: Finding, rng=None, *, severity: bool = True) -> str:
    """The noun phrase naming one finding, lower case, with its modifiers.

    ``rng``: ``None`` for the canonical phrase (the structured style's), an int seed, a
    ``random.Random`` or a numpy ``Generator`` for a random synonym. ``severity=False``
    leaves the severity word out (used for resolved findings).

    >>> describe(Finding("pleural_effusion", "left", severity="moderate"))
    'moderate left pleural effusion'
    >>> describe(Finding("nodule", "right", "upper", severity="moderate"))
    '1.2 cm right upper lobe nodule'
    >>> describe(Finding("atelectasis", "bilateral", "base"))
    'bibasilar plate-like atelectasis'
    """
    pick = _picker(rng)
    return _noun_phrase(finding, pick, _fields(finding, pick, severity))[0]


def _starts_with_vowel_sound(word: str) -> bool:
    w = word.lower()
    if w[:1].isdigit():
        return w.startswith("8") or re.match(r"1[18](\D|$)", w) is not None
    return w[:1] in "aeiou"


@dataclass
class _Piece:
    """Text with spans ``(finding, start, end)``; ``+`` concatenates and shifts the spans."""

    text: str
    spans: list[tuple[int, int, int]] = field(default_factory=list)

    def __add__(self, other: _Piece | str) -> _Piece:
        other = _Piece(other) if isinstance(other, str) else other
        n = len(self.text)
        return _Piece(self.text + other.text, self.spans + [(i, a + n, b + n) for i, a, b in other.spans])


def _join(pieces: Sequence[_Piece], sep: str) -> _Piece:
    out = _Piece("")
    for k, p in enumerate(pieces):
        out = out + (sep if k else "") + p
    return out


def _render(template: str, fields: Mapping[str, str], grammar: str = MASS,
            finding: int | Sequence[int] = (), capitalise: bool = True) -> _Piece:
    """Fill a sentence template and turn its ``[...]`` markers into spans for ``finding``."""
    agree = {"be": "are" if grammar == PLURAL else "is", "has": "have" if grammar == PLURAL else "has",
             "the": "" if grammar == MASS else "the "}
    s = _tidy(template.format(**{**fields, **agree}))

    def article(m: re.Match) -> str:
        if grammar != COUNT:
            return m.group(1) + m.group(2)
        return ("an " if _starts_with_vowel_sound(m.group(2)) else "a ") + m.group(1) + m.group(2)

    s = re.sub(r"@ ?(\[?)(\S+)", article, s)
    if capitalise:
        k = next((j for j, ch in enumerate(s) if ch not in "[ "), None)
        if k is not None:
            s = s[:k] + s[k].upper() + s[k + 1:]
    ids = [finding] if isinstance(finding, int) else list(finding)
    text, spans = "", []
    for part in re.split(r"(\[[^\]]*\])", s):
        if part.startswith("[") and part.endswith("]"):
            spans.append((ids[len(spans)], len(text), len(text) + len(part) - 2))
            part = part[1:-1]
        text += part
    if len(spans) != len(ids):
        raise AssertionError(f"template {template!r} marks {len(spans)} spans for {len(ids)} findings")
    return _Piece(text, spans)


# ---------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Item:
    """One finding of the report. Its ``fields`` (severity word, location, device route ...)
    are drawn once, so the findings and the impression never disagree on them; only the
    noun template and the sentence around it vary between mentions."""

    index: int            # into the findings list; -1 for resolved findings
    finding: Finding
    change: str | None    # one of CHANGES, "resolved" or None
    fields: Mapping[str, str]

    def noun_phrase(self, pick: _Picker) -> tuple[str, str, dict[str, str]]:
        """(phrase, grammar, fields with ``np`` added)."""
        np, grammar = _noun_phrase(self.finding, pick, self.fields)
        return np, grammar, {**self.fields, "np": np}

    @property
    def text(self) -> KindText:
        return KIND_TEXT[self.finding.kind]

    @property
    def chronic(self) -> bool:
        return self.finding.variant in self.text.chronic_variants

    @property
    def priority(self) -> int:
        return 30 if self.chronic else self.text.priority

    @property
    def acute(self) -> bool:
        return self.text.acute and not self.chronic and self.change != "resolved"

    @property
    def important(self) -> bool:
        return self.priority < 20 or self.change in ("new", "worse", "better")


def _denied(normal_or_kinds, present: Sequence[Finding]) -> bool:
    denies = normal_or_kinds.denies if isinstance(normal_or_kinds, Normal) else normal_or_kinds
    return any(f.kind in denies or f"{f.kind}:{f.variant}" in denies for f in present)


def _normal(topic: str, present: Sequence[Finding], pick: _Picker) -> str | None:
    texts = [t for n in NORMALS if n.topic == topic and not _denied(n, present) for t in n.texts]
    return pick.choice(texts) if texts else None


def _finding_sentence(item: _Item, pick: _Picker, duplicate: bool) -> _Piece:
    f = item.finding
    _, grammar, fields = item.noun_phrase(pick)
    if item.change == "resolved":
        return _render(pick.choice(RESOLVED), fields, grammar)
    if item.change is not None:
        templates = CHANGED[item.change]
    elif duplicate and grammar == COUNT:
        templates = DUPLICATE
    else:
        own = _variant_entry(item.text.sentences, f.variant)
        templates = own if own and pick.chance(0.5) else PLAIN
    return _render(pick.choice(templates), fields, grammar, item.index)


def _negative_list(present: Sequence[Finding], pick: _Picker, lungs_said_clear: bool) -> str | None:
    """"No focal consolidation, pleural effusion or pneumothorax." over absent key observations."""
    keep = {"consolidation": 0.45 if lungs_said_clear else 0.85, "effusion": 0.9, "pneumothorax": 0.85,
            "edema": 0.25}
    words = [pick.choice(syn) for key, (syn, denies) in NEGATABLE.items()
             if not _denied(denies, present) and pick.chance(keep[key])]
    if not words:
        return None
    if len(words) > 2 and pick.chance(0.3):
        words = [words[-1]] + words[:-1]
    if len(words) == 1:
        x = words[0]
    else:
        comma = "," if len(words) > 2 and pick.chance(0.3) else ""
        x = ", ".join(words[:-1]) + f"{comma} or {words[-1]}"
    return pick.choice(NEGATIVE_LISTS).format(x=x)


def _free_findings(items: Sequence[_Item], present: Sequence[Finding], pick: _Picker,
                   negatives: bool) -> _Piece:
    order = list(FREE_ORDER)
    if pick.chance(0.25):  # MIMIC-style: lines and tubes first
        order = ["devices"] + order[:-1]
    seen: set[tuple] = set()
    out: list[_Piece] = []
    said: set[str] = set()

    def say(topic: str, p: float = 1.0) -> None:
        text = _normal(topic, present, pick) if negatives and pick.chance(p) else None
        if text:
            out.append(_Piece(text))
            said.add(topic)

    for section in order:
        here = sorted((it for it in items if it.text.section == section),
                      key=lambda it: (it.change == "resolved", it.priority))
        for it in here:
            key = (it.finding.kind, it.finding.side, it.finding.zone)
            out.append(_finding_sentence(it, pick, duplicate=key in seen and it.change is None))
            if it.change != "resolved":
                seen.add(key)
        if section == "heart":
            if pick.chance(0.6):
                say("cardiomediastinal")
            if "cardiomediastinal" not in said:
                say("heart", 0.9)
        elif section == "mediastinum" and "cardiomediastinal" not in said:
            say("mediastinum", 0.7)
        elif section == "lungs":
            say("lungs", 0.85)
        elif section == "pleura" and negatives:
            neg = _negative_list(present, pick, lungs_said_clear="lungs" in said)
            if neg:
                out.append(_Piece(neg))
        elif section == "bones":
            say("bones", 0.6)
    return _join(out, " ")


def _impression_items(items: Sequence[_Item], pick: _Picker, chronic_p: float) -> tuple[list, list, bool]:
    current = [it for it in items if it.change != "resolved"]
    first = sorted((it for it in current if it.important), key=lambda it: it.priority)
    later = sorted((it for it in current if not it.important and pick.chance(chronic_p)),
                   key=lambda it: it.priority)
    resolved = [it for it in items if it.change == "resolved"]
    return first, later + resolved, not any(it.acute for it in current)


def _free_impression(items: Sequence[_Item], pick: _Picker) -> _Piece:
    first, later, no_acute = _impression_items(items, pick, chronic_p=0.3)
    sentences: list[_Piece] = []
    pending: _Piece | None = None  # a plain item waiting for a possible "X and Y."
    for it in first + [None] + later:
        if it is None:
            if pending is not None:
                sentences.append(pending + ".")
                pending = None
            if no_acute:
                sentences.append(_Piece(pick.choice(NO_ACUTE)))
            continue
        _, grammar, fields = it.noun_phrase(pick)
        if it.change == "resolved":
            sentences.append(_render(pick.choice(IMPRESSION_RESOLVED), fields, grammar))
            continue
        note = pick.choice(it.text.notes).format(**fields)
        if it.change is None and not note and pick.chance(0.35):
            clause = _render("[{np}]", fields, grammar, it.index, capitalise=pending is None)
            if pending is None:
                pending = clause
            else:
                sentences.append(pending + " and " + clause + ".")
                pending = None
            continue
        if pending is not None:
            sentences.append(pending + ".")
            pending = None
        sentences.append(_render(pick.choice(IMPRESSION[it.change]), {**fields, "note": note}, grammar, it.index))
    if pending is not None:
        sentences.append(pending + ".")
    return _join(sentences, " ")


def _structured_statement(it: _Item, pick: _Picker) -> _Piece:
    np, grammar, fields = it.noun_phrase(pick)
    if it.change == "resolved":
        return _Piece(f"Resolved {np}.")
    return _render(STRUCTURED_PREFIX[it.change] + "[{np}].", fields, grammar, it.index)


def _structured_findings(items: Sequence[_Item], pick: _Picker) -> _Piece:
    lines = []
    for key, header, empty in REPORT_SECTIONS:
        here = sorted((it for it in items if it.text.section == key),
                      key=lambda it: (it.change == "resolved", it.priority))
        body = _join([_structured_statement(it, pick) for it in here], " ") if here else _Piece(empty)
        lines.append(_Piece(f"{header}: ") + body)
    return _join(lines, "\n")


def _structured_impression(items: Sequence[_Item], pick: _Picker) -> _Piece:
    first, later, no_acute = _impression_items(items, pick, chronic_p=0.0)
    statements = [_structured_statement(it, pick) for it in first]
    if no_acute:
        statements.append(_Piece(NO_ACUTE[0]))
    statements += [_structured_statement(it, pick) for it in later]
    if len(statements) == 1:
        return statements[0]
    return _join([_Piece(f"{k}. ") + s for k, s in enumerate(statements, 1)], "\n")


def write_report(findings: Sequence[Finding], style: str = "free", seed: int = 0,
                 changes: Mapping[int, str] | None = None, negatives: bool = True, *,
                 resolved: Sequence[Finding] = ()) -> WrittenReport:
    """Write the findings and impression of one study, with a span per finding.

    Args:
        findings: what the image shows, in mask order (``Span.finding`` indexes this list).
        style: ``"free"`` (varied narrative) or ``"structured"`` (one line per section,
            canonical wording; the seed changes nothing).
        seed: wording choices of the free style; same seed, same text.
        changes: finding index -> ``"new" | "worse" | "better" | "unchanged"``, comparing
            with a prior study ("New small right pleural effusion.").
        negatives: free style only: pertinent negatives and normal statements ("No
            pneumothorax.", "The lungs are clear."). A study with nothing to report gets its
            normal text regardless.
        resolved: findings of the prior that are gone ("Previously seen right pleural
            effusion has resolved."). They have no mask, so no span.

    Every finding gets exactly one span in ``findings``; acute and otherwise important ones
    (and changed ones) get one in ``impression`` too.

    >>> r = write_report([Finding("pleural_effusion", "right")], changes={0: "new"},
    ...                  resolved=[Finding("consolidation", "left", "lower")], style="structured")
    >>> print(r.impression)
    1. New small right pleural effusion.
    2. Resolved left lower lobe consolidation.
    """
    if style not in STYLES:
        raise ValueError(f"unknown report style {style!r}; known: {STYLES}")
    changes = dict(changes or {})
    for i, c in changes.items():
        if not (isinstance(i, int) and 0 <= i < len(findings)):
            raise ValueError(f"changes: index {i!r} is not a finding index (0..{len(findings) - 1})")
        if c not in CHANGES:
            raise ValueError(f"changes: {c!r} for finding {i} is not one of {CHANGES}")
    for f in list(findings) + list(resolved):
        if not isinstance(f, Finding):
            raise TypeError(f"expected Finding, got {type(f).__name__}: {f!r}")
    pick = _Canonical() if style == "structured" else _Picker(random.Random(seed))
    items = [_Item(i, f, changes.get(i), _fields(f, pick)) for i, f in enumerate(findings)]
    items += [_Item(-1, f, "resolved", _fields(f, pick, severity=False)) for f in resolved]

    if style == "structured":
        body, impression = _structured_findings(items, pick), _structured_impression(items, pick)
    else:
        body = _free_findings(items, list(findings), pick, negatives=negatives or not items)
        impression = _free_impression(items, pick)
    spans = [Span(i, "findings", a, b) for i, a, b in body.spans]
    spans += [Span(i, "impression", a, b) for i, a, b in impression.spans]
    return WrittenReport(body.text, impression.text, spans, style)


# ---------------------------------------------------------------------------------------
# The key phrase of a finding's canonical wording (ground truth for text.phrases)
# ---------------------------------------------------------------------------------------

def finding_phrase(finding: Finding) -> KeyPhrase:
    """The key phrase :func:`~medalign_lite.text.phrases.extract_phrases` should give for the
    writer's canonical (structured-style) wording of ``finding``; status "present".

    >>> finding_phrase(Finding("consolidation", "left", "lower")).text()
    'left lower lobe consolidation'
    >>> finding_phrase(Finding("atelectasis", "bilateral", "base")).text()
    'bilateral base atelectasis'
    """
    from ..text.phrases import (
        KeyPhrase,  # not at the top: it compiles the labeler's lexicons
    )

    observation, rule = KIND_PHRASE.get(finding.kind, (finding.kind.replace("_", " "), None))
    if finding.kind == "hyperinflation":
        observation = "emphysema" if finding.variant == "emphysema" else "hyperinflation"
    side, zone = finding.side, finding.zone
    if rule is None:
        anatomy = None
    elif rule == "side":
        anatomy = side
    elif rule == "zone":
        if (zone, side) in ZONE_ANATOMY:
            anatomy = ZONE_ANATOMY[(zone, side)]
        elif zone in ZONE_NOUN:
            anatomy = f"{side} {ZONE_NOUN[zone]}" if side else ZONE_NOUN[zone]
        else:  # diffuse, chest wall, costophrenic ...: the side alone
            anatomy = side
    elif rule in ("hemidiaphragm", "rib", "chest wall"):
        anatomy = f"{side} {rule}"
    else:
        anatomy = rule
    return KeyPhrase(observation, "present", anatomy)
