"""Lateral anatomy (patient facing image left: x anterior = image left, posterior = image
right, absolute coordinates): the same kinds of layers as the frontal view, and
:data:`LATERAL`, the namespace the render context and the findings call."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from .anatomy import Layer, _marks
from .frontal import _vertebrae
from .shapes import _bezier, _clip, _poly_dist, _pts_box, _seg_dist, _smooth, _soft


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


def _l_lung(x, y, g, s, bubble=True):
    """(density, level, wall level) of one lung on the lateral view: half the air of the beam,
    its vessels, the gastric bubble (unless ``bubble`` is False)."""
    lvl, wall = _l_lung_level(x, y, g, s)
    soft = _soft(lvl, g.edge)
    depth = _clip(wall * (1.0 / 0.14), 0.0, 1.0) * 0.35 + 0.65
    d = 0.5 * soft * (_l_marks(x, y, g, s) * g.marks - depth * g.air)
    if s > 0 and bubble:
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
        [(0.34 + g.tort, ky + 0.45), (0.36, g.aorta_end)]


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
            _soft(g.medi_at[2] - g.medi_at[4] * 0.5 - y, 0.06)
    return 0.45 * fill - 0.28 * air


def _l_medi_box(g):
    return g.neck - 0.05, 0.2, -1.05, g.medi_at[2] + 0.05


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
    """The lateral anatomy as :class:`Layer` s (in drawing order)."""
    out = [Layer("heart", _l_heart, _l_heart_box(g), (g.heart, g.dome[0], g.dome_h),
                 (g.heart,), g.dome[0] - g.dome_h + 0.02 - g.edge),
           Layer("aorta", _l_aorta, _l_aorta_box(g), (g.heart[:2], g.knob, g.tort, g.aorta_end)),
           Layer("medi", _l_medi, _l_medi_box(g), (g.neck, g.carina, g.medi, g.medi_at)),
           Layer("hila", _l_hila, _l_hila_box(g), (g.hila,)),
           Layer("spine", _l_spine, _l_spine_box(g), (g.hw, g.spine, g.degen)),
           Layer("bones", _l_bones, _l_bones_box(g), (g.neck, g.rib, g.lung_w, g.hw))]
    return out + [_l_lung_layer(g, s) for s in (-1, 1)]


def _l_lung_layer(g, s):
    """Lung on side s; below the dome's highest point only the dome matters."""
    i = (s + 1) // 2
    rest = (g.lung_top, g.neck, g.lung_w, g.air, g.marks, g.mark_s, g.tree, g.hila[0], g.hila[1 + i])
    return Layer(f"lung{s:+d}", lambda x, y, g: _l_lung(x, y, g, s)[0], _l_lung_box(g, s),
                 (*rest, g.dome[i], g.dome_h), rest, g.dome[i] - g.dome_h - g.edge)


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
