"""Findings that change the anatomy: each maps the current geometry ``ctx.g`` to a new one and
returns :meth:`_Ctx.change`'s patches (plus a mask). They run before every other finding, in
list order, so that effusions, opacities and devices are drawn on the lungs, domes and heart
as these findings left them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .context import _sev, _sides
from .shapes import F32


def _bubble_sweep(ctx, xc, yc, g1, g2):
    """Region swept by the gastric bubble moving from its place in g1 to its place in g2."""
    bx, by, rx, ry = ctx.V.bubble(g1)
    by2 = ctx.V.bubble(g2)[1]
    dy = np.maximum(np.maximum(yc - max(by, by2), min(by, by2) - yc), 0.0)
    return ((xc - bx) * (1.0 / rx)) ** 2 + (dy * (1.0 / ry)) ** 2 < 1.3


def _lung_change(ctx, g2):
    """Anatomy change ``g -> g2`` that moves both lungs and changes their air: the mask is where
    the lungs changed (with the air changed, both outlines) and the path of the gastric bubble."""
    g1 = ctx.g
    b1, b2 = ctx.V.lung_box(g1, 1), ctx.V.lung_box(g2, 1)
    box = (min(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), max(b1[3], b2[3]))
    return ctx.patch(box, lambda xc, yc: (F32(0.0), _bubble_sweep(ctx, xc, yc, g1, g2))) + ctx.change(g2)


def _hyperinflation(ctx, f, u):
    """Hyperinflation: taller lungs, low flat domes, hyperlucency. The vessel tree stretches, the
    ribs follow the domes down and the heart (frontal) hangs lower, longer and narrower, so the
    new lung bases look like lung."""
    sev, g = _sev(f), ctx.g
    low = (0.06, 0.1, 0.14)[sev]
    top = g.lung_top - 0.02 * sev
    stretch = (g.dome[0] + low - top) / (g.dome[0] - g.lung_top)
    heart = g.heart
    if g.view != "LATERAL":  # top fixed, base on the lowered dome
        hx, hy, ha, hb = heart
        ha2 = ha * (0.96, 0.93, 0.9)[sev]
        heart = (hx - (ha - ha2) / 3.0, hy + 0.5 * low, ha2, hb + 0.5 * low)
    g2 = replace(g, dome=(g.dome[0] + low, g.dome[1] + low), dome_h=g.dome_h * (0.6, 0.4, 0.2)[sev],
                 air=g.air * (1.08, 1.14, 1.2)[sev], lung_top=top, rib_end=g.rib_end + low,
                 marks=g.marks * (0.8 if f.variant == "hyperinflation" else 0.55),
                 mark_s=(g.mark_s[0], g.mark_s[1] * stretch), heart=heart)
    return _lung_change(ctx, g2)


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
    out = ctx.patch(ctx.V.lung_box(g, s), lambda xc, yc: (F32(0.0), _bubble_sweep(ctx, xc, yc, g, g2))) if s > 0 else []
    return out + ctx.change(g2)


def _cardiomegaly(ctx, f, u):
    """Cardiomegaly: the heart widened to CTR 0.55 / 0.62 / 0.70; mask = the enlarged heart."""
    g = ctx.g
    g2 = ctx.V.heart_bigger(g, (0.55, 0.62, 0.7)[_sev(f)])
    b1, b2 = ctx.V.heart_box(g), ctx.V.heart_box(g2)
    box = (min(b1[0], b2[0]), max(b1[1], b2[1]), min(b1[2], b2[2]), max(b1[3], b2[3]))
    return ctx.patch(box, lambda xc, yc: (F32(0.0), ctx.V.heart_alpha(xc, yc, g2) > 0)) + ctx.change(g2)


def _enlarged_cardiomediastinum(ctx, f, u):
    """Widened mediastinum (lateral: the retrosternal space filled)."""
    g, sev = ctx.g, _sev(f)
    if g.view == "LATERAL":
        return ctx.change(replace(g, medi=((0.08, 0.12, 0.17)[sev], 0.0)))
    k = (1.5, 1.8, 2.2)[sev]
    return ctx.change(replace(g, medi=(g.medi[0] * k, g.medi[1] * k)))


def _tortuous_aorta(ctx, f, u):
    """Tortuous aorta: a bigger, more lateral knob and a wavy descending aorta."""
    g, sev = ctx.g, _sev(f)
    kx, ky, kr = g.knob
    return ctx.change(replace(g, knob=(kx + 0.012 * (sev + 1), ky - 0.01 * sev, kr * (1.2, 1.35, 1.5)[sev]),
                              tort=(0.02, 0.03, 0.045)[sev]))


def _hila_enlarged(ctx, f, u):
    """Vascular congestion, the anatomy change: enlarged hila."""
    hx, hyr, hyl, hr = ctx.g.hila
    return ctx.change(replace(ctx.g, hila=(hx, hyr, hyl, hr * (1.25, 1.4, 1.6)[_sev(f)])))


def _degenerative_spine(ctx, f, u):
    """Degenerative spine: osteophytes and endplate sclerosis over 3 / 5 / 7 vertebrae."""
    g, sev = ctx.g, _sev(f)
    first = 3 + int(u[5] * 3)
    return ctx.change(replace(g, degen=(sev + 1, first - sev, 3 + 2 * sev)))


def _scoliosis(ctx, f, u):
    """Scoliosis: the thoracic spine bent, convex towards the named side."""
    g = ctx.g
    if g.view == "LATERAL":
        return []
    return ctx.change(replace(g, scol=_sides(f)[0] * (0.045, 0.075, 0.11)[_sev(f)]))


#: kind -> anatomy change (``vascular_congestion`` and ``hyperinflation`` also draw a lesion part)
CHANGES: dict[str, Callable] = {
    "hyperinflation": _hyperinflation,
    "hypoinflation": _hypoinflation,
    "elevated_hemidiaphragm": _elevated_hemidiaphragm,
    "cardiomegaly": _cardiomegaly,
    "enlarged_cardiomediastinum": _enlarged_cardiomediastinum,
    "tortuous_aorta": _tortuous_aorta,
    "vascular_congestion": _hila_enlarged,
    "degenerative_spine": _degenerative_spine,
    "scoliosis": _scoliosis,
}
