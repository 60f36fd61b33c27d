"""Support devices: thin, very bright polylines and objects placed on the anatomy as it is
(a pacemaker lead ends in the heart's apex, enlarged or not)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .context import _sides
from .shapes import _bezier, _clip, _poly_dist, _pts_box, _seg_dist, _soft


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


DEVICES: dict[str, Callable] = {
    "central_line": _central_line,
    "endotracheal_tube": _endotracheal_tube,
    "pacemaker": _pacemaker,
    "sternotomy_wires": _sternotomy_wires,
}
