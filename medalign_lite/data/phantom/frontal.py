"""Frontal (PA, AP) anatomy: one density function per structure, its box, and the geometry it
reads (:func:`_frontal_layers`). The thorax (outline, lungs, ribs, clavicles) is centred on
x = cx0; the mediastinum, heart and spine follow the rotated midline cx0 + skew * y. Patient
left is image right. :data:`FRONTAL` is what the render context and the findings call.
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from .anatomy import Layer, _marks
from .shapes import _clip, _seg_dist, _smooth, _soft


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


def _f_lung(x, y, g, s, bubble=True):
    """(density, level, wall level) of one lung: air (thinner at the walls), its vessel
    markings, the gastric bubble (left, unless ``bubble`` is False)."""
    lvl, xp, wall = _f_lung_level(x, y, g, s)
    depth = wall * (-0.38 / 0.14 * g.air)
    np.maximum(depth, -0.38 * g.air, out=depth)
    depth -= 0.62 * g.air
    np.minimum(depth, -0.62 * g.air, out=depth)  # -air * (0.62 .. 1): thinner at the walls
    marks = _f_marks(x, y, g, s)
    marks *= g.marks
    marks += depth
    marks *= _soft(lvl, g.edge)
    if s > 0 and bubble:  # gastric bubble under the left hemidiaphragm, on its own sub-crop
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
    ky, hx, hy, ha, hb, top = g.medi_at  # the normal heart: an enlarged one covers the waist anyway
    waist = _clip((y - ky) * (1.0 / (hy - ky)), 0.0, 1.0)  # knob -> heart: widening
    wl = wl + (hx + 0.5 * ha - wl) * waist * waist
    lvl = np.minimum(xr + wr, wl - xr)
    return _soft(lvl, 0.03) * (0.6 * _soft(hy - 0.3 * hb - y, 0.15) * _soft(y - top - 0.1, 0.2))


def _f_medi_box(g):
    w = max(g.medi) + 0.2
    return g.cx0 - w - 0.05, g.cx0 + w + 0.05, g.medi_at[5] - 0.1, g.medi_at[2] + 0.1


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
    da = _soft(0.037 - np.abs(xr - xda), g.edge) * _soft(y - ky, 0.02) * _soft(g.aorta_end - 0.05 - y, 0.1)
    return 0.45 * np.maximum(knob, da)


def _f_aorta_box(g):
    kx, ky, kr = g.knob
    return g.cx0 - 0.05, g.cx0 + kx + kr + g.tort + 0.1, ky - kr - 0.05, g.aorta_end + 0.05


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
    y0, y1 = g.scol_y
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
    rows = _soft(g.rib_end - y, 0.12) * _soft(y - g.rib[0] + 0.04, 0.04)
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
    return g.cx0 - m, g.cx0 + m, g.rib[0] - 0.07, g.rib_end + 0.08


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
    med = xp - g.scap - (y - g.scap_y) * 0.2
    lat = (g.hw - 0.02) - xp - (y - g.scap_y - 0.15) * 0.45
    lvl = np.minimum(np.minimum(med, lat), np.minimum(y - g.scap_y + 0.02, g.scap_y + 0.72 - y))
    return 0.12 * _soft(lvl, 0.03) + 0.1 * _soft(np.minimum(0.014 - np.abs(lat), lvl + 0.014), g.edge)


def _f_scap_box(g):
    return g.cx0 - g.hw - 0.05, g.cx0 + g.hw + 0.05, g.scap_y - 0.05, g.scap_y + 0.75


def _f_breasts(x, y, g):
    """Breast shadows over the lower lung zones (female patients)."""
    xp = np.abs(x - g.cx0)
    q = ((xp - 0.5 * g.lung_w) * (1 / 0.4)) ** 2 + ((y - g.breast_y + 0.3) * (1 / 0.3)) ** 2
    return 0.2 * _soft((1.0 - q) * 0.12, 2 * g.edge) * _smooth((y - g.breast_y + 0.6) * 3.0)


def _f_breasts_box(g):
    return g.cx0 - 0.95, g.cx0 + 0.95, g.breast_y - 0.62, g.breast_y + 0.02


def _f_lung_layer(g, s):
    """Lung on side s; below the dome's highest point only the dome matters."""
    i = (s + 1) // 2
    rest = (g.cx0, g.lung_w, g.lung_top, g.lung_h, g.air, g.marks, g.mark_s, g.tree, g.hila[0], g.hila[1 + i])
    return Layer(f"lung{s:+d}", lambda x, y, g: _f_lung(x, y, g, s)[0], _f_lung_box(g, s),
                 (*rest, g.dome[i], g.dome_h), rest, g.dome[i] - g.dome_h - g.edge)


def _frontal_layers(g):
    """The frontal anatomy as :class:`Layer` s (in drawing order)."""
    mid = (g.cx0, g.skew)
    airway, bronchi = _f_airway_boxes(g)
    out = [Layer("medi", _f_medi, _f_medi_box(g), (*mid, g.medi, g.medi_at)),
           Layer("heart", _f_heart, _f_heart_box(g), (*mid, g.heart, g.dome, g.dome_h, g.lung_w),
                 (*mid, g.heart, g.lung_w), min(g.dome) + 0.015 - g.dome_h - g.edge),
           Layer("aorta", _f_aorta, _f_aorta_box(g), (*mid, g.knob, g.tort, g.aorta_end)),
           Layer("hila", _f_hila, _f_hila_box(g), (*mid, g.hila)),
           Layer("spine", _f_spine, _f_spine_box(g), (*mid, g.spine, g.scol, g.scol_y, g.degen)),
           Layer("ribs", _f_ribs, _f_ribs_box(g), (g.cx0, g.lung_w, g.rib, g.rib_end),
                 (g.cx0, g.lung_w, g.rib), g.rib_end - 0.06 - g.edge),
           Layer("clavicles", _f_clav, _f_clav_box(g), (g.cx0, g.clav_y)),
           Layer("trachea", _f_airway, airway, (*mid, g.carina)),
           Layer("bronchi", _f_airway, bronchi, (*mid, g.carina))]
    if g.view == "AP":
        out.append(Layer("scapulae", _f_scap, _f_scap_box(g), (g.cx0, g.scap, g.hw, g.scap_y)))
    out += [_f_lung_layer(g, s) for s in (-1, 1)]
    if g.breasts:
        out.append(Layer("breasts", _f_breasts, _f_breasts_box(g), (g.cx0, g.lung_w, g.breast_y)))
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
