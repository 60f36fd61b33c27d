"""Public entry points: :func:`render` composes a study (normal anatomy, anatomy changes,
lesions and devices), tone-maps it and adds the acquisition's noise; :func:`to_uint8`,
:func:`random_findings`, :func:`bench_render`."""
from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..findings import CATALOGUE, SEVERITIES, Finding
from .anatomy import Anatomy, _bank
from .changes import CHANGES
from .context import _context
from .devices import DEVICES
from .lesions import LESIONS, _fill, _fills
from .shapes import F32, _clip, _uniforms

VIEWS = ("PA", "AP", "LATERAL")
#: Kinds whose mask is empty on the lateral view (not seen, or not modelled, in that projection).
LATERAL_INVISIBLE = frozenset({"pneumothorax", "rib_fracture", "scoliosis"})
#: Findings that change the anatomy (a geometry field): applied first, in list order, each
#: redrawing the layers it changes (:meth:`_Ctx.change`).
_CHANGES: dict[str, Callable] = CHANGES
#: Findings drawn on the changed anatomy (lungs, domes, heart as every anatomy change left them).
_LESIONS: dict[str, Callable] = {**LESIONS, **DEVICES}
assert set(_CHANGES) | set(_LESIONS) == set(CATALOGUE), set(CATALOGUE) ^ (set(_CHANGES) | set(_LESIONS))


def _jitter(seed: int, f: Finding) -> list[float]:
    """Placement numbers of one finding: a function of the patient seed and ``f.key()`` only."""
    return _uniforms(32, seed, zlib.crc32(f.key().encode()))


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
    D, masks, body, ctx = _compose(int(seed), findings, view, size, int(acquisition))
    gain, bright, sigma, oy, ox = ctx.tone
    img = np.exp(D * F32(-gain))
    img *= F32(-1.04)
    img += F32(1.02 + bright)
    img += _bank(size).noise[oy: oy + size, ox: ox + size] * F32(sigma)
    _clip(img, 0.0, 1.0, out=img)
    return PhantomImage(image=img, masks=masks, findings=findings, view=view, anatomy=Anatomy.sample(seed), body=body)


def _compose(seed: int, findings: tuple, view: str, size: int, acquisition: int):
    """(density D, masks, body, context) of a study: the normal anatomy, then every anatomy
    change (in list order), then every lesion on the changed anatomy, fills saturating."""
    ctx = _context(seed, view, size, acquisition)
    g = ctx.g
    D, level = ctx.V.body(ctx.x[None, :], ctx.y[:, None], g)  # (H, W) soft tissue, outline level
    body = level > -0.45 * g.edge
    for layer in ctx.V.layers(g):
        c = ctx.crop(*layer.box)
        if c is not None:
            D[c[0], c[1]] += layer.fn(c[2], c[3], g)
    masks = np.zeros((len(findings), size, size), bool)
    jitter = [_jitter(seed, f) for f in findings]
    filled = None  # (H, W) density the fills have put into the airspaces so far
    seen, repeats = set(), set()  # an anatomy change listed twice (same kind and side) is one
    for k, f in enumerate(findings):  # change: the repeat draws its mask only
        if f.kind in _CHANGES:
            if (f.kind, f.side) in seen:
                repeats.add(k)
            seen.add((f.kind, f.side))
    for table in (_CHANGES, _LESIONS):
        for k, f in enumerate(findings):
            if f.kind not in table:
                continue
            ctx.repeat = k in repeats
            fills = table is _LESIONS and _fills(f)
            done = []
            for rs, cs, delta, m in table[f.kind](ctx, f, jitter[k]):
                b = body[rs, cs]
                if np.ndim(delta) == 0 and delta == 0:  # a mask, no density
                    masks[k, rs, cs] |= np.broadcast_to(m, b.shape) & b
                    continue
                delta = np.where(b, np.broadcast_to(delta, b.shape), F32(0.0)).astype(F32, copy=False)
                hit = delta != 0
                if m is not None:
                    hit |= np.broadcast_to(m, b.shape)
                masks[k, rs, cs] |= hit & b
                if ctx.repeat:
                    continue
                if fills:
                    if filled is None:
                        filled = np.zeros((size, size), F32)
                    both = (filled[rs, cs] > 0) & (delta > 0)
                    if both.any():  # saturate where an earlier fill lies (elsewhere _fill is delta)
                        r, c = np.flatnonzero(both.any(1)), np.flatnonzero(both.any(0))
                        sr, sc = slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)
                        rs2 = slice(rs.start + r[0], rs.start + r[-1] + 1)
                        cs2 = slice(cs.start + c[0], cs.start + c[-1] + 1)
                        delta[sr, sc] = _fill(filled[rs2, cs2], delta[sr, sc], ctx.capacity(rs2, cs2))
                    done.append((rs, cs, delta))
                D[rs, cs] += delta
            for rs, cs, delta in done:  # after all patches: a finding's own patches add up
                filled[rs, cs] += delta
    ctx.repeat = False
    return D, masks, body, ctx


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
