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

Everything the writer says lives in tables: :data:`KIND_TEXT` (per kind: noun-phrase
templates, kind-specific sentences, severity scale, report section, impression priority),
:data:`LOCATIONS` (side x zone -> "left lower lobe", "bibasilar", "lingular" ...),
:data:`SEVERITY_WORDS`, :data:`REPORT_SECTIONS` and :data:`NORMALS` (normal statements with
the kinds that would make them false).

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
# Vocabulary tables
# ---------------------------------------------------------------------------------------

COUNT, MASS, PLURAL = "count", "mass", "plural"


@dataclass(frozen=True)
class NounPhrase:
    """A noun-phrase template and its grammar: ``count`` nouns take "a"/"an" and become
    plural when the finding is bilateral (use ``{s}`` / ``{y}``), ``mass`` nouns take no
    article, ``plural`` ones take "are"."""

    template: str
    grammar: str = COUNT


def _c(t: str) -> NounPhrase:
    return NounPhrase(t, COUNT)


def _m(t: str) -> NounPhrase:
    return NounPhrase(t, MASS)


def _p(t: str) -> NounPhrase:
    return NounPhrase(t, PLURAL)


#: Severity words per scale; the first word of each tuple is the canonical one (structured
#: style). An empty word means "say nothing about severity".
SEVERITY_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "none": {"mild": ("",), "moderate": ("",), "severe": ("",)},
    "degree": {"mild": ("mild", "minimal"), "moderate": ("moderate",), "severe": ("severe", "marked")},
    "extent": {"mild": ("", "mild", "subtle"), "moderate": ("", "moderate"),
               "severe": ("extensive", "dense")},
    "opacity": {"mild": ("", "subtle", "faint"), "moderate": ("",), "severe": ("extensive", "confluent")},
    "size": {"mild": ("small", "tiny"), "moderate": ("moderate", "moderate-sized"), "severe": ("large",)},
    "heart": {"mild": ("mild", "borderline"), "moderate": ("moderate",), "severe": ("marked", "severe")},
    "nodule": {"mild": ("8 mm", "6 mm", "5 mm"), "moderate": ("1.2 cm", "1.5 cm", "12 mm"),
               "severe": ("2.5 cm", "2 cm", "2.8 cm")},
    "mass": {"mild": ("3.5 cm", "3 cm"), "moderate": ("4 cm", "4.5 cm", "5 cm"),
             "severe": ("7 cm", "6 cm", "8 cm")},
    "displacement": {"mild": ("nondisplaced",), "moderate": ("minimally displaced",),
                     "severe": ("displaced",)},
}
_ADVERBS = {"mild": "mildly", "minimal": "minimally", "moderate": "moderately",
            "severe": "severely", "marked": "markedly", "borderline": "borderline"}

#: (zone, side) -> (adjective forms, noun forms). Side ``"*"`` stands for left or right and
#: ``{side}`` is filled in; a (zone, "left"/"right") row overrides it. First form canonical.
LOCATIONS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("lower", "*"): (("{side} lower lobe", "{side} lower lung"), ("the {side} lower lobe", "the {side} lower lung zone")),
    ("lower", "bilateral"): (("bilateral lower lobe", "bilateral lower lung"), ("both lower lobes", "the lower lobes bilaterally")),
    ("upper", "*"): (("{side} upper lobe", "{side} upper lung"), ("the {side} upper lobe", "the {side} upper lung zone")),
    ("upper", "bilateral"): (("bilateral upper lobe", "bilateral upper lung"), ("both upper lobes", "the upper lobes bilaterally")),
    ("middle", "right"): (("right middle lobe",), ("the right middle lobe",)),
    ("middle", "left"): (("left midlung", "left mid lung zone"), ("the left midlung", "the left mid lung zone")),
    ("middle", "bilateral"): (("bilateral midlung",), ("both midlung zones",)),
    ("base", "*"): (("{side} basilar", "{side} base", "{side} basal"), ("the {side} lung base", "the {side} base")),
    ("base", "bilateral"): (("bibasilar", "bibasal", "bilateral basilar"), ("both lung bases", "the lung bases bilaterally")),
    ("apex", "*"): (("{side} apical",), ("the {side} apex", "the {side} lung apex")),
    ("apex", "bilateral"): (("biapical", "bilateral apical"), ("both apices", "the lung apices bilaterally")),
    ("perihilar", "*"): (("{side} perihilar",), ("the {side} perihilar region",)),
    ("perihilar", "bilateral"): (("bilateral perihilar",), ("both perihilar regions",)),
    ("hilar", "*"): (("{side} hilar",), ("the {side} hilum",)),
    ("hilar", "bilateral"): (("bilateral hilar",), ("both hila",)),
    ("retrocardiac", "left"): (("retrocardiac", "left retrocardiac"), ("the retrocardiac left lower lobe", "the left retrocardiac region")),
    ("retrocardiac", "right"): (("right paracardiac",), ("the right paracardiac region",)),
    ("retrocardiac", "bilateral"): (("bilateral paracardiac",), ("both paracardiac regions",)),
    ("lingula", "left"): (("lingular",), ("the lingula",)),
    ("lingula", "right"): (("right middle lobe",), ("the right middle lobe",)),  # right-sided analogue
    ("lingula", "bilateral"): (("bilateral midlung",), ("both midlung zones",)),
    ("diffuse", "*"): (("diffuse {side}", "{side}"), ("the {side} lung",)),
    ("diffuse", "bilateral"): (("diffuse bilateral", "bilateral"), ("both lungs",)),
    ("mediastinal", "*"): (("{side} paratracheal",), ("the {side} paratracheal region",)),
    ("mediastinal", "bilateral"): (("bilateral paratracheal",), ("both paratracheal regions",)),
    ("chest_wall", "*"): (("{side} lateral",), ("the {side} lateral chest wall",)),
    ("chest_wall", "bilateral"): (("bilateral",), ("both lateral chest walls",)),
}
_DEFAULT_LOCATION = (("{side}",), ("the {side} hemithorax",))
_RIBS = {"upper": ("4th", "3rd"), "middle": ("6th", "5th", "7th"), "lower": ("8th", "9th", "10th")}


@dataclass(frozen=True)
class KindText:
    """How one finding kind is put into words.

    Attributes:
        section: key of :data:`REPORT_SECTIONS` the finding is reported in.
        priority: impression order (lower first); kinds below 20 always go to the impression.
        nouns: noun-phrase templates, or a dict variant -> templates; the first is canonical.
        scale: key of :data:`SEVERITY_WORDS`.
        sentences: kind-specific free-text sentences (or dict by variant), used half the
            time instead of the generic ones; ``{np}`` is a noun phrase from ``nouns``.
        notes: impression suffixes (may use the same fields).
        extra: kind-specific fields, each a tuple of options (first canonical).
        acute: makes "No acute cardiopulmonary abnormality" false.
        chronic_variants: variants that are neither acute nor important (healed fracture).
    """

    section: str
    priority: int
    nouns: tuple[NounPhrase, ...] | Mapping[str, tuple[NounPhrase, ...]]
    scale: str = "none"
    sentences: tuple[str, ...] | Mapping[str, tuple[str, ...]] = ()
    notes: tuple[str, ...] = ("",)
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    acute: bool = False
    chronic_variants: tuple[str, ...] = ()


_IN_POSITION = (" in satisfactory position", " in appropriate position", "")

KIND_TEXT: dict[str, KindText] = {
    # --- lungs ----------------------------------------------------------------------------
    "consolidation": KindText(
        "lungs", 3, scale="extent", acute=True,
        nouns=(_m("{sev} {loc} consolidation"), _m("{sev} consolidation in {locn}"),
               _m("{sev} {loc} airspace consolidation")),
        sentences=("There {be} @[{np}] with air bronchograms.", "There {be} @[{np}].")),
    "airspace_opacity": KindText(
        "lungs", 6, scale="opacity", acute=True,
        nouns={"patchy": (_c("{sev} patchy {loc} airspace opacit{y}"), _c("{sev} patchy {loc} opacit{y}"),
                          _c("{sev} patchy airspace opacit{y} in {locn}"), _m("{sev} patchy {loc} airspace disease")),
               "streaky": (_c("{sev} streaky {loc} opacit{y}"), _c("{sev} streaky {loc} airspace opacit{y}"),
                           _c("{sev} streaky opacit{y} in {locn}"))}),
    "pneumonia": KindText(
        "lungs", 3, scale="extent", acute=True,
        nouns=(_m("{sev} {loc} pneumonia"), _m("pneumonia in {locn}"),
               _m("{loc} infection compatible with pneumonia")),
        sentences=("Findings are consistent with [{np}].", "There {be} @[{np}].")),
    "atelectasis": KindText(
        "lungs", 10, scale="degree", acute=True,
        nouns={"plate": (_m("{loc} plate-like atelectasis"), _m("{loc} subsegmental atelectasis"),
                         _m("linear atelectasis in {locn}"), _m("{sev} {loc} discoid atelectasis")),
               "lobar": (_m("{sev} {loc} atelectasis"), _m("{sev} atelectasis of {locn}"),
                         _m("{loc} atelectasis with volume loss"))}),
    "edema": KindText(
        "lungs", 4, scale="degree", acute=True,
        nouns=(_m("{sev} pulmonary edema"), _m("{sev} interstitial pulmonary edema"),
               _m("{sev} {loc} edema"), _m("{sev} {loc} interstitial edema"))),
    "vascular_congestion": KindText(
        "lungs", 9, scale="degree", acute=True,
        nouns=(_m("{sev} pulmonary vascular congestion"), _m("{sev} vascular congestion"),
               _m("{sev} central pulmonary vascular congestion"))),
    "interstitial_markings": KindText(
        "lungs", 21, scale="degree",
        nouns=(_p("{sevly} increased {loc} interstitial markings"), _m("{sev} {loc} interstitial prominence"),
               _p("{sev} coarsened {loc} interstitial markings"))),
    "scarring": KindText(
        "lungs", 25, scale="degree",
        nouns=(_m("{loc} scarring"), _m("{sev} {loc} scarring"), _m("scarring in {locn}"),
               _m("{loc} parenchymal scarring"))),
    "nodule": KindText(
        "lungs", 8, scale="nodule",
        nouns=(_c("{sev} {loc} nodule"), _c("{sev} nodule in {locn}"), _c("{sev} {loc} pulmonary nodule"),
               _c("{loc} nodular density measuring {sev}")),
        notes=("", ", recommend chest CT for further characterization",
               ", further evaluation with CT is recommended")),
    "mass": KindText(
        "lungs", 1, scale="mass",
        nouns=(_c("{sev} {loc} mass"), _c("{loc} mass measuring approximately {sev}"),
               _c("{sev} {loc} pulmonary mass"), _c("{loc} soft tissue mass measuring {sev}")),
        notes=("", ", concerning for malignancy", ", suspicious for neoplasm")),
    "granuloma": KindText(
        "lungs", 23,
        nouns={"calcified": (_c("calcified granuloma in {locn}"), _c("{loc} calcified granuloma"),
                             _c("small calcified granuloma in {locn}"), _c("calcified {loc} granuloma")),
               "noncalcified": (_c("{loc} granuloma"), _c("noncalcified granuloma in {locn}"),
                                _c("small {loc} noncalcified granuloma"))}),
    "hyperinflation": KindText(
        "lungs", 20, scale="degree",
        nouns={"hyperinflation": (_p("hyperinflated lungs"), _m("pulmonary hyperinflation"),
                                  _p("hyperexpanded lungs")),
               "emphysema": (_m("{sev} emphysema"), _p("emphysematous changes"), _p("changes of emphysema"))},
        sentences={"hyperinflation": ("The [lungs are hyperinflated].", "The [lungs are hyperexpanded].",
                                      "The [lungs are hyperinflated], with flattening of the diaphragms."),
                   "emphysema": ("There {be} @[{np}].",)}),
    "hypoinflation": KindText(
        "lungs", 29,
        nouns=(_p("low lung volumes"), _p("hypoinflated lungs"), _p("diminished lung volumes")),
        sentences=("The [lung volumes are low].", "[Lung volumes are low].")),
    # --- pleura ---------------------------------------------------------------------------
    "pleural_effusion": KindText(
        "pleura", 5, scale="size", acute=True,
        nouns=(_c("{sev} {side} pleural effusion{s}"), _c("{sev} {side} effusion{s}"),
               _c("{sev} layering {side} pleural effusion{s}")),
        sentences=("There {be} @[{np}] with blunting of the {cpa}.", "@[{np}] {be} present, blunting the {cpa}.",
                   "There {be} @[{np}].")),
    "pneumothorax": KindText(
        "pleura", 0, scale="size", acute=True,
        nouns=(_c("{sev} {side} pneumothorax"), _c("{sev} {side} apical pneumothorax"),
               _c("{sev} {side}-sided pneumothorax")),
        sentences=("There {be} @[{np}].", "@[{np}] {be} present, with a visible pleural line at the {side} apex.")),
    "pleural_thickening": KindText(
        "pleura", 25, scale="degree",
        nouns=(_m("{loc} pleural thickening"), _m("{sev} {loc} pleural thickening"),
               _m("pleural thickening along {locn}"))),
    # --- heart and mediastinum ------------------------------------------------------------
    "cardiomegaly": KindText(
        "heart", 9, scale="heart",
        nouns=(_m("{sev} cardiomegaly"), _m("{sev} enlargement of the cardiac silhouette"),
               _c("{sevly} enlarged cardiac silhouette"), _c("{sevly} enlarged heart")),
        sentences=("The [heart is {sevly} enlarged].", "The [cardiac silhouette is {sevly} enlarged].",
                   "[Heart size is {sevly} enlarged].")),
    "enlarged_cardiomediastinum": KindText(
        "mediastinum", 2, scale="degree", acute=True,
        nouns=(_c("widened mediastinum"), _m("{sev} widening of the mediastinum"),
               _m("{sev} enlargement of the cardiomediastinal silhouette"), _c("widened superior mediastinum")),
        sentences=("The [mediastinum is {sevly} widened].", "The [superior mediastinum is widened].")),
    "tortuous_aorta": KindText(
        "mediastinum", 27, scale="degree",
        nouns=(_c("tortuous thoracic aorta"), _m("{sev} tortuosity of the thoracic aorta"),
               _c("{sevly} tortuous aorta")),
        sentences=("The [thoracic aorta is {sevly} tortuous].", "The [aorta is tortuous].")),
    "aortic_calcification": KindText(
        "mediastinum", 28, scale="degree",
        nouns=(_m("atherosclerotic calcification of the aortic arch"), _m("{sev} aortic arch calcification"),
               _m("{sev} aortic atherosclerosis"), _c("calcified aortic knob")),
        sentences=("The [aortic arch is calcified].",)),
    "calcified_lymph_node": KindText(
        "mediastinum", 24,
        nouns=(_p("calcified {loc} lymph nodes"), _p("{loc} calcified lymph nodes"),
               _p("calcified lymph nodes in {locn}"))),
    "hiatal_hernia": KindText(
        "mediastinum", 22, scale="size",
        nouns=(_c("{sev} hiatal hernia"), _c("{sev} retrocardiac hiatal hernia"), _c("{sev} sliding hiatal hernia")),
        sentences=("There {be} @[{np}] with an air-fluid level.",)),
    # --- diaphragm and bones --------------------------------------------------------------
    "elevated_hemidiaphragm": KindText(
        "diaphragm", 26, scale="degree",
        nouns=(_c("{sevly} elevated {side} hemidiaphragm"), _m("{sev} elevation of the {side} hemidiaphragm"),
               _m("{sev} {side} hemidiaphragm elevation")),
        sentences=("The [{side} hemidiaphragm is {sevly} elevated].",)),
    "rib_fracture": KindText(
        "bones", 7, scale="displacement", acute=True, chronic_variants=("healed",),
        nouns={"acute": (_c("acute {sev} {side} {rib} rib fracture"), _c("{sev} fracture of the {side} {ribpos} {rib} rib"),
                         _c("acute {sev} fracture of the {side} {rib} rib")),
               "healed": (_c("healed {side} {rib} rib fracture"), _c("old healed fracture of the {side} {ribpos} {rib} rib"),
                          _c("remote healed {side} {ribpos} {rib} rib fracture"))},
        extra={"ribpos": ("lateral", "posterior", "anterior")}),
    "degenerative_spine": KindText(
        "bones", 30, scale="degree",
        nouns=(_p("{sev} degenerative changes of the thoracic spine"), _m("{sev} thoracic spondylosis"),
               _m("{sev} degenerative disc disease of the thoracic spine"),
               _p("{sev} multilevel degenerative changes in the thoracic spine"))),
    "scoliosis": KindText(
        "bones", 31, scale="degree",
        nouns=(_m("{sev} thoracic scoliosis convex to the {side}"), _m("{sev} {convex} thoracic scoliosis"),
               _m("{sev} scoliosis of the thoracic spine, convex to the {side}"))),
    # --- support devices ------------------------------------------------------------------
    "central_line": KindText(
        "devices", 13,
        nouns=(_c("{side} {route} central venous catheter"), _c("{side} {route} central line"),
               _c("{side}-sided central venous catheter"), _c("{side} {route} venous catheter")),
        sentences=("@[{np}] {be} present with tip {tip}.", "[{np}] with tip {tip}."),
        notes=_IN_POSITION + (" with tip {tip}",),
        extra={"route": ("internal jugular", "subclavian"),
               "tip": ("in the SVC", "projecting over the superior vena cava", "at the cavoatrial junction",
                       "in the mid SVC")}),
    "endotracheal_tube": KindText(
        "devices", 12,
        nouns=(_c("endotracheal tube"), _c("ET tube")),
        sentences=("@[{np}] {be} present with tip {dist} cm above the carina.",
                   "[{np}] with tip {dist} cm above the carina.",
                   "The tip of the [{np}] is {dist} cm above the carina."),
        notes=_IN_POSITION + (" terminating {dist} cm above the carina",),
        extra={"dist": ("5", "3", "4", "4.5", "6")}),
    "pacemaker": KindText(
        "devices", 24,
        nouns=(_c("{side} chest wall pacemaker"), _c("{side}-sided pacemaker"),
               _c("{side}-sided dual-chamber pacemaker"), _c("{side} chest wall dual-lead pacemaker")),
        sentences=("@[{np}] {be} present with leads in expected position.",
                   "[{np}] with leads in standard position.", "There {be} @[{np}] with intact leads."),
        notes=_IN_POSITION),
    "sternotomy_wires": KindText(
        "devices", 26,
        nouns=(_p("median sternotomy wires"), _p("sternotomy wires"), _p("intact median sternotomy wires")),
        sentences=("Status post [median sternotomy].", "Postoperative changes of [median sternotomy].")),
}

#: Report sections: (key, structured header, structured text when empty). Free text goes
#: heart -> mediastinum -> lungs -> pleura -> diaphragm -> bones -> devices.
REPORT_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("devices", "LINES/TUBES", "None."),
    ("heart", "HEART", "Normal."),
    ("mediastinum", "MEDIASTINUM", "Normal."),
    ("lungs", "LUNGS", "Normal."),
    ("pleura", "PLEURA", "Normal."),
    ("diaphragm", "DIAPHRAGM", "Normal."),
    ("bones", "BONES", "Normal."),
)
_FREE_ORDER = ("heart", "mediastinum", "lungs", "pleura", "diaphragm", "bones", "devices")


def _kinds_in(section: str) -> frozenset[str]:
    return frozenset(k for k, t in KIND_TEXT.items() if t.section == section)


@dataclass(frozen=True)
class Normal:
    """Normal statements about one topic; unusable when a present finding's kind (or
    ``kind:variant``) is in ``denies``."""

    topic: str
    texts: tuple[str, ...]
    denies: frozenset[str]


NORMALS: tuple[Normal, ...] = (
    Normal("cardiomediastinal", (
        "The heart size and mediastinal contours are within normal limits.",
        "The cardiomediastinal silhouette is within normal limits.", "Normal cardiomediastinal silhouette.",
        "Heart size and mediastinal contours are normal.",
        "The cardiomediastinal silhouette is normal in size and contour."),
        _kinds_in("heart") | _kinds_in("mediastinum")),
    Normal("heart", ("The heart is normal in size.", "Heart size is normal.",
                     "The cardiac silhouette is normal in size.", "Normal heart size."), _kinds_in("heart")),
    Normal("mediastinum", ("The mediastinal contours are normal.", "Mediastinal contours are within normal limits.",
                           "The mediastinal silhouette is unremarkable.", "Normal mediastinal contours."),
           _kinds_in("mediastinum")),
    Normal("lungs", ("The lungs are clear.", "Lungs are clear bilaterally.", "Both lungs are clear.",
                     "The lungs are well expanded and clear."), _kinds_in("lungs")),
    Normal("bones", ("No acute osseous abnormality.", "No acute bony abnormality.",
                     "No acute osseous abnormality is identified."), frozenset({"rib_fracture:acute"})),
    Normal("bones", ("The osseous structures are intact.", "Visualized osseous structures are unremarkable.",
                     "The bony thorax is intact."), _kinds_in("bones")),
)

#: Key observations that get a pertinent negative when absent: synonyms, kinds that forbid it.
_NEGATABLE: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "consolidation": (("focal consolidation", "focal airspace consolidation", "focal airspace disease",
                       "consolidation"), frozenset({"consolidation", "pneumonia", "airspace_opacity"})),
    "effusion": (("pleural effusion", "pleural effusions", "effusion"), frozenset({"pleural_effusion"})),
    "pneumothorax": (("pneumothorax",), frozenset({"pneumothorax"})),
    "edema": (("pulmonary edema", "edema", "overt pulmonary edema"), frozenset({"edema", "vascular_congestion"})),
}
_NEGATIVE_LISTS = ("No {x}.", "There is no {x}.", "No evidence of {x}.", "No {x} is seen.")

# --- sentence templates ------------------------------------------------------------------
_PLAIN = ("There {be} @[{np}].", "@[{np}] {be} present.", "@[{np}] {be} seen.", "[{np}].",
          "@[{np}] {be} noted.", "@[{np}] {be} identified.")
_DUPLICATE = ("There {be} @second [{np}].", "An additional [{np}] {be} noted.", "Another [{np}] {be} seen.")
_CHANGED: dict[str, tuple[str, ...]] = {
    "new": ("There {be} @new [{np}].", "New [{np}].", "Interval development of @[{np}].", "@[{np}] {be} new."),
    "worse": ("{the}[{np}] {has} increased.", "Worsening [{np}].", "Interval worsening of {the}[{np}].",
              "{the}[{np}] {has} worsened."),
    "better": ("{the}[{np}] {has} improved.", "Interval improvement in {the}[{np}].", "Improving [{np}].",
               "{the}[{np}] {has} decreased."),
    "unchanged": ("Unchanged [{np}].", "Stable [{np}].", "{the}[{np}] {be} unchanged.",
                  "@[{np}] {be} again noted."),
}
_RESOLVED = ("Previously seen {np} {has} resolved.", "Interval resolution of {the}{np}.",
             "The previously noted {np} {be} no longer seen.", "{the}{np} {has} resolved.")
_IMPRESSION: dict[str | None, tuple[str, ...]] = {
    None: ("[{np}]{note}.",),
    "new": ("New [{np}]{note}.",),
    "worse": ("Worsening [{np}].", "Increased [{np}]."),
    "better": ("Improving [{np}].", "Decreased [{np}].", "Interval improvement in {the}[{np}]."),
    "unchanged": ("Stable [{np}]{note}.", "Unchanged [{np}]{note}."),
}
_IMPRESSION_RESOLVED = ("Interval resolution of {the}{np}.", "Resolved {np}.", "Resolution of previously seen {np}.")
_NO_ACUTE = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
             "No acute cardiopulmonary disease.", "No active disease.")
_STRUCTURED_PREFIX = {None: "", "new": "New ", "worse": "Increased ", "better": "Decreased ",
                      "unchanged": "Unchanged "}


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
    return (LOCATIONS.get((zone, side or "*")) or LOCATIONS.get((zone, "*")) or _DEFAULT_LOCATION)


def _fields(f: Finding, pick: _Picker, severity: bool = True) -> dict[str, str]:
    """Template fields of one finding (severity word, side, location, plural endings ...)."""
    t = KIND_TEXT[f.kind]
    sev = pick.choice(SEVERITY_WORDS[t.scale][f.severity]) if severity else ""
    side = f.side or ""
    adj, noun = _location(f.zone, f.side)
    bilateral = f.side == "bilateral"
    fields = {
        "sev": sev, "sevly": _ADVERBS.get(sev, sev), "side": side,
        "loc": pick.choice(adj).format(side=side), "locn": pick.choice(noun).format(side=side),
        "s": "s" if bilateral else "", "y": "ies" if bilateral else "y",
        "cpa": "costophrenic angles" if bilateral else f"{side} costophrenic angle",
        "rib": pick.choice(_RIBS.get(f.zone, ("",))),
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
        return _render(pick.choice(_RESOLVED), fields, grammar)
    if item.change is not None:
        templates = _CHANGED[item.change]
    elif duplicate and grammar == COUNT:
        templates = _DUPLICATE
    else:
        own = _variant_entry(item.text.sentences, f.variant)
        templates = own if own and pick.chance(0.5) else _PLAIN
    return _render(pick.choice(templates), fields, grammar, item.index)


def _negative_list(present: Sequence[Finding], pick: _Picker, lungs_said_clear: bool) -> str | None:
    """"No focal consolidation, pleural effusion or pneumothorax." over absent key observations."""
    keep = {"consolidation": 0.45 if lungs_said_clear else 0.85, "effusion": 0.9, "pneumothorax": 0.85,
            "edema": 0.25}
    words = [pick.choice(syn) for key, (syn, denies) in _NEGATABLE.items()
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
    return pick.choice(_NEGATIVE_LISTS).format(x=x)


def _free_findings(items: Sequence[_Item], present: Sequence[Finding], pick: _Picker,
                   negatives: bool) -> _Piece:
    order = list(_FREE_ORDER)
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
                sentences.append(_Piece(pick.choice(_NO_ACUTE)))
            continue
        _, grammar, fields = it.noun_phrase(pick)
        if it.change == "resolved":
            sentences.append(_render(pick.choice(_IMPRESSION_RESOLVED), fields, grammar))
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
        sentences.append(_render(pick.choice(_IMPRESSION[it.change]), {**fields, "note": note}, grammar, it.index))
    if pending is not None:
        sentences.append(pending + ".")
    return _join(sentences, " ")


def _structured_statement(it: _Item, pick: _Picker) -> _Piece:
    np, grammar, fields = it.noun_phrase(pick)
    if it.change == "resolved":
        return _Piece(f"Resolved {np}.")
    return _render(_STRUCTURED_PREFIX[it.change] + "[{np}].", fields, grammar, it.index)


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
        statements.append(_Piece(_NO_ACUTE[0]))
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

#: Finding kind -> (observation, anatomy rule): "zone" = side + zone, "side" = side only,
#: a fixed string, or None (no anatomy).
_KIND_PHRASE: dict[str, tuple[str, str | None]] = {
    "consolidation": ("consolidation", "zone"), "airspace_opacity": ("opacity", "zone"),
    "pneumonia": ("pneumonia", "zone"), "atelectasis": ("atelectasis", "zone"), "edema": ("edema", None),
    "vascular_congestion": ("vascular congestion", None), "interstitial_markings": ("interstitial markings", "zone"),
    "scarring": ("scarring", "zone"), "nodule": ("nodule", "zone"), "mass": ("mass", "zone"),
    "granuloma": ("granuloma", "zone"), "hypoinflation": ("low lung volumes", None),
    "pleural_effusion": ("pleural effusion", "side"), "pneumothorax": ("pneumothorax", "side"),
    "pleural_thickening": ("pleural thickening", "zone"), "cardiomegaly": ("cardiomegaly", None),
    "enlarged_cardiomediastinum": ("widened mediastinum", None), "tortuous_aorta": ("tortuous aorta", None),
    "aortic_calcification": ("calcification", "aorta"), "calcified_lymph_node": ("calcified lymph nodes", "zone"),
    "hiatal_hernia": ("hiatal hernia", None), "elevated_hemidiaphragm": ("elevation", "hemidiaphragm"),
    "rib_fracture": ("fracture", "rib"), "degenerative_spine": ("degenerative changes", "spine"),
    "scoliosis": ("scoliosis", None), "central_line": ("catheter", "side"),
    "endotracheal_tube": ("endotracheal tube", None), "pacemaker": ("pacemaker", "chest wall"),
    "sternotomy_wires": ("sternotomy wires", None),
}
#: (zone, side) -> canonical anatomy of the writer's canonical location words, where it is
#: not simply "{side} {zone}" (see :data:`LOCATIONS`).
_ZONE_ANATOMY: dict[tuple[str, str | None], str | None] = {
    ("middle", "right"): "right middle lobe", ("middle", "left"): "left midlung",
    ("middle", "bilateral"): "bilateral midlung", ("retrocardiac", "left"): "retrocardiac",
    ("retrocardiac", "right"): "right paracardiac", ("retrocardiac", "bilateral"): "bilateral paracardiac",
    ("lingula", "left"): "lingula", ("lingula", "right"): "right middle lobe",
    ("lingula", "bilateral"): "bilateral midlung",
}
_ZONE_NOUN = {"lower": "lower lobe", "upper": "upper lobe", "base": "base", "apex": "apex",
              "perihilar": "perihilar", "hilar": "hilum", "mediastinal": "paratracheal"}


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

    observation, rule = _KIND_PHRASE.get(finding.kind, (finding.kind.replace("_", " "), None))
    if finding.kind == "hyperinflation":
        observation = "emphysema" if finding.variant == "emphysema" else "hyperinflation"
    side, zone = finding.side, finding.zone
    if rule is None:
        anatomy = None
    elif rule == "side":
        anatomy = side
    elif rule == "zone":
        if (zone, side) in _ZONE_ANATOMY:
            anatomy = _ZONE_ANATOMY[(zone, side)]
        elif zone in _ZONE_NOUN:
            anatomy = f"{side} {_ZONE_NOUN[zone]}" if side else _ZONE_NOUN[zone]
        else:  # diffuse, chest wall, costophrenic ...: the side alone
            anatomy = side
    elif rule in ("hemidiaphragm", "rib", "chest wall"):
        anatomy = f"{side} {rule}"
    else:
        anatomy = rule
    return KeyPhrase(observation, "present", anatomy)
