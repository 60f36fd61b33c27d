"""Phantom renderer: API, determinism, exact masks, severity, placement, views, combinations
of findings, speed."""
from __future__ import annotations

import itertools
from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalign_lite.data.findings import CATALOGUE, SEVERITIES, Finding
from medalign_lite.data.phantom import (
    LATERAL_INVISIBLE,
    VIEWS,
    Anatomy,
    PhantomImage,
    bench_render,
    render,
    to_uint8,
)
from medalign_lite.data.phantom.changes import CHANGES
from medalign_lite.data.phantom.compose import _compose
from medalign_lite.data.phantom.context import _context

KINDS = sorted(CATALOGUE)
DEVICES = {k for k, t in CATALOGUE.items() if t.device}
#: kinds that make the image darker (air) where they are; kinds that move or remove something
#: (the hernia's air cap over its fluid, a fracture gap, a spine moved sideways); every other
#: kind adds density
LUCENT = {"pneumothorax", "hyperinflation"}
MIXED = {"hiatal_hernia", "rib_fracture", "scoliosis"}


def _outside_equal(r: PhantomImage, base: PhantomImage) -> bool:
    outside = ~r.masks.any(0) if len(r.masks) else np.ones_like(r.body)
    return np.array_equal(r.image[outside], base.image[outside])


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(0)


# --- API ----------------------------------------------------------------------------------

@pytest.mark.parametrize("view", VIEWS)
def test_shapes_dtypes_range(view):
    fs = (Finding("nodule", "left", "upper"), Finding("pleural_effusion", "right"))
    r = render(3, fs, view=view, size=96)
    assert isinstance(r, PhantomImage) and r.view == view and r.findings == fs
    assert r.image.shape == (96, 96) and r.image.dtype == np.float32
    assert 0.0 <= r.image.min() and r.image.max() <= 1.0
    assert r.masks.shape == (2, 96, 96) and r.masks.dtype == bool
    assert r.body.shape == (96, 96) and r.body.dtype == bool
    assert r.anatomy == Anatomy.sample(3)
    # the body covers the middle of the image, the corners outside it are dark
    assert r.body[48, 48] and r.body.mean() > 0.4
    assert r.image[~r.body].mean() < 0.1 < r.image[r.body].mean()


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="OBLIQUE"):
        render(0, view="OBLIQUE")
    with pytest.raises(ValueError, match="16"):
        render(0, size=16)
    with pytest.raises(TypeError):
        render(0, ["nodule"])


@pytest.mark.parametrize("size", [32, 64, 128, 256, 512])
def test_sizes(size):
    r = render(1, [Finding("nodule", "right", "upper", "mild"), Finding("granuloma", "left")], size=size)
    assert r.image.shape == (size, size)
    assert r.masks[0].any() and r.masks[1].any()  # even sub-pixel lesions hit a pixel


def test_to_uint8():
    img = np.array([[0.0, 0.5, 1.0, -1.0, 2.0]], np.float32)
    assert to_uint8(img).tolist() == [[0, 128, 255, 0, 255]]
    assert to_uint8(render(0, size=64).image).dtype == np.uint8


# --- determinism and patient / acquisition variation ----------------------------------------

def test_deterministic():
    fs = [Finding("consolidation", "bilateral", "lower", "severe"), Finding("pacemaker", "left")]
    for view in VIEWS:
        a, b = render(11, fs, view=view, size=128), render(11, fs, view=view, size=128)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(render(11, size=64).image, render(12, size=64).image)


def test_anatomy_varies_by_patient_not_by_acquisition():
    anatomies = [Anatomy.sample(s) for s in range(40)]
    assert len({a.ctr for a in anatomies}) == 40 and {a.sex for a in anatomies} == {"F", "M"}
    assert 0.38 < min(a.ctr for a in anatomies) and max(a.ctr for a in anatomies) < 0.5
    now, prior = render(5, size=128), render(5, size=128, acquisition=1)
    assert now.anatomy == prior.anatomy
    assert not np.array_equal(now.image, prior.image)  # exposure, noise, positioning
    assert abs(float(now.image.mean()) - float(prior.image.mean())) < 0.1


# --- exact masks: every kind, frontal -------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_mask_exact_on_pa(kind):
    t = CATALOGUE[kind]
    for seed in (0, 1, 2):
        base = render(seed, size=128)
        for k, side in enumerate(t.sides):
            zone = t.zones[(seed + k) % len(t.zones)]
            f = Finding(kind, side, zone, SEVERITIES[(seed + k) % 3])
            r = render(seed, [f], size=128)
            m = r.masks[0]
            assert m.any(), f
            assert not (m & ~r.body).any(), f"{f}: mask leaves the body"
            assert _outside_equal(r, base), f"{f}: pixels outside the mask changed"
            assert not np.array_equal(r.image[m], base.image[m]), f"{f}: invisible"
            change = float((r.image[m] - base.image[m]).mean())
            if kind in LUCENT:
                assert change < 0, f
            elif kind not in MIXED:
                assert change > 0, f


@pytest.mark.parametrize("kind", ["pneumothorax", "pleural_effusion", "nodule", "mass", "consolidation",
                                  "pacemaker", "elevated_hemidiaphragm", "rib_fracture"])
def test_side_follows_radiological_convention(kind):
    """Patient's left is on the image right."""
    g = _context(4, "PA", 128, 0).g
    mid_col = (g.cx0 + 1) * 64
    cols = {s: _centroid(render(4, [Finding(kind, s)], size=128).masks[0])[1] for s in ("left", "right")}
    assert cols["right"] < mid_col < cols["left"], cols


def test_variants_render_differently():
    for kind, t in CATALOGUE.items():
        if len(t.variants) > 1:
            imgs = [render(2, [Finding(kind, variant=v, severity="moderate")], size=96).image for v in t.variants]
            assert not np.array_equal(imgs[0], imgs[1]), kind


# --- severity and placement -----------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 7])
def test_severity_grows_the_mask(seed):
    for kind in KINDS:
        areas = [int(render(seed, [Finding(kind, severity=s)], size=96).masks[0].sum()) for s in SEVERITIES]
        assert areas[0] <= areas[1] <= areas[2], (kind, areas)
        if kind not in DEVICES | {"interstitial_markings", "hypoinflation"}:  # whole zone / lungs
            assert areas[0] < areas[2], (kind, areas)


def test_cardiomegaly_reaches_its_ctr():
    ctx = _context(6, "PA", 256, 0)
    pix = float(ctx.x[1] - ctx.x[0])
    ctrs = []
    for sev in SEVERITIES:
        cols = np.flatnonzero(render(6, [Finding("cardiomegaly", severity=sev)], size=256).masks[0].any(0))
        ctrs.append((cols[-1] - cols[0] - 1) * pix / (2 * ctx.g.lung_w))
    assert np.allclose(ctrs, [0.55, 0.62, 0.70], atol=0.03), ctrs


@pytest.mark.parametrize("kind,zone", [("nodule", "upper"), ("granuloma", "lower"), ("mass", "middle"),
                                       ("rib_fracture", "middle"), ("calcified_lymph_node", "hilar")])
def test_same_key_same_place(kind, zone):
    """A finding's place depends on the patient and its key, not on severity or company."""
    f = Finding(kind, "left", zone, "mild")
    ref = _centroid(render(9, [f], size=256).masks[0])
    others = [Finding("consolidation", "right", "lower"), Finding("cardiomegaly", severity="severe")]
    for sev in SEVERITIES:
        r = render(9, [*others, f.with_severity(sev)], size=256)
        assert np.abs(_centroid(r.masks[2]) - ref).max() <= 2.0, sev
    moved = _centroid(render(9, [Finding(kind, "left", zone, "mild", instance=1)], size=256).masks[0])
    assert np.abs(moved - ref).max() > 1.0  # another instance sits elsewhere


# --- lateral ---------------------------------------------------------------------------------

def test_lateral_every_kind():
    base = render(8, view="LATERAL", size=96)
    for kind, t in CATALOGUE.items():
        for side in t.sides:
            r = render(8, [Finding(kind, side, severity="moderate")], view="LATERAL", size=96)
            assert r.masks[0].any() == (kind not in LATERAL_INVISIBLE), kind
            assert not (r.masks[0] & ~r.body).any(), kind
            assert _outside_equal(r, base), kind


def test_views_differ():
    pa, ap, lat = (render(0, view=v, size=96).image for v in VIEWS)
    assert not np.array_equal(pa, ap) and not np.array_equal(pa, lat)


# --- property test -----------------------------------------------------------------------------

@st.composite
def findings_lists(draw):
    out = []
    for _ in range(draw(st.integers(0, 4))):
        t = CATALOGUE[draw(st.sampled_from(KINDS))]
        out.append(Finding(t.name, draw(st.sampled_from(t.sides)), draw(st.sampled_from(t.zones)),
                           draw(st.sampled_from(SEVERITIES)),
                           draw(st.sampled_from(t.variants)) if t.variants else None,
                           draw(st.integers(0, 2))))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), findings=findings_lists(), view=st.sampled_from(VIEWS),
       size=st.sampled_from([64, 96]), acquisition=st.integers(0, 2))
def test_property_exact_and_deterministic(seed, findings, view, size, acquisition):
    r = render(seed, findings, view=view, size=size, acquisition=acquisition)
    again = render(seed, findings, view=view, size=size, acquisition=acquisition)
    base = render(seed, (), view=view, size=size, acquisition=acquisition)
    assert np.array_equal(r.image, again.image) and np.array_equal(r.masks, again.masks)
    assert r.image.dtype == np.float32 and 0.0 <= r.image.min() and r.image.max() <= 1.0
    assert r.masks.shape == (len(findings), size, size)
    assert not (r.masks & ~r.body).any()
    assert np.array_equal(r.body, base.body)
    assert _outside_equal(r, base)


# --- combinations of findings ---------------------------------------------------------------------
# IU reports list up to six findings per study. Anatomy changes telescope (each layer is redrawn
# against the geometry the image holds), lesions are drawn on the changed anatomy, and fills
# saturate; together the image must still look like a chest: no lung subtracted twice, no
# fluid under the diaphragm, no band of lung under an effusion, no density above solid tissue.

#: kinds that replace part of the anatomy rather than only adding to it
REPLACING = ("cardiomegaly", "pneumothorax", "hyperinflation", "hypoinflation", "elevated_hemidiaphragm",
             "pleural_effusion", "scoliosis", "enlarged_cardiomediastinum")
#: anatomy changes without a lesion part (emphysema's bullae, congestion's vessels are lesions)
ANATOMY = [Finding("hyperinflation", "bilateral", "diffuse", "severe", "hyperinflation"),
           Finding("hypoinflation", "bilateral", "diffuse", "severe"),
           Finding("elevated_hemidiaphragm", "right", "base", "severe"),
           Finding("elevated_hemidiaphragm", "left", "base", "moderate"),
           Finding("cardiomegaly", severity="severe"), Finding("enlarged_cardiomediastinum", severity="moderate"),
           Finding("tortuous_aorta", severity="severe"), Finding("degenerative_spine", severity="moderate"),
           Finding("scoliosis", "left", severity="severe")]


def _draw(ctx, g):
    """Density of the normal anatomy drawn directly with geometry ``g``."""
    D = ctx.V.body(ctx.x[None, :], ctx.y[:, None], g)[0]
    for layer in ctx.V.layers(g):
        c = ctx.crop(*layer.box)
        if c is not None:
            D[c[0], c[1]] += layer.fn(c[2], c[3], g)
    return D


def _lungs(ctx, g, inside=0.0):
    x, y = ctx.x[None, :], ctx.y[:, None]
    return (ctx.V.lung_level(x, y, g, -1) > inside) | (ctx.V.lung_level(x, y, g, 1) > inside)


def _air(ctx, g):
    x, y = ctx.x[None, :], ctx.y[:, None]
    return -sum(ctx.V.lung(x, y, g, s, bubble=False)[0] for s in (-1, 1))


def _interior(body, px=3):
    """The body less a rim of ``px`` pixels (where the normal image is dark already)."""
    out = body.copy()
    for ax, k in itertools.product((0, 1), (-px, px)):
        out &= np.roll(body, k, axis=ax)
    return out


def _layer_image(ctx, layer, g):
    out = np.zeros((ctx.size, ctx.size), np.float32)
    c = ctx.crop(*layer.box)
    if c is not None:
        out[c[0], c[1]] = layer.fn(c[2], c[3], g)
    return out


@pytest.mark.parametrize("view", VIEWS)
def test_layer_keys_are_complete(view):
    """A layer's key lists every geometry value it reads: changing any other value leaves the
    layer unchanged (else an anatomy change would leave it stale and the next one would
    subtract what the image does not hold). Where only the values left out of ``rest`` change
    (the domes, the ribs' fade), the layer is unchanged above ``top``."""
    ctx = _context(5, view, 96, 0)
    g = ctx.g
    layers = {lay.name: lay for lay in ctx.V.layers(g)}
    for f in fields(g):
        if f.name in ("view", "size", "edge", "breasts"):
            continue
        v = getattr(g, f.name)
        for i, step in itertools.product(range(len(v)) if isinstance(v, tuple) else [None], (0.013, -0.16, 0.14)):
            w = v if i is None else v[i]
            w = w + (1 if isinstance(w, int) else step)
            g2 = replace(g, **{f.name: w if i is None else (*v[:i], w, *v[i + 1:])})
            for lay2 in ctx.V.layers(g2):
                lay = layers[lay2.name]
                a, b = _layer_image(ctx, lay, g), _layer_image(ctx, lay2, g2)
                if lay.key == lay2.key:
                    assert np.array_equal(a, b), (lay.name, f.name, i, step)
                elif lay.rest is not None and lay.rest == lay2.rest:
                    above = ctx.y < min(lay.top, lay2.top)
                    assert np.array_equal(a[above], b[above]), (lay.name, f.name, i, step)


@pytest.mark.parametrize("view", VIEWS)
def test_anatomy_changes_telescope(view):
    """Any set of anatomy changes, in any order, draws exactly the normal anatomy with the final
    geometry (hyperinflation + hypoinflation used to subtract the lungs twice: a white band
    across the bases and a black one under it)."""
    for combo in itertools.chain(itertools.combinations(ANATOMY, 2), [ANATOMY[:3], ANATOMY[::-1]]):
        D, _, body, ctx = _compose(4, tuple(combo), view, 96, 0)
        assert np.allclose(D[body], _draw(ctx, ctx.g)[body], atol=2e-4), [f.kind for f in combo]


def _fluid_at_lung_bottom(seed, before, eff, view, size=128):
    """(per column, the fraction of their air the effusion fills in the two lowest lung pixels;
    whether it put fluid where there is no lung), on the anatomy changed by ``before``."""
    D1, _, _, ctx = _compose(seed, before, view, size, 0)
    D2, _, body, _ = _compose(seed, (*before, eff), view, size, 0)
    fluid, g = D2 - D1, ctx.g
    air, inside = _air(ctx, g), _lungs(ctx, g, g.edge) & body
    filled = np.zeros(size)
    for col in np.flatnonzero(inside.any(0)):
        low = np.flatnonzero(inside[:, col])[-2:]
        filled[col] = (fluid[low, col] / air[low, col]).min()
    return filled, bool(fluid[~_lungs(ctx, g, -g.edge) & body].any())


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("change", [Finding("hyperinflation", "bilateral", "diffuse", s, v)
                                    for s in SEVERITIES for v in ("emphysema", "hyperinflation")]
                         + [Finding("hypoinflation", severity="severe"),
                            Finding("elevated_hemidiaphragm", "right", severity="severe"),
                            Finding("elevated_hemidiaphragm", "left", severity="severe")], ids=str)
def test_effusion_follows_the_diaphragm(view, change):
    """Where an effusion fills the bottom of the normal lungs, it fills the bottom of lungs an
    anatomy change lowered or raised: no pitch-black band of lung between the fluid and a
    hyperinflated diaphragm, and no fluid density under a raised one."""
    for seed, sev in ((2, "moderate"), (9, "severe")):
        eff = Finding("pleural_effusion", "bilateral", "costophrenic", sev)
        normal, _ = _fluid_at_lung_bottom(seed, (), eff, view)
        changed, outside = _fluid_at_lung_bottom(seed, (change,), eff, view)
        full = normal > 0.9  # columns it fills on the normal anatomy (away from its meniscus)
        assert full.sum() > 10 and (changed[full] > 0.4).all(), np.flatnonzero(full & (changed <= 0.4))
        assert not outside


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_stacked_fills_saturate(seed):
    """Opacities, atelectasis, an effusion and a nodule at one place over an enlarged heart:
    together at least as dense as the densest alone, and never more than the air there can take
    (they used to add up to a white blob at the heart border)."""
    heart = (Finding("cardiomegaly", severity="severe"),)
    stack = [Finding(k, "left", "lower", "severe") for k in ("consolidation", "pneumonia", "airspace_opacity")]
    stack += [Finding("atelectasis", "left", "lower", "severe", "plate"), Finding("pleural_effusion", "left"),
              Finding("nodule", "left", "lower", "severe")]
    for view in VIEWS:
        base, _, _, ctx = _compose(seed, heart, view, 96, 0)
        alone = np.max([_compose(seed, (*heart, f), view, 96, 0)[0] - base for f in stack], 0)
        together = _compose(seed, (*heart, *stack), view, 96, 0)[0] - base
        x, y = ctx.x[None, :], ctx.y[:, None]
        room = _air(ctx, ctx.g) - ctx.V.heart(x, y, ctx.g) - ctx.V.medi(x, y, ctx.g)
        assert np.all(together >= alone - 1e-4)
        assert np.all(together <= np.maximum(alone, room) + 1e-4)


@st.composite
def multi_findings(draw):
    """2-6 findings, half of them drawn from the kinds that replace anatomy."""
    out = []
    for _ in range(draw(st.integers(2, 6))):
        kind = draw(st.sampled_from(REPLACING)) if draw(st.booleans()) else draw(st.sampled_from(KINDS))
        t = CATALOGUE[kind]
        out.append(Finding(kind, draw(st.sampled_from(t.sides)), draw(st.sampled_from(t.zones)),
                           draw(st.sampled_from(SEVERITIES)),
                           draw(st.sampled_from(t.variants)) if t.variants else None))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), findings=multi_findings(), view=st.sampled_from(VIEWS),
       acquisition=st.integers(0, 1))
def test_property_combinations_make_no_holes(seed, findings, view, acquisition):
    """Inside the body, a combination is never darker than the normal render's darkest lung
    pixel, or than the darkest pixel of a finding alone (hyperinflation and pneumothorax are
    darker than any normal lung by design), minus a small margin."""
    kw = {"view": view, "size": 96, "acquisition": acquisition}
    r, base = render(seed, findings, **kw), render(seed, (), **kw)
    ctx = _context(seed, view, 96, acquisition)
    floor = float(base.image[_lungs(ctx, ctx.g)].min())
    for f in findings:
        one = render(seed, [f], **kw).image
        if (one != base.image).any():
            floor = min(floor, float(one[one != base.image].min()))
    changed = (r.image != base.image) & _interior(r.body)
    assert not changed.any() or float(r.image[changed].min()) >= floor - 0.02


@st.composite
def anatomy_changes(draw):
    """1-4 anatomy changes (emphysema's bullae and congestion's vessels left out: they are lesions)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        t = CATALOGUE[draw(st.sampled_from(sorted(set(CHANGES) - {"vascular_congestion"})))]
        out.append(Finding(t.name, draw(st.sampled_from(t.sides)), t.zones[0], draw(st.sampled_from(SEVERITIES)),
                           "hyperinflation" if t.name == "hyperinflation" else None))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), changes=anatomy_changes(), view=st.sampled_from(VIEWS),
       effusion=st.sampled_from(SEVERITIES))
def test_property_anatomy_changes_compose(seed, changes, view, effusion):
    """Random anatomy changes draw the normal anatomy with their combined geometry, and an
    effusion added to them puts fluid only inside the lungs as they left them."""
    D, _, body, ctx = _compose(seed, tuple(changes), view, 64, 0)
    assert np.allclose(D[body], _draw(ctx, ctx.g)[body], atol=2e-4)
    eff = Finding("pleural_effusion", "bilateral", "costophrenic", effusion)
    fluid = _compose(seed, (*changes, eff), view, 64, 0)[0] - D
    assert not fluid[~_lungs(ctx, ctx.g, -ctx.g.edge) & body].any()


# --- speed ----------------------------------------------------------------------------------------

def test_bench_render_speed_guard():
    """Measured ~250-330 images/s at 224 px on one core; this only guards against a gross
    regression (shared CI machines are noisy)."""
    assert bench_render(n=5, size=64) > 0
    assert bench_render(n=60, size=224) > 60
