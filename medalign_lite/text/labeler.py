"""A rule-based 14-observation CheXpert-style labeler: our offline proxy for chexpert-labeler.

The Stanford CheXpert labeler (``stanfordmlgroup/chexpert-labeler``) needs NegBio, a
bllipparser model download and NLTK data; CheXbert needs a checkpoint. This module runs
anywhere, labels several thousand reports per second on one core (5,000-12,000 real IU
reports/s measured with :func:`bench_labeler` on a shared machine), and follows the same
three stages:

1. **Extraction.** Mention lexicons per observation (our own lists, modelled on the kinds
   of phrases chexpert-labeler uses) compiled into *one* regular expression that
   dispatches on the first letter (see :class:`Lexicon`). Four kinds of :class:`Term`:

   * ``mention``: names the observation ("pleural effusion", "the heart is enlarged");
     positive unless negated or hedged.
   * ``anatomic``: names the structure the observation is about ("heart size", "cardiac
     silhouette", "mediastinal contours"). It counts only when negated or hedged, so
     "heart size is normal" is a *negative* mention of Cardiomegaly (as chexpert-labeler's
     "heart size" mention + "normal" negation rule makes it) while "the heart and lungs
     have [...] in the interval" is no mention at all (chexpert-labeler would call it
     positive). Anatomic mentions are also uncertain when called stable / unchanged /
     borderline ("stable cardiomediastinal silhouette": chexpert's post-negation rule).
   * ``hedged``: at most uncertain (vascular prominence, cephalization, blunting of the
     costophrenic angle: chexpert-labeler's post-negation uncertainty rules).
   * ``unmention``: swallowed, so that nothing inside it is a mention ("pericardial
     effusion", "pleural line", "plate-like", "projecting over the heart").

   At each position the alternatives are tried in the order unmention, mention, hedged,
   anatomic, with word boundaries on both sides; matches do not overlap.

2. **Classification** of every mention within its *scope*: the clause it sits in.
   Sentences end at ``.`` / ``!`` / ``;`` / new lines; clauses also end at parentheses,
   before "but", "however", "although", "though", "whereas", "which", "except", "aside
   from", "apart from" and before ", (and) there / this / it". In chexpert-labeler's
   order, the first rule that fires wins:

   a. *pre-negation uncertainty* before ("cannot exclude", "cannot be ruled out", "no
      new") or after the mention ("... is not excluded", "... cannot be ruled out") → -1;
   b. *negation* before ("no", "without", "free of", "negative for", "no evidence of",
      "clear of", "absence of", "resolved", "resolution of", "removal of", "rather
      than"; "not" and "normal" / "unremarkable" within three words) or after it, as the
      mention's own predicate ("... is normal", "... within normal limits", "... is not
      seen", "... has resolved", "... is no longer seen", ": none"). Pseudo-negations
      ("no change in", "without interval change", "not only") negate nothing → 0;
   c. *post-negation uncertainty* before ("possible", "probable", "may", "could",
      "suspicious for", "concerning for", "suggestive of", "questionable", "versus",
      "differential", "worrisome for", "A or B") or after the mention ("... is
      suspected", "... may be present", "... ?", "... or B") → -1;
   d. otherwise → 1.

   A trigger *after* the mention must be the mention's own predicate (the first verb
   after it, or a predicate within three words: "heart size normal", "HEART: Normal"),
   so "the heart is enlarged and the lungs are clear" keeps Cardiomegaly positive and
   "opacity may represent atelectasis" hedges atelectasis only, as chexpert-labeler's
   dependency rules do.

3. **Aggregation** per report (chexpert-labeler's ``aggregate.py``): any positive mention
   → 1; else any uncertain → -1; else negative → 0; never mentioned → blank (NaN).
   "CHF" / "heart failure" positive or uncertain also adds an uncertain Cardiomegaly.
   **No Finding** is 1 when no observation other than Support Devices is 1 or -1, else
   blank (never 0). A report with no text at all is all blank (chexpert-labeler would
   call an empty impression "No Finding"; we do not).

Choices that differ from chexpert-labeler (the project's conventions, documented with the
finding vocabulary in ``data/findings.py``): vascular / pulmonary congestion is a *positive*
Edema mention (chexpert: uncertain); granulomas and granulomatous disease are Lung Lesion;
scarring and interstitial markings name no observation (chexpert: Lung Opacity), but
pleural and pleuro-parenchymal scarring are Pleural Other (as chexpert); median sternotomy
(wires) is a Support Device; skin / nipple markers are not; "likely X" is positive (as
chexpert); mentions are matched once (chexpert also counts "opacity" inside "nodular
opacity" as Lung Opacity; here it is Lung Lesion only).

IU X-Ray's ``XXXX`` anonymisation tokens are ordinary words here: they never match a
lexicon, never end a scope and never count as a negation ("there are no XXXX of a
pleural effusion" is a negative effusion mention).

This labeler is a proxy: CE numbers computed with it are not comparable to papers' (see
:mod:`medalign_lite.eval.clinical`). Offsets of :class:`Mention` refer to
:func:`normalize` ``(text)``, which has the same length as ``text``.

>>> label_report("No pleural effusion; small right pneumothorax.")["Pneumothorax"]
1.0
>>> label_report("No pleural effusion; small right pneumothorax.")["Pleural Effusion"]
0.0
>>> label_report("Heart size is normal. The lungs are clear.")["No Finding"]
1.0
"""
from __future__ import annotations

import math
import os
import re
import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..utils import atomic_path
from .observations import CHEXPERT_LABELS

__all__ = [
    "CHEXPERT_LEXICON",
    "CHEXPERT_TERMS",
    "KINDS",
    "NEGATIVE",
    "POSITIVE",
    "UNCERTAIN",
    "Lexicon",
    "Mention",
    "Term",
    "aggregate",
    "bench_labeler",
    "classify",
    "label_csv",
    "label_report",
    "label_reports",
    "normalize",
    "scope_spans",
    "sentence_spans",
]

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
KINDS: tuple[str, ...] = ("unmention", "mention", "hedged", "anatomic")
"""Term kinds, in the order the extraction regex tries them at one position."""

_LABEL_INDEX = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
_NO_FINDING = _LABEL_INDEX["No Finding"]
_SUPPORT_DEVICES = _LABEL_INDEX["Support Devices"]


# ---------------------------------------------------------------------------------------
# Normalisation, sentences and scopes
# ---------------------------------------------------------------------------------------

def normalize(text: str | None) -> str:
    """Lower-cased text of the same length (offsets carry over); ``None`` / NaN → ``""``.

    IU's anonymisation tokens ``XXXX`` become ``xxxx``: a plain word that no lexicon or
    trigger matches.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = str(text)
    low = text.lower()
    if len(low) != len(text):  # rare letters whose lower case is longer ("İ"): keep them
        low = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    return low


# Sentence ends: . or ! followed by space / end (not in "2.5 cm", not after "vs"), ; and
# new lines. Clause ends: the sentence ends plus the conjunctions that end a negation scope.
# Every alternative starts with a literal or a character set, so that the regex engine
# rejects most positions with one comparison.
_SENTENCE_END = r"[.!](?<!\bvs.)(?=\s|$)|[;\n\r]"
_PAREN = r"|[()]"
_CLAUSE_END = (_SENTENCE_END + _PAREN
               + r"|\s(?=(?:but|however|although|though|whereas|which|except|aside from|apart from|"
                 r"and there|and this|and these|and it)\b)"
               + r"|,\s(?=(?:and )?(?:there|this|these|it)\b)")
_SENTENCE_RE = re.compile(_SENTENCE_END)
_CLAUSE_RE = re.compile(_CLAUSE_END)


def _spans(regex: re.Pattern, text: str) -> list[tuple[int, int]]:
    out, lo = [], 0
    for m in regex.finditer(text):
        if m.start() > lo:
            out.append((lo, m.start()))
        lo = m.end()
    if lo < len(text):
        out.append((lo, len(text)))
    return out


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of a normalised text (one regex, no loops per word)."""
    return _spans(_SENTENCE_RE, text)


def scope_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each negation / uncertainty scope (clause) of a normalised text."""
    return _spans(_CLAUSE_RE, text)


# ---------------------------------------------------------------------------------------
# Negation and uncertainty triggers
# ---------------------------------------------------------------------------------------

# One word (IU's xxxx included), and the words allowed between a mention and its predicate:
# none of them may start a new statement ("and the", "but", "which", "no", "with normal").
_W = r"[\w'/-]+(?![\w'/-])"  # a whole word: the lookahead stops backtracking into it
_GAP_WORD = (r"(?:\s*,\s*|\s+)(?:and\s+(?!the\b|there\b|a\b|an\b|this\b|it\b))?"
             r"(?!(?:but|which|no|not|without|however|although|with|or|is|are|was|were|be|been|"
             r"appears?|remains?|seems?|looks?|has|have|had|may|might|could|can)\b)") + _W
# Before a verb, "with" may belong to the subject ("consolidation with air bronchograms has
# resolved"); without one it starts a new statement ("effusion with normal heart size").
_SUBJECT_WORD = _GAP_WORD.replace("without|however|although|with|or|", "without|however|although|or|")
_COPULA = (r"(?:is|are|was|were|be|been|appears?|appearing|remains?|seems?|looks?|has|have|had|"
           r"has been|have been|is again|are again)")
_MODS = r"(?:(?:now|otherwise|again|still|also|both|all|grossly|essentially|overall|currently|once again|stable and|unchanged and|likely)\s+)*"

_NEG_PREDICATE = (
    r"(?:normal|unremarkable|(?:within|in) (?:the )?(?:normal limits|limits of normal)|(?:at |near )?(?:the )?"
    r"upper limits? of normal|(?:top|high|upper)[- ]normal|not (?:\w+ly )?(?:seen|identified|visualized|"
    r"present|evident|appreciated|demonstrated|noted|visible|detected|enlarged|widened|increased|"
    r"convincingly seen|apparent)|no longer (?:\w+ly )?(?:seen|visible|present|evident|identified|"
    r"appreciated|demonstrated|noted|apparent)|absent|resolved|cleared|removed|negative|none)")
# Extra negative predicates of anatomic mentions ("costophrenic angles are sharp").
_ANAT_NEG_PREDICATE = r"(?:clear|sharp|sharply defined|preserved|intact|well[- ]defined|free)"
_UNC_PREDICATE = (
    r"(?:possible|possibly|probable|probably|questionable|questioned|suspected|suspicious|equivocal|"
    r"indeterminate|uncertain|less likely|unlikely|a possibility|not (?:well |clearly )?(?:visualized|"
    r"evaluated|assessed)|poorly (?:seen|visualized|evaluated)|incompletely (?:seen|visualized|evaluated)|"
    r"obscured)")
_ANAT_UNC_PREDICATE = r"(?:stable|unchanged|borderline|similar|not (?:significantly )?changed|without change)"


def _after(predicate: str, end: str = "") -> re.Pattern:
    """The mention's own predicate: its first verb (after up to 8 words joining further
    subjects: "heart size and mediastinal contours are normal") or, without a verb, a
    predicate within two words ("heart size normal", "HEART: Normal"). ``end``: a
    lookahead the predicate must be followed by."""
    return re.compile(
        rf"(?:(?:{_SUBJECT_WORD}){{0,8}}?\s+{_COPULA}\s+{_MODS}{predicate}"
        rf"|(?:\s*:\s*|(?:{_GAP_WORD}){{0,2}}\s+){_MODS}{predicate})\b{end}")


_PRE_UNC_BEFORE = re.compile(
    r"\b(?:cannot|can ?not|can't|could not|unable to|difficult to|does not|doesn't)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|definitely\s+|totally\s+)?(?:exclude|excluded|rule out|ruled out)\b"
    r"|\bnot\s+(?:be\s+)?(?:entirely\s+|completely\s+)?(?:excluded|ruled out)\b"
    r"|\bno (?:evidence|findings?) to (?:rule out|exclude)\b|\bno (?:\w+ )?new\b")
_PRE_UNC_AFTER = re.compile(
    rf"(?:{_GAP_WORD}){{0,4}}?\s*(?:{_COPULA}\s+)?(?:not|cannot|can ?not|can't|could not)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|definitely\s+)?(?:excluded|ruled out)\b")

_NEG_BEFORE = re.compile(
    r"(?P<pseudo>\b(?:no|without|not)\s+(?:\w+ly\s+)?(?:significant\s+|appreciable\s+|substantial\s+|"
    r"definite\s+|further\s+|other\s+)?(?:interval\s+)?(?:change|changes|changed|increase|increased|"
    r"decrease|decreased|improvement|improved|worsening|progression|enlargement of)\b"
    r"|\bnot\s+only\b|\bno\s+new\b|\bgram negative\b)"
    r"|(?P<neg>\b(?:no|without|nor|never|absent|negative for|free of|clear of|clearing of|absence of|"
    r"resolution of|resolved|removal of|removed|rather than|ruled out|exclude|excluded|"
    r"excludes|exclusion of|disappearance of)\b)")
_NEG_NEAR_BEFORE = re.compile(
    rf"\b(?:not|normal|normal-appearing|unremarkable)\s+(?:(?!with\b|and\b|but\b|or\b){_W}\s+){{0,2}}$")
_NEG_AFTER = _after(_NEG_PREDICATE)
_ANAT_NEG_AFTER = _after(f"(?:{_NEG_PREDICATE}|{_ANAT_NEG_PREDICATE})")

_UNC_BEFORE = re.compile(
    r"\b(?:possible|possibly|probable|probably|presumed|presumably|questionable|questionably|question of|"
    r"suspect|suspected|suspicious|suspicion|concern for|concerning|worrisome|may|might|could|"
    r"suggest|suggests|suggested|suggestive|suggesting|suggestion of|differential|versus|vs|consider|"
    r"considered|consideration|equivocal|indeterminate|uncertain|maybe|perhaps|less likely|unlikely|"
    r"cannot|correlate clinically|clinical correlation|atypical for)\b"
    r"|\b(?:or|and/or)\s+(?:\w+\s+){0,3}$|\?\s*(?:\w+\s+){0,2}$")
_UNC_AFTER = re.compile(
    rf"\s*(?:\?|,?\s*(?:or|versus|vs\.?|and/or)\b)"
    rf"|(?:(?:{_GAP_WORD}){{0,4}}?\s+{_COPULA}\s+{_MODS}{_UNC_PREDICATE}"
    rf"|\s*{_MODS}{_UNC_PREDICATE})\b"
    r"|(?:\s+[\w'/-]+(?![\w'/-])){0,2}?\s+(?:may|might|could|can)\s+(?:also\s+)?be\b"
    r"(?!\s+(?:due|secondary|related|from|caused|compatible|consistent|representing|the result)\b)")
_ANAT_UNC_BEFORE = re.compile(r"\b(?:stable|unchanged|grossly stable|similar|borderline)\s+(?:\w+\s+){0,1}$")
# "stable" must be the whole predicate: "MEDIASTINUM: Unchanged tortuous aorta" is about the aorta.
_ANAT_UNC_AFTER = _after(_ANAT_UNC_PREDICATE, r"(?=\s*(?:$|[.,;:()]|(?:and|in|from|since|compared|when|to|with|on|"
                                              r"since|over|size|appearance|contour|configuration)\b))")


def classify(text: str, start: int, end: int, lo: int, hi: int, kind: str = "mention") -> int:
    """Status of the mention ``text[start:end]`` in the scope ``text[lo:hi]``.

    Rules in chexpert-labeler's order (pre-negation uncertainty → negation → post-negation
    uncertainty); see the module docstring. ``kind`` is the :class:`Term` kind: anatomic
    mentions also take "clear / sharp / preserved" as negation and "stable / unchanged /
    borderline" as uncertainty; hedged mentions are never positive.

    Returns:
        :data:`POSITIVE` (1), :data:`NEGATIVE` (0) or :data:`UNCERTAIN` (-1).
    """
    # a. pre-negation uncertainty
    if _PRE_UNC_BEFORE.search(text, lo, start) or _PRE_UNC_AFTER.match(text, end, hi):
        return UNCERTAIN
    # b. negation
    anatomic = kind == "anatomic"
    for m in _NEG_BEFORE.finditer(text, lo, start):
        if m.lastgroup == "neg":
            return NEGATIVE
    if _NEG_NEAR_BEFORE.search(text, max(lo, start - 60), start):
        return NEGATIVE
    if (_ANAT_NEG_AFTER if anatomic else _NEG_AFTER).match(text, end, hi):
        return NEGATIVE
    # c. post-negation uncertainty
    if _UNC_BEFORE.search(text, lo, start) or _UNC_AFTER.match(text, end, hi):
        return UNCERTAIN
    if anatomic and (_ANAT_UNC_BEFORE.search(text, max(lo, start - 40), start)
                     or _ANAT_UNC_AFTER.match(text, end, hi)):
        return UNCERTAIN
    return UNCERTAIN if kind == "hedged" else POSITIVE


# ---------------------------------------------------------------------------------------
# Lexicons
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Term:
    """One lexicon row: a regex fragment (lower case, no capturing groups) naming ``labels``.

    Attributes:
        labels: the observations it names (usually one; "hydropneumothorax" names two).
        pattern: regex fragment; word boundaries are added around it.
        kind: one of :data:`KINDS`.
        also_uncertain: observations made uncertain when this mention is positive or
            uncertain (chexpert-labeler's "CHF / heart failure" → Cardiomegaly rule).
    """

    labels: tuple[str, ...]
    pattern: str
    kind: str = "mention"
    also_uncertain: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown term kind {self.kind!r}; known: {KINDS}")
        if re.compile(self.pattern).groups:
            raise ValueError(f"term pattern {self.pattern!r} has capturing groups; use (?:...)")


class Mention(NamedTuple):
    """One classified mention: ``label``, ``status`` (1 / 0 / -1), ``start``/``end`` in
    :func:`normalize` ``(text)``, the ``kind`` of its term and its scope ``lo``/``hi``."""

    label: str
    status: int
    start: int
    end: int
    kind: str
    lo: int
    hi: int


def _split_top(s: str, sep: str = "|") -> list[str]:
    """Split ``s`` at ``sep`` characters outside parentheses and character classes."""
    out, depth, cls, cur, esc = [], 0, False, [], False
    for ch in s:
        if esc:
            cur.append(ch)
            esc = False
            continue
        if ch == "\\":
            esc = True
        elif cls:
            cls = ch != "]"
        elif ch == "[":
            cls = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def _literal_heads(pattern: str, _depth: int = 0) -> list[str]:
    """Equivalent alternatives of ``pattern`` that each start with a plain letter.

    Leading groups are expanded: ``(?:a|b)?c`` → ``ac``, ``bc``, ``c``; ``(?:a |b )+c`` →
    ``a (?:a |b )*c``, ``b (?:a |b )*c``. Raises ValueError for any other start (a class,
    ``\\w``, an optional first letter): the lexicon is written so that this never happens.
    """
    if _depth > 8:
        raise ValueError(f"term pattern {pattern!r}: leading groups nest too deeply")
    if pattern[:1].isalpha() and pattern[1:2] not in ("?", "*", "+", "{"):
        return [pattern]
    if pattern.startswith("(?:"):
        depth, close = 0, -1
        for k, ch in enumerate(pattern):
            if ch == "(" and (k == 0 or pattern[k - 1] != "\\"):
                depth += 1
            elif ch == ")" and pattern[k - 1] != "\\":
                depth -= 1
                if depth == 0:
                    close = k
                    break
        inner, rest = pattern[3:close], pattern[close + 1:]
        q = rest[:1] if rest[:1] in ("?", "*", "+") else ""
        rest = rest[len(q):]
        loop = f"(?:{inner})*" if q in ("*", "+") else ""
        out = [h for alt in _split_top(inner) for h in _literal_heads(alt + loop + rest, _depth + 1)]
        if q in ("?", "*"):
            out += _literal_heads(rest, _depth + 1)
        return out
    raise ValueError(f"term pattern {pattern!r} must start with a letter or a (?:...) group")


class Lexicon:
    """Terms compiled into one extraction regex; :meth:`mentions` classifies every match.

    Terms are tried in the order of :data:`KINDS` (an unmention beats a mention, a mention
    beats an anatomic term at the same position), in list order within a kind. For speed
    the regex dispatches on the first letter: every term is expanded into alternatives
    starting with a plain letter (:func:`_literal_heads`) and grouped by it, so at a word
    start the engine tries only the terms that can start there. Which term matched is
    found afterwards, once per distinct matched string: the first term (in the same order)
    that fully matches it. :mod:`medalign_lite.text.phrases` builds its own lexicon.
    """

    def __init__(self, terms: Sequence[Term]):
        self.terms = tuple(t for kind in KINDS for t in terms if t.kind == kind)
        by_letter: dict[str, list[str]] = {}
        for t in self.terms:
            for head in _literal_heads(t.pattern):
                by_letter.setdefault(head[0], []).append(head[1:])
        branches = [f"{c}(?:{'|'.join(rests)})" for c, rests in by_letter.items()]
        self.regex = re.compile(r"\b(?:" + "|".join(branches) + r")\b")
        self._full = [re.compile(t.pattern) for t in self.terms]
        self._which: dict[str, Term] = {}
        self.labels = tuple(dict.fromkeys(label for t in self.terms for label in t.labels))

    def term_of(self, matched: str) -> Term:
        """The term that produced ``matched`` (a string the extraction regex matched)."""
        t = self._which.get(matched)
        if t is None:
            t = next(t for t, rx in zip(self.terms, self._full) if rx.fullmatch(matched))
            if len(self._which) < 100_000:
                self._which[matched] = t
        return t

    def mentions(self, text: str, normalized: bool = False) -> list[Mention]:
        """All classified mentions of ``text`` in text order (anatomic terms only when
        negated or uncertain; unmentions never)."""
        if not normalized:
            text = normalize(text)
        out: list[Mention] = []
        scopes = None
        for m in self.regex.finditer(text):
            term = self.term_of(m.group())
            kind, labels, also = term.kind, term.labels, term.also_uncertain
            if kind == "unmention":
                continue
            if scopes is None:
                scopes = scope_spans(text)
                starts = [a for a, _ in scopes]
            lo, hi = scopes[max(bisect_right(starts, m.start()) - 1, 0)]
            status = classify(text, m.start(), m.end(), lo, hi, kind)
            if kind == "anatomic" and status == POSITIVE:
                continue
            for label in labels:
                out.append(Mention(label, status, m.start(), m.end(), kind, lo, hi))
            if also and status != NEGATIVE:
                for label in also:
                    out.append(Mention(label, UNCERTAIN, m.start(), m.end(), kind, lo, hi))
        return out


def _t(label: str | tuple[str, ...], kind: str, *patterns: str, also: tuple[str, ...] = ()) -> list[Term]:
    labels = (label,) if isinstance(label, str) else label
    return [Term(labels, p, kind, also) for p in patterns]


_ADV = r"(?:(?:\w+ly|borderline|stably|again|now|slightly|still|somewhat|top normal to)\s+)*"
_COP = r"(?:is|are|was|were|appears?|remains?|seems?|looks?|has become|have become)"
_HEART = r"(?:the )?(?:heart(?: size| shadow| contour)?|cardiac (?:silhouette|shadow|size|contour|outline)s?)"
_MEDIASTINUM = (r"(?:the )?(?:superior )?(?:cardio)?mediastin(?:um|al (?:silhouettes?|contours?|shadow|"
                r"width|configuration))")
_CPA = r"costophrenic (?:angles?|sulcus|sulci|recess(?:es)?)"
_SIDES = r"(?:(?:left|right|bilateral|both|posterior|lateral)\s+)*"
_DENSITY = r"(?:densit(?:y|ies)|opacit(?:y|ies))"

EC, CM, LO, LL, ED, CO, PN, AT, PX, PE, PO, FR, SD = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices")

CHEXPERT_TERMS: tuple[Term, ...] = tuple(
    # --- unmentions: swallowed before anything inside them can match -------------------
    _t(CM, "unmention",
       r"(?:over|overlying|overlies|overlie|projecting over|projects over|projected over|behind|through|"
       r"in|within|into) the (?:left |right |superior |lower )?(?:heart|cardiac silhouette|cardiac shadow)",
       r"(?:left |right )?heart borders?")
    + _t(LO, "unmention",
         rf"(?:bone|bony|osseous|soft[- ]tissue|metallic|metal|radiopaque|radio-opaque|calcific|calcified|"
         rf"sclerotic|breast|nipple) {_DENSITY}")
    + _t(LL, "unmention", r"mass effect", r"(?:breast|bone|bony|osseous|lytic|sclerotic|blastic|skin) "
         r"(?:mass(?:es)?|lesions?)", r"muscle mass")
    + _t(ED, "unmention", r"(?:soft[- ]tissue|subcutaneous|chest wall|extremity|peripheral) edema")
    + _t(AT, "unmention", r"(?:vertebral|vertebra|vertebral body|compression|tracheal|airway|spinal) "
         r"collapse")
    + _t(PE, "unmention", r"(?:pericardial|joint) effusions?")
    + _t(SD, "unmention",
         r"(?:pleural|septal|fissure|fissural|skin|azygoesophageal|paraspinal|paratracheal|"
         r"(?:anterior |posterior )?junction|mach|fat|visceral pleural) lines?", r"plate-?like",
         r"(?:nipple|skin) markers?")
    # --- mentions ---------------------------------------------------------------------
    + _t(EC, "mention",
         rf"(?:widened|widening of|enlarged|enlargement of|prominent|prominence of) {_MEDIASTINUM}",
         r"(?:cardio)?mediastinal (?:widening|enlargement|prominence)",
         rf"{_MEDIASTINUM} {_COP} {_ADV}(?:widened|enlarged|wide|prominent|increased)")
    + _t(CM, "mention",
         r"cardiomegaly", r"cardiac enlargement", r"cardiomyopathy",
         r"(?:enlarged|enlargement of) (?:the )?(?:cardiac silhouette|cardiac shadow|heart(?: size| shadow)?|"
         r"cardiac size|cardiac contour)",
         r"enlarged (?:cardiac silhouette|cardiac shadow|heart)",
         r"(?:increased|large) (?:heart|cardiac) size",
         rf"{_HEART} {_COP} {_ADV}(?:enlarged|increased|large|prominent)")
    + _t(LL, "mention",
         rf"nodul(?:e|es|ar {_DENSITY}|ar opacification)", r"mass(?:es)?",
         r"(?:pulmonary |lung |cavitary |cavitating |spiculated )?lesions?",
         r"granulom(?:a|as|ata|atous(?: disease| changes?)?)", r"tumou?rs?", r"neoplasms?", r"carcinomas?",
         r"metastas[ie]s", r"metastatic disease")
    + _t(LO, "mention",
         r"opacit(?:y|ies)", r"opacification", r"opacified", r"infiltrat(?:e|es|ion|ions|ive)",
         r"(?:air[- ]?space|alveolar) (?:disease|process|filling|shadowing)", r"densit(?:y|ies)",
         r"haziness", r"ground[- ]glass", r"decreased (?:translucency|lucency)")
    + _t(ED, "mention", r"(?:congestive )?heart failure", r"chf", also=(CM,))
    + _t(ED, "mention", r"edema", r"(?:pulmonary |vascular |venous |central )+congestion",
         r"(?:fluid|volume) overload")
    + _t(CO, "mention", r"consolidat(?:ion|ions|ed|ive|ing)")
    + _t(PN, "mention", r"(?:broncho)?pneumonias?", r"pneumonitis", r"infection", r"infectious(?: process)?")
    + _t(AT, "mention", r"atelecta(?:sis|ses|tic)", r"collapsed?")
    + _t((PX, PE), "mention", r"hydropneumothora(?:x|ces)")
    + _t(PX, "mention", r"pneumothora(?:x|ces)", r"pneumo-thorax")
    + _t(PE, "mention", r"effusions?", r"pleural fluid", r"hydrothorax", r"layering fluid",
         r"fluid (?:in|within|tracking along) the (?:\w+ )?(?:pleural space|fissures?)")
    + _t(PO, "mention",
         r"pleural (?:thickening|scar(?:ring|s)?|plaques?|calcifications?|fibrosis|reaction)",
         r"thickening of the (?:\w+ )?pleura", r"pleuro-?parenchymal (?:scar(?:ring|s)?|thickening)",
         r"pleural[- ]parenchymal (?:scar(?:ring|s)?|thickening)", r"fibrothorax",
         r"apical (?:pleural )?cap(?:ping|s)?")
    + _t(FR, "mention", r"fractures?", r"fractured", r"fx")
    + _t(SD, "mention",
         r"lines?/tubes?", r"support devices?", r"catheters?", r"lines?", r"tubes?", r"picc",
         r"port(?:-a-cath|acath)?", r"mediport", r"pacemakers?", r"pacers?", r"icds?", r"aicds?", r"defibrillators?",
         r"(?:sternotomy |surgical |epicardial |pacing |cerclage |pacer )?wires?", r"sternotomy",
         r"clips?", r"stents?", r"(?:prosthetic (?:heart |cardiac )?valves?|valve (?:replacement|prosthesis))",
         r"hardware", r"drains?", r"devices?", r"coils?", r"sutures?", r"staples?", r"screws?", r"cannulas?",
         r"arthroplast(?:y|ies)", r"tracheostomy", r"(?:ekg|ecg|telemetry|monitoring) leads")
    # --- hedged: at most uncertain ----------------------------------------------------
    + _t(ED, "hedged",
         r"(?:pulmonary )?vascular (?:prominence|engorgement|indistinctness|redistribution)",
         r"(?:prominent|prominence of the|indistinct|indistinctness of the) (?:central )?(?:pulmonary |lung )?(?:vasculature|"
         r"vascularity|vascular markings|vessels)", r"cephalization", r"kerley b lines?")
    + _t(PE, "hedged",
         rf"blunt(?:ing|ed) (?:of )?(?:the )?{_SIDES}{_CPA}", rf"{_CPA} (?:{_COP} )?{_ADV}blunt(?:ed|ing)",
         rf"blunted {_SIDES}{_CPA}")
    # --- anatomic: count only when negated or uncertain --------------------------------
    + _t((CM, EC), "anatomic", r"(?:the )?cardiac and mediastinal (?:silhouettes?|contours?)")
    + _t(CM, "anatomic", _HEART)
    + _t(EC, "anatomic", _MEDIASTINUM, r"cardiomediastinum", r"mediastinal and hilar (?:contours?|silhouettes?)",
         r"mediastinal structures")
    + _t(PE, "anatomic", rf"{_SIDES}{_CPA}")
)
"""The 13 observation lexicons of the CheXpert labeler proxy (No Finding is derived)."""

CHEXPERT_LEXICON = Lexicon(CHEXPERT_TERMS)


# ---------------------------------------------------------------------------------------
# Aggregation and the public API
# ---------------------------------------------------------------------------------------

def aggregate(mentions: Iterable[Mention], empty: bool = False) -> np.ndarray:
    """CheXpert aggregation of one report's mentions → (14,) float: 1 / 0 / -1 / NaN.

    Any positive → 1; else any uncertain → -1; else negative → 0; no mention → NaN.
    No Finding: 1 unless an observation other than Support Devices is 1 or -1 (then NaN).
    ``empty=True`` (no text): all NaN.
    """
    out = np.full(len(CHEXPERT_LABELS), np.nan)
    if empty:
        return out
    # rank: positive 3 > uncertain 2 > negative 1 > blank 0
    rank = np.zeros(len(CHEXPERT_LABELS), np.int8)
    for m in mentions:
        i = _LABEL_INDEX[m.label]
        r = 3 if m.status == POSITIVE else (2 if m.status == UNCERTAIN else 1)
        rank[i] = max(rank[i], r)
    out[rank == 3] = 1.0
    out[rank == 2] = -1.0
    out[rank == 1] = 0.0
    finding = rank >= 2
    finding[_SUPPORT_DEVICES] = finding[_NO_FINDING] = False
    out[_NO_FINDING] = np.nan if finding.any() else 1.0
    return out


def _label_vector(text) -> np.ndarray:
    t = normalize(text)
    if not t.strip():
        return aggregate((), empty=True)
    return aggregate(CHEXPERT_LEXICON.mentions(t, normalized=True))


def label_report(text: str | None) -> dict[str, float]:
    """CheXpert-style labels of one report: observation → 1.0 / 0.0 / -1.0 / NaN (blank).

    >>> label_report("Cannot exclude pneumonia.")["Pneumonia"]
    -1.0
    """
    return dict(zip(CHEXPERT_LABELS, _label_vector(text).tolist()))


def label_reports(texts: Iterable[str | None]) -> np.ndarray:
    """Labels of many reports: (N, 14) float array, columns in :data:`CHEXPERT_LABELS`
    order, values 1 / 0 / -1 and NaN for blank."""
    rows = [_label_vector(t) for t in texts]
    return np.stack(rows) if rows else np.empty((0, len(CHEXPERT_LABELS)))


def _format(values: np.ndarray) -> np.ndarray:
    """(N, 14) floats → strings "1" / "0" / "-1" / ""."""
    out = np.full(values.shape, "", dtype=object)
    out[values == 1] = "1"
    out[values == 0] = "0"
    out[values == -1] = "-1"
    return out


def label_csv(input_csv: str | os.PathLike, text_col: str | Sequence[str],
              out_csv: str | os.PathLike) -> Path:
    """Label every row of a CSV and write it with the 14 CheXpert columns (1 / 0 / -1 / blank).

    All input columns are kept as they are (read as text, so nothing is reformatted);
    label columns already present (a manifest's, blank) are overwritten in place, the others
    appended in CheXpert order. ``text_col`` is one column or several joined with a space
    (``["findings", "impression"]``); an empty or missing cell gives a blank row.
    The output is written to a temporary file beside ``out_csv`` and renamed onto it, so a
    failure never leaves a partial file. ``out_csv`` may equal ``input_csv``.

    Raises:
        FileNotFoundError: ``input_csv`` does not exist.
        KeyError: a text column is missing (the message names the file, the column and
            the columns it has).
    """
    input_csv = Path(input_csv)
    if not input_csv.is_file():
        raise FileNotFoundError(f"label_csv: input file {input_csv} does not exist")
    df = pd.read_csv(input_csv, dtype=str, keep_default_na=False)
    cols = [text_col] if isinstance(text_col, str) else list(text_col)
    missing = [c for c in cols if c not in df.columns]
    if missing or not cols:
        raise KeyError(f"label_csv: {input_csv} has no column {missing[0] if missing else '(none given)'!r}; "
                       f"its columns are {list(df.columns)}")
    texts = df[cols[0]] if len(cols) == 1 else df[cols].agg(" ".join, axis=1)
    # " ".join of empty cells leaves only spaces: _label_vector treats it as no text
    values = _format(label_reports(texts.tolist()))
    for j, name in enumerate(CHEXPERT_LABELS):
        df[name] = values[:, j] if len(df) else pd.Series(dtype=str)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False)
    return Path(out_csv)


def bench_labeler(texts: Sequence[str], repeat: int = 3) -> float:
    """Throughput of :func:`label_reports` on ``texts`` in reports per second: the best of
    ``repeat`` timed passes (``timeit``'s convention: the least disturbed run). Pin the
    process to one core (``taskset -c 0``) for a one-core number."""
    texts = list(texts)
    if not texts:
        raise ValueError("bench_labeler: no texts")
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        label_reports(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best
