"""Finding vocabulary shared by the phantom renderer, the report writer and the builders.

A :class:`Finding` is what a radiologist would say about one abnormality: its *kind*
(``"pleural_effusion"``), its *side* (left / right / bilateral / ``None`` for midline
structures), its anatomical *zone* and its *severity*. The phantom renderer draws it, the
report writer puts it into words, and :data:`CATALOGUE` says which of the 14 CheXpert
observations it makes positive.

IU X-Ray reports come with manual MeSH "major" codes such as
``"Pulmonary Atelectasis/base/left/mild"``: a term, then ``/``-separated modifiers naming
anatomy, side and severity. :func:`mesh_to_findings` turns one code into findings using
:data:`MESH_TERMS` (term -> kind) and the modifier tables below; a code that no row covers
returns ``None`` and the builder writes it to the manifest's ``unrendered`` column, so
nothing is dropped silently.

Choices where the sources leave room (documented here, used everywhere):

* CheXpert mapping: every kind lists the observations it makes positive. Kinds with no
  CheXpert observation (tortuous aorta, degenerative spine, scoliosis, hyperinflation,
  hypoinflation, elevated hemidiaphragm, calcified lymph nodes, aortic calcification, hiatal
  hernia, scarring, interstitial markings) leave *No Finding* positive, as the CheXpert
  labeler would for "degenerative changes of the thoracic spine".
* Labels follow mentions, as CheXpert's labeler does, not its hierarchy: consolidation makes
  *Consolidation* positive but not its parent *Lung Opacity* (so a phantom consolidation
  passes GLoRIA's 5x200 rule, which demands Lung Opacity = 0).
* Granulomas (calcified or not) count as *Lung Lesion*; "vascular congestion" as *Edema*
  (CheXpert's edema mention list includes congestion); pleural thickening as *Pleural Other*.
* ``Costophrenic Angle/blunted`` is rendered as a mild pleural effusion, the usual reading.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

# The 14 CheXpert observations (train.csv order) live in text/observations.py: the labeler needs
# them and text never imports data. Importing them from here, as the package does, keeps working.
from ..text.observations import CHEXPERT_LABELS

SIDES: tuple[str, ...] = ("left", "right", "bilateral")
ZONES: tuple[str, ...] = (
    "upper", "middle", "lower", "base", "apex", "hilar", "perihilar", "retrocardiac",
    "lingula", "diffuse", "mediastinal", "cardiac", "costophrenic", "spine", "chest_wall",
)
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")


@dataclass(frozen=True)
class FindingType:
    """One renderable kind of finding.

    Attributes:
        name: key in :data:`CATALOGUE`.
        label: short human name used in galleries and legends.
        chexpert: CheXpert observations this kind makes positive.
        sides: allowed sides; ``(None,)`` for midline structures.
        zones: allowed zones, the first is the default.
        variants: optional sub-types (``"plate"`` / ``"lobar"`` atelectasis, ``"calcified"``
            granuloma ...), the first is the default; empty when there are none.
        device: True for support devices (drawn as thin, very bright lines).
    """

    name: str
    label: str
    chexpert: tuple[str, ...]
    sides: tuple[str | None, ...]
    zones: tuple[str, ...]
    variants: tuple[str, ...] = ()
    device: bool = False


_LR = ("left", "right")
_LRB = ("left", "right", "bilateral")
_LUNG_ZONES = ("lower", "upper", "middle", "base", "apex", "perihilar", "retrocardiac", "lingula")

CATALOGUE: dict[str, FindingType] = {
    t.name: t
    for t in (
        # --- parenchyma -----------------------------------------------------------------
        FindingType("consolidation", "consolidation", ("Consolidation",),
                    _LRB, _LUNG_ZONES),
        FindingType("airspace_opacity", "airspace opacity", ("Lung Opacity",), _LRB,
                    _LUNG_ZONES, variants=("patchy", "streaky")),
        FindingType("pneumonia", "pneumonia", ("Pneumonia",), _LRB, _LUNG_ZONES),
        FindingType("atelectasis", "atelectasis", ("Atelectasis",), _LRB,
                    ("base", "lower", "middle", "upper", "lingula", "retrocardiac"),
                    variants=("plate", "lobar")),
        FindingType("edema", "pulmonary edema", ("Edema",), ("bilateral",),
                    ("perihilar", "diffuse")),
        FindingType("vascular_congestion", "vascular congestion", ("Edema",), ("bilateral",),
                    ("perihilar",)),
        FindingType("interstitial_markings", "interstitial markings", (), _LRB,
                    ("diffuse", "base", "upper")),
        FindingType("scarring", "scarring", (), _LRB, ("base", "apex", "upper", "lingula", "lower")),
        FindingType("nodule", "nodule", ("Lung Lesion",), _LR,
                    ("upper", "middle", "lower", "base", "lingula", "hilar")),
        FindingType("mass", "mass", ("Lung Lesion",), _LR, ("upper", "middle", "lower", "hilar")),
        FindingType("granuloma", "granuloma", ("Lung Lesion",), _LR,
                    ("upper", "middle", "lower", "base", "lingula", "hilar", "apex"),
                    variants=("calcified", "noncalcified")),
        FindingType("hyperinflation", "hyperinflation", (), ("bilateral",), ("diffuse",),
                    variants=("hyperinflation", "emphysema")),
        FindingType("hypoinflation", "low lung volumes", (), ("bilateral",), ("diffuse",)),
        # --- pleura ---------------------------------------------------------------------
        FindingType("pleural_effusion", "pleural effusion", ("Pleural Effusion",), _LRB,
                    ("costophrenic",)),
        FindingType("pneumothorax", "pneumothorax", ("Pneumothorax",), _LR, ("apex",)),
        FindingType("pleural_thickening", "pleural thickening", ("Pleural Other",), _LRB,
                    ("apex", "chest_wall")),
        # --- heart and mediastinum ------------------------------------------------------
        FindingType("cardiomegaly", "cardiomegaly", ("Cardiomegaly",), (None,), ("cardiac",)),
        FindingType("enlarged_cardiomediastinum", "widened mediastinum",
                    ("Enlarged Cardiomediastinum",), (None,), ("mediastinal",)),
        FindingType("tortuous_aorta", "tortuous aorta", (), (None,), ("mediastinal",)),
        FindingType("aortic_calcification", "aortic calcification", (), (None,), ("mediastinal",)),
        FindingType("calcified_lymph_node", "calcified lymph nodes", (), _LRB,
                    ("hilar", "mediastinal")),
        FindingType("hiatal_hernia", "hiatal hernia", (), (None,), ("retrocardiac",)),
        # --- diaphragm and bones --------------------------------------------------------
        FindingType("elevated_hemidiaphragm", "elevated hemidiaphragm", (), _LR, ("base",)),
        FindingType("rib_fracture", "rib fracture", ("Fracture",), _LR,
                    ("lower", "middle", "upper"), variants=("acute", "healed")),
        FindingType("degenerative_spine", "degenerative spine", (), (None,), ("spine",)),
        FindingType("scoliosis", "scoliosis", (), _LR, ("spine",)),
        # --- support devices ------------------------------------------------------------
        FindingType("central_line", "central venous catheter", ("Support Devices",), _LR,
                    ("mediastinal",), device=True),
        FindingType("endotracheal_tube", "endotracheal tube", ("Support Devices",), (None,),
                    ("mediastinal",), device=True),
        FindingType("pacemaker", "pacemaker", ("Support Devices",), _LR, ("chest_wall",),
                    device=True),
        FindingType("sternotomy_wires", "sternotomy wires", ("Support Devices",), (None,),
                    ("mediastinal",), device=True),
    )
}


@dataclass(frozen=True)
class Finding:
    """One finding of one study.

    ``instance`` tells apart several findings of the same kind, side and zone (three
    scattered granulomas); the renderer derives each one's exact position from the patient
    seed and :meth:`key`, so the same finding sits in the same place in a prior study.
    """

    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str = "mild"
    variant: str | None = None
    instance: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CATALOGUE:
            raise ValueError(f"unknown finding kind {self.kind!r}; known: {sorted(CATALOGUE)}")
        t = CATALOGUE[self.kind]
        side = self.side if self.side is not None else t.sides[0]
        if side not in t.sides:
            raise ValueError(f"{self.kind}: side {side!r} not in {t.sides}")
        zone = self.zone if self.zone is not None else t.zones[0]
        if zone not in t.zones:
            raise ValueError(f"{self.kind}: zone {zone!r} not in {t.zones}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"{self.kind}: severity {self.severity!r} not in {SEVERITIES}")
        variant = self.variant if self.variant is not None else (t.variants[0] if t.variants else None)
        if t.variants and variant not in t.variants:
            raise ValueError(f"{self.kind}: variant {variant!r} not in {t.variants}")
        # normalise defaults so that equal findings compare (and hash) equal
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "variant", variant)

    @property
    def type(self) -> FindingType:
        return CATALOGUE[self.kind]

    @property
    def chexpert(self) -> tuple[str, ...]:
        return CATALOGUE[self.kind].chexpert

    def key(self) -> str:
        """Stable identity used to seed placement: kind, side, zone and instance."""
        return f"{self.kind}|{self.side}|{self.zone}|{self.instance}"

    def with_severity(self, severity: str) -> Finding:
        return replace(self, severity=severity)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "side": self.side, "zone": self.zone, "severity": self.severity,
                "variant": self.variant, "instance": self.instance}

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        return cls(**{k: d[k] for k in ("kind", "side", "zone", "severity", "variant", "instance") if k in d})


def findings_to_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], separators=(",", ":"))


def findings_from_json(text: str) -> list[Finding]:
    if not text or (isinstance(text, float)):
        return []
    return [Finding.from_dict(d) for d in json.loads(text)]


def chexpert_labels(findings: Iterable[Finding]) -> dict[str, int]:
    """Image-level CheXpert labels of a phantom: 1 for observations a finding makes positive,
    0 otherwise (the phantom shows exactly its findings, so absence is known, not blank).
    No Finding is 1 when nothing but Support Devices is positive (CheXpert's rule)."""
    pos = {o for f in findings for o in f.chexpert}
    labels = {o: int(o in pos) for o in CHEXPERT_LABELS}
    labels["No Finding"] = int(not (pos - {"Support Devices"}))
    return labels


# ---------------------------------------------------------------------------------------
# MeSH major codes -> findings
# ---------------------------------------------------------------------------------------

#: MeSH term (first ``/`` field, lower-cased) -> finding kind. ``None``: the term means
#: "no abnormality" (``normal``, ``No Indexing``) and yields no finding and no unrendered code.
#: A tuple ``(kind, modifier, ...)`` applies only when one of the modifiers is present.
MESH_TERMS: dict[str, object] = {
    "normal": None,
    "no indexing": None,
    "cardiomegaly": "cardiomegaly",
    "cardiac shadow": ("cardiomegaly", "enlarged"),
    "heart": ("cardiomegaly", "enlarged"),
    "pulmonary atelectasis": "atelectasis",
    "opacity": "airspace_opacity",
    "airspace disease": "airspace_opacity",
    "infiltrate": "airspace_opacity",
    "density": "airspace_opacity",
    "consolidation": "consolidation",
    "pneumonia": "pneumonia",
    "pulmonary edema": "edema",
    "heart failure": "edema",
    "pulmonary congestion": "vascular_congestion",
    "markings": "interstitial_markings",
    "lung diseases, interstitial": "interstitial_markings",
    "pulmonary fibrosis": "interstitial_markings",
    "fibrosis": "interstitial_markings",
    "cicatrix": "scarring",
    "nodule": "nodule",
    "mass": "mass",
    "calcified granuloma": "granuloma",
    "granuloma": "granuloma",
    "granulomatous disease": "granuloma",
    "emphysema": "hyperinflation",
    "pulmonary emphysema": "hyperinflation",
    "pulmonary disease, chronic obstructive": "hyperinflation",
    "lung, hyperlucent": "hyperinflation",
    "pleural effusion": "pleural_effusion",
    "costophrenic angle": ("pleural_effusion", "blunted"),
    "pneumothorax": "pneumothorax",
    "thickening": ("pleural_thickening", "pleura"),
    "mediastinum": "enlarged_cardiomediastinum",
    "aorta": ("tortuous_aorta", "tortuous"),
    "aorta, thoracic": ("tortuous_aorta", "tortuous"),
    "atherosclerosis": ("aortic_calcification", "aorta", "aorta, thoracic"),
    "hernia, hiatal": "hiatal_hernia",
    "diaphragm": ("elevated_hemidiaphragm", "elevated"),
    "diaphragmatic eventration": "elevated_hemidiaphragm",
    "fractures, bone": ("rib_fracture", "ribs"),
    "spine": ("degenerative_spine", "degenerative"),
    "thoracic vertebrae": ("degenerative_spine", "degenerative"),
    "spondylosis": "degenerative_spine",
    "osteophyte": "degenerative_spine",
    "scoliosis": "scoliosis",
    "catheters, indwelling": "central_line",
    "implanted medical device": "pacemaker",
    "tube, inserted": ("endotracheal_tube", "trachea", "trachea, carina"),
    "surgical instruments": ("sternotomy_wires", "mediastinum"),
    "sutures": ("sternotomy_wires", "sternum"),
}

#: Term-specific readings of a modifier that would otherwise be ambiguous (first match wins).
_MESH_SPECIAL: dict[tuple[str, str], str] = {
    ("lung", "hypoinflation"): "hypoinflation",
    ("lung", "hyperdistention"): "hyperinflation",
    ("diaphragm", "flattened"): "hyperinflation",
    ("calcinosis", "aorta"): "aortic_calcification",
    ("calcinosis", "aorta, thoracic"): "aortic_calcification",
    ("calcinosis", "lymph nodes"): "calcified_lymph_node",
    ("calcinosis", "mediastinum"): "calcified_lymph_node",
    ("calcinosis", "lung"): "granuloma",
}

_SEVERITY_WORDS = {"mild": "mild", "borderline": "mild", "small": "mild", "minimal": "mild",
                   "moderate": "moderate", "severe": "severe", "large": "severe",
                   "marked": "severe", "extensive": "severe"}
_ZONE_WORDS = {"base": "base", "lower lobe": "lower", "upper lobe": "upper",
               "middle lobe": "middle", "apex": "apex", "hilum": "hilar", "lingula": "lingula",
               "retrocardiac": "retrocardiac", "diffuse": "diffuse", "paratracheal": "mediastinal",
               "mediastinum": "mediastinal"}


def _coerce(kind: str, side: str | None, zone: str | None, severity: str,
            variant: str | None, instance: int = 0) -> Finding:
    """Build a Finding, falling back to the kind's defaults where a modifier does not fit it."""
    t = CATALOGUE[kind]
    if side not in t.sides:
        side = t.sides[0]
    if zone not in t.zones:
        zone = t.zones[0]
    if variant not in t.variants:
        variant = None
    return Finding(kind, side, zone, severity, variant, instance)


def mesh_to_findings(code: str) -> list[Finding] | None:
    """Map one MeSH major code to findings.

    Returns ``[]`` for codes meaning "normal", ``None`` for codes no table row covers (the
    caller records them as unrendered), else one finding — two for a bilateral code of a
    kind that has no "bilateral" side (a bilateral nodule becomes a left and a right one).

    >>> mesh_to_findings("Pulmonary Atelectasis/base/left/mild")
    [Finding(kind='atelectasis', side='left', zone='base', severity='mild', variant='plate', instance=0)]
    """
    parts = [p.strip().lower() for p in code.split("/") if p.strip()]
    if not parts:
        return None
    term, mods = parts[0], parts[1:]
    kind: str | None = None
    for (t_, m), k in _MESH_SPECIAL.items():  # table order is priority order
        if t_ == term and m in mods:
            kind = k
            break
    if kind is None:
        if term not in MESH_TERMS:
            return None
        entry = MESH_TERMS[term]
        if entry is None:
            return []
        if isinstance(entry, tuple):
            kind, *needed = entry
            if not any(m in mods for m in needed):
                return None
        else:
            kind = entry
    side = next((s for s in ("bilateral", "left", "right") if s in mods), None)
    zone = next((_ZONE_WORDS[m] for m in mods if m in _ZONE_WORDS), None)
    severity = next((_SEVERITY_WORDS[m] for m in mods if m in _SEVERITY_WORDS), "mild")
    if kind == "cardiomegaly" and term == "cardiomegaly" and not any(m in _SEVERITY_WORDS for m in mods):
        severity = "moderate"  # plain "Cardiomegaly": neither borderline nor severe
    variant = None
    if kind == "atelectasis":
        variant = "lobar" if zone in ("upper", "middle", "lower") else "plate"
    elif kind == "airspace_opacity" and "streaky" in mods:
        variant = "streaky"
    elif kind == "granuloma":
        variant = "calcified" if (term in ("calcified granuloma", "calcinosis") or "calcified" in mods) else "noncalcified"
    elif kind == "hyperinflation":
        variant = "emphysema" if "emphysema" in term or "obstructive" in term else "hyperinflation"
    elif kind == "rib_fracture":
        variant = "healed" if "healed" in mods else "acute"
    t = CATALOGUE[kind]
    if side == "bilateral" and "bilateral" not in t.sides and t.sides != (None,):
        return [_coerce(kind, "left", zone, severity, variant), _coerce(kind, "right", zone, severity, variant)]
    if side is None and kind == "interstitial_markings":
        side = "bilateral"
    return [_coerce(kind, side, zone, severity, variant)]


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Deduplicate the findings of one study.

    Findings of the same kind, side and zone are one finding (several MeSH codes often
    describe it: ``Lung/hyperdistention`` and ``Pulmonary Emphysema``): the most severe is
    kept, and on a tie the first one with a non-default variant ("emphysema" over plain
    "hyperinflation"). A left and a right finding of a kind that allows "bilateral" become
    one bilateral finding.
    """
    order = {s: i for i, s in enumerate(SEVERITIES)}

    def rank(f: Finding) -> tuple[int, int]:
        t = CATALOGUE[f.kind]
        return order[f.severity], int(bool(t.variants) and f.variant != t.variants[0])

    best: dict[tuple, Finding] = {}
    for f in findings:
        k = (f.kind, f.side, f.zone)
        if k not in best or rank(f) > rank(best[k]):
            best[k] = f
    out: list[Finding] = []
    for (kind, side, zone), f in best.items():
        t = CATALOGUE[kind]
        if side in ("left", "right") and "bilateral" in t.sides:
            other = best.get((kind, "right" if side == "left" else "left", zone))
            if other is not None:
                if side == "left" or (kind, "left", zone) not in best:
                    out.append(replace(max(f, other, key=rank), side="bilateral"))
                continue
            if (kind, "bilateral", zone) in best:
                continue
        out.append(f)
    return out
