"""The report writer's phrase tables: every word :mod:`medalign_lite.data.reports` puts in a report.

- :data:`KIND_TEXT`: per finding kind, noun-phrase templates (:class:`NounPhrase`), kind-specific
  sentences, severity scale, report section, impression priority (:class:`KindText`);
- :data:`LOCATIONS` (side x zone -> "left lower lobe", "bibasilar", "lingular" ...) and
  :data:`SEVERITY_WORDS`;
- :data:`REPORT_SECTIONS` and :data:`NORMALS` (normal statements with the kinds that would make
  them false, :class:`Normal`), the pertinent negatives (:data:`NEGATABLE`);
- the sentence templates of free text, the impression and comparison language;
- :data:`KIND_PHRASE`, :data:`ZONE_ANATOMY`, :data:`ZONE_NOUN`: the key phrase each kind's
  canonical wording names (``reports.finding_phrase``).

Templates are written in the writer's mini-language (``[...]`` marks the span, ``@`` an
indefinite article, ``{be}`` / ``{has}`` / ``{the}`` agree with the noun phrase ...), described
in the :mod:`~medalign_lite.data.reports` docstring. The first option of every tuple is the
canonical one (the structured style's).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
ADVERBS = {"mild": "mildly", "minimal": "minimally", "moderate": "moderately",
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
DEFAULT_LOCATION = (("{side}",), ("the {side} hemithorax",))
RIBS = {"upper": ("4th", "3rd"), "middle": ("6th", "5th", "7th"), "lower": ("8th", "9th", "10th")}


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
FREE_ORDER = ("heart", "mediastinum", "lungs", "pleura", "diaphragm", "bones", "devices")


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
NEGATABLE: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "consolidation": (("focal consolidation", "focal airspace consolidation", "focal airspace disease",
                       "consolidation"), frozenset({"consolidation", "pneumonia", "airspace_opacity"})),
    "effusion": (("pleural effusion", "pleural effusions", "effusion"), frozenset({"pleural_effusion"})),
    "pneumothorax": (("pneumothorax",), frozenset({"pneumothorax"})),
    "edema": (("pulmonary edema", "edema", "overt pulmonary edema"), frozenset({"edema", "vascular_congestion"})),
}
NEGATIVE_LISTS = ("No {x}.", "There is no {x}.", "No evidence of {x}.", "No {x} is seen.")

# --- sentence templates ------------------------------------------------------------------
PLAIN = ("There {be} @[{np}].", "@[{np}] {be} present.", "@[{np}] {be} seen.", "[{np}].",
          "@[{np}] {be} noted.", "@[{np}] {be} identified.")
DUPLICATE = ("There {be} @second [{np}].", "An additional [{np}] {be} noted.", "Another [{np}] {be} seen.")
CHANGED: dict[str, tuple[str, ...]] = {
    "new": ("There {be} @new [{np}].", "New [{np}].", "Interval development of @[{np}].", "@[{np}] {be} new."),
    "worse": ("{the}[{np}] {has} increased.", "Worsening [{np}].", "Interval worsening of {the}[{np}].",
              "{the}[{np}] {has} worsened."),
    "better": ("{the}[{np}] {has} improved.", "Interval improvement in {the}[{np}].", "Improving [{np}].",
               "{the}[{np}] {has} decreased."),
    "unchanged": ("Unchanged [{np}].", "Stable [{np}].", "{the}[{np}] {be} unchanged.",
                  "@[{np}] {be} again noted."),
}
RESOLVED = ("Previously seen {np} {has} resolved.", "Interval resolution of {the}{np}.",
             "The previously noted {np} {be} no longer seen.", "{the}{np} {has} resolved.")
IMPRESSION: dict[str | None, tuple[str, ...]] = {
    None: ("[{np}]{note}.",),
    "new": ("New [{np}]{note}.",),
    "worse": ("Worsening [{np}].", "Increased [{np}]."),
    "better": ("Improving [{np}].", "Decreased [{np}].", "Interval improvement in {the}[{np}]."),
    "unchanged": ("Stable [{np}]{note}.", "Unchanged [{np}]{note}."),
}
IMPRESSION_RESOLVED = ("Interval resolution of {the}{np}.", "Resolved {np}.", "Resolution of previously seen {np}.")
NO_ACUTE = ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary process.",
             "No acute cardiopulmonary disease.", "No active disease.")
STRUCTURED_PREFIX = {None: "", "new": "New ", "worse": "Increased ", "better": "Decreased ",
                      "unchanged": "Unchanged "}


# --- the key phrase of each kind's canonical wording (reports.finding_phrase) ---------------

#: Finding kind -> (observation, anatomy rule): "zone" = side + zone, "side" = side only,
#: a fixed string, or None (no anatomy).
KIND_PHRASE: dict[str, tuple[str, str | None]] = {
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
ZONE_ANATOMY: dict[tuple[str, str | None], str | None] = {
    ("middle", "right"): "right middle lobe", ("middle", "left"): "left midlung",
    ("middle", "bilateral"): "bilateral midlung", ("retrocardiac", "left"): "retrocardiac",
    ("retrocardiac", "right"): "right paracardiac", ("retrocardiac", "bilateral"): "bilateral paracardiac",
    ("lingula", "left"): "lingula", ("lingula", "right"): "right middle lobe",
    ("lingula", "bilateral"): "bilateral midlung",
}
ZONE_NOUN = {"lower": "lower lobe", "upper": "upper lobe", "base": "base", "apex": "apex",
              "perihilar": "perihilar", "hilar": "hilum", "mediastinal": "paratracheal"}
