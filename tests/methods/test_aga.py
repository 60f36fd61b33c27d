"""AGA: the batched head equals a per-pair, per-token reference loop (float64, 1e-5); losses
stay finite for any mask, threshold and degenerate similarity; the momentum gate follows its
formula; the fixed-threshold and ablation switches change exactly the right terms; gradients
reach both encoders; the paper-scale config builds offline with random weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from medalign_lite.data.dataset import Batch
from medalign_lite.methods.aga import (
    AGA,
    AGAConfig,
    AGAHead,
    build_aga,
    cross_pair_group_loss,
    minmax_normalize,
    momentum_update,
    threshold_gate,
)

from .fakes import FakeImageEncoder, FakeTextEncoder

LOSS_KEYS = ("loss", "loss_global", "loss_tf", "loss_vf", "loss_gla", "loss_gva")


# --- the reference: one pair, one token, one patch at a time -------------------------------
def _minmax(x: torch.Tensor, eps: float) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    if hi - lo <= eps:
        return torch.ones_like(x)
    return (x - lo) / (hi - lo)


def _group(sims: torch.Tensor, values: torch.Tensor, sigma: float) -> tuple[torch.Tensor, int, bool]:
    """Weighted mean of ``values`` by the normalised ``sims`` ≥ σ (best element if none)."""
    keep = sims >= sigma
    empty = not bool(keep.any())
    if empty:
        keep = sims == sims.max()
    w = torch.where(keep, sims, torch.zeros_like(sims))
    return (w[:, None] * values).sum(0) / w.sum(), int(keep.sum()), empty


def _nce(anchors: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """−1/M Σ_j log exp(cos(a_j, c_j)/τ) / Σ_k exp(cos(a_j, c_k)/τ)."""
    terms = []
    for j in range(anchors.shape[0]):
        logits = torch.stack([F.cosine_similarity(anchors[j], candidates[k], dim=0) / tau
                              for k in range(candidates.shape[0])])
        terms.append(-(logits[j] - torch.logsumexp(logits, 0)))
    return torch.stack(terms).mean()


def reference(head: AGAHead, image_local, image_global, text_local, text_mask, text_global,
              sigma_tg: float, sigma_vg: list[float]) -> dict:
    """AGA written plainly: a loop over pairs, and inside each pair over tokens and patches."""
    c = head.config
    logits = F.normalize(image_global, dim=-1) @ F.normalize(text_global, dim=-1).t() / c.tau1
    target = torch.arange(logits.shape[0])
    l_g = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    parts = {"tf": [], "vf": [], "gla": [], "gva": []}
    sizes_tgv, sizes_pgl, n_empty = [], [], 0
    for i in range(image_local.shape[0]):
        t = F.normalize(text_local[i][text_mask[i]], dim=-1)     # (M, d) valid tokens only
        v = F.normalize(image_local[i], dim=-1)                  # (P, d)
        m, p = t.shape[0], v.shape[0]
        if m == 0:
            continue
        s = t @ v.t()                                            # (M, P)
        tgv = []
        for j in range(m):                                       # each token's visual group
            g, size, empty = _group(_minmax(s[j], c.minmax_eps), v, sigma_tg)
            tgv.append(g), sizes_tgv.append(size)
            n_empty += empty
        pgl = []
        for n in range(p):                                       # each patch's language group
            g, size, empty = _group(_minmax(s[:, n], c.minmax_eps), t, sigma_vg[i])
            pgl.append(g), sizes_pgl.append(size)
            n_empty += empty
        tgv, pgl = torch.stack(tgv), torch.stack(pgl)
        if c.iga_negatives == "elements":
            parts["tf"].append(_nce(tgv, t, c.tau2)), parts["vf"].append(_nce(pgl, v, c.tau2))
        elif c.iga_negatives == "groups":
            parts["tf"].append(_nce(t, tgv, c.tau2)), parts["vf"].append(_nce(v, pgl, c.tau2))
        else:
            parts["tf"].append((_nce(tgv, t, c.tau2) + _nce(t, tgv, c.tau2)) / 2)
            parts["vf"].append((_nce(pgl, v, c.tau2) + _nce(v, pgl, c.tau2)) / 2)
        u, _ = head.bcga.t2v(tgv[None], pgl[None])               # TGV over the pair's PGL
        w, _ = head.bcga.v2t(pgl[None], tgv[None])               # PGL over the pair's TGV
        parts["gla"].append(_nce(tgv, u[0], c.tau3)), parts["gva"].append(_nce(pgl, w[0], c.tau3))
    mean = {k: torch.stack(v).mean() if v else torch.zeros((), dtype=torch.float64) for k, v in parts.items()}
    loss = c.lambda1 * l_g + c.lambda2 / 2 * (mean["tf"] + mean["vf"]) + c.lambda3 / 2 * (mean["gla"] + mean["gva"])
    return {"loss": loss, "loss_global": l_g, "loss_tf": mean["tf"], "loss_vf": mean["vf"],
            "loss_gla": mean["gla"], "loss_gva": mean["gva"], "empty_groups": n_empty,
            "group_size_tgv": sum(sizes_tgv) / max(len(sizes_tgv), 1),
            "group_size_pgl": sum(sizes_pgl) / max(len(sizes_pgl), 1)}


def reference_s_bar(image_local, text_local, text_mask, eps=1e-6) -> tuple[float, float]:
    """S̄ of the TGV- and PGL-normalised similarities over every valid (token, patch) entry."""
    tg, vg, n = 0.0, 0.0, 0
    for i in range(image_local.shape[0]):
        t = F.normalize(text_local[i][text_mask[i]], dim=-1)
        if t.shape[0] == 0:
            continue
        s = t @ F.normalize(image_local[i], dim=-1).t()
        tg += sum(float(_minmax(s[j], eps).sum()) for j in range(s.shape[0]))
        vg += sum(float(_minmax(s[:, k], eps).sum()) for k in range(s.shape[1]))
        n += s.numel()
    return tg / max(n, 1), vg / max(n, 1)


# --- inputs --------------------------------------------------------------------------------
def _inputs(b, t, p, d, seed, mask=None, same_tokens=False, same_patches=False, grad=False):
    g = torch.Generator().manual_seed(seed)
    image_local = torch.randn(b, p, d, generator=g, dtype=torch.float64)
    text_local = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    if same_patches:
        image_local[:] = image_local[:, :1]
    if same_tokens:
        text_local[:] = text_local[:, :1]
    image_global = torch.randn(b, d, generator=g, dtype=torch.float64)
    text_global = torch.randn(b, d, generator=g, dtype=torch.float64)
    if mask is None:
        mask = torch.rand(b, t, generator=g) < 0.7
    xs = [image_local, image_global, text_local, text_global]
    if grad:
        for x in xs:
            x.requires_grad_(True)
    return xs[0], xs[1], xs[2], mask, xs[3]


def _head(d, **kw) -> AGAHead:
    torch.manual_seed(0)
    return AGAHead(AGAConfig(embed_dim=d, **kw)).double()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 6), p=st.integers(1, 7), d=st.integers(2, 6),
       seed=st.integers(0, 10_000), sigma=st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0, 1.3]),
       fixed=st.booleans(), negatives=st.sampled_from(["elements", "groups", "both"]),
       same=st.sampled_from([None, "tokens", "patches"]))
def test_batched_head_matches_per_pair_reference(b, t, p, d, seed, sigma, fixed, negatives, same):
    head = _head(d, sigma_init=sigma, fixed_thresholds=fixed, iga_negatives=negatives,
                 lambda1=0.7, lambda2=1.3, lambda3=0.9).eval()
    x = _inputs(b, t, p, d, seed, same_tokens=same == "tokens", same_patches=same == "patches", grad=True)
    mask = x[3]
    out = head(*x)
    if fixed:
        sigma_tg, sigma_vg = 1.0 / p, [1.0 / max(int(m.sum()), 1) for m in mask]
    else:  # the buffers hold σ in float32
        sigma_tg, sigma_vg = float(head.gate_tg.sigma), [float(head.gate_vg.sigma)] * b
    want = reference(head, *x, sigma_tg, sigma_vg)
    for k in LOSS_KEYS:
        assert torch.isfinite(out[k]), k
        assert abs(float(out[k].detach()) - float(want[k].detach())) < 1e-5, (k, float(out[k]), float(want[k]))
    # the gradients too: every input embedding and BCGA's Q, K, V (min-max, gates, groups, softmaxes)
    leaves = [x[0], x[1], x[2], x[4], *head.parameters()]
    got = torch.autograd.grad(out["loss"], leaves, allow_unused=True)
    ref = torch.autograd.grad(want["loss"], leaves, allow_unused=True)
    for i, (g, r) in enumerate(zip(got, ref)):
        g = torch.zeros_like(leaves[i]) if g is None else g
        r = torch.zeros_like(leaves[i]) if r is None else r
        assert torch.allclose(g, r, atol=1e-7, rtol=1e-6), (i, float((g - r).abs().max()))
    for k in ("empty_groups", "group_size_tgv", "group_size_pgl"):
        assert abs(float(out[k]) - want[k]) < 1e-9, (k, float(out[k]), want[k])
    assert abs(float(out["sigma_tg"]) - sigma_tg) < 1e-12
    assert abs(float(out["sigma_vg"]) - sum(sigma_vg) / b) < 1e-12


def _cross_reference(tokens, patches, mask, sigma, tau):
    """cross_pair_group_loss one (report, image) pair at a time: report i's valid tokens gated over
    image k's patches, their groups, the mean cosine with the tokens; then the two cross-entropies."""
    b = tokens.shape[0]
    z = torch.zeros(b, b, dtype=tokens.dtype) + 0 * tokens.sum()     # a report without a token scores 0
    for i in range(b):
        t = tokens[i][mask[i]]
        for k in range(b):
            if len(t) == 0:
                continue
            s = t @ patches[k].T                                          # (M_i, P)
            lo, hi = s.min(1, keepdim=True).values, s.max(1, keepdim=True).values
            flat = (hi - lo) <= 1e-6
            sn = torch.where(flat, torch.ones_like(s), (s - lo) / torch.where(flat, torch.ones_like(hi), hi - lo))
            w = torch.where(sn >= min(max(sigma, 0.0), 1.0), sn, torch.zeros_like(sn))
            grp = (w @ patches[k]) / w.sum(1, keepdim=True)
            z[i, k] = (F.normalize(grp, dim=1) * t).sum(1).mean()        # inputs are unit vectors: φ = dot
    target = torch.arange(b)
    return F.cross_entropy(z / tau, target), F.cross_entropy(z.T / tau, target)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 6), p=st.integers(1, 7), seed=st.integers(0, 10_000),
       sigma=st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.5]))
def test_cross_pair_group_loss_matches_a_pair_by_pair_reference(b, t, p, seed, sigma):
    g = torch.Generator().manual_seed(seed)
    tokens = F.normalize(torch.randn(b, t, 5, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    patches = F.normalize(torch.randn(b, p, 5, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    mask = torch.rand(b, t, generator=g) < 0.7
    got = cross_pair_group_loss(tokens, patches, mask, sigma, 0.1)
    want = _cross_reference(tokens, patches, mask, sigma, 0.1)
    for a, w in zip(got, want):
        a, w = float(a.detach()), float(w.detach())
        assert math.isfinite(a) and abs(a - w) < 1e-9, (a, w)
    ga = torch.autograd.grad(sum(got), [tokens, patches], allow_unused=True)
    gw = torch.autograd.grad(sum(want), [tokens, patches], allow_unused=True)
    for a, w, x in zip(ga, gw, (tokens, patches)):
        a = torch.zeros_like(x) if a is None else a
        w = torch.zeros_like(x) if w is None else w
        assert torch.allclose(a, w, atol=1e-9), float((a - w).abs().max())


def test_iga_across_pairs_replaces_the_within_pair_terms_and_sees_other_images():
    """iga_scope='batch': loss_tf / loss_vf are the cross-pair loss at σ_tg; BCGA and L_g stay; a
    batch of one pair has no other image to contrast with, so the cross-pair terms are 0."""
    from medalign_lite.nn import l2norm

    x = _inputs(3, 5, 6, 4, 7)
    pair, batch = _head(4, sigma_init=0.4).eval(), _head(4, sigma_init=0.4, iga_scope="batch").eval()
    out, ref = batch(*x), pair(*x)
    want = cross_pair_group_loss(l2norm(x[2]), l2norm(x[0]), x[3], float(batch.gate_tg.sigma), 0.1)
    assert torch.allclose(out["loss_tf"], want[0]) and torch.allclose(out["loss_vf"], want[1])
    for k in ("loss_global", "loss_gla", "loss_gva"):
        assert torch.allclose(out[k], ref[k]), k
    assert float(out["loss_tf"]) > 0.1 and float(out["loss_vf"]) > 0.1
    one = batch(*(v[:1] for v in x))
    assert float(one["loss_tf"]) == 0.0 and float(one["loss_vf"]) == 0.0
    with pytest.raises(ValueError, match="iga_scope"):
        AGAConfig(iga_scope="dataset")


def test_padding_content_never_matters():
    head = _head(5, sigma_init=0.4).eval()
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    image_local, image_global, text_local, _, text_global = _inputs(3, 6, 9, 5, 1, mask=mask)
    base = head(image_local, image_global, text_local, mask, text_global)
    poisoned = text_local.clone()
    poisoned[~mask] = 1e3 * torch.randn_like(poisoned[~mask])  # would win every max if it counted
    out = head(image_local, image_global, poisoned, mask, text_global)
    for k in LOSS_KEYS:
        assert torch.allclose(out[k], base[k], atol=1e-10), k
    assert (out["gated_tg"][~mask] == 0).all() and (out["gated_vg"][~mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 6), p=st.integers(1, 6), seed=st.integers(0, 10_000),
       pattern=st.sampled_from(["random", "single", "none_in_one", "all"]),
       sigma=st.sampled_from([None, 0.0, 0.5, 1.0, 5.0]),
       same=st.sampled_from([None, "tokens", "patches", "both"]), train=st.booleans(), fixed=st.booleans())
def test_losses_and_gradients_finite_for_any_mask(b, t, p, seed, pattern, sigma, same, train, fixed):
    g = torch.Generator().manual_seed(seed)
    if pattern == "single":       # exactly one valid token per pair, anywhere
        mask = F.one_hot(torch.randint(0, t, (b,), generator=g), t).bool()
    elif pattern == "none_in_one":
        mask = torch.rand(b, t, generator=g) < 0.5
        mask[0] = False
    elif pattern == "all":
        mask = torch.ones(b, t, dtype=torch.bool)
    else:
        mask = torch.rand(b, t, generator=g) < 0.5
    head = _head(4, sigma_init=sigma, fixed_thresholds=fixed).train(train)
    x = _inputs(b, t, p, 4, seed, mask=mask, same_tokens=same in ("tokens", "both"),
                same_patches=same in ("patches", "both"), grad=True)
    out = head(*x)
    for k in LOSS_KEYS:
        assert torch.isfinite(out[k]), (k, out[k])
    out["loss"].backward()
    for leaf in (x[0], x[1], x[2], x[4]):
        assert torch.isfinite(leaf.grad).all()
    for prm in head.parameters():
        assert prm.grad is None or torch.isfinite(prm.grad).all()
    if pattern == "single":  # one token: IGA over tokens and BCGA over TGV have no negative → 0
        assert float(out["loss_tf"]) == pytest.approx(0, abs=1e-12)
        assert float(out["loss_gla"]) == pytest.approx(0, abs=1e-12)
    for k in ("sigma_tg", "sigma_vg", "group_size_tgv", "group_size_pgl", "empty_groups"):
        assert out[k].ndim == 0 and torch.isfinite(out[k])


def test_threshold_above_every_similarity_keeps_the_best_element():
    head = _head(6, sigma_init=2.0).eval()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    x = _inputs(2, 4, 5, 6, 3, mask=mask)
    out = head(*x)
    n_groups = int(mask.sum()) + 2 * 5  # every valid TGV and every PGL of the two pairs
    assert float(out["empty_groups"]) == n_groups
    assert float(out["empty_tgv"]) == int(mask.sum()) and float(out["empty_pgl"]) == 10
    assert float(out["group_size_tgv"]) == 1.0 and float(out["group_size_pgl"]) == 1.0  # no ties
    assert (out["gated_tg"].sum(2)[mask] == 1).all()   # the best patch of each token, weight 1
    assert (out["gated_vg"].sum(1) == 1).all()          # the best token of each patch
    # the best element alone: p_j is token j's most similar patch
    p = out["gated_tg"].argmax(2)
    assert torch.equal(p, out["sim"].masked_fill(~mask[..., None], -2).argmax(2))
    for k in LOSS_KEYS:
        assert torch.isfinite(out[k])
    want = reference(head, *x, 2.0, [2.0, 2.0])
    assert abs(float(out["loss"].detach()) - float(want["loss"].detach())) < 1e-5


def test_all_equal_similarities_give_uniform_groups():
    s = torch.full((1, 3, 4), 0.3, dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])[..., None].expand(1, 3, 4)
    s_tg, flat = minmax_normalize(s, mask, dim=2, fill=-1.0)
    assert torch.equal(s_tg, torch.where(mask, 1.0, -1.0).double())
    assert flat[0, :2].all() and not flat[0, 2].any()
    for sigma in (-0.5, 0.0, 0.5, 1.0, 3.0):  # all-equal groups keep every valid element
        gated, keep = threshold_gate(s_tg, sigma)
        assert torch.equal(keep, mask) and torch.equal(gated, mask.double())
    head = _head(4, sigma_init=0.5).eval()
    x = _inputs(2, 3, 4, 4, 0, mask=torch.ones(2, 3, dtype=torch.bool), same_tokens=True, same_patches=True)
    out = head(*x)
    assert float(out["empty_groups"]) == 0
    assert float(out["group_size_tgv"]) == 4 and float(out["group_size_pgl"]) == 3
    assert (out["sim_tg"] == 1).all() and (out["sim_vg"] == 1).all()
    for k in LOSS_KEYS:
        assert torch.isfinite(out[k])


def test_momentum_gate_update_formula_train_only():
    d = 4
    head = _head(d, gamma_tg=0.9, gamma_vg=0.8)          # σ from the first training batch
    x1 = _inputs(3, 5, 6, d, 1)
    x2 = _inputs(3, 5, 6, d, 2)
    s1 = reference_s_bar(x1[0], x1[2], x1[3])
    s2 = reference_s_bar(x2[0], x2[2], x2[3])
    out = head.eval()(*x1)                               # untrained gate, eval: the batch's S̄, no update
    assert not head.gate_tg.initialized and float(out["sigma_tg"]) == pytest.approx(s1[0], abs=1e-9)
    out = head.train()(*x1)                              # first training step: σ = S̄
    assert float(out["sigma_tg"]) == pytest.approx(s1[0], abs=1e-9)
    assert float(head.gate_tg.sigma) == pytest.approx(s1[0], abs=1e-9)
    assert float(head.gate_vg.sigma) == pytest.approx(s1[1], abs=1e-9)
    out = head(*x2)                                      # gates with σ from before the step
    assert float(out["s_bar_tg"]) == pytest.approx(s2[0], abs=1e-9)  # the target σ moves towards
    assert float(out["s_bar_vg"]) == pytest.approx(s2[1], abs=1e-9)
    assert float(out["sigma_tg"]) == pytest.approx(s1[0], abs=1e-9)
    assert float(out["sigma_vg"]) == pytest.approx(s1[1], abs=1e-9)
    assert float(head.gate_tg.sigma) == pytest.approx(0.9 * s1[0] + 0.1 * s2[0], abs=1e-9)
    assert float(head.gate_vg.sigma) == pytest.approx(0.8 * s1[1] + 0.2 * s2[1], abs=1e-9)
    before = head.gate_tg.sigma.clone(), head.gate_vg.sigma.clone()
    out = head.eval()(*x1)
    assert torch.equal(head.gate_tg.sigma, before[0]) and torch.equal(head.gate_vg.sigma, before[1])
    assert float(out["sigma_tg"]) == pytest.approx(float(before[0]), abs=1e-12)
    assert float(momentum_update(torch.tensor(0.5), torch.tensor(0.1), 0.99)) == pytest.approx(0.496)
    # an explicit start value; the thresholds are buffers saved with the model
    head = _head(d, sigma_init=0.25, gamma_tg=0.99).train()
    head(*x1)
    assert float(head.gate_tg.sigma) == pytest.approx(0.99 * 0.25 + 0.01 * s1[0], abs=1e-9)
    assert {"gate_tg.sigma", "gate_vg.sigma", "gate_tg.initialized"} <= set(head.state_dict())


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 6), p=st.integers(1, 6), seed=st.integers(0, 10_000),
       pattern=st.sampled_from(["random", "none_in_one", "none", "all"]),
       same=st.sampled_from([None, "tokens", "patches"]))
def test_s_bar_matches_per_pair_reference_and_moves_sigma_only_when_valid(b, t, p, seed, pattern, same):
    """S̄ is the mean over the batch's valid (token, patch) entries only; σ follows the momentum
    formula with it when there is one, and stays when there is none."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) < 0.6
    if pattern == "none_in_one":
        mask[0] = False
    elif pattern == "none":
        mask[:] = False
    elif pattern == "all":
        mask[:] = True
    x = _inputs(b, t, p, 4, seed, mask=mask, same_tokens=same == "tokens", same_patches=same == "patches")
    head = _head(4, sigma_init=0.37, gamma_tg=0.9, gamma_vg=0.8).train()
    out = head(*x)
    want_tg, want_vg = reference_s_bar(x[0], x[2], mask)
    assert float(out["s_bar_tg"]) == pytest.approx(want_tg, abs=1e-9)
    assert float(out["s_bar_vg"]) == pytest.approx(want_vg, abs=1e-9)
    if mask.any():
        assert float(head.gate_tg.sigma) == pytest.approx(0.9 * 0.37 + 0.1 * want_tg, abs=1e-6)
        assert float(head.gate_vg.sigma) == pytest.approx(0.8 * 0.37 + 0.2 * want_vg, abs=1e-6)
    else:  # no valid token in the batch: nothing to move towards
        assert float(head.gate_tg.sigma) == float(head.gate_vg.sigma) == pytest.approx(0.37)


def test_momentum_update_needs_a_finite_s_bar_of_a_valid_batch():
    s = torch.tensor(0.5)
    assert float(momentum_update(s, torch.tensor(0.1), 0.9)) == pytest.approx(0.46)
    assert float(momentum_update(s, torch.tensor(0.1), 0.9, valid=torch.tensor(False))) == 0.5
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert float(momentum_update(s, torch.tensor(bad), 0.9)) == 0.5


def test_a_nan_batch_leaves_sigma_unchanged():
    """Before: one NaN batch made σ NaN for good; later losses were finite but every group was
    empty and IGA/BCGA sat at log T / log P."""
    d, b, t, p = 4, 3, 5, 6
    mask = torch.ones(b, t, dtype=torch.bool)
    clean1, clean2 = _inputs(b, t, p, d, 1, mask=mask), _inputs(b, t, p, d, 2, mask=mask)
    poisoned = list(clean1)
    poisoned[0] = clean1[0].clone()
    poisoned[0][1, 2, 0] = float("nan")  # one patch of one image
    for init in (None, 0.5):
        ref, head = _head(d, sigma_init=init).train(), _head(d, sigma_init=init).train()
        if init is None:  # an initialised gate first (the uninitialised case is below)
            ref(*clean1), head(*clean1)
        before = head.gate_tg.sigma.clone(), head.gate_vg.sigma.clone()
        out = head(*poisoned)
        assert not torch.isfinite(out["s_bar_tg"]) and not torch.isfinite(out["loss"])
        assert torch.equal(head.gate_tg.sigma, before[0]) and torch.equal(head.gate_vg.sigma, before[1])
        want, got = ref(*clean2), head(*clean2)  # as if the NaN batch had never been seen
        assert torch.equal(head.gate_tg.sigma, ref.gate_tg.sigma) and torch.equal(head.gate_vg.sigma, ref.gate_vg.sigma)
        for k in LOSS_KEYS:
            assert torch.isfinite(got[k]) and torch.equal(got[k], want[k]), k
        assert float(got["group_size_tgv"]) > 0 and float(got["group_size_pgl"]) > 0
        assert float(got["loss_tf"]) < math.log(t) - 1e-3  # not the flat log T of empty groups
    fresh = _head(d).train()  # the first training batch is the NaN one: σ stays uninitialised
    fresh(*poisoned)
    assert not fresh.gate_tg.initialized and torch.isfinite(fresh.gate_tg.sigma)
    fresh(*clean2)
    s2 = reference_s_bar(clean2[0], clean2[2], mask)
    assert float(fresh.gate_tg.sigma) == pytest.approx(s2[0], abs=1e-6) and fresh.gate_tg.initialized


def test_a_batch_without_valid_tokens_leaves_sigma_unchanged():
    """Before: S̄ = 0 for such a batch pulled σ towards 0 (0.530 → 0.514 in 3 steps)."""
    d = 4
    empty = _inputs(2, 5, 6, d, 1, mask=torch.zeros(2, 5, dtype=torch.bool))
    head = _head(d, sigma_init=0.53).train()
    for _ in range(3):
        out = head(*empty)
        for k in LOSS_KEYS:
            assert torch.isfinite(out[k]), k
    assert float(head.gate_tg.sigma) == float(head.gate_vg.sigma) == pytest.approx(0.53)
    fresh = _head(d).train()
    fresh(*empty)
    assert not fresh.gate_tg.initialized and not fresh.gate_vg.initialized


def test_fixed_threshold_variant():
    d, p = 4, 7
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]).bool()
    x = _inputs(2, 5, p, d, 5, mask=mask)
    head = _head(d, fixed_thresholds=True).train()
    out = head(*x)
    assert float(out["sigma_tg"]) == pytest.approx(1 / p)
    assert float(out["sigma_vg"]) == pytest.approx((1 / 4 + 1 / 2) / 2)  # 1/M_i, reported as the mean
    assert not head.gate_tg.initialized and float(head.gate_tg.sigma) == 0  # no momentum update
    want = reference(head, *x, 1 / p, [1 / 4, 1 / 2])
    assert abs(float(out["loss"].detach()) - float(want["loss"].detach())) < 1e-5
    pinned = _head(d, fixed_thresholds=True, fixed_sigma_tg=1 / 361, fixed_sigma_vg=1 / 97).train()
    out = pinned(*x)
    assert float(out["sigma_tg"]) == pytest.approx(1 / 361) and float(out["sigma_vg"]) == pytest.approx(1 / 97)


def test_ablation_switches_remove_the_right_terms():
    d = 4
    x = _inputs(3, 5, 6, d, 7, mask=torch.ones(3, 5, dtype=torch.bool))
    kw = {"sigma_init": 0.5, "lambda1": 0.6, "lambda2": 1.4, "lambda3": 0.8}
    full = _head(d, **kw).eval()(*x)
    l_g, iga, bcga = full["loss_global"], full["loss_tf"] + full["loss_vf"], full["loss_gla"] + full["loss_gva"]
    assert torch.allclose(full["loss"], 0.6 * l_g + 0.7 * iga + 0.4 * bcga)
    no_iga = _head(d, use_iga=False, **kw).eval()(*x)
    assert "loss_tf" not in no_iga and "loss_vf" not in no_iga and "loss_gla" in no_iga
    assert torch.allclose(no_iga["loss"], 0.6 * l_g + 0.4 * bcga)
    no_bcga_head = _head(d, use_bcga=False, **kw).eval()
    no_bcga = no_bcga_head(*x)
    assert no_bcga_head.bcga is None and not list(no_bcga_head.parameters())
    assert "loss_gla" not in no_bcga and "attn_t2v" not in no_bcga and "loss_tf" in no_bcga
    assert torch.allclose(no_bcga["loss"], 0.6 * l_g + 0.7 * iga)
    glob = _head(d, global_only=True, **kw).eval()(*x)
    assert not {"loss_tf", "loss_vf", "loss_gla", "loss_gva", "sigma_tg"} & set(glob)
    assert torch.allclose(glob["loss"], 0.6 * l_g)
    fixed = _head(d, fixed_thresholds=True, **kw).eval()(*x)
    assert torch.allclose(fixed["loss_global"], l_g) and not torch.allclose(fixed["loss_tf"], full["loss_tf"])


# --- the model on (fake) encoders ----------------------------------------------------------
def _batch(b=4, t=7, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (b, t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor([t - (i % 3) * 2 for i in range(b)])[:, None]
    return Batch(images=torch.randn(b, 1, size, size, generator=g), texts=[""] * b,
                 study_ids=[str(i) for i in range(b)], labels=torch.zeros(b, 14),
                 input_ids=ids * mask, attention_mask=mask.long())


def test_gradients_reach_both_encoders_and_bcga():
    torch.manual_seed(0)
    model = AGA(FakeImageEncoder(), FakeTextEncoder(), AGAConfig(embed_dim=8)).train()
    out = model(_batch())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.image_encoder.conv.weight.grad.abs().sum() > 0
    assert model.text_encoder.emb.weight.grad.abs().sum() > 0
    for name in ("img_local", "txt_local", "img_global", "txt_global"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name
    for name, prm in model.head.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name
    assert out["sim"].shape == (4, 7, 16) and out["attn_t2v"].shape == (4, 7, 16)
    assert out["attn_v2t"].shape == (4, 16, 7)
    assert not out["sim"].requires_grad and not out["gated_tg"].requires_grad
    e = model.encode_image(_batch().images)
    assert e.shape == (4, 8) and torch.allclose(e.norm(dim=-1), torch.ones(4))
    # local-only gradient: IGA and BCGA alone reach both encoders too
    model.zero_grad()
    local = AGA(FakeImageEncoder(), FakeTextEncoder(), AGAConfig(embed_dim=8, lambda1=0.0))
    local(_batch())["loss"].backward()
    assert local.image_encoder.conv.weight.grad.abs().sum() > 0
    assert local.text_encoder.emb.weight.grad.abs().sum() > 0


def test_registered_and_configs_load():
    from medalign_lite.config import load_config
    from medalign_lite.methods import get_method
    from medalign_lite.models.text import TextConfig
    from medalign_lite.models.vision import VisionConfig
    from medalign_lite.train import TrainConfig

    spec = get_method("aga")
    assert (spec.module, spec.config, spec.kind, spec.config_name("full")) == (AGA, AGAConfig, "dual_encoder", "aga_full")
    tiny = {s: load_config(c, "aga_tiny", section=s) for s, c in
            (("model", AGAConfig), ("vision", VisionConfig), ("text", TextConfig), ("train", TrainConfig))}
    assert tiny["model"].embed_dim == 128 and tiny["vision"].name == "tiny_cnn" and tiny["text"].name == "minilm"
    assert tiny["train"].stages[0].max_steps >= 1 and tiny["vision"].image_size == 96
    assert tiny["train"].stages[0].trainable == ["*"]  # not written in the file: default_trainable decides
    full = {s: load_config(c, "aga_full", section=s) for s, c in
            (("model", AGAConfig), ("vision", VisionConfig), ("text", TextConfig), ("train", TrainConfig))}
    assert (full["model"].embed_dim, full["model"].tau2, full["model"].tau3) == (128, 0.3, 0.1)
    assert (full["vision"].name, full["vision"].local_stage, full["vision"].image_size) == ("timm:resnet50", "layer3", 299)
    assert (full["text"].name, full["text"].max_length) == ("emilyalsentzer/Bio_ClinicalBERT", 97)
    assert full["train"].batch_size == 48


BERT_BASE = ("{model_type: bert, vocab_size: 30522, hidden_size: 768, num_hidden_layers: 12, "
             "num_attention_heads: 12, intermediate_size: 3072, max_position_embeddings: 512}")


@pytest.mark.slow
def test_aga_full_random_weights_forward_backward():
    """Paper scale, offline: ResNet-50 layer3 at 299 px (361 patches) + a BERT-base-shaped
    random text encoder (MiniLM's tokenizer stands in for BioClinicalBERT's), batch 2."""
    torch.manual_seed(0)
    model = build_aga("aga_full", ["vision.pretrained=false", "text.pretrained=false",
                                   "text.tokenizer=minilm", f"text.hf_config={BERT_BASE}"]).train()
    assert model.text_encoder.model.config.num_hidden_layers == 12 and model.embed_dim == 128
    tok = model.tokenize(["Small left pleural effusion. " * 30, "No acute cardiopulmonary process."])
    assert tok["input_ids"].shape[1] == 97
    batch = Batch(images=torch.randn(2, 1, 299, 299), texts=["", ""], study_ids=["a", "b"],
                  labels=torch.zeros(2, 14), input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                  word_ids=tok["word_ids"])
    out = model(batch)
    assert out["sim"].shape[2] == 361
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.image_encoder.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.text_encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert 0 < float(out["sigma_tg"]) < 1 and 0 < float(out["sigma_vg"]) < 1


def test_bench_aga_small_shapes_and_cli(capsys):
    import json

    from medalign_lite.bench import bench_aga
    from medalign_lite.cli import build_parser, main

    tiny_bert = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}
    res = bench_aga(3, t=6, p=16, d=8, gloria_dims=(16, 8), repeats=1, vision="tiny_cnn", image_size=64,
                    text_hf_config=tiny_bert, dtypes=("float32", "bfloat16"))  # GPU default: both dtypes
    assert set(res["by_dtype"]["bfloat16"]) >= {"head_s", "encoders_s", "head_share", "vs_gloria", "vs_gloria_d8"}
    assert {"head_share", "vs_gloria", "vs_gloria_d8", "head_s", "encoders_s"} <= set(res)
    assert res["encoder_P"] == 16 and res["text_layers"] == 1 and math.isfinite(res["head_share"])
    # on a CPU the encoders run on 2 pairs and are extrapolated per pair to B; GLoRIA and the head run at B
    assert res["encoders_measured_B"] == 2 and res["encoders_extrapolated"] and res["B"] == 3
    assert res["dtypes"] == ["float32", "bfloat16"] and res["by_dtype"]["float32"]["head_s"] == res["head_s"]
    assert res["head_share"] == pytest.approx(res["head_s"] / res["encoders_s"])
    args = build_parser().parse_args(["bench", "aga", "--json"])
    assert (args.batch_size, args.tokens, args.patches, args.dim) == (48, 97, 361, 128)  # the paper's, on every device
    rc = main(["bench", "aga", "--json", "--batch-size", "3", "--tokens", "6", "--patches", "16", "--dim", "8",
               "--gloria-dims", "16", "--repeats", "1", "--vision", "tiny_cnn", "--image-size", "64",
               "--encoder-batch", "1"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["B"] == 3 and math.isfinite(res["vs_gloria"]) and res["encoders_measured_B"] == 1
    assert any("scaled down" in line and "extrapolated" in line for line in lines)


def test_term_gradient_norms_match_single_term_models_and_restore_state():
    from medalign_lite.methods.aga import term_gradient_norms

    torch.manual_seed(0)
    model = AGA(FakeImageEncoder(), FakeTextEncoder(), AGAConfig(embed_dim=8)).train()
    batch = _batch()
    norms = term_gradient_norms(model, batch)
    assert set(norms) == {"L_g", "IGA", "BCGA"} and all(v > 0 for v in norms.values())
    assert (model.config.lambda1, model.config.lambda2, model.config.lambda3) == (1.0, 1.0, 1.0) and model.training
    # the IGA entry is the gradient of (L_tf + L_vf)/2 alone
    model.config.lambda1, model.config.lambda3 = 0.0, 0.0
    model.eval()
    loss = model(batch)["loss"]
    g = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if n.startswith("image_encoder.")])
    assert norms["IGA"] == pytest.approx(float(torch.sqrt(sum((x.double() ** 2).sum() for x in g))), rel=1e-6)
    assert set(term_gradient_norms(AGA(FakeImageEncoder(), FakeTextEncoder(),
                                       AGAConfig(embed_dim=8, use_bcga=False)), batch)) == {"L_g", "IGA"}


# --- torch.compile: the same numbers, a clean fallback, an opt-out ---------------------------
@pytest.fixture
def compile_with(monkeypatch):
    """Compile the head's local part with the given torch.compile options, fresh (no compiled
    function or recorded failure from an earlier test)."""
    from medalign_lite.methods import aga

    def use(**options):
        monkeypatch.setattr(aga.head, "COMPILE_OPTIONS", options)
        monkeypatch.setattr(aga.head, "_compiled_local", None)
        monkeypatch.setattr(aga.head, "_compile_error", None)
        return aga
    return use


@pytest.mark.parametrize("backend,kw", [("aot_eager", {}),  # with its backward graph
                                        ("eager", {"fixed_thresholds": True, "iga_negatives": "both", "bcga_heads": 2})])
def test_compiled_head_matches_eager_whole_graph(compile_with, backend, kw):
    """The local part traces as one graph (fullgraph: no graph break, σ read and never written
    inside) and gives what the eager head gives, σ updates included, for batches of several
    lengths (T varies with the longest report)."""
    compile_with(backend=backend, fullgraph=True)
    compiled = _head(6, compile="always", gamma_tg=0.9, **kw).train()
    eager = _head(6, compile="never", gamma_tg=0.9, **kw).train()
    for t, seed in ((5, 1), (8, 2)):
        x = _inputs(3, t, 7, 6, seed)
        a, b = compiled(*x), eager(*x)
        for k in (*LOSS_KEYS, "sigma_tg", "sigma_vg", "group_size_tgv", "empty_groups"):
            assert torch.allclose(a[k], b[k], atol=1e-12), k
        assert torch.equal(compiled.gate_tg.sigma, eager.gate_tg.sigma)
    if backend == "eager":  # evaluation (no update of σ) traces as well; the quick backend checks it
        out = compiled.eval()(*_inputs(2, 4, 7, 6, 4))
        assert torch.allclose(out["loss"], eager.eval()(*_inputs(2, 4, 7, 6, 4))["loss"], atol=1e-12)


def test_compile_failure_falls_back_to_eager_with_one_warning(compile_with):
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    aga = compile_with(backend=broken)
    head, ref = _head(5, compile="always").train(), _head(5, compile="never").train()
    x = _inputs(2, 4, 6, 5, 0)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no compiler here"):
        out = head(*x)
    assert torch.allclose(out["loss"], ref(*x)["loss"], atol=1e-12)
    assert torch.equal(head.gate_tg.sigma, ref.gate_tg.sigma)  # σ moved once, as in the eager head
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head(*x)  # eager from now on, silently
    assert "no compiler here" in aga.head._compile_error


def test_compile_modes():
    """auto: compiled on CUDA only; never: eager everywhere; always: also on CPU."""
    from medalign_lite.methods import aga

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    eager = AGAHead.local_terms
    assert _head(4)._local_fn(cpu) is eager and _head(4, compile="never")._local_fn(cuda) is eager
    if aga.head._compile_error is None:
        assert _head(4)._local_fn(cuda) is not eager and _head(4, compile="always")._local_fn(cpu) is not eager
    with pytest.raises(ValueError, match="compile must be"):
        AGAConfig(compile="yes")
