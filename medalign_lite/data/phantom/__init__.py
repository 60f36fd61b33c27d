"""Chest-radiograph phantoms: anatomy + findings + one exact mask per finding.

API
---
``render(seed, findings=(), view="PA", size=224, acquisition=0) -> PhantomImage`` with
``image`` (size, size) float32 in [0, 1] (bright = attenuating, like a displayed CXR),
``masks`` (K, size, size) bool (one per finding, in order), ``body`` (size, size) bool,
``findings``, ``view`` and the patient's :class:`Anatomy` (``Anatomy.sample(seed)``: habitus,
inspiration, heart size, rotation, exposure, noise, sex). ``acquisition`` changes exposure,
noise and positioning between studies of one patient (priors use 1), never the anatomy.
``to_uint8`` converts an image; ``bench_render`` measures images/s on this process.

The model
---------
An image is a *density* field ``D`` (an attenuation line integral in arbitrary units) built
from anatomical layers and turned into a radiograph by a pointwise tone curve::

    image = clip(c - c * exp(-k * D) + b + sigma * noise, 0, 1)

Coordinates are isotropic and size-free: ``x`` runs from -1 (image left) to 1 (image right),
``y`` from -1 (top) to 1 (bottom); one unit is about 20 cm, a pixel ``2 / size`` units. Every
layer is an elementwise function ``layer(x, y, g)`` of a row vector ``x`` (1, w), a column
vector ``y`` (h, 1) and the patient's geometry ``g``, so it can be evaluated on any crop; the
base image adds each layer on its bounding-box crop only. Edges are soft, from analytic signed
"levels" (positive inside, about a distance in units): ``alpha = clip(0.5 + level / w, 0, 1)``.
Textures that would be slow per image (vessel trees, smooth noise, the noise bank) are built
once per size and cached; an image samples them at seeded offsets.

Frontal views (PA, AP) follow the radiological convention: the patient's *left* is on the
*image right*. They show soft tissue (and breast shadows), two lungs (apex, lateral wall,
hemidiaphragm domes meeting the wall at sharp costophrenic angles, the right dome higher, a
gastric bubble under the left one) with branching vessel markings, the heart (its CTR sampled
per patient), the mediastinum with the trachea, main bronchi, aortic knob and descending
aorta, the hila, the spine (vertebral bodies, discs, pedicles), clavicles, posterior ribs as
curved bands with a cortex and faint anterior ribs. Rotation shifts the mediastinum, heart and
spine (which follow ``cx0 + skew * y``) against the thorax (centred on ``cx0``). AP magnifies
the heart, projects the clavicles higher, is less inflated, noisier, and lays the scapulae
over the lungs. The lateral view (patient facing image left) shows the sternum, the
retrosternal clear space, the heart anterior-inferior, the trachea, the aortic arch, the spine
posterior over the lungs and two diaphragm domes.

Exact masks
-----------
Each finding returns *patches* ``(rows, cols, delta, mask)``: a density increment on a crop.
The renderer zeroes ``delta`` outside the body, adds it to ``D`` and records
``mask | (delta != 0)`` (inside the body). Tone curve, noise (a cached per-size bank indexed by
seed and acquisition) and clipping are pointwise, so a pixel outside every mask is bitwise
equal to the same patient's no-finding render. A finding's placement jitter comes from
``crc32(finding.key())`` and the patient seed, never from its severity or the other findings,
so it sits at the same place at any severity and in a prior study.

Combining findings
------------------
A study shows up to six findings at once, and together they must still look like a chest. They
are drawn in two passes:

1. *Anatomy changes* (hyper- and hypoinflation, elevated hemidiaphragm, cardiomegaly,
   mediastinal widening, tortuous aorta, enlarged hila, degenerative spine, scoliosis) map the
   geometry ``g -> g'``, in list order. Each anatomical layer declares the geometry values it
   reads (its *key*); a change redraws every layer whose key changed,
   ``delta = layer(g') - layer(g)``, against the geometry the image holds at that point. The
   changes telescope: two findings moving one dome never subtract the lung twice, and the
   lungs, ribs and heart always sit where the last change put them (hyperinflation's lower
   domes take the ribs, the vessel tree and the heart down with them).
2. *Lesions and devices* are drawn on the changed anatomy ``g'``: an effusion fills the base of
   the lungs as they now are, a pneumothorax collapses that lung, opacities are cut by it, a
   pacemaker lead ends in the enlarged heart. Their place (zones) still comes from the normal
   anatomy ``g0``.

Soft-tissue densities that take the place of air (opacities, atelectasis, edema, reticulation,
effusion, pleural thickening, nodules, masses) *saturate*: where earlier ones already filled the
airspaces, a later one adds only into the air left there (the lungs' air less the heart and
mediastinum in front of them), so stacked opacities never grow denser than solid tissue, and
none is hidden by another. Alone, every finding draws exactly what it draws in company.

Severity scales size, density or grade (nodules 6 / 10 / 15 mm, masses 35 / 50 / 70 mm, CTR
0.55 / 0.62 / 0.70, effusion from costophrenic blunting to half the hemithorax ...); support
devices ignore it. Every kind renders on the lateral view, but ``pneumothorax``,
``rib_fracture`` and ``scoliosis`` have empty masks there (:data:`LATERAL_INVISIBLE`).

Files, in reading order
-----------------------
``shapes`` (numeric helpers) -> ``anatomy`` (patient, geometry, layers, texture caches) ->
``frontal`` / ``lateral`` (the normal anatomy of each projection) -> ``context`` (crops,
patches, anatomy changes, air left) -> ``changes`` (findings that change the anatomy) ->
``lesions`` / ``devices`` (findings drawn on it) -> ``compose`` (the two passes, tone curve,
noise, benchmark).
"""
from .anatomy import Anatomy
from .compose import (
           LATERAL_INVISIBLE,
           VIEWS,
           PhantomImage,
           bench_render,
           random_findings,
           render,
           to_uint8,
)

__all__ = ["LATERAL_INVISIBLE", "VIEWS", "Anatomy", "PhantomImage", "bench_render", "random_findings", "render",
           "to_uint8"]
