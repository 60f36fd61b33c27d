"""Numeric helpers every layer and finding uses: seeded uniforms, soft inside-indicators,
distances to segments and polylines, Bezier curves."""
from __future__ import annotations

import itertools

import numpy as np

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
