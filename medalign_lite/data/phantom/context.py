"""The render context a finding draws with: crops of the image grid, patches, anatomy changes
that redraw exactly the layers whose geometry changed, and the air left for fills."""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..findings import SEVERITIES, Finding
from .anatomy import Anatomy, _frontal_geom, _Geom, _lateral_geom
from .frontal import FRONTAL
from .lateral import LATERAL
from .shapes import _SIDE, F32, _uniforms


@dataclass
class _Ctx:
    """What a finding draws with. ``g`` is the anatomy as it is now: the patient's normal
    geometry ``g0`` while anatomy changes are applied, then the changed one for lesions."""

    g: _Geom
    V: SimpleNamespace
    x: np.ndarray       # (W,) anatomy x of each column
    y: np.ndarray       # (H,) anatomy y of each row
    size: int
    a: float            # pixel index = (coord * a + b)
    bx: float
    by: float
    seed: int
    g0: _Geom = None    # the normal anatomy: where zones are (placement never follows other findings)
    repeat: bool = False  # the finding being drawn repeats an earlier anatomy change: mask only
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

    def change(self, g2):
        """Patches that turn the anatomy ``g`` into ``g2``: every layer whose key changed is
        redrawn, ``layer(g2) - layer(g)``, each term on its own box (as the base image drew it).
        Sets ``g = g2``. Applied one after the other, changes telescope: the image always holds
        each layer at the current geometry, so a second change never subtracts a layer that
        the first one already replaced (two findings moving the same dome, an effusion on a
        hyperinflated lung). A repeated change (``repeat``) leaves ``g`` as it is."""
        g1, out = self.g, []
        new = {layer.name: layer for layer in self.V.layers(g2)}
        for old in self.V.layers(g1):
            lay = new[old.name]
            if lay.key == old.key:
                continue
            box = (min(old.box[0], lay.box[0]), max(old.box[1], lay.box[1]),
                   min(old.box[2], lay.box[2]), max(old.box[3], lay.box[3]))
            if old.rest is not None and old.rest == lay.rest:  # only its bottom moved
                box = (*box[:2], max(box[2], min(old.top, lay.top)), box[3])
            c = self.crop(*box)
            if c is None:
                continue
            rs, cs, xc, yc = c
            self.cur = (rs, cs)
            if old.box == lay.box:  # both drawn on the same box: the crop lies inside it
                out.append((rs, cs, lay.fn(xc, yc, g2) - old.fn(xc, yc, g1), None))
                continue
            delta = np.zeros((rs.stop - rs.start, cs.stop - cs.start), F32)
            for sign, layer, g in ((1.0, lay, g2), (-1.0, old, g1)):
                b = layer.box
                k = self.crop(max(b[0], box[0]), min(b[1], box[1]), max(b[2], box[2]), min(b[3], box[3]))
                if k is not None:
                    self.cur = (k[0], k[1])
                    sub = delta[k[0].start - rs.start: k[0].stop - rs.start, k[1].start - cs.start: k[1].stop - cs.start]
                    sub += layer.fn(k[2], k[3], g) * F32(sign)
            out.append((rs, cs, delta, None))
        if not self.repeat:
            self.g = g2
        return out

    def air_left(self, xc, yc):
        """Air in the beam at crop coordinates (>= 0): the lungs' air less what the heart and
        mediastinum in front of or behind them take."""
        air = -sum(self.V.lung(xc, yc, self.g, s, bubble=False)[0] for s in (-1, 1))
        air -= self.V.heart(xc, yc, self.g)
        air -= self.V.medi(xc, yc, self.g)
        return np.maximum(air, 0.0)

    def capacity(self, rs, cs):
        """Density the airspaces on a crop can still take up: :meth:`air_left`, at least 1e-3."""
        self.cur = (rs, cs)
        return np.maximum(self.air_left(self.x[None, cs], self.y[rs, None]), F32(1e-3))


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
               bx=(dx + 1.0) * sc - 0.5, by=(dy + 1.0) * sc - 0.5, seed=seed, g0=g)
    ap = view == "AP"
    ctx.tone = (0.92 * a.exposure * gain, a.brightness + bright, a.noise * noise_k * (1.25 if ap else 1.0),
                int(r[6] * size), int(r[7] * size))
    return ctx


# ------------------------------------------------------------------------------------------
# Helpers for the finding functions
# ------------------------------------------------------------------------------------------

def _sev(f: Finding) -> int:
    return SEVERITIES.index(f.severity)


def _sides(f: Finding):
    return _SIDE[f.side]
