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
equal to the same patient's no-finding render. Findings that change anatomy (cardiomegaly,
effusion, pneumothorax, hyper/hypo-inflation, elevated hemidiaphragm, scoliosis, mediastinal
widening, tortuous aorta, degenerative spine, rib fracture) re-evaluate a layer with modified
geometry on their crop: ``delta = layer(g') - layer(g)``. A finding's placement jitter comes
from ``crc32(finding.key())`` and the patient seed, never from its severity or the other
findings, so it sits at the same place at any severity and in a prior study.

Severity scales size, density or grade (nodules 6 / 10 / 15 mm, masses 35 / 50 / 70 mm, CTR
0.55 / 0.62 / 0.70, effusion from costophrenic blunting to half the hemithorax ...); support
devices ignore it. Every kind renders on the lateral view, but ``pneumothorax``,
``rib_fracture`` and ``scoliosis`` have empty masks there (:data:`LATERAL_INVISIBLE`).
"""
from __future__ import annotations

import itertools
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np

from .findings import CATALOGUE, SEVERITIES, Finding

__all__ = ["LATERAL_INVISIBLE", "VIEWS", "Anatomy", "PhantomImage", "bench_render", "random_findings", "render",
           "to_uint8"]

VIEWS = ("PA", "AP", "LATERAL")
#: Kinds whose mask is empty on the lateral view (not seen, or not modelled, in that projection).
LATERAL_INVISIBLE = frozenset({"pneumothorax", "rib_fracture", "scoliosis"})
F32 = np.float32
_SIDE = {"left": (1,), "right": (-1,), "bilateral": (-1, 1), None: (0,)}  # patient left = image right
_MM = 0.005  # units per millimetre


_clip = np._core.umath.clip if hasattr(np, "_core") else np.core.umath.clip  # the ufunc: no wrapper overhead
_M64 = (1 << 64) - 1


def _rng(*ints: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(i) % (1 << 63) for i in ints]))


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _uniforms(n: int, *keys: int) -> list[float]:
    """``n`` uniforms in [0, 1) from a splitmix64 stream keyed by integers: cheap (no
    SeedSequence), portable and independent of numpy's generator versions."""
    z = 0
    for k in keys:
        z = _mix64((z + 0x9E3779B97F4A7C15 + (int(k) & _M64)) & _M64)
    out = []
    for _ in range(n):
        z = (z + 0x9E3779B97F4A7C15) & _M64
        out.append((_mix64(z) >> 11) * (1.0 / (1 << 53)))
    return out


def _soft(level, w):
    """Soft inside-indicator of a signed level (about a distance): 0 outside, 1 inside, a
    linear ramp of width ``w`` across the boundary."""
    r = level * (1.0 / w)
    r += 0.5
    return _clip(r, 0.0, 1.0, out=r) if isinstance(r, np.ndarray) else min(1.0, max(0.0, r))


def _smooth(t):
    t = _clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _seg_dist(x, y, p, q):
    """Distance from every (x, y) to the segment p-q."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    t = _clip(((x - p[0]) * dx + (y - p[1]) * dy) * (1.0 / max(dx * dx + dy * dy, 1e-12)), 0.0, 1.0)
    ex, ey = x - p[0] - t * dx, y - p[1] - t * dy
    return np.sqrt(ex * ex + ey * ey)


def _poly_dist(x, y, pts, reach):
    """Distance from every (x (1, w), y (h, 1)) to the polyline ``pts``, computed only within
    ``reach`` of each segment (farther pixels get ``2 * reach``)."""
    d = np.full((y.shape[0], x.shape[1]), 2.0 * reach, F32)
    xs, ys = x[0], y[:, 0]
    for p, q in itertools.pairwise(pts):
        c0, c1 = np.searchsorted(xs, (min(p[0], q[0]) - reach, max(p[0], q[0]) + reach))
        r0, r1 = np.searchsorted(ys, (min(p[1], q[1]) - reach, max(p[1], q[1]) + reach))
        if c1 > c0 and r1 > r0:
            sub = d[r0:r1, c0:c1]
            np.minimum(sub, _seg_dist(x[:, c0:c1], y[r0:r1], p, q), out=sub)
    return d


def _bezier(*ctrl, n=10):
    """n+1 points [(x, y), ...] of the Bezier curve with control points ``ctrl``."""
    t = np.linspace(0.0, 1.0, n + 1)[:, None, None]
    c = np.broadcast_to(np.asarray(ctrl, float), (n + 1, len(ctrl), 2))
    while c.shape[1] > 1:  # de Casteljau
        c = c[:, :-1] * (1 - t) + c[:, 1:] * t
    return [(float(p[0]), float(p[1])) for p in c[:, 0]]


def _pts_box(pts, pad):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs) - pad, max(xs) + pad, min(ys) - pad, max(ys) + pad


# ------------------------------------------------------------------------------------------
# Patient and acquisition
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Patient-level variation, a pure function of the patient seed.

    habitus: chest half-width scale; inspiration: lung height scale; ctr: cardiothoracic ratio
    of the (normal) heart on PA; rotation: skew of the midline (x shift per unit of y);
    midline: horizontal offset of the midline; exposure/brightness: tone-curve gain/offset;
    noise: noise standard deviation; vessels: which vessel-tree texture the lungs use.
    """

    seed: int
    sex: str
    habitus: float
    inspiration: float
    ctr: float
    rotation: float
    midline: float
    exposure: float
    brightness: float
    noise: float
    vessels: int

    @classmethod
    def sample(cls, seed: int) -> Anatomy:
        return _sample_anatomy(int(seed))


@lru_cache(maxsize=4096)
def _sample_anatomy(seed: int) -> Anatomy:
    u = iter(_uniforms(12, seed, 0xA7A))
    nd = NormalDist()
    sex = "F" if next(u) < 0.5 else "M"

    def normal(lo, hi, sd, mu=0.0):
        return min(hi, max(lo, mu + sd * nd.inv_cdf(min(max(next(u), 1e-9), 1 - 1e-9))))

    def uni(lo, hi):
        return lo + (hi - lo) * next(u)
    return Anatomy(seed=seed, sex=sex, habitus=normal(0.86, 1.12, 0.06, 0.97 if sex == "F" else 1.02),
                   inspiration=normal(0.88, 1.1, 0.05, 1.0), ctr=uni(0.39, 0.48),
                   rotation=normal(-0.04, 0.04, 0.015), midline=normal(-0.04, 0.04, 0.015),
                   exposure=uni(0.88, 1.12), brightness=uni(-0.03, 0.03), noise=uni(0.008, 0.022),
                   vessels=int(next(u) * 4))


@dataclass(frozen=True)
class _Geom:
    """Everything a layer needs, in units (see module docstring). Per-side tuples are indexed
    ``(s + 1) // 2``: 0 = image left (patient right), 1 = image right (patient left). Frontal x
    positions are relative to the midline ``cx0 + skew * y``; lateral ones are absolute."""

    view: str
    size: int
    edge: float                 # soft-edge width
    cx0: float
    skew: float
    hw: float                   # body half-width (lateral: posterior body wall)
    neck: float                 # neck half-width (lateral: anterior body wall, negative)
    lung_w: float               # lateral lung margin (lateral: posterior lung margin)
    lung_top: float             # apex y
    lung_h: float               # vertical scale of the lung outline (apex to costophrenic angle)
    dome: tuple                 # costophrenic level of each dome
    dome_h: float               # dome height
    air: float                  # density the lungs remove
    marks: float                # vessel-marking density
    mark_s: tuple               # (x, y) scale of the vessel texture
    tree: int
    heart: tuple                # hx, hy, ha, hb (frontal hx relative to the midline)
    medi: tuple                 # mediastinal half-widths right, left (lateral: anterior fill, 0)
    knob: tuple                 # kx, ky, kr
    tort: float                 # tortuosity of the descending aorta
    hila: tuple                 # hx, hy_right, hy_left, hr
    carina: float
    spine: tuple                # half-width, y0, vertebra period
    scol: float                 # scoliosis amplitude (signed: + convex to image right)
    degen: tuple                # (grade, first vertebra, count)
    clav_y: float
    rib: tuple                  # first-rib y, spacing
    scap: float                 # medial border of the scapula (x from midline)
    breasts: bool

    def mid(self, y):
        return self.cx0 + self.skew * y


def _frontal_geom(a: Anatomy, view: str, size: int) -> _Geom:
    ap = view == "AP"
    lw = 0.78 * a.habitus
    top = -0.76 + 0.05 * (1 - a.inspiration) + (0.02 if ap else 0.0)
    yd = top + 1.25 * a.inspiration - (0.06 if ap else 0.0)
    ha = a.ctr * lw * (1.13 if ap else 1.0)
    hb = 0.27 * (ha / 0.33) ** 0.5
    hy = yd - 0.03 - hb
    return _Geom(view=view, size=size, edge=max(0.012, 3.0 / size), cx0=a.midline, skew=a.rotation,
                 hw=lw + 0.14 * a.habitus, neck=0.24, lung_w=lw, lung_top=top, lung_h=yd - top, dome=(yd, yd + 0.035),
                 dome_h=0.2, air=1.0, marks=0.36, mark_s=(lw / 0.78, (yd - top) / 1.25), tree=a.vessels,
                 heart=(ha / 3.0 + 0.02, hy, ha, hb), medi=(0.13, 0.1), knob=(0.125, top + 0.42, 0.062),
                 tort=0.0, hila=(0.17, hy - 0.27, hy - 0.3, 0.06), carina=top + 0.52,
                 spine=(0.068, top - 0.02, (yd + 0.1 - top) / 11.0), scol=0.0, degen=(0, 0, 0),
                 clav_y=top + (0.1 if ap else 0.2), rib=(top + 0.01, (yd - top) / 9.6),
                 scap=0.5 if ap else lw - 0.02, breasts=a.sex == "F")


def _lateral_geom(a: Anatomy, size: int) -> _Geom:
    dp = 0.9 + 0.25 * (a.habitus - 1.0)
    top = -0.72 + 0.05 * (1 - a.inspiration)
    yd = top + 1.28 * a.inspiration
    ha, hb = 0.62 * a.ctr / 0.43 * 0.5, 0.27
    return _Geom(view="LATERAL", size=size, edge=max(0.012, 3.0 / size), cx0=0.0, skew=0.0,
                 hw=0.72 * dp, neck=-0.6 * dp, lung_w=0.62 * dp, lung_top=top, lung_h=yd - top,
                 dome=(yd - 0.03, yd + 0.03),
                 dome_h=0.22, air=1.1, marks=0.3, mark_s=(1.0, (yd - top) / 1.28), tree=a.vessels,
                 heart=(-0.22 * dp, yd - 0.36, ha, hb), medi=(0.0, 0.0), knob=(0.06, top + 0.36, 0.055),
                 tort=0.0, hila=(0.06, -0.05 + 0.5 * (yd - 0.56), -0.07 + 0.5 * (yd - 0.56), 0.075),
                 carina=top + 0.5, spine=(0.075, top - 0.05, (yd + 0.15 - top) / 11.0), scol=0.0,
                 degen=(0, 0, 0), clav_y=top + 0.12, rib=(top + 0.05, (yd - top) / 8.0), scap=0.0,
                 breasts=a.sex == "F")


# ------------------------------------------------------------------------------------------
# Cached per-size textures: noise bank, blob / fine noise, vessel trees
# ------------------------------------------------------------------------------------------

_TREE_U0, _TREE_V0, _TREE_ROOT = -0.1, -1.0, (0.17, -0.08)


def _lowpass_noise(rng, n, corr_px, band=False):
    """(n, n) noise with correlation length ``corr_px`` (band-pass if ``band``), std 1."""
    f = np.fft.rfft2(rng.standard_normal((n, n)))
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    k2 = (kx * kx + ky * ky) * (2 * np.pi * corr_px) ** 2
    filt = np.exp(-k2 / 2) * (k2 if band else 1.0)
    out = np.fft.irfft2(f * filt, s=(n, n))
    return (out / out.std()).astype(F32)


def _tree_texture(size: int, variant: int) -> np.ndarray:
    """A branching vessel tree in lung-local coordinates (u = distance from the midline, v = y),
    rooted at the hilum; pixel = 2/size units. Values in [0, 1]."""
    pix = 2.0 / size
    nu, nv = int(1.3 / pix) + 2, int(2.0 / pix) + 2
    tex = np.zeros((nv, nu), F32)
    us = (_TREE_U0 + np.arange(nu) * pix).astype(F32)[None, :]
    vs = (_TREE_V0 + np.arange(nv) * pix).astype(F32)[:, None]
    r = _rng(1009, variant)
    trunks = (-95, -68, -40, -12, 18, 45, 72, 98)
    stack = [(_TREE_ROOT, math.radians(a + r.normal(0, 8)), 0.12 + 0.06 * r.random(), 0.013, 0) for a in trunks]
    while stack:
        p, ang, length, width, depth = stack.pop()
        ang += r.normal(0, 0.12)
        q = (p[0] + length * math.cos(ang), p[1] + length * math.sin(ang))
        pad = width + 2 * pix
        c0, c1 = [int(_clip((v - _TREE_U0) / pix, 0, nu)) for v in (min(p[0], q[0]) - pad, max(p[0], q[0]) + pad + pix)]
        r0, r1 = [int(_clip((v - _TREE_V0) / pix, 0, nv)) for v in (min(p[1], q[1]) - pad, max(p[1], q[1]) + pad + pix)]
        if c1 > c0 and r1 > r0:
            d = _seg_dist(us[:, c0:c1], vs[r0:r1], p, q)
            w = max(width, 0.3 * pix)
            val = np.sqrt(_clip(1 - (d / (w + 0.5 * pix)) ** 2, 0, 1))  # a cylinder's profile
            val *= min(1.0, width / (0.6 * pix)) * (width / 0.013) ** 0.3  # thin vessels fainter
            np.maximum(tex[r0:r1, c0:c1], val.astype(F32), out=tex[r0:r1, c0:c1])
        if depth < 7 and width > 0.0012:
            side = 1 if r.random() < 0.5 else -1  # monopodial: a main continuation and a side branch
            stack.append((q, ang + side * math.radians(r.uniform(4, 14)), length * r.uniform(0.75, 0.95),
                          width * 0.78, depth + 1))
            stack.append((q, ang - side * math.radians(r.uniform(25, 50)), length * r.uniform(0.45, 0.75),
                          width * 0.55, depth + 1))
    k = np.array([1, 4, 6, 4, 1], F32) / 16  # soften: vessels are out of focus, overlapping
    for ax in (0, 1):
        tex = sum(np.roll(tex, i - 2, axis=ax) * k[i] for i in range(5))
    return tex


@lru_cache(maxsize=8)
def _bank(size: int) -> SimpleNamespace:
    r = _rng(77, size)
    n = 2 * size
    noise = r.standard_normal((n + 2, n + 2)).astype(F32)
    noise = noise[1:-1, 1:-1] * 0.5 + 0.125 * (noise[:-2, 1:-1] + noise[2:, 1:-1] + noise[1:-1, :-2] + noise[1:-1, 2:])
    noise /= noise.std()
    return SimpleNamespace(noise=noise, blob=_lowpass_noise(r, n, 0.035 * size / 2),
                           fine=_lowpass_noise(r, n, 0.02 * size / 2, band=True),
                           trees=[_tree_texture(size, v) for v in range(4)], pix=2.0 / size)


def _marks(x, y, g: _Geom, s: int, u_of_x):
    """Vessel-tree density for the lung on side s; ``u_of_x`` maps x (1, w) to the tree's u."""
    b = _bank(g.size)
    tex = b.trees[(g.tree + (s > 0)) % 4]
    hy = g.hila[1 + (s > 0)]
    iu = ((u_of_x(x) - g.hila[0]) * (1.0 / g.mark_s[0]) + (_TREE_ROOT[0] - _TREE_U0)) * (1.0 / b.pix)
    iv = ((y - hy) * (1.0 / g.mark_s[1]) + (_TREE_ROOT[1] - _TREE_V0)) * (1.0 / b.pix)
    iu = _clip(iu.ravel(), 0, tex.shape[1] - 1).astype(np.intp)
    iv = _clip(iv.ravel(), 0, tex.shape[0] - 1).astype(np.intp)
    return tex[iv][:, iu]


# ------------------------------------------------------------------------------------------
# Frontal layers. The thorax (outline, lungs, ribs, clavicles) is centred on x = cx0; the
# mediastinum, heart and spine follow the rotated midline cx0 + skew * y.
# ------------------------------------------------------------------------------------------

def _f_body_level(x, y, g):
    """Frontal body outline: (level, x from the midline, half-width per row)."""
    xr = x - g.cx0  # (1, w): the thorax outline ignores rotation
    hwy = g.neck + (g.hw - g.neck) * np.sqrt(_smooth((y + 1.25) * (1.0 / 0.55))) * (1.0 - 0.05 * _smooth(y - 0.3))
    return hwy - np.abs(xr), xr, hwy


def _f_body(x, y, g):
    """(density, level) of the soft tissue: an elliptic cross-section, thickest at the midline."""
    lvl, xr, hwy = _f_body_level(x, y, g)
    t = xr * (1.0 / hwy)
    np.square(t, out=t)
    np.subtract(1.0, t, out=t)
    np.maximum(t, 0.0, out=t)
    np.sqrt(t, out=t)
    t *= 0.8
    t += 0.35
    t *= _soft(lvl, g.edge)
    return t, lvl


def _f_lung_level(x, y, g, s):
    """(level, xp, wall level) of the lung on side s: apex, lateral wall, medial border, dome."""
    lw, top, yd, hd = g.lung_w, g.lung_top, g.dome[(s + 1) // 2], g.dome_h
    xp = (x - g.cx0) * s  # distance from the thorax midline, positive laterally; (1, w) on crops
    lat = lw * np.sqrt(_clip(0.35 + (y - top) * (0.65 / (0.5 * g.lung_h)), 0.0, 1.0))  # (h, 1)
    med = 0.09 - 0.03 * _clip((y - top) * (1.0 / g.lung_h), 0.0, 1.0)
    wall = (y - top) - 2.2 * (xp - 0.36 * lw) ** 2  # apex
    np.minimum(wall, lat - xp, out=wall)
    np.minimum(wall, xp - med, out=wall)
    dome = (yd - hd) + hd * ((np.maximum(xp, 0.3 * lw) - 0.5 * lw) * (1.0 / (0.52 * lw))) ** 2 - y
    return np.minimum(wall, dome, out=dome), xp, wall


def _f_lung(x, y, g, s):
    """(density, level, wall level) of one lung: air (thinner at the walls), its vessel
    markings, the gastric bubble (left)."""
    lvl, xp, wall = _f_lung_level(x, y, g, s)
    depth = wall * (-0.38 / 0.14 * g.air)
    np.maximum(depth, -0.38 * g.air, out=depth)
    depth -= 0.62 * g.air
    np.minimum(depth, -0.62 * g.air, out=depth)  # -air * (0.62 .. 1): thinner at the walls
    marks = _f_marks(x, y, g, s)
    marks *= g.marks
    marks += depth
    marks *= _soft(lvl, g.edge)
    if s > 0:  # gastric bubble under the left hemidiaphragm, on its own sub-crop
        cx, by, _, _ = _f_bubble(g)
        bx = cx - g.cx0
        c0, c1 = np.searchsorted(x[0], [cx - 0.13, cx + 0.13])
        r0, r1 = np.searchsorted(y[:, 0], [by - 0.08, by + 0.08])
        if c1 > c0 and r1 > r0:
            xs, ys, lv = xp[..., c0:c1], y[r0:r1], lvl[r0:r1, c0:c1]
            q = ((xs - bx) * (1 / 0.11)) ** 2 + ((ys - by) * (1 / 0.06)) ** 2
            marks[r0:r1, c0:c1] -= 0.55 * g.air * _soft(np.minimum((1.0 - q) * 0.03, -lv - 0.015), g.edge)
    return marks, lvl, wall


def _f_bubble(g):
    """Gastric bubble (centre x, centre y, radius x, radius y), under the left dome."""
    by = g.dome[1] - g.dome_h + 0.085
    return g.cx0 + 0.42 * g.lung_w, by, 0.11, 0.06


def _f_marks(x, y, g, s):
    mid = g.cx0
    return _marks(x, y, g, s, lambda xx: (xx - mid) * s)


def _f_lung_box(g, s):
    x0, x1 = (0.04, g.lung_w + 0.04) if s > 0 else (-g.lung_w - 0.04, -0.04)
    m = abs(g.skew) + 0.01
    return x0 + g.cx0 - m, x1 + g.cx0 + m, g.lung_top - 0.02, g.dome[(s + 1) // 2] + 0.03


def _f_heart_alpha(x, y, g):
    """Cardiac silhouette: a convex right-atrial border, a long convex left border with the
    apex low, a top merging into the mediastinum and a base cut by the diaphragm."""
    hx, hy, ha, hb = g.heart
    xr = x - g.mid(y)
    t = (y - hy) * (1.0 / hb)
    right = (ha - hx) * np.sqrt(_clip(1.0 - ((t - 0.3) * (1 / 1.3)) ** 2, 0.0, 1.0))
    left = (ha + hx) * np.sqrt(_clip(1.0 - ((t - 0.35) * (1 / 1.35)) ** 2, 0.0, 1.0))
    xt = x - g.cx0  # the domes follow the thorax, not the rotated mediastinum
    xa = np.maximum(np.abs(xt), 0.3 * g.lung_w)  # flat central tendon under the heart
    dome = g.dome[0] + (g.dome[1] - g.dome[0]) * _clip(xt * 10.0 + 0.5, 0.0, 1.0) + (0.015 - g.dome_h) + \
        g.dome_h * ((xa - 0.5 * g.lung_w) * (1.0 / (0.52 * g.lung_w))) ** 2
    lvl = np.minimum(np.minimum(xr + right, left - xr), dome - y)
    return _soft(lvl, g.edge) * _smooth((t + 1.0) * 2.5), t


def _f_heart(x, y, g):
    """Heart density."""
    a, t = _f_heart_alpha(x, y, g)
    return a * (0.92 - 0.1 * np.abs(t))


def _f_heart_box(g):
    hx, hy, ha, hb = g.heart
    m = abs(g.skew) + 0.03
    return g.cx0 + hx - ha - m, g.cx0 + hx + ha + m, hy - hb, hy + hb + 0.03


def _f_medi(x, y, g):
    """Mediastinal soft tissue: SVC border on the right, a left border widening from the
    aortic knob down to the heart."""
    xr = x - g.mid(y)
    wr, wl = g.medi
    hx, hy, ha, hb = g.heart
    waist = _clip((y - g.knob[1]) * (1.0 / (hy - g.knob[1])), 0.0, 1.0)  # knob -> heart: widening
    wl = wl + (hx + 0.5 * ha - wl) * waist * waist
    lvl = np.minimum(xr + wr, wl - xr)
    return _soft(lvl, 0.03) * (0.6 * _soft(hy - 0.3 * hb - y, 0.15) * _soft(y - g.lung_top - 0.1, 0.2))


def _f_medi_box(g):
    w = max(g.medi) + 0.2
    return g.cx0 - w - 0.05, g.cx0 + w + 0.05, g.lung_top - 0.1, g.heart[1] + 0.1


def _f_airway(x, y, g):
    """Trachea down to the carina, then the main bronchi (air: negative density)."""
    xr = x - g.mid(y)
    air = _soft(0.03 - np.abs(xr + 0.012), g.edge) * _soft(g.carina - y, g.edge)
    c = (-0.012, g.carina)
    if y[-1, 0] > g.carina - 0.03:
        air = np.maximum(air, _soft(0.021 - _seg_dist(xr, y, c, (-0.09, g.carina + 0.09)), g.edge))
        air = np.maximum(air, _soft(0.019 - _seg_dist(xr, y, c, (0.11, g.carina + 0.08)), g.edge))
    return air * -0.6


def _f_airway_boxes(g):
    return [(g.cx0 - 0.06 - abs(g.skew), g.cx0 + 0.05 + abs(g.skew), -1.05, g.carina - 0.03),
            (g.cx0 - 0.13 - abs(g.skew), g.cx0 + 0.15 + abs(g.skew), g.carina - 0.03, g.carina + 0.12)]


def _f_aorta(x, y, g):
    """Aortic knob (bulging left of the mediastinum) and the descending aorta."""
    xr = x - g.mid(y)
    kx, ky, kr = g.knob
    knob = _soft(kr - np.sqrt((xr - kx) ** 2 + (y - ky) ** 2), g.edge) * _soft(xr - kx + 0.4 * kr, 0.04)
    xda = 0.075 + 0.02 * (y - ky) + g.tort * np.sin((y - ky) * 7.0)
    da = _soft(0.037 - np.abs(xr - xda), g.edge) * _soft(y - ky, 0.02) * _soft(g.dome[1] - 0.05 - y, 0.1)
    return 0.45 * np.maximum(knob, da)


def _f_aorta_box(g):
    kx, ky, kr = g.knob
    return g.cx0 - 0.05, g.cx0 + kx + kr + g.tort + 0.1, ky - kr - 0.05, g.dome[1] + 0.05


def _f_hila(x, y, g):
    """Hila: soft blobs of the pulmonary arteries, the left one higher."""
    xr = x - g.mid(y)
    hx, hyr, hyl, hr = g.hila
    out = 0.0
    for s, hy in ((-1, hyr), (1, hyl)):
        q = ((xr - s * hx) * (1.0 / hr)) ** 2 + ((y - hy) * (1.0 / (1.5 * hr))) ** 2
        out = out + 0.32 * _clip(1.0 - q, 0.0, 1.0) ** 0.5
    return out


def _f_hila_box(g):
    hx, hyr, hyl, hr = g.hila
    m = hx + hr + 0.05
    return g.cx0 - m, g.cx0 + m, min(hyr, hyl) - 1.6 * hr - 0.05, max(hyr, hyl) + 1.6 * hr + 0.05


def _spine_xs(x, y, g):
    """Distance from the spinal axis (scoliosis bends it between y = top+0.3 and the dome)."""
    y0, y1 = g.lung_top + 0.25, g.dome[1] + 0.1
    t = _clip((y - y0) * (1.0 / (y1 - y0)), 0.0, 1.0)
    bend = g.scol * 4.0 * t * (1.0 - t) if g.scol else 0.0
    return x - g.mid(y) - bend


def _vertebrae(xs, y, g, lateral=False):
    """Vertebral bodies with darker discs, pedicles, and optional degenerative changes."""
    sw, y0, per = g.spine
    p = (y - y0) * (1.0 / per)
    idx = np.floor(p)
    t = p - idx
    ax = np.abs(xs)
    body = _soft(sw - ax, g.edge)
    disc = _clip(1.0 - np.abs(t - 0.06) * (per / 0.013), 0.0, 1.0)
    d = body * (0.2 - 0.1 * disc)
    if not lateral:
        r = np.sqrt(((ax - 0.72 * sw) * (1.0 / (0.24 * sw))) ** 2 + ((t - 0.45) * (per / 0.025)) ** 2)
        d = d + 0.1 * _clip(1.0 - np.abs(r - 1.0) * 2.5, 0.0, 1.0)
    grade, first, count = g.degen
    if grade:
        sel = (idx >= first) & (idx < first + count)
        de = np.minimum(np.abs(t - 0.06), 1.06 - t) * per  # units from the nearest disc
        spur_len = (0.006 + 0.007 * grade)
        ox = ax - sw if not lateral else -xs - sw  # lateral: anterior spurs only
        spur = _soft(np.minimum(spur_len * (1.0 - de * (1.0 / (0.03 + 0.006 * grade))) - ox, ox + 0.004), g.edge)
        scl = _clip(1.0 - np.abs(de - 0.022) * (1.0 / 0.008), 0.0, 1.0) * body
        d = d + sel * (0.9 * spur + (0.15 + 0.1 * grade) * scl)
    return d


def _f_spine(x, y, g):
    """Frontal thoracic spine (bent by scoliosis)."""
    return _vertebrae(_spine_xs(x, y, g), y, g)


def _f_spine_box(g):
    m = g.spine[0] + abs(g.scol) + abs(g.skew) + 0.06
    return g.cx0 - m, g.cx0 + m, -1.05, 1.05


def _rib_bands(xp, y, g, only=None):
    """Posterior ribs: bands along y = y1 + xp (0.75 xp - 0.3) + k * spacing, brighter cortex
    at their edges; ``only`` keeps rib k alone (for fractures)."""
    y1, sp = g.rib
    p = (y - y1) * (1.0 / sp) - xp * (xp * 0.75 - 0.3) * (1.0 / sp)  # rib phase
    idx = np.floor(p)
    p -= idx
    p -= 0.21
    d = np.abs(p, out=p)  # distance from the rib's centre line, in spacings
    band = d * (-sp / g.edge)
    band += 0.21 * sp / g.edge + 0.5
    _clip(band, 0.0, 1.0, out=band)
    d *= sp / 0.02
    d += 0.5 - 0.21 * sp / 0.02 + 0.5
    band *= _clip(d, 0.5, 1.0, out=d)  # cortex: 1 at the edges, 0.5 inside
    if only is not None:
        band *= idx == only
    return band


def _f_ribs(x, y, g, only=None):
    xp = np.abs(x - g.cx0)
    lat = xp * -20.0
    lat += (g.lung_w + 0.06) * 20.0 + 0.5
    _clip(lat, 0.0, 1.0, out=lat)
    rows = _soft(g.dome[0] + 0.02 - y, 0.12) * _soft(y - g.rib[0] + 0.04, 0.04)
    band = _rib_bands(xp, y, g, only)
    band *= lat
    band *= 0.24 * rows
    if only is None:
        band += _f_anterior_ribs(xp, y, g, lat, rows)
    return band


def _f_anterior_ribs(xp, y, g, lat, rows):
    """Faint anterior ribs: bands sloping down towards the midline, lateral to xp = 0.3."""
    spa = 1.5 * g.rib[1]
    pa = (y - g.rib[0] - 0.18) * (1.0 / spa) + xp * (0.42 / spa)
    pa -= np.floor(pa)
    pa -= 0.15
    ant = np.abs(pa, out=pa)
    ant *= -spa / g.edge
    ant += 0.15 * spa / g.edge + 0.5
    _clip(ant, 0.0, 1.0, out=ant)
    w = xp * (1.0 / 0.06)
    w -= 0.3 / 0.06 - 0.5
    ant *= _clip(w, 0.0, 1.0, out=w)
    ant *= lat
    ant *= 0.1 * rows * _soft(g.rib[0] + 7.5 * spa - y, 0.1)
    return ant


def _f_ribs_box(g):
    m = g.lung_w + 0.12 + abs(g.skew)
    return g.cx0 - m, g.cx0 + m, g.rib[0] - 0.07, g.dome[0] + 0.1


def _f_clav(x, y, g):
    """Clavicles: S-curved bands rising laterally, with a cortex."""
    xp = np.abs(x - g.cx0)
    yc = g.clav_y - 0.36 * (xp - 0.06) + 0.4 * (xp - 0.06) ** 2
    d = np.abs(y - yc)
    a = _soft(np.minimum(0.024 - d, np.minimum(xp - 0.045, 0.68 - xp)), g.edge)
    return a * (0.22 + 0.18 * _clip(d * (1.0 / 0.024), 0.0, 1.0))


def _f_clav_box(g):
    return g.cx0 - 0.75, g.cx0 + 0.75, g.clav_y - 0.2, g.clav_y + 0.08


def _f_scap(x, y, g):
    """Scapula (AP only): a triangle with its medial border over the lung, lateral border thick."""
    xp = np.abs(x - g.cx0)
    med = xp - g.scap - (y - g.lung_top) * 0.2
    lat = (g.hw - 0.02) - xp - (y - g.lung_top - 0.15) * 0.45
    lvl = np.minimum(np.minimum(med, lat), np.minimum(y - g.lung_top + 0.02, g.lung_top + 0.72 - y))
    return 0.12 * _soft(lvl, 0.03) + 0.1 * _soft(np.minimum(0.014 - np.abs(lat), lvl + 0.014), g.edge)


def _f_scap_box(g):
    return g.cx0 - g.hw - 0.05, g.cx0 + g.hw + 0.05, g.lung_top - 0.05, g.lung_top + 0.75


def _f_breasts(x, y, g):
    """Breast shadows over the lower lung zones (female patients)."""
    xp = np.abs(x - g.cx0)
    q = ((xp - 0.5 * g.lung_w) * (1 / 0.4)) ** 2 + ((y - g.dome[0] + 0.3) * (1 / 0.3)) ** 2
    return 0.2 * _soft((1.0 - q) * 0.12, 2 * g.edge) * _smooth((y - g.dome[0] + 0.6) * 3.0)


def _f_breasts_box(g):
    return g.cx0 - 0.95, g.cx0 + 0.95, g.dome[0] - 0.62, g.dome[0] + 0.02


def _frontal_layers(g):
    out = [(_f_medi, _f_medi_box(g)), (_f_heart, _f_heart_box(g)),
           (_f_aorta, _f_aorta_box(g)), (_f_hila, _f_hila_box(g)), (_f_spine, _f_spine_box(g)),
           (_f_ribs, _f_ribs_box(g)), (_f_clav, _f_clav_box(g))]
    out += [(_f_airway, box) for box in _f_airway_boxes(g)]
    if g.view == "AP":
        out.append((_f_scap, _f_scap_box(g)))
    out += [(lambda x, y, g, s=s: _f_lung(x, y, g, s)[0], _f_lung_box(g, s)) for s in (-1, 1)]
    if g.breasts:
        out.append((_f_breasts, _f_breasts_box(g)))
    return out


_F_ZONES = {  # (fraction of lung width from the midline, fraction of the way apex -> dome top)
    "apex": (0.38, 0.07), "upper": (0.52, 0.27), "middle": (0.6, 0.56), "lower": (0.56, 0.82),
    "base": (0.6, 0.95), "hilar": (0.31, 0.5), "perihilar": (0.4, 0.5), "retrocardiac": (0.24, 0.88),
    "lingula": (0.46, 0.74), "diffuse": (0.55, 0.55), "costophrenic": (0.9, 1.0), "chest_wall": (0.9, 0.5),
}


def _f_zone(g, s, zone, u):
    """Point (x, y) of a lung zone on side s, jittered by u[0], u[1]."""
    fx, fy = _F_ZONES.get(zone, (0.5, 0.5))
    i = (max(s, -1) + 1) // 2
    y = g.lung_top + (fy + 0.07 * (u[1] - 0.5)) * (g.dome[i] - g.dome_h - g.lung_top)
    xp = (fx + 0.1 * (u[0] - 0.5)) * g.lung_w
    return g.cx0 + (s or 1) * xp, y


def _f_sulcus(x, y, g, s):
    """(fraction of the way to the costophrenic sulcus, y of the sulcus) for effusions."""
    xp = (x - g.cx0) * s
    return _clip(xp * (1.0 / g.lung_w), 0.0, 1.0), g.dome[(s + 1) // 2]


def _f_heart_bigger(g, ctr):
    """Geometry with the heart widened to cardiothoracic ratio ``ctr``, mostly to the left."""
    _, hy, ha, hb = g.heart
    ap = 1.13 if g.view == "AP" else 1.0
    ha2 = max(ctr, ha / (ap * g.lung_w) + 0.06) * g.lung_w * ap
    hb2 = hb * (1 + 0.4 * (ha2 / ha - 1))
    return replace(g, heart=(ha2 / 3.0 + 0.04, hy + hb - hb2, ha2, hb2))


def _f_abs(g, xr, y):
    return g.mid(y) + xr, y


FRONTAL = SimpleNamespace(
    body=_f_body, layers=_frontal_layers,
    lung=_f_lung, lung_level=lambda x, y, g, s: _f_lung_level(x, y, g, s)[0], lung_box=_f_lung_box,
    levels=lambda x, y, g, s: _f_lung_level(x, y, g, s)[::2], marks=_f_marks, bubble=_f_bubble,
    heart=_f_heart, heart_alpha=lambda x, y, g: _f_heart_alpha(x, y, g)[0], heart_box=_f_heart_box,
    heart_bigger=_f_heart_bigger, medi=_f_medi, medi_box=_f_medi_box, aorta=_f_aorta, aorta_box=_f_aorta_box,
    hila=_f_hila, hila_box=_f_hila_box, spine=_f_spine, spine_box=_f_spine_box, zone=_f_zone,
    sulcus=_f_sulcus,
    knob=lambda g: (*_f_abs(g, g.knob[0], g.knob[1]), g.knob[2]),
    hilum=lambda g, s: _f_abs(g, s * g.hila[0], g.hila[1 + (s > 0)]),
    hernia=lambda g: _f_abs(g, 0.05, g.dome[1] - g.dome_h - 0.02),
    paratracheal=lambda g: _f_abs(g, -0.06, g.carina - 0.08),
)


# ------------------------------------------------------------------------------------------
# Lateral layers (x: anterior = image left, posterior = image right; absolute coordinates)
# ------------------------------------------------------------------------------------------

def _l_body_level(x, y, g):
    """Lateral body outline: (level, front, back)."""
    up = 1.0 - _smooth((y + 1.15) * 2.0)
    front = g.neck + 0.28 * up - 0.04 * _smooth(y - 0.3)
    back = g.hw - 0.22 * up - 0.05 * y * y
    return np.minimum(x - front, back - x), front, back


def _l_body(x, y, g):
    """(density, level) of the lateral soft tissue."""
    lvl, front, back = _l_body_level(x, y, g)
    t = _clip(1.0 - ((x - 0.5 * (front + back)) * (2.0 / (back - front))) ** 2, 0.0, 1.0)
    return _soft(lvl, g.edge) * (0.75 + 0.85 * np.sqrt(t)), lvl


def _l_lung_level(x, y, g, s):
    """(level, wall level) of one lung on the lateral view (both lungs overlap)."""
    yd, top, hd = g.dome[(s + 1) // 2], g.lung_top, g.dome_h
    up = 1.0 - _smooth((y - top) * 2.5)
    ant = g.neck + 0.07 + 0.25 * up
    post = g.lung_w - 0.12 * up - 0.05 * y * y
    apex = y - top - 1.5 * (x - 0.08) ** 2
    dome = (yd - hd) + hd * ((x + 0.12) * (1.0 / 0.62)) ** 2 - y
    wall = np.minimum(apex, np.minimum(x - ant, post - x))
    return np.minimum(wall, dome), wall


def _l_marks(x, y, g, s):
    return _marks(x, y, g, s, lambda xx: np.abs(xx - g.hila[0]) + g.hila[0])


def _l_lung(x, y, g, s):
    """(density, level, wall level) of one lung on the lateral view: half the air of the beam,
    its vessels, the gastric bubble."""
    lvl, wall = _l_lung_level(x, y, g, s)
    soft = _soft(lvl, g.edge)
    depth = _clip(wall * (1.0 / 0.14), 0.0, 1.0) * 0.35 + 0.65
    d = 0.5 * soft * (_l_marks(x, y, g, s) * g.marks - depth * g.air)
    if s > 0:
        bx, by, rx, ry = _l_bubble(g)
        q = ((x - bx) * (1 / rx)) ** 2 + ((y - by) * (1 / ry)) ** 2
        d = d - 0.5 * g.air * _soft(np.minimum((1.0 - q) * 0.03, -lvl - 0.015), g.edge)
    return d, lvl, wall


def _l_bubble(g):
    return -0.2, g.dome[1] - g.dome_h * 0.8 + 0.09, 0.1, 0.055


def _l_lung_box(g, s):
    return g.neck - 0.02, g.lung_w + 0.03, g.lung_top - 0.03, g.dome[(s + 1) // 2] + 0.25


def _l_heart_alpha(x, y, g):
    """Heart on the lateral view: a tilted ellipse, anterior-inferior, sitting on the dome."""
    hx, hy, ha, hb = g.heart
    dx, dy = x - hx, y - hy
    u = (dx * 0.87 - dy * 0.5) * (1.0 / ha)
    v = (dy * 0.87 + dx * 0.5) * (1.0 / hb)
    q = u * u + v * v
    dome = (g.dome[0] - g.dome_h) + g.dome_h * ((x + 0.12) * (1.0 / 0.62)) ** 2 + 0.02
    return _soft(np.minimum((1.0 - q) * (0.5 * min(ha, hb)), dome - y), g.edge), q


def _l_heart(x, y, g):
    a, q = _l_heart_alpha(x, y, g)
    return a * (0.5 + 0.2 * _clip(1.0 - q, 0.0, 1.0))


def _l_heart_box(g):
    hx, hy, ha, hb = g.heart
    r = max(ha, hb) * 1.15
    return hx - r, hx + r, hy - r, hy + r


def _l_vessel_path(g):
    """Ascending aorta, arch and descending aorta as a polyline."""
    hx, hy = g.heart[:2]
    kx, ky = g.knob[:2]
    return _bezier((hx + 0.12, hy - 0.12), (kx - 0.12, ky - 0.1), (kx + 0.22, ky - 0.12), (0.33, ky + 0.12), n=10) + \
        [(0.34 + g.tort, ky + 0.45), (0.36, g.dome[1])]


def _l_aorta(x, y, g):
    kr = g.knob[2]
    return 0.22 * _soft(kr - _poly_dist(x, y, _l_vessel_path(g), kr + 0.03), 0.03)


def _l_aorta_box(g):
    return _pts_box(_l_vessel_path(g), g.knob[2] + 0.05)


def _l_medi(x, y, g):
    """Lateral trachea (air) and, when widened, anterior mediastinal tissue."""
    t0, t1 = (-0.03, -1.05), (0.1, g.carina)
    air = _soft(0.028 - _seg_dist(x, y, t0, t1), g.edge)
    fill = 0.0
    if g.medi[0]:  # anterior mediastinal soft tissue filling the retrosternal space
        front = g.neck + 0.04
        fill = _soft(np.minimum(g.medi[0] - (x - front), x - front), 0.03) * _soft(y + 0.55, 0.05) * \
            _soft(g.heart[1] - g.heart[3] * 0.5 - y, 0.06)
    return 0.45 * fill - 0.28 * air


def _l_medi_box(g):
    return g.neck - 0.05, 0.2, -1.05, g.heart[1] + 0.05


def _l_hila(x, y, g):
    hx, hyr, hyl, hr = g.hila
    q = ((x - hx) * (1.0 / hr)) ** 2 + ((y - 0.5 * (hyr + hyl)) * (1.0 / (1.3 * hr))) ** 2
    return 0.3 * _clip(1.0 - q, 0.0, 1.0) ** 0.5


def _l_hila_box(g):
    hx, hyr, hyl, hr = g.hila
    return hx - hr - 0.02, hx + hr + 0.02, min(hyr, hyl) - 1.4 * hr, max(hyr, hyl) + 1.4 * hr


def _l_spine_x(y, g):
    return g.hw - 0.21 - 0.05 * (1.0 - y * y)


def _l_spine(x, y, g):
    """Lateral spine: vertebral bodies, discs, posterior elements."""
    xs = x - _l_spine_x(y, g)
    d = 2.2 * _vertebrae(xs, y, g, lateral=True)
    post = _soft(np.minimum(xs - g.spine[0] - 0.01, g.spine[0] + 0.13 - xs), 0.04)  # posterior elements
    return d + 0.12 * post


def _l_spine_box(g):
    return g.hw - 0.38, g.hw + 0.05, -1.05, 1.05


def _l_bones(x, y, g):
    """Lateral sternum and faint posterior ribs."""
    front = g.neck + 0.04 * _smooth(y - 0.3)
    st = _soft(np.minimum(np.minimum(0.032 - np.abs(x - front - 0.03), y + 0.62), 0.18 - y), g.edge)
    xp = x - 0.2
    p = (y - g.rib[0] - 0.35 * xp) * (1.0 / g.rib[1])
    t = p - np.floor(p)
    ribs = _soft(np.minimum(t, 0.3 - t) * g.rib[1], g.edge) * (p > 0) * (p < 9) * _soft(xp, 0.1) * \
        _soft(g.lung_w + 0.02 - x, 0.03)
    return 0.35 * st + 0.1 * ribs


def _l_bones_box(g):
    return g.neck - 0.05, g.hw, -0.8, 1.0


def _lateral_layers(g):
    out = [(_l_heart, _l_heart_box(g)), (_l_aorta, _l_aorta_box(g)),
           (_l_medi, _l_medi_box(g)), (_l_hila, _l_hila_box(g)), (_l_spine, _l_spine_box(g)),
           (_l_bones, _l_bones_box(g))]
    return out + [(lambda x, y, g, s=s: _l_lung(x, y, g, s)[0], _l_lung_box(g, s)) for s in (-1, 1)]


_L_ZONES = {  # absolute (x, fraction apex -> dome top)
    "apex": (0.08, 0.08), "upper": (0.16, 0.3), "middle": (-0.28, 0.72), "lower": (0.32, 0.78),
    "base": (0.3, 0.95), "hilar": (0.06, 0.52), "perihilar": (0.0, 0.52), "retrocardiac": (0.25, 0.85),
    "lingula": (-0.3, 0.65), "diffuse": (0.1, 0.55), "costophrenic": (0.48, 1.05), "chest_wall": (0.45, 0.45),
}


def _l_zone(g, s, zone, u):
    """Point of a lung zone on the lateral view."""
    fx, fy = _L_ZONES.get(zone, (0.1, 0.5))
    y = g.lung_top + (fy + 0.07 * (u[1] - 0.5)) * (g.dome[(max(s, -1) + 1) // 2] - g.dome_h - g.lung_top)
    return fx + 0.08 * (u[0] - 0.5) + 0.02 * s, y


def _l_sulcus(x, y, g, s):
    """(fraction of the way to the posterior sulcus, y of the sulcus) for effusions."""
    return _clip((x + 0.3) * (1.0 / (g.lung_w + 0.3)), 0.0, 1.0), g.dome[(s + 1) // 2] + 0.08


def _l_heart_bigger(g, ctr):
    """Geometry with the lateral heart scaled up for cardiomegaly."""
    hx, hy, ha, hb = g.heart
    k = max(ctr * 0.721 / ha, 1.15)
    return replace(g, heart=(hx + 0.5 * ha * (k - 1), hy + 0.2 * hb * (k - 1), ha * k, hb * (1 + 0.5 * (k - 1))))


LATERAL = SimpleNamespace(
    body=_l_body, layers=_lateral_layers,
    lung=_l_lung, lung_level=lambda x, y, g, s: _l_lung_level(x, y, g, s)[0], lung_box=_l_lung_box,
    levels=_l_lung_level, marks=_l_marks, bubble=_l_bubble, heart=_l_heart,
    heart_alpha=lambda x, y, g: _l_heart_alpha(x, y, g)[0], heart_box=_l_heart_box,
    heart_bigger=_l_heart_bigger, medi=_l_medi, medi_box=_l_medi_box, aorta=_l_aorta, aorta_box=_l_aorta_box,
    hila=_l_hila, hila_box=_l_hila_box, spine=_l_spine, spine_box=_l_spine_box, zone=_l_zone,
    sulcus=_l_sulcus, knob=lambda g: (g.knob[0] + 0.02, g.knob[1] - 0.12, g.knob[2]),
    hilum=lambda g, s: (g.hila[0] + 0.02 * s, g.hila[1 + (s > 0)]),
    hernia=lambda g: (0.2, g.dome[1] - g.dome_h * 0.9 - 0.03),
    paratracheal=lambda g: (0.02, g.carina - 0.1),
)


# ------------------------------------------------------------------------------------------
# Render context
# ------------------------------------------------------------------------------------------

@dataclass
class _Ctx:
    g: _Geom
    V: SimpleNamespace
    x: np.ndarray       # (W,) anatomy x of each column
    y: np.ndarray       # (H,) anatomy y of each row
    size: int
    a: float            # pixel index = (coord * a + b)
    bx: float
    by: float
    seed: int
    tone: tuple = ()
    cur: tuple = ()     # (rows, cols) of the crop being drawn

    def tex(self, arr, u0, u1):
        """Crop of a (2 size, 2 size) texture bank at an anatomy-fixed offset (u0, u1 in [0, 1))."""
        (rs, cs), oy, ox = self.cur, int(u0 * self.size), int(u1 * self.size)
        return arr[oy + rs.start: oy + rs.stop, ox + cs.start: ox + cs.stop]

    def crop(self, x0, x1, y0, y1):
        """Slices and crop coordinates (1, w), (h, 1) of the box [x0, x1] x [y0, y1], or None."""
        n = self.size
        c0, c1 = max(0, math.ceil(x0 * self.a + self.bx)), min(n, math.floor(x1 * self.a + self.bx) + 1)
        r0, r1 = max(0, math.ceil(y0 * self.a + self.by)), min(n, math.floor(y1 * self.a + self.by) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1), self.x[None, c0:c1], self.y[r0:r1, None]

    def patch(self, box, fn):
        """Patch from ``fn(x, y) -> (delta, mask_or_None)`` evaluated on the crop of ``box``."""
        c = self.crop(*box)
        if c is None:
            return []
        rs, cs, xc, yc = c
        self.cur = (rs, cs)
        delta, mask = fn(xc, yc)
        return [(rs, cs, delta, mask)]

    def replace_layer(self, layer, g2, box, mask_fn=None):
        """Patch ``layer(g2) - layer(g)`` on ``box`` (an anatomy change)."""
        def fn(xc, yc):
            return layer(xc, yc, g2) - layer(xc, yc, self.g), (mask_fn(xc, yc) if mask_fn else None)
        return self.patch(box, fn)


def _context(seed: int, view: str, size: int, acquisition: int) -> _Ctx:
    a = Anatomy.sample(seed)
    g = _lateral_geom(a, size) if view == "LATERAL" else _frontal_geom(a, view, size)
    r = _uniforms(8, seed, acquisition, 0xACC)
    gain, bright, noise_k = 0.94 + 0.12 * r[0], -0.02 + 0.04 * r[1], 0.8 + 0.4 * r[2]
    dx, dy, mag = 0.05 * (r[3] - 0.5), 0.05 * (r[4] - 0.5), 0.97 + 0.06 * r[5]
    grid = ((np.arange(size) + 0.5) * (2.0 / size) - 1.0)
    x = ((grid - dx) / mag).astype(F32)
    y = ((grid - dy) / mag).astype(F32)
    sc = size / 2.0
    ctx = _Ctx(g=g, V=LATERAL if view == "LATERAL" else FRONTAL, x=x, y=y, size=size, a=mag * sc,
               bx=(dx + 1.0) * sc - 0.5, by=(dy + 1.0) * sc - 0.5, seed=seed)
    ap = view == "AP"
    ctx.tone = (0.92 * a.exposure * gain, a.brightness + bright, a.noise * noise_k * (1.25 if ap else 1.0),
                int(r[6] * size), int(r[7] * size))
    return ctx


# ------------------------------------------------------------------------------------------
# Findings: one function per kind, each returning patches (rows, cols, delta, mask | None)
# ------------------------------------------------------------------------------------------

def _sev(f: Finding) -> int:
    return SEVERITIES.index(f.severity)


def _sides(f: Finding):
    return _SIDE[f.side]


def _lung_alpha(ctx, xc, yc, s):
    """Where the lung on side s (both if 0) is, as a weight for parenchymal findings. On the
    lateral view each lung is half of the air in the beam, so its findings weigh 0.6."""
    gain = 0.6 if ctx.g.view == "LATERAL" else 1.0
    if s != 0:
        return _soft(ctx.V.lung_level(xc, yc, ctx.g, s), ctx.g.edge) * gain
    both = sum(_soft(ctx.V.lung_level(xc, yc, ctx.g, t), ctx.g.edge) for t in (-1, 1))
    return np.minimum(both, 1.0) * gain


def _blob_patches(ctx, f, u, radius, draw, shape=(1.0, 0.85)):
    """One patch per side around the zone point: ``draw(xc, yc, dx, dy, q, lung)`` where q is
    the squared elliptic radius (1 at the blob's edge) and lung the lung's alpha."""
    out = []
    for k, s in enumerate(_sides(f)):
        px, py = ctx.V.zone(ctx.g, s, f.zone, u[2 * k: 2 * k + 2])
        rx, ry = radius * shape[0], radius * shape[1]

        def fn(xc, yc, px=px, py=py, s=s, rx=rx, ry=ry):
            dx, dy = xc - px, yc - py
            q = (dx * (1.0 / rx)) ** 2 + (dy * (1.0 / ry)) ** 2
            return draw(xc, yc, dx, dy, q, _lung_alpha(ctx, xc, yc, s)), None
        out += ctx.patch((px - rx * 1.3, px + rx * 1.3, py - ry * 1.3, py + ry * 1.3), fn)
    return out


def _opacity(density, patchy, edge_noise, soft, bronchograms):
    """Airspace opacity: an ellipse whose edge is perturbed by smooth noise (``edge_noise``)
    and blurred (``soft``), filled with ``patchy`` texture and optionally air bronchograms
    (the bronchial tree left dark inside the dense core)."""
    def finding(ctx, f, u):
        sev, g = _sev(f), ctx.g
        b = _bank(ctx.size)

        def draw(xc, yc, dx, dy, q, lung):
            blob = ctx.tex(b.blob, u[8], u[9])
            env = _clip((1.0 - q + edge_noise * blob) * (1.0 / soft), 0.0, 1.0)
            dens = env * _clip(1.0 - patchy + patchy * (0.5 + 0.6 * blob), 0.0, 1.0)
            if bronchograms:
                tree = np.zeros_like(dens)
                for t in ((-1, 1) if f.side == "bilateral" else _sides(f)):
                    tree = np.maximum(tree, ctx.V.marks(xc, yc, g, t))
                dens = dens * (1.0 - 0.6 * tree * _clip((env - 0.7) * 4.0, 0.0, 1.0))
            return density[sev] * g.air * dens * lung
        return _blob_patches(ctx, f, u, (0.11, 0.16, 0.23)[sev], draw)
    return finding


def _airspace(ctx, f, u):
    """Airspace opacity: patchy (noisy blotches) or streaky (parallel oblique streaks)."""
    if f.variant != "streaky":
        return _opacity((0.45, 0.55, 0.65), 0.8, 0.5, 0.6, False)(ctx, f, u)
    sev, ang = _sev(f), 0.6 + 0.5 * u[12]

    def draw(xc, yc, dx, dy, q, lung):
        ph = (dx * math.cos(ang) + dy * math.sin(ang)) * (1.0 / 0.035)
        streak = _clip(1.0 - np.abs(ph - np.floor(ph) - 0.5) * 4.0, 0.0, 1.0)
        return (0.45 + 0.1 * sev) * ctx.g.air * streak * _clip((1.0 - q) * 3.0, 0.0, 1.0) * lung
    return _blob_patches(ctx, f, u, (0.1, 0.14, 0.2)[sev], draw)


def _atelectasis(ctx, f, u):
    """Plate atelectasis: a thin tapered band; lobar: a dense wedge pointing at the hilum."""
    sev, g = _sev(f), ctx.g
    if f.variant == "lobar":
        ang0 = {"upper": -1.0, "middle": 0.25, "lower": 1.0, "base": 1.15, "lingula": 0.45,
                "retrocardiac": 1.5}[f.zone]
        half = (0.28, 0.38, 0.5)[sev]
        out = []
        for s in _sides(f):
            hx, hy = ctx.V.hilum(g, s)
            sx = s if g.view != "LATERAL" else (1 if f.zone in ("upper", "lower", "base", "retrocardiac") else -1)

            def fn(xc, yc, hx=hx, hy=hy, s=s, sx=sx):
                dx, dy = (xc - hx) * sx, yc - hy
                ang = np.arctan2(dy, dx)
                r = np.sqrt(dx * dx + dy * dy)
                wedge = _soft(np.minimum((half - np.abs(ang - ang0)) * r, r - 0.04), g.edge)
                return 0.75 * g.air * wedge * _lung_alpha(ctx, xc, yc, s), None
            out += ctx.patch((hx - 0.9, hx + 0.9, hy - 0.9, hy + 0.9), fn)
        return out
    length, thick = (0.14, 0.2, 0.28)[sev], (0.011, 0.016, 0.024)[sev]
    ang = (u[12] - 0.5) * 0.35
    out = []
    for k, s in enumerate(_sides(f)):
        px, py = ctx.V.zone(g, s, f.zone, u[2 * k: 2 * k + 2])
        p = (px - 0.5 * length * math.cos(ang), py - 0.5 * length * math.sin(ang))
        q = (px + 0.5 * length * math.cos(ang), py + 0.5 * length * math.sin(ang))

        def fn(xc, yc, p=p, q=q, s=s, px=px):
            taper = 1.0 - ((xc - px) * (2.0 / length)) ** 2
            band = _soft(thick * taper - _seg_dist(xc, yc, p, q), g.edge)
            return 0.55 * g.air * band * _lung_alpha(ctx, xc, yc, s), None
        out += ctx.patch(_pts_box([p, q], thick + 0.03), fn)
    return out


def _edema(ctx, f, u):
    """Bat-wing perihilar haze (or diffuse haze) + Kerley-B lines at the lung bases."""
    sev, g = _sev(f), ctx.g
    r = (0.26, 0.34, 0.44)[sev] * (1.5 if f.zone == "diffuse" else 1.0)
    out = []
    for s in (-1, 1):
        hx, hy = ctx.V.hilum(g, s)
        cx = hx + (0.12 * s if g.view != "LATERAL" else 0.0)

        def fn(xc, yc, cx=cx, hy=hy, s=s):
            q = ((xc - cx) * (1.0 / r)) ** 2 + ((yc - hy - 0.04) * (1.0 / (1.1 * r))) ** 2
            lvl, wall = ctx.V.levels(xc, yc, g, s)
            haze = _clip(1.0 - q, 0.0, 1.0) ** 0.7 * (0.28 + 0.1 * sev)
            kb = _clip(1.0 - np.abs((yc * (1.0 / 0.04)) % 1.0 - 0.5) * 8.0, 0.0, 1.0) * \
                _soft(0.055 - wall, 0.01) * _soft(yc - (hy + 0.12), 0.02)
            gain = 0.6 if g.view == "LATERAL" else 1.0
            return (gain * g.air) * _soft(lvl, g.edge) * (haze + (0.3 + 0.1 * sev) * kb), None
        out += ctx.patch(ctx.V.lung_box(g, s), fn)
    return out


def _congestion(ctx, f, u):
    """Vascular congestion: enlarged hila and upper-lobe diversion (upper vessels denser)."""
    sev, g = _sev(f), ctx.g
    hx, hyr, hyl, hr = g.hila
    out = ctx.replace_layer(ctx.V.hila, replace(g, hila=(hx, hyr, hyl, hr * (1.25, 1.4, 1.6)[sev])),
                            ctx.V.hila_box(replace(g, hila=(hx, hyr, hyl, hr * 1.7))))
    for s in (-1, 1):
        hy = ctx.V.hilum(g, s)[1]

        def fn(xc, yc, s=s, hy=hy):
            upper = _lung_alpha(ctx, xc, yc, s) * _soft(hy - yc, 0.15)
            return upper * ctx.V.marks(xc, yc, g, s) * (g.marks * (0.6 + 0.4 * sev)), upper > 0.05
        out += ctx.patch(ctx.V.lung_box(g, s)[:3] + (hy + 0.1,), fn)
    return out


def _interstitial(ctx, f, u):
    """Reticular lines (zero crossings of band-pass noise) over the zone; mask = the zone."""
    sev, g = _sev(f), ctx.g
    b = _bank(ctx.size)
    ym = 0.5 * (g.lung_top + g.dome[0] - g.dome_h)
    out = []
    for s in _sides(f):
        def fn(xc, yc, s=s):
            lung = _lung_alpha(ctx, xc, yc, s)
            if f.zone != "diffuse":
                lung = lung * _soft((yc - ym) if f.zone == "base" else (ym - yc), 0.1)
            net = _clip(1.0 - np.abs(ctx.tex(b.fine, u[8], u[9])) * (4.5 - sev), 0.0, 1.0)
            return (0.24 + 0.08 * sev) * g.air * net * lung, lung > 0.05
        out += ctx.patch(ctx.V.lung_box(g, s), fn)
    return out


def _scarring(ctx, f, u):
    """Scarring: one to three short irregular linear strands."""
    sev, g = _sev(f), ctx.g
    out = []
    for k, s in enumerate(_sides(f)):
        px, py = ctx.V.zone(g, s, f.zone, u[2 * k: 2 * k + 2])
        strands = []
        for j in range(1 + sev):
            a = (u[12 + j] - 0.5) * 2.0 + (0.0 if f.zone != "apex" else -1.0)
            L = 0.06 + 0.04 * u[16 + j]
            p0 = (px + 0.03 * (u[20 + j] - 0.5), py + 0.05 * (j - sev / 2))
            strands.append([p0, (p0[0] + L * math.cos(a), p0[1] + L * math.sin(a)),
                            (p0[0] + 1.8 * L * math.cos(a + 0.4), p0[1] + 1.8 * L * math.sin(a + 0.4))])

        def fn(xc, yc, s=s, strands=strands):
            d = _poly_dist(xc, yc, strands[0], 0.02)
            for st in strands[1:]:
                d = np.minimum(d, _poly_dist(xc, yc, st, 0.02))
            return 0.65 * g.air * _soft(0.006 - d, g.edge) * _lung_alpha(ctx, xc, yc, s), None
        out += ctx.patch(_pts_box([p for st in strands for p in st], 0.03), fn)
    return out


def _round_lesions(ctx, f, centres, radius, density, lobes=()):
    """Spheres (a lobulated union if ``lobes`` gives extra (dx, dy, r) circles), inside the body."""
    g = ctx.g
    out = []
    for (cx, cy) in centres:
        rr = radius + max([abs(o[0]) + o[2] for o in lobes], default=0.0)

        def fn(xc, yc, cx=cx, cy=cy):
            dx, dy = xc - cx, yc - cy
            r2 = (dx * dx + dy * dy) * (1.0 / radius ** 2)
            lvl = radius * (1.0 - r2) * 0.5
            for ox, oy, orr in lobes:
                lvl = np.maximum(lvl, orr * (1.0 - ((dx - ox) ** 2 + (dy - oy) ** 2) * (1.0 / orr ** 2)) * 0.5)
            a = _soft(lvl, max(3.0 / ctx.size, min(g.edge, 0.5 * radius)))
            return density * a * (0.6 + 0.4 * _clip(lvl * (2.0 / radius), 0.0, 1.0)), None
        out += ctx.patch((cx - rr - 0.03, cx + rr + 0.03, cy - rr - 0.03, cy + rr + 0.03), fn)
    return out


def _nodule(ctx, f, u):
    """Nodule: a sphere 6 / 10 / 15 mm across."""
    p = ctx.V.zone(ctx.g, _sides(f)[0], f.zone, u)
    return _round_lesions(ctx, f, [p], (6, 10, 15)[_sev(f)] * _MM / 2, 0.9 * ctx.g.air)


def _mass(ctx, f, u):
    """Mass: a lobulated sphere 35 / 50 / 70 mm across."""
    p = ctx.V.zone(ctx.g, _sides(f)[0], f.zone, u)
    R = (35, 50, 70)[_sev(f)] * _MM / 2
    lobes = [(R * 0.45 * math.cos(6.28 * u[12 + j]), R * 0.45 * math.sin(6.28 * u[12 + j]), R * 0.6) for j in range(3)]
    return _round_lesions(ctx, f, [p], R * 0.85, 0.95 * ctx.g.air, lobes)


def _granuloma(ctx, f, u):
    """Granuloma: a small sphere, very bright when calcified."""
    p = ctx.V.zone(ctx.g, _sides(f)[0], f.zone, u)
    calc = f.variant == "calcified"
    return _round_lesions(ctx, f, [p], ((3, 5, 7) if calc else (5, 7, 9))[_sev(f)] * _MM / 2,
                          2.2 if calc else 0.85 * ctx.g.air)


def _bubble_sweep(ctx, xc, yc, g2):
    """Region swept by the gastric bubble moving from its place in g to its place in g2."""
    bx, by, rx, ry = ctx.V.bubble(ctx.g)
    by2 = ctx.V.bubble(g2)[1]
    dy = np.maximum(np.maximum(yc - max(by, by2), min(by, by2) - yc), 0.0)
    return ((xc - bx) * (1.0 / rx)) ** 2 + (dy * (1.0 / ry)) ** 2 < 1.3


def _lung_change(ctx, g2, extra=None, sides=(-1, 1)):
    """Patches ``lung(g2) - lung(g)`` (+ optional ``extra(xc, yc, s)``); the mask is the lungs'
    outlines before and after, and the path of the gastric bubble."""
    out = []
    for s in sides:
        b1, b2 = ctx.V.lung_box(ctx.g, s), ctx.V.lung_box(g2, s)
        box = (min(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), max(b1[3], b2[3]))

        def fn(xc, yc, s=s):
            new, lvl2 = ctx.V.lung(xc, yc, g2, s)[:2]
            old, lvl = ctx.V.lung(xc, yc, ctx.g, s)[:2]
            d = new - old
            if extra is not None:
                d = d + extra(xc, yc, s, lvl2)
            mask = np.maximum(lvl, lvl2) > -0.5 * ctx.g.edge
            return d, (mask | _bubble_sweep(ctx, xc, yc, g2)) if s > 0 else mask
        out += ctx.patch(box, fn)
    return out


def _hyperinflation(ctx, f, u):
    """Hyperinflation: taller lungs, low flat domes, hyperlucency; emphysema adds bullae."""
    sev, g = _sev(f), ctx.g
    low = (0.06, 0.1, 0.14)[sev]
    g2 = replace(g, dome=(g.dome[0] + low, g.dome[1] + low), dome_h=g.dome_h * (0.6, 0.4, 0.2)[sev],
                 air=g.air * (1.08, 1.14, 1.2)[sev], lung_top=g.lung_top - 0.02 * sev,
                 marks=g.marks * (0.8 if f.variant == "hyperinflation" else 0.55))
    if f.variant != "emphysema":
        return _lung_change(ctx, g2)
    bullae = [(0.25 + 0.45 * u[12 + j], 0.1 + 0.25 * u[16 + j], 0.04 + 0.03 * u[20 + j]) for j in range(3)]

    def extra(xc, yc, s, lvl):
        xb = (xc - g.cx0) * s if g.view != "LATERAL" else xc
        d = 0.0
        for bx, by, br in bullae:
            yb = g2.lung_top + by * (g2.dome[0] - g2.lung_top)
            bxx = bx * g.lung_w if g.view != "LATERAL" else bx - 0.3
            d = d - 0.25 * g.air * _soft(br - np.sqrt((xb - bxx) ** 2 + (yc - yb) ** 2), g.edge)
        return d * _soft(lvl - 0.01, g.edge)
    return _lung_change(ctx, g2, extra)


def _hypoinflation(ctx, f, u):
    """Low lung volumes: domes raised, vessel markings crowded."""
    sev, g = _sev(f), ctx.g
    up = (0.07, 0.11, 0.15)[sev]
    g2 = replace(g, dome=(g.dome[0] - up, g.dome[1] - up), marks=g.marks * (1.2 + 0.1 * sev),
                 mark_s=(g.mark_s[0], g.mark_s[1] * (1 - up / 1.2)), air=g.air * 0.94)
    return _lung_change(ctx, g2)


def _elevated_hemidiaphragm(ctx, f, u):
    """One dome raised (the gastric bubble follows the left one)."""
    g, s = ctx.g, _sides(f)[0]
    i = (s + 1) // 2
    dome = list(g.dome)
    dome[i] -= (0.07, 0.11, 0.16)[_sev(f)]
    g2 = replace(g, dome=tuple(dome))

    def fn(xc, yc):
        d = ctx.V.lung(xc, yc, g2, s)[0] - ctx.V.lung(xc, yc, g, s)[0]
        return d, _bubble_sweep(ctx, xc, yc, g2) if s > 0 else None
    return ctx.patch(ctx.V.lung_box(g, s), fn)


def _effusion(ctx, f, u):
    """Pleural effusion: fluid filling the lung base up to a meniscus rising laterally."""
    sev, g = _sev(f), ctx.g
    H, M = (0.01, 0.14, 0.34)[sev], (0.1, 0.16, 0.22)[sev]
    out = []
    for s in _sides(f):
        x0, x1, y0, y1 = ctx.V.lung_box(g, s)

        def fn(xc, yc, s=s):
            frac, ycp = ctx.V.sulcus(xc, yc, g, s)
            ye = ycp - 0.06 - H - M * frac * frac
            base, lvl = ctx.V.lung(xc, yc, g, s)[:2]
            a = _soft(yc - ye, 0.03) * _soft(lvl, g.edge)
            return a * (0.05 * g.air - np.minimum(base, 0.0)), None
        out += ctx.patch((x0, x1, max(y0, g.dome[0] - 0.3 - H - M - 0.1 - g.dome_h), y1), fn)
    return out


def _pneumothorax(ctx, f, u):
    """Pneumothorax: the lung shrunk towards its base; the gap is hyperlucent, without markings,
    bounded by a thin visceral pleural line."""
    g = ctx.g
    if g.view == "LATERAL":
        return []
    sev, s = _sev(f), _sides(f)[0]
    k = (0.93, 0.82, 0.66)[sev]
    ax, ay = s * 0.14, g.dome[(s + 1) // 2] - g.dome_h - 0.05  # collapse towards the hilum/base

    def fn(xc, yc):
        xr = xc - g.cx0
        lv = ctx.V.lung_level(xc, yc, g, s)
        xs = g.cx0 + ax + (xr - ax) * (1.0 / k)
        ys = ay + (yc - ay) * (1.0 / k)
        lc = ctx.V.lung_level(xs, ys, g, s) * k
        space = _soft(lv, g.edge) * _soft(-lc, g.edge)
        marks = _soft(lv, g.edge) * ctx.V.marks(xc, yc, g, s) * g.marks
        line = _clip(1.0 - np.abs(lc) * (1.0 / max(0.004, 0.7 / ctx.size)), 0.0, 1.0) * _soft(lv - 0.005, g.edge)
        return -space * (marks + 0.18 * g.air) + 0.5 * line * (1.0 - space), None
    return ctx.patch(ctx.V.lung_box(g, s), fn)


def _pleural_thickening(ctx, f, u):
    """Pleural thickening: an apical cap or a band along the lateral chest wall."""
    sev, g = _sev(f), ctx.g
    t = (0.02, 0.032, 0.045)[sev]
    out = []
    for s in _sides(f):
        def fn(xc, yc, s=s):
            dens, lv = ctx.V.lung(xc, yc, g, s)[:2]
            if f.zone == "apex":
                where = _soft(g.lung_top + 0.17 - yc, 0.06)
            else:
                ym = 0.5 * (g.lung_top + g.dome[0])
                xp = (xc - g.cx0) * s if g.view != "LATERAL" else xc
                lateral = (xp > 0.45 * g.lung_w) if g.view != "LATERAL" else (xp > 0.2)
                where = _soft(0.2 - np.abs(yc - ym), 0.1) * lateral
            a = _soft(lv, g.edge) * _soft(t - lv, g.edge) * where
            return -a * np.minimum(dens, 0.0) * 0.95, None
        out += ctx.patch(ctx.V.lung_box(g, s), fn)
    return out


def _cardiomegaly(ctx, f, u):
    """Cardiomegaly: the heart widened to CTR 0.55 / 0.62 / 0.70; mask = the enlarged heart."""
    g = ctx.g
    g2 = ctx.V.heart_bigger(g, (0.55, 0.62, 0.7)[_sev(f)])
    b1, b2 = ctx.V.heart_box(g), ctx.V.heart_box(g2)
    box = (min(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), max(b1[3], b2[3]))
    return ctx.replace_layer(ctx.V.heart, g2, box, lambda xc, yc: ctx.V.heart_alpha(xc, yc, g2) > 0)


def _enlarged_cardiomediastinum(ctx, f, u):
    """Widened mediastinum (lateral: the retrosternal space filled)."""
    g, sev = ctx.g, _sev(f)
    if g.view == "LATERAL":
        g2 = replace(g, medi=((0.08, 0.12, 0.17)[sev], 0.0))
    else:
        k = (1.5, 1.8, 2.2)[sev]
        g2 = replace(g, medi=(g.medi[0] * k, g.medi[1] * k))
    return ctx.replace_layer(ctx.V.medi, g2, ctx.V.medi_box(g2))


def _tortuous_aorta(ctx, f, u):
    """Tortuous aorta: a bigger, more lateral knob and a wavy descending aorta."""
    g, sev = ctx.g, _sev(f)
    kx, ky, kr = g.knob
    g2 = replace(g, knob=(kx + 0.012 * (sev + 1), ky - 0.01 * sev, kr * (1.2, 1.35, 1.5)[sev]),
                 tort=(0.02, 0.03, 0.045)[sev])
    return ctx.replace_layer(ctx.V.aorta, g2, ctx.V.aorta_box(g2))


def _aortic_calcification(ctx, f, u):
    """Aortic calcification: a bright arc along the rim of the aortic knob."""
    g, sev = ctx.g, _sev(f)
    kx, ky, kr = ctx.V.knob(g)
    half = (0.9, 1.3, 1.8)[sev]
    c, sn = math.cos(-0.6), math.sin(-0.6)  # arc centred up-and-lateral

    def fn(xc, yc):
        dx, dy = xc - kx, yc - ky
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        arc = (dx * c + dy * sn) / r > math.cos(half)
        ring = _clip(1.0 - np.abs(r - 0.88 * kr) * (1.0 / max(0.007, 1.2 / ctx.size)), 0.0, 1.0)
        return 1.6 * ring * arc, None
    return ctx.patch((kx - kr - 0.03, kx + kr + 0.03, ky - kr - 0.03, ky + kr + 0.03), fn)


def _calcified_nodes(ctx, f, u):
    """Calcified lymph nodes: 2 / 3 / 5 bright dots at the hilum (or right paratracheal)."""
    g, sev = ctx.g, _sev(f)
    n = (2, 3, 5)[sev]
    out = []
    for k, s in enumerate(_sides(f)):
        cx, cy = ctx.V.paratracheal(g) if f.zone == "mediastinal" else ctx.V.hilum(g, s)
        pts = [(cx + 0.07 * (u[2 * j + 10 * k] - 0.5), cy + 0.1 * (u[2 * j + 1 + 10 * k] - 0.5)) for j in range(n)]
        out += _round_lesions(ctx, f, pts, (0.011, 0.013, 0.015)[sev], 2.0)
    return out


def _hiatal_hernia(ctx, f, u):
    """Hiatal hernia: a retrocardiac round density with an air cap over a fluid level."""
    g, sev = ctx.g, _sev(f)
    cx, cy = ctx.V.hernia(g)
    R = (0.06, 0.085, 0.11)[sev]
    cy = cy - R * 0.5

    def fn(xc, yc):
        dx, dy = xc - cx, yc - cy
        a = _soft(R - np.sqrt(dx * dx * 0.8 + dy * dy), g.edge)
        level = cy - 0.25 * R
        return a * np.where(yc < level, -0.45 * g.air, 0.35 * g.air), None
    return ctx.patch((cx - R * 1.2, cx + R * 1.2, cy - R - 0.02, cy + R + 0.02), fn)


def _rib_fracture(ctx, f, u):
    """Rib fracture of one posterolateral rib: acute = cortical gap + stepped fragment;
    healed = a fusiform callus."""
    g, sev = ctx.g, _sev(f)
    if g.view == "LATERAL":
        return []
    s = _sides(f)[0]
    k = {"upper": 2, "middle": 4, "lower": 6}[f.zone] + int(u[3] * 2)
    xf = (0.62 + 0.25 * u[4]) * g.lung_w
    y1, sp = g.rib
    ycen = y1 + xf * (xf * 0.75 - 0.3) + (k + 0.21) * sp
    healed = f.variant == "healed"
    step = (0.012, 0.02, 0.03)[sev]

    def fn(xc, yc):
        xp = np.abs(xc - g.cx0)
        old = _f_ribs(xc, yc, g, only=k)
        rel = xp - xf
        if healed:
            q = (rel * (1.0 / (0.03 + 0.01 * sev))) ** 2 + ((yc - ycen) * (1.0 / (0.55 * sp))) ** 2
            return 0.22 * _soft((1.0 - q) * 0.02, g.edge) * _soft(xp - 0.1, 0.01), None
        shift = step * _soft(rel, g.edge) * _soft(0.09 - rel, 0.04)
        gap = _soft(max(0.006, 1.2 / ctx.size) - np.abs(rel), 0.5 * g.edge)  # the cortical break
        new = _f_ribs(xc, yc - shift, g, only=k) * (1.0 - gap)
        return new - old, None
    xc0 = g.cx0 + s * xf
    return ctx.patch((xc0 - 0.1 - 0.14 * (s < 0), xc0 + 0.1 + 0.14 * (s > 0), ycen - sp, ycen + sp), fn)


def _degenerative_spine(ctx, f, u):
    """Degenerative spine: osteophytes and endplate sclerosis over 3 / 5 / 7 vertebrae."""
    g, sev = ctx.g, _sev(f)
    first = 3 + int(u[5] * 3)
    g2 = replace(g, degen=(sev + 1, first - sev, 3 + 2 * sev))
    return ctx.replace_layer(ctx.V.spine, g2, ctx.V.spine_box(g))


def _scoliosis(ctx, f, u):
    """Scoliosis: the thoracic spine bent, convex towards the named side."""
    g = ctx.g
    if g.view == "LATERAL":
        return []
    g2 = replace(g, scol=_sides(f)[0] * (0.045, 0.075, 0.11)[_sev(f)])
    return ctx.replace_layer(ctx.V.spine, g2, ctx.V.spine_box(g2))


# --- support devices: thin, very bright polylines and objects --------------------------------

def _lines(ctx, pts, half, density, extra=None):
    """Patch of a polyline ``pts`` of half-width ``half`` (plus an optional ``extra`` alpha)."""
    g = ctx.g
    w = max(g.edge * 0.6, 1.6 / ctx.size)

    def fn(xc, yc):
        a = _soft(half - _poly_dist(xc, yc, pts, half + w), w)
        if extra is not None:
            a = np.maximum(a, extra(xc, yc))
        return density * a, None
    return ctx.patch(_pts_box(pts, half + 0.03 + (0.12 if extra else 0.0)), fn)


def _device_paths(ctx, f, u):
    """Polyline of a catheter (central line) or of a pacemaker (generator first, then lead)."""
    g, lat = ctx.g, ctx.g.view == "LATERAL"
    s = _sides(f)[0]
    if lat:
        hx, hy, ha, hb = g.heart
        if f.kind == "central_line":
            return _bezier((g.neck + 0.2, g.clav_y + 0.05), (-0.05, g.clav_y), (-0.08, g.carina),
                           (-0.06, hy - hb * 0.6))
        return _bezier((g.neck + 0.1, g.clav_y + 0.12), (0.0, g.clav_y), (-0.02, hy - hb), (hx - 0.12, hy + 0.5 * hb))
    mid = g.mid
    cy = g.clav_y
    svc = (mid(g.carina) - 0.07, g.carina)
    tip = (mid(g.heart[1] - g.heart[3]) - 0.06, g.heart[1] - g.heart[3] * 0.75)
    start = (mid(cy) + s * 0.55, cy + 0.07)
    if f.kind == "central_line":
        return _bezier(start, (mid(cy) + s * 0.15, cy + 0.07), (svc[0], svc[1] - 0.1), svc, n=7) + [tip]
    gen = (mid(cy) + s * 0.45, cy + 0.15)
    hx, hy, ha, hb = g.heart
    apex = (mid(hy) + hx + 0.45 * ha, hy + 0.55 * hb)
    return _bezier(gen, (mid(cy) + s * 0.12, cy + 0.05), (svc[0], svc[1] - 0.05), svc, n=7) + \
        _bezier(svc, (svc[0], hy), (mid(hy) + 0.05, hy + 0.6 * hb), apex, n=6)[1:]


def _central_line(ctx, f, u):
    """Central venous catheter: subclavian entry, down the SVC to the cavoatrial junction."""
    return _lines(ctx, _device_paths(ctx, f, u), 0.004, 2.2)


def _pacemaker(ctx, f, u):
    """Pacemaker: a very bright generator below the clavicle and a lead to the RV apex."""
    g = ctx.g
    pts = _device_paths(ctx, f, u)
    gx, gy = pts[0]
    hw, hh = (0.025, 0.1) if g.view == "LATERAL" else (0.1, 0.075)

    def box_alpha(xc, yc):
        lvl = np.minimum(hw - np.abs(xc - gx), hh - np.abs(yc - gy))
        return _soft(lvl, g.edge) * (0.85 + 0.15 * _soft(0.012 - np.abs(yc - gy - 0.02), g.edge))
    out = _lines(ctx, pts, 0.004, 2.4, lambda xc, yc: 2.2 * box_alpha(xc, yc))
    return out


def _endotracheal_tube(ctx, f, u):
    """Endotracheal tube: a tube in the trachea (radiopaque stripe), tip above the carina."""
    g = ctx.g
    if g.view == "LATERAL":
        p, q = (-0.03, -1.05), (0.1, g.carina)
        tipf = 0.72
        tip = (p[0] + tipf * (q[0] - p[0]), p[1] + tipf * (q[1] - p[1]))
        stripe = [(p[0] + 0.01, p[1]), (tip[0] + 0.01, tip[1])]
        return _lines(ctx, [p, tip], 0.016, 0.6) + _lines(ctx, stripe, 0.003, 1.2)
    tipy = g.carina - 0.1
    pts = [(g.mid(-1.05) - 0.012, -1.05), (g.mid(tipy) - 0.012, tipy)]
    wall = _lines(ctx, pts, 0.017, 0.8)
    stripe = _lines(ctx, [(p[0] + 0.008, p[1]) for p in pts], 0.0035, 2.8)
    return wall + stripe


def _sternotomy_wires(ctx, f, u):
    """Sternotomy wires: six small twisted loops in a vertical column over the sternum."""
    g = ctx.g
    lat = g.view == "LATERAL"
    ys = np.linspace(g.carina - 0.22, g.heart[1] + 0.05, 6)
    w = max(0.003, 0.8 / ctx.size)
    out = []
    for yw in ys:
        cx = (g.neck + 0.03) if lat else g.mid(float(yw))
        rx, ry = (0.012, 0.022) if lat else (0.034, 0.015)

        def fn(xc, yc, cx=cx, yw=float(yw), rx=rx, ry=ry):
            r = np.sqrt(((xc - cx) * (1.0 / rx)) ** 2 + ((yc - yw) * (1.0 / ry)) ** 2)
            ring = _clip(1.0 - np.abs(r - 1.0) * (min(rx, ry) / w), 0.0, 1.0)
            twist = _soft(w - _seg_dist(xc, yc, (cx, yw - ry), (cx + 0.006, yw - ry - 0.02)), g.edge)
            return 4.0 * np.maximum(ring, twist), None
        out += ctx.patch((cx - rx - 0.02, cx + rx + 0.02, yw - ry - 0.04, yw + ry + 0.02), fn)
    return out


_FINDINGS: dict[str, Callable] = {
    "consolidation": _opacity((0.75, 0.82, 0.9), 0.15, 0.35, 0.12, True),
    "airspace_opacity": _airspace,
    "pneumonia": _opacity((0.6, 0.7, 0.8), 0.5, 0.5, 0.45, True),
    "atelectasis": _atelectasis,
    "edema": _edema,
    "vascular_congestion": _congestion,
    "interstitial_markings": _interstitial,
    "scarring": _scarring,
    "nodule": _nodule,
    "mass": _mass,
    "granuloma": _granuloma,
    "hyperinflation": _hyperinflation,
    "hypoinflation": _hypoinflation,
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "pleural_thickening": _pleural_thickening,
    "cardiomegaly": _cardiomegaly,
    "enlarged_cardiomediastinum": _enlarged_cardiomediastinum,
    "tortuous_aorta": _tortuous_aorta,
    "aortic_calcification": _aortic_calcification,
    "calcified_lymph_node": _calcified_nodes,
    "hiatal_hernia": _hiatal_hernia,
    "elevated_hemidiaphragm": _elevated_hemidiaphragm,
    "rib_fracture": _rib_fracture,
    "degenerative_spine": _degenerative_spine,
    "scoliosis": _scoliosis,
    "central_line": _central_line,
    "endotracheal_tube": _endotracheal_tube,
    "pacemaker": _pacemaker,
    "sternotomy_wires": _sternotomy_wires,
}
assert set(_FINDINGS) == set(CATALOGUE), set(CATALOGUE) ^ set(_FINDINGS)


def _jitter(seed: int, f: Finding) -> list[float]:
    """Placement numbers of one finding: a function of the patient seed and ``f.key()`` only."""
    return _uniforms(32, seed, zlib.crc32(f.key().encode()))


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------

@dataclass
class PhantomImage:
    """One rendered study image.

    image: (H, W) float32 in [0, 1], bright = attenuating; masks: (K, H, W) bool, one per
    finding in ``findings`` order; body: (H, W) bool outline of the patient's soft tissue.
    """

    image: np.ndarray
    masks: np.ndarray
    findings: tuple
    view: str
    anatomy: Anatomy
    body: np.ndarray


def render(seed: int, findings: Sequence[Finding] = (), view: str = "PA", size: int = 224,
           acquisition: int = 0) -> PhantomImage:
    """Render patient ``seed`` with ``findings`` on ``view`` as a (size, size) image.

    ``acquisition`` changes exposure, noise and positioning only (priors use 1); the anatomy
    and every finding's place are fixed by the seed. Raises ValueError for an unknown view,
    a size below 32 or something that is not a :class:`Finding`.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    findings = tuple(findings)
    for f in findings:
        if not isinstance(f, Finding):
            raise TypeError(f"findings must be Finding objects, got {f!r}")
    size = int(size)
    ctx = _context(int(seed), view, size, int(acquisition))
    g = ctx.g
    D, level = ctx.V.body(ctx.x[None, :], ctx.y[:, None], g)  # (H, W) soft tissue, outline level
    body = level > -0.45 * g.edge
    for layer, box in ctx.V.layers(g):
        c = ctx.crop(*box)
        if c is not None:
            D[c[0], c[1]] += layer(c[2], c[3], g)
    masks = np.zeros((len(findings), size, size), bool)
    for k, f in enumerate(findings):
        for rs, cs, delta, m in _FINDINGS[f.kind](ctx, f, _jitter(ctx.seed, f)):
            b = body[rs, cs]
            delta = np.where(b, np.broadcast_to(delta, b.shape), F32(0.0)).astype(F32, copy=False)
            D[rs, cs] += delta
            hit = delta != 0
            if m is not None:
                hit |= np.broadcast_to(m, b.shape)
            masks[k, rs, cs] |= hit & b
    gain, bright, sigma, oy, ox = ctx.tone
    img = np.exp(D * F32(-gain))
    img *= F32(-1.04)
    img += F32(1.02 + bright)
    img += _bank(size).noise[oy: oy + size, ox: ox + size] * F32(sigma)
    _clip(img, 0.0, 1.0, out=img)
    return PhantomImage(image=img, masks=masks, findings=findings, view=view, anatomy=Anatomy.sample(seed), body=body)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) float image in [0, 1] -> (H, W) uint8 (rounded, clipped)."""
    return (_clip(np.asarray(image, F32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def random_findings(rng: np.random.Generator, n: int) -> list[Finding]:
    """``n`` random findings with valid side / zone / severity / variant (for benchmarks, tests)."""
    def pick(xs):
        return xs[int(rng.integers(len(xs)))]
    out = []
    for _ in range(n):
        t = CATALOGUE[pick(sorted(CATALOGUE))]
        out.append(Finding(t.name, pick(t.sides), pick(t.zones), pick(SEVERITIES),
                           pick(t.variants) if t.variants else None))
    return out


def bench_render(n: int = 400, size: int = 224, view: str = "PA", seed: int = 0) -> float:
    """Images per second of :func:`render` in this process, 0-3 random findings per image
    (caches warmed first)."""
    rng = np.random.default_rng(seed)
    jobs = [(seed + i, random_findings(rng, int(rng.integers(4)))) for i in range(n)]
    for s, fs in jobs[:5]:
        render(s, fs, view=view, size=size)
    t0 = time.perf_counter()
    for s, fs in jobs:
        render(s, fs, view=view, size=size)
    return n / (time.perf_counter() - t0)
