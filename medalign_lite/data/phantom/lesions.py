"""Lesions: parenchymal, pleural, mediastinal and bony findings drawn on the (possibly changed)
anatomy, one function per kind returning patches ``(rows, cols, delta, mask | None)``.
Placement (zones) uses the patient's normal anatomy ``ctx.g0``, so a finding sits at the same
place whatever else the study shows; shape and density use the anatomy as it is, ``ctx.g``.
Soft-tissue densities that take the place of air (:data:`_FILLS`) saturate together
(:func:`_fill`)."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..findings import Finding
from .anatomy import _bank
from .context import _sev, _sides
from .frontal import _f_ribs
from .shapes import _MM, F32, _clip, _poly_dist, _pts_box, _seg_dist, _soft


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
        px, py = ctx.V.zone(ctx.g0, s, f.zone, u[2 * k: 2 * k + 2])
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
        px, py = ctx.V.zone(ctx.g0, s, f.zone, u[2 * k: 2 * k + 2])
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
    """Vascular congestion: upper-lobe diversion (upper vessels denser) over enlarged hila."""
    sev, g = _sev(f), ctx.g
    out = []
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
        px, py = ctx.V.zone(ctx.g0, s, f.zone, u[2 * k: 2 * k + 2])
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
    p = ctx.V.zone(ctx.g0, _sides(f)[0], f.zone, u)
    return _round_lesions(ctx, f, [p], (6, 10, 15)[_sev(f)] * _MM / 2, 0.9 * ctx.g.air)


def _mass(ctx, f, u):
    """Mass: a lobulated sphere 35 / 50 / 70 mm across."""
    p = ctx.V.zone(ctx.g0, _sides(f)[0], f.zone, u)
    R = (35, 50, 70)[_sev(f)] * _MM / 2
    lobes = [(R * 0.45 * math.cos(6.28 * u[12 + j]), R * 0.45 * math.sin(6.28 * u[12 + j]), R * 0.6) for j in range(3)]
    return _round_lesions(ctx, f, [p], R * 0.85, 0.95 * ctx.g.air, lobes)


def _granuloma(ctx, f, u):
    """Granuloma: a small sphere, very bright when calcified."""
    p = ctx.V.zone(ctx.g0, _sides(f)[0], f.zone, u)
    calc = f.variant == "calcified"
    return _round_lesions(ctx, f, [p], ((3, 5, 7) if calc else (5, 7, 9))[_sev(f)] * _MM / 2,
                          2.2 if calc else 0.85 * ctx.g.air)


def _bullae(ctx, f, u):
    """Emphysema's bullae: round lucencies in the upper lungs, placed on the normal anatomy and
    cut by the changed lungs. On the lateral view each lung is half the beam and has its own."""
    if f.variant != "emphysema":
        return []
    g, g0, lat = ctx.g, ctx.g0, ctx.g.view == "LATERAL"
    dens = (0.125 if lat else 0.25) * g0.air
    out = []
    for s in (-1, 1):
        v = u[12:] if not lat or s < 0 else u
        for j in range(3):
            br = 0.04 + 0.03 * v[8 + j]
            bx = 0.25 + 0.45 * v[j]
            bx = bx - 0.3 if lat else g0.cx0 + s * bx * g0.lung_w  # image x of the centre
            by = g0.lung_top + (0.1 + 0.25 * v[4 + j]) * (g0.dome[0] - g0.lung_top)

            def fn(xc, yc, s=s, bx=bx, by=by, br=br):
                d = -dens * _soft(br - np.sqrt((xc - bx) ** 2 + (yc - by) ** 2), g.edge)
                return d * _soft(ctx.V.lung_level(xc, yc, g, s) - 0.01, g.edge), None
            out += ctx.patch((bx - br - g.edge, bx + br + g.edge, by - br - g.edge, by + br + g.edge), fn)
    return out


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
            lung, lvl = ctx.V.lung(xc, yc, g, s, bubble=False)[:2]  # already soft at the lung's edge
            return _soft(yc - ye, 0.03) * (0.05 * g.air * _soft(lvl, g.edge) - np.minimum(lung, 0.0)), None
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
    """Hiatal hernia: a retrocardiac round density with an air cap over a fluid level. The cap's
    gas takes the place of tissue, not of the lung air already in the beam there, so it is
    never darker than lung."""
    g, sev = ctx.g, _sev(f)
    cx, cy = ctx.V.hernia(g)
    R = (0.06, 0.085, 0.11)[sev]
    cy = cy - R * 0.5

    def fn(xc, yc):
        dx, dy = xc - cx, yc - cy
        a = _soft(R - np.sqrt(dx * dx * 0.8 + dy * dy), g.edge)
        cap = yc[:, 0] < cy - 0.25 * R  # rows of the air cap, above the fluid level
        d = np.full(a.shape, 0.35 * g.air, F32)
        d[cap] = -np.maximum(0.45 * g.air - ctx.air_left(xc, yc[cap]), 0.0)
        return a * d, None
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


#: kind -> lesion (``hyperinflation``'s bullae and ``vascular_congestion``'s diverted vessels
#: are drawn here, after their anatomy change)
LESIONS: dict[str, Callable] = {
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
    "hyperinflation": _bullae,
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "pleural_thickening": _pleural_thickening,
    "aortic_calcification": _aortic_calcification,
    "calcified_lymph_node": _calcified_nodes,
    "hiatal_hernia": _hiatal_hernia,
    "rib_fracture": _rib_fracture,
}


#: Soft-tissue densities that take the place of air in the lung. Together they saturate: where
#: an earlier one already filled the airspace, a later one adds only into the air still left
#: (:func:`_fill`), so stacked opacities or an opacity in an effusion never exceed solid tissue.
_FILLS = frozenset({"consolidation", "airspace_opacity", "pneumonia", "atelectasis", "edema",
                    "vascular_congestion", "interstitial_markings", "scarring", "nodule", "mass",
                    "pleural_effusion", "pleural_thickening"})


def _fills(f: Finding) -> bool:
    return f.kind in _FILLS or (f.kind == "granuloma" and f.variant != "calcified")


def _fill(filled, delta, capacity):
    """Increment of the filled density when a fill ``delta`` joins ``filled`` (both >= 0) in
    airspaces holding ``capacity`` of air: the larger of the two counts fully, the smaller only
    into the air the larger leaves, ``hi + lo * clip(1 - hi / capacity, 0, 1) - filled``. Never
    less than ``delta`` alone would give, never more than ``max(capacity, filled, delta)``;
    exactly ``delta`` where nothing was filled."""
    hi, lo = np.maximum(filled, delta), np.minimum(filled, delta)
    lo *= _clip(1.0 - hi / capacity, 0.0, 1.0)
    hi += lo
    hi -= filled
    return hi
