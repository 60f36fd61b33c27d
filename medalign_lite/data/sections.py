"""Radiology report sectioning and cleaning.

:func:`section_report` splits a free-text report into the sections the manifest needs
(``findings``, ``impression``, ``comparison``, ``indication``, ``technique`` and
``last_paragraph``). It follows the *logic* of MIT-LCP's ``create_section_files`` for
MIMIC-CXR (our own code, not a copy):

1. **Headers.** A header is a short phrase followed by ``:`` at the start of a line, in
   capitals (``FINDINGS:``, ``PA AND LATERAL CHEST:``) or, in any case, a known header name
   (``Findings:``). A known header in capitals is also recognised inside a line
   (``... normal. IMPRESSION: ...``), so single-line reports split too. Everything before the
   first header (MIMIC's ``FINAL REPORT`` line, a wet read) is the preamble and is ignored.
2. **Names.** Headers are normalised: an alias table (``CONCLUSION`` → impression,
   ``HISTORY`` / ``REASON FOR EXAM`` → indication, ``EXAMINATION`` → technique,
   ``FINDINGS AND IMPRESSION`` → impression, ...), then misspellings within a small edit
   distance of a known name (``IMPRESSON``, ``FINDNGS``, ``COMPARSION``), then substrings
   (a header containing "impression" is an impression, as in MIT-LCP, checked in the order
   impression, findings, comparison, history), then view descriptions (``CHEST, TWO VIEWS``,
   ``PORTABLE AP CHEST``) count as findings, as in MIT-LCP. Known headers we do not return
   (``WET READ``, ``NOTIFICATION``, ``RECOMMENDATION(S)``, ``ADDENDUM``) end a section and
   their text is dropped. One deliberate difference from MIT-LCP: an *unknown* capitalised
   header (``HEART:``, ``LINES/TUBES:``, ``PICC:``) does not start a section; it stays, with
   its text, inside the section around it, so structured findings keep all their lines.
3. **Choice.** Empty findings/impression sections are discarded (a report title such as
   ``CHEST, PA LATERAL:`` directly followed by another header); of several sections with the
   same name the *last* non-empty one is kept (MIT-LCP's choice), except ``indication``,
   which joins every indication/history section in order.
4. **Fallback.** When a report has no (non-empty) findings and no impression, the last
   section is split at its first blank line and everything after it becomes
   ``last_paragraph`` (MIT-LCP's rule: radiologists often write the conclusion as a final
   unlabelled paragraph). The builders use it as the impression in that case.

MIT-LCP's hand-written per-study overrides (a few dozen MIMIC study ids) are not reproduced.

:func:`clean_report` normalises text for report-generation metrics, R2Gen style (see its
docstring); :func:`normalise_whitespace` collapses runs of whitespace.
"""
from __future__ import annotations

import re
from functools import lru_cache

SECTION_KEYS: tuple[str, ...] = ("findings", "impression", "comparison", "indication", "technique",
                                 "last_paragraph")

# header (lower case, single spaces) -> section name; None means "a known header we ignore"
_ALIASES: dict[str, str | None] = {
    # impression
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "summary": "impression", "opinion": "impression",
    "interpretation": "impression", "diagnosis": "impression",
    "findings and impression": "impression", "findings/impression": "impression",
    "impression and findings": "impression", "impression/findings": "impression",
    "findings / impression": "impression", "impression and recommendation": "impression",
    "impression and recommendations": "impression",
    # findings
    "findings": "findings", "finding": "findings", "report": "findings",
    "description": "findings", "reference findings": "findings",
    # comparison
    "comparison": "comparison", "comparisons": "comparison", "comparison exam": "comparison",
    "comparison film": "comparison", "comparison study": "comparison",
    "comparison studies": "comparison", "reference exam": "comparison", "prior": "comparison",
    "priors": "comparison", "prior studies": "comparison", "prior study": "comparison",
    # indication (history is folded in)
    "indication": "indication", "indications": "indication", "history": "indication",
    "clinical history": "indication", "patient history": "indication",
    "clinical information": "indication", "clinical indication": "indication",
    "reason for exam": "indication", "reason for examination": "indication",
    "reason for study": "indication", "reason": "indication", "clinical data": "indication",
    "clinical details": "indication", "pfi": "indication",
    # technique (the examination line describes the technique)
    "technique": "technique", "techniques": "technique", "procedure": "technique",
    "examination": "technique", "exam": "technique", "type of examination": "technique",
    "study": "technique", "protocol": "technique",
    # known, not returned
    "wet read": None, "wetread": None, "notification": None, "recommendation": None,
    "recommendations": None, "recommendation(s)": None, "addendum": None, "note": None,
    "comment": None, "comments": None, "date": None, "final report": None,
}
# canonical spellings misspellings are compared with (edit distance)
_FUZZY_TARGETS: dict[str, str] = {
    "impression": "impression", "findings": "findings", "comparison": "comparison",
    "indication": "indication", "technique": "technique", "conclusion": "impression",
    "history": "indication", "examination": "technique",
}
_SUBSTRINGS: tuple[tuple[str, str], ...] = (
    ("impression", "impression"), ("findings", "findings"), ("comparison", "comparison"),
    ("history", "indication"), ("indication", "indication"),
)
_VIEW_WORDS = re.compile(
    r"\b(chest|portable|pa|ap|lateral|lat|frontal|views?|upright|semi-upright|supine|ribs|"
    r"bone windows?|one|two|single)\b")

_LINE_HEADER = re.compile(r"(?m)^[ \t]*([A-Za-z][A-Za-z0-9 ()/,&'-]{0,60}?)[ \t]*:(?!\d)")
# headers also recognised inside a line (capitals only): the unambiguous ones
_INLINE_NAMES = sorted(("FINDINGS AND IMPRESSION", "FINDINGS", "IMPRESSION", "CONCLUSION", "COMPARISON",
                        "INDICATION", "CLINICAL HISTORY", "HISTORY", "TECHNIQUE",
                        "REASON FOR EXAMINATION", "REASON FOR EXAM"), key=len, reverse=True)
_INLINE_HEADER = re.compile(r"(?<![A-Za-z])(" + "|".join(map(re.escape, _INLINE_NAMES)) + r")[ \t]*:(?!\d)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_WS = re.compile(r"\s+")


def normalise_whitespace(text: str | None) -> str:
    """Collapse every run of whitespace (newlines included) to one space and strip.

    ``None`` (and NaN) become ``""``.
    """
    if text is None or not isinstance(text, str):
        return ""
    return _WS.sub(" ", text).strip()


def _edit_distance(a: str, b: str, cap: int = 3) -> int:
    """Levenshtein distance, stopping early once every entry of a row exceeds ``cap``."""
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > cap:
            return cap + 1
        prev = cur
    return prev[-1]


@lru_cache(maxsize=4096)
def section_name(header: str) -> str | None:
    """Normalised section name of a header (``"IMPRESSON"`` → ``"impression"``).

    Returns one of ``findings / impression / comparison / indication / technique``, or
    ``None`` for a header that is not one of them (``WET READ``, ``NOTIFICATION``, unknown).
    """
    h = _WS.sub(" ", header.lower()).strip(" .")
    if h in _ALIASES:
        return _ALIASES[h]
    if len(h) >= 6 and " " not in h:
        for target, name in _FUZZY_TARGETS.items():
            if _edit_distance(h, target, cap=2) <= 2:
                return name
    for sub, name in _SUBSTRINGS:
        if sub in h:
            return name
    if _VIEW_WORDS.search(h):
        return "findings"
    return None


@lru_cache(maxsize=4096)
def _is_header(header: str) -> bool:
    """Does a line-start ``xxx:`` split sections? Yes when it is written in capitals (or is a
    known header name in any case) and names a known section (:func:`_is_known`)."""
    words = header.split()
    if not words or len(words) > 8:
        return False
    caps = header.isupper() and sum(c.isalpha() for c in header) >= 2
    return (caps or _WS.sub(" ", header.lower()).strip() in _ALIASES) and _is_known(header)


def _is_known(header: str) -> bool:
    """Known headers split sections; unknown ones (``HEART:``, ``LINES/TUBES:``) do not."""
    return section_name(header) is not None or _WS.sub(" ", header.lower()).strip(" .") in _ALIASES


def _headers(text: str) -> list[tuple[int, int, str]]:
    """(start, end, header) of every header, in text order, overlaps removed."""
    found = [(m.start(1), m.end(), m.group(1)) for m in _LINE_HEADER.finditer(text) if _is_header(m.group(1))]
    found += [(m.start(1), m.end(), m.group(1)) for m in _INLINE_HEADER.finditer(text)]
    found.sort()
    out: list[tuple[int, int, str]] = []
    for start, end, h in found:
        if out and start < out[-1][1]:
            continue
        out.append((start, end, h))
    return out


def section_report(text: str) -> dict[str, str]:
    """Split a report into sections; every key of :data:`SECTION_KEYS` is present.

    Values are whitespace-normalised strings, ``""`` when a section is absent. See the
    module docstring for the rules (header detection, normalisation, last-one-wins, the
    ``last_paragraph`` fallback).

    >>> section_report("FINAL REPORT\\n INDICATION: cough.\\n FINDINGS: Clear lungs.\\n"
    ...                " IMPRESSION: Normal.")["impression"]
    'Normal.'
    """
    text = "" if text is None or not isinstance(text, str) else text.replace("\r\n", "\n").replace("\r", "\n")
    heads = _headers(text)
    # (name, raw text) of every section; the preamble (before the first header) is kept only
    # for the last-paragraph fallback of a report without any header
    sections: list[tuple[str | None, str]] = []
    if not heads:
        sections.append((None, text))
    for k, (start, end, h) in enumerate(heads):
        stop = heads[k + 1][0] if k + 1 < len(heads) else len(text)
        sections.append((section_name(h), text[end:stop]))
    sections = [(n, t) for n, t in sections if not (n in ("findings", "impression") and not t.strip())]

    out = dict.fromkeys(SECTION_KEYS, "")
    if sections and not any(n in ("findings", "impression") for n, _ in sections):
        name, body = sections[-1]
        paragraphs = _PARAGRAPH.split(body.strip())
        if len(paragraphs) > 1:
            sections[-1] = (name, paragraphs[0])
            out["last_paragraph"] = normalise_whitespace(" ".join(paragraphs[1:]))
    for name, body in sections:
        body = normalise_whitespace(body)
        if name is None or not body:
            continue
        if name == "indication":
            out[name] = f"{out[name]} {body}".strip()  # indication and history are joined
        else:
            out[name] = body  # the last non-empty section of a name wins
    return out


_NUMBERING = re.compile(r"(?:^|(?<=[\s.:;]))\(?\d{1,2}[.)](?=\s+[A-Za-z])\s*")
_MULTIDOT = re.compile(r"\.(?:\s*\.)+")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_ODD = re.compile(r"[^a-z0-9\-\u2024 ]")


def clean_report(text: str, style: str = "r2gen") -> str:
    """Normalise a report for training and for report-generation metrics.

    ``style="r2gen"`` (R2Gen's ``clean_report_*``, reimplemented): collapse whitespace and
    repeated periods, strip list numbering (``1.``, ``2)``, ``(3)``), lower-case, split into
    sentences at ``.``/``?``/``!``, delete punctuation and odd symbols (``, ; : ( ) [ ] { } " '
    / \\ * + _ ^ % & !``; hyphens, letters and digits stay; MIMIC's ``___`` anonymisation
    vanishes), drop empty sentences and join them as ``"sentence one . sentence two ."``.
    One deliberate difference from R2Gen: a decimal point inside a number is kept
    (``2.5 cm``, where R2Gen writes ``25 cm``). IU's ``XXXX`` anonymisation stays as ``xxxx``.

    ``style="plain"``: only whitespace, repeated periods and list numbering are normalised;
    case and punctuation are kept (for display and for pretrained text encoders).

    >>> clean_report("1. No acute process..  2. Stable  cardiomegaly (mild).")
    'no acute process . stable cardiomegaly mild .'
    """
    t = normalise_whitespace(text)
    t = _MULTIDOT.sub(".", t)
    t = _NUMBERING.sub("", t)
    t = normalise_whitespace(t)
    if style == "plain":
        return t
    if style != "r2gen":
        raise ValueError(f"unknown clean style {style!r}; use 'r2gen' or 'plain'")
    t = _DECIMAL.sub("\u2024", t.lower())  # protect decimal points (one-dot leader)
    sentences = []
    for s in _SENTENCE_END.split(t):
        s = normalise_whitespace(_ODD.sub("", s or ""))
        if s:
            sentences.append(s.replace("\u2024", "."))
    return " . ".join(sentences) + " ." if sentences else ""
