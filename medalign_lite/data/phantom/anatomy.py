"""The patient and the geometry of a projection.

:class:`Anatomy` is a pure function of the patient seed; :class:`_Geom` is what a projection
makes of it, in size-free units; :class:`Layer` is how the projections (``frontal``,
``lateral``) describe their structures. Textures that would be slow per image (the noise bank,
smooth noise, vessel trees) are built once per size and cached here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np

from .shapes import F32, _clip, _rng, _seg_dist, _uniforms


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
    # Places of structures that do not follow the lungs and heart, frozen from the normal
    # anatomy so that a finding moving the domes, the apex or the heart leaves them in place:
    rib_end: float              # y where the posterior ribs fade (hyperinflation lowers it)
    scol_y: tuple               # y range over which scoliosis bends the spine
    breast_y: float             # y of the breast shadows' lower edge
    scap_y: float               # y of the scapula's top
    medi_at: tuple              # mediastinum anchors: knob y, normal heart hx, hy, ha, hb, apex y
    aorta_end: float            # y where the descending aorta leaves the chest (the normal left dome)

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
                 scap=0.5 if ap else lw - 0.02, breasts=a.sex == "F", rib_end=yd + 0.02,
                 scol_y=(top + 0.25, (yd + 0.035) + 0.1), breast_y=yd, scap_y=top,
                 medi_at=(top + 0.42, ha / 3.0 + 0.02, hy, ha, hb, top), aorta_end=yd + 0.035)


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
                 breasts=a.sex == "F", rib_end=(yd - 0.03) + 0.02, scol_y=(top + 0.25, (yd + 0.03) + 0.1),
                 breast_y=yd - 0.03, scap_y=top, medi_at=(top + 0.36, -0.22 * dp, yd - 0.36, ha, hb, top),
                 aorta_end=yd + 0.03)


class Layer(NamedTuple):
    """One anatomical structure: ``fn(x, y, g)`` its density, ``box`` where it is non-zero
    (x0, x1, y0, y1), and ``key`` the geometry values it reads. A finding that changes the
    geometry redraws exactly the layers whose key changed (see :meth:`_Ctx.change`).

    A structure whose bottom rests on the domes (or fades at ``rib_end``) also gives ``rest``,
    its key without those values, and ``top``: a y above which they do not matter. When only
    they change, the rows above the higher ``top`` stay as they are and are not redrawn."""

    name: str
    fn: Callable
    box: tuple
    key: tuple
    rest: tuple | None = None
    top: float = -math.inf


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
