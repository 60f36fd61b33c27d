"""ExGra-Med: the graphs, the factorised quadratic term against the explicit edge-pair sum
(float64), the solvers against brute force, batching, the blackbox / I-MLE gradient against
finite differences of the Gumbel-smoothed loss, toy training to a zero Hamming loss, node
features (masked pooling), the LLaVA-style input, gradients to every modality and the GNN,
edge-case batch sizes, bf16, generation with padded questions, and the packaged configs."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medalign_lite.methods.exgramed import (
    BarycenterGraphAligner,
    ExGraMed,
    ExGraMedConfig,
    QuadraticCost,
    SharedGNN,
    barycenter,
    blackbox_surrogate,
    edge_weights,
    gumbel,
    hamming,
    ipfp,
    knn_graph,
    lap,
    matching_cost,
    unary_cost,
)
from medalign_lite.models.llm import LLMConfig, load_causal_lm
from medalign_lite.text.tokenizer import save_word_tokenizer, train_word_tokenizer
from medalign_lite.train import Stage

from .fakes import FakeImageEncoder

# --- references: one edge pair, one node, one permutation at a time -------------------------


def explicit_quadratic(h, g, a1, a2, x, weight=0.5, shift=0.25):
    """Σ_{ij∈E₁} Σ_{ab∈E₂} (shift − weight ⟨ê_ij, f̂_ab⟩) X_ia X_jb, one problem (float64 loop)."""
    n = h.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i, j in itertools.product(range(n), range(n)):
        if not a1[i, j]:
            continue
        e = F.normalize(h[i] - h[j], dim=0)
        for a, b in itertools.product(range(n), range(n)):
            if a2[a, b]:
                total = total + (shift - weight * (e @ F.normalize(g[a] - g[b], dim=0))) * x[i, a] * x[j, b]
    return total


def quad_of(h, g, k=3, share=False):
    g1 = knn_graph(h, k)
    g2 = g1 if share else knn_graph(g, k)
    return QuadraticCost.from_graphs(h, g, edge_weights(h, g1), edge_weights(g, g2), g1.adjacency, g2.adjacency)


def permutations(n: int) -> torch.Tensor:
    return torch.stack([torch.eye(n, dtype=torch.float64)[list(p)] for p in itertools.permutations(range(n))])


def brute_force(unary, quad=None):
    """The exact optimum of every problem of (P, n, n) costs by enumerating the n! permutations."""
    perms = permutations(unary.shape[-1]).to(unary.dtype)                    # (n!, n, n)
    x = perms[:, None].expand(-1, unary.shape[0], -1, -1)                     # (n!, P, n, n)
    f = (unary * x).sum((-1, -2)) + (quad.value(x) if quad is not None else 0)
    return perms[f.argmin(0)], f.min(0).values


# --- graphs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", [(1, 5), (2, 5), (3, 5), (9, 5), (12, 3)])
def test_knn_rows_have_k_prime_nearest_others_and_no_self_loops(n, k):
    x = torch.randn(2, n, 7, generator=torch.Generator().manual_seed(n))
    g = knn_graph(x, k)
    kk = min(k, n - 1)
    assert g.adjacency.shape == (2, n, n) and g.k == kk
    assert (g.adjacency.sum(-1) == kk).all() and (g.adjacency.diagonal(dim1=-2, dim2=-1) == 0).all()
    for p in range(2):
        for i in range(n):  # reference: the kk closest other nodes
            d = [(float((x[p, i] - x[p, j]).norm()), j) for j in range(n) if j != i]
            want = {j for _, j in sorted(d)[:kk]}
            assert set(torch.nonzero(g.adjacency[p, i]).flatten().tolist()) == want
            assert set(g.neighbours[p, i].tolist()) == want


def test_dense_graph_conv_equals_a_per_node_max_loop():
    torch.manual_seed(0)
    gnn = SharedGNN(6, 5, layers=2, dropout=0.0).double()
    x = torch.randn(3, 8, 6, dtype=torch.float64)
    g = knn_graph(x, 3)
    out = gnn(x, g)
    ref = x
    for conv in gnn.convs:
        rows = []
        for p in range(3):
            rows.append(torch.stack([conv.lin_root(ref[p, i]) + conv.lin_rel(
                torch.stack([ref[p, j] for j in g.neighbours[p, i]]).max(0).values) for i in range(8)]))
        ref = F.relu(torch.stack(rows))
    torch.testing.assert_close(out, ref)
    assert sum(p.numel() for p in SharedGNN(4096).parameters()) == 4 * 4096 ** 2 + 2 * 4096  # ≈ 67 M (official)


def test_barycenter_is_the_mean_and_carries_gradient_to_every_modality():
    z = torch.randn(3, 5, 4, requires_grad=True)
    zb = barycenter(z)
    torch.testing.assert_close(zb, (z[0] + z[1] + z[2]) / 3)
    zb.sum().backward()
    assert (z.grad == 1 / 3).all()


# --- the quadratic term ------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 7), k=st.integers(1, 4), seed=st.integers(0, 10_000), share=st.booleans(),
       soft=st.booleans())
@example(n=3, k=1, seed=3227, share=False, soft=False)  # two equal nodes: 1.4e-9 off before edge_weights zeroed them
def test_factorised_quadratic_term_equals_the_explicit_edge_pair_sum(n, k, seed, share, soft):
    g = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(2, n, 5, generator=g, dtype=torch.float64)) + 0.1
    gg = torch.randn(2, n, 5, generator=g, dtype=torch.float64)
    x = torch.rand(2, n, n, generator=g, dtype=torch.float64) if soft else \
        torch.stack([torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=g)] for _ in range(2)])
    q = quad_of(h, gg, k, share)
    a2 = q.a1 if share else q.a2
    want = torch.stack([explicit_quadratic(h[p], gg[p], q.a1[p], a2[p], x[p]) for p in range(2)])
    torch.testing.assert_close(q.value(x), want, rtol=1e-9, atol=1e-9)


def test_quadratic_gradient_equals_autograd_and_broadcasts_over_samples():
    torch.manual_seed(1)
    h, g = torch.randn(3, 7, 5, dtype=torch.float64), torch.randn(3, 7, 5, dtype=torch.float64)
    q = quad_of(h, g)
    x = torch.rand(4, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    want, = torch.autograd.grad(q.value(x).sum(), x)
    torch.testing.assert_close(q.grad(x), want)
    assert q.value(x).shape == (4, 3)
    torch.testing.assert_close(q.value(x.detach()), 0.5 * (x * q.grad(x)).sum((-1, -2)))  # degree 2


# --- solvers --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_lap_equals_brute_force(n):
    u = torch.randn(5, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    x = lap(u)
    _, f_best = brute_force(u)
    assert ((x.sum(-1) == 1) & (x.sum(-2) == 1)).all()
    torch.testing.assert_close((u * x).sum((-1, -2)), f_best)


def test_ipfp_never_worse_than_its_lap_start_and_optimal_on_most_brute_forced_qaps():
    """30 QAPs of 6 nodes (seed 0): strong quadratic terms (w = 2), unary costs of the same scale.
    The rate of exact optima is the test's statement (≥ 70 %; when written IPFP found the optimum
    of all 30, its LAP start of 10, and it left the LAP start on 20)."""
    g = torch.Generator().manual_seed(0)
    hits, improved, n_problems = 0, 0, 30
    for _ in range(n_problems // 5):
        h = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
        gg = h[:, torch.randperm(6, generator=g)] + 0.7 * torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
        q = quad_of(h, gg, 3)
        q.weight = 2.0
        u = unary_cost(h, gg) + 0.3 * torch.randn(5, 6, 6, generator=g, dtype=torch.float64)
        x = ipfp(u, q)
        assert ((x.sum(-1) == 1) & (x.sum(-2) == 1)).all()
        f_x, f_lap = matching_cost(x, u, q), matching_cost(lap(u), u, q)
        assert (f_x <= f_lap + 1e-12).all()
        _, f_best = brute_force(u, q)
        assert (f_x >= f_best - 1e-9).all()
        hits += int((f_x - f_best).abs().le(1e-9).sum())
        improved += int((f_x < f_lap - 1e-9).sum())
    assert hits / n_problems >= 0.7, f"IPFP optimal on {hits}/{n_problems}"
    assert improved > 0  # the quadratic term matters on these problems: IPFP leaves the LAP start


@pytest.mark.parametrize("solver", ["lap", "ipfp"])
def test_batched_solves_equal_per_instance_and_ignore_problem_order(solver):
    g = torch.Generator().manual_seed(3)
    h, gg = torch.randn(6, 9, 5, generator=g), torch.randn(6, 9, 5, generator=g)
    q = quad_of(h, gg)
    u = unary_cost(h, gg) + gumbel((6, 9, 9), 0.3, generator=g)
    solve = (lambda uu, qq: lap(uu)) if solver == "lap" else ipfp
    x = solve(u, q)
    one = lambda p: QuadraticCost(q.s[p:p + 1], q.a1w[p:p + 1], q.a2w[p:p + 1], q.a1[p:p + 1], q.a2[p:p + 1])
    for p in range(6):
        torch.testing.assert_close(solve(u[p:p + 1], one(p))[0], x[p])
    perm = torch.randperm(6, generator=g)
    qp = QuadraticCost(q.s[perm], q.a1w[perm], q.a2w[perm], q.a1[perm], q.a2[perm])
    torch.testing.assert_close(solve(u[perm], qp), x[perm])


def test_ipfp_recovers_a_known_permutation_at_low_noise():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(4, 16, 32, generator=g)
    perm = torch.randperm(16, generator=g)
    gg = h[:, perm] + 0.1 * torch.randn(4, 16, 32, generator=g)
    x = ipfp(unary_cost(h, gg), quad_of(h, gg, 5, share=False))
    assert (x.argmax(-1) == torch.argsort(perm)).all()


# --- the blackbox / I-MLE gradient -------------------------------------------------------------


def test_imle_gradient_matches_finite_differences_of_the_gumbel_smoothed_loss():
    """4×4 LAP, brute-force MAP, τ = 0.5, 50 k common-random-number samples: the surrogate's
    gradient against central differences of E_ε[Hamming(MAP(θ + ε), I)] (h = 0.05)."""
    n, samples = 4, 50_000
    theta = 0.5 * torch.randn(1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(n, dtype=torch.float64)
    eps = gumbel((samples, 1, n, n), 0.5, generator=torch.Generator().manual_seed(1)).double()
    smooth = lambda th: hamming(brute_force(th + eps.flatten(0, 1))[0], eye).mean()
    fd = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), range(n)):
        e = torch.zeros(1, n, n, dtype=torch.float64)
        e[0, i, j] = 0.05
        fd[i, j] = (smooth(theta + e) - smooth(theta - e)) / 0.1
    oracle = lambda u, q: brute_force(u.flatten(0, -3))[0].view_as(u)
    cos = {}
    for lam in (0.5, 10.0):
        th = theta.clone().requires_grad_()
        loss, _, _ = blackbox_surrogate(th, None, eye, eps, lam=lam, solver=oracle)
        grad, = torch.autograd.grad(loss.mean(), th)
        cos[lam] = float(F.cosine_similarity(grad.flatten(), fd.flatten(), dim=0))
    assert cos[0.5] > 0.95, cos
    assert cos[10.0] > 0.5, cos  # large λ: still a descent direction, a cruder one


def test_imle_gradient_is_the_blackbox_difference_and_zero_at_the_identity():
    torch.manual_seed(0)
    n = 6
    u = torch.randn(2, n, n, requires_grad=True)
    noise = gumbel((1, 1, n, n), 0.05)
    loss, y, yt = blackbox_surrogate(u, None, torch.eye(n), noise, lam=80.0, solver="lap")
    grad, = torch.autograd.grad(loss.sum(), u)
    torch.testing.assert_close(grad, ((yt - y) / 80.0).sum(0))
    torch.testing.assert_close(loss.detach(), hamming(y, torch.eye(n)))
    # already the identity (strongly preferred): y = y′ = I, loss 0 and no gradient, any λ
    u_id = (-5 * torch.eye(n)).expand(2, n, n).clone().requires_grad_()
    for lam in (0.1, 80.0):
        loss, y, _ = blackbox_surrogate(u_id, None, torch.eye(n), noise, lam=lam, solver="ipfp")
        grad, = torch.autograd.grad(loss.sum(), u_id)
        assert float(loss.detach().sum()) == 0 and (y == torch.eye(n)).all() and not grad.any()


def test_toy_training_drives_the_hamming_loss_to_zero():
    """Learn node features G so that their QAP matching to H is the identity (n = 16, IPFP,
    λ = 80, β = 0.05): the Hamming loss reaches 0 within 150 Adam steps."""
    torch.manual_seed(0)
    n = 16
    h = torch.randn(1, n, 32)
    gg = torch.nn.Parameter(torch.randn(1, n, 32))
    opt = torch.optim.Adam([gg], lr=0.05)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        g1 = knn_graph(h)
        q = QuadraticCost.from_graphs(h, gg, edge_weights(h, g1), edge_weights(gg, g1), g1.adjacency, g1.adjacency)
        loss, _, _ = blackbox_surrogate(unary_cost(h, gg), q, torch.eye(n), gumbel((1, 1, n, n), 0.05, generator=gen),
                                        lam=80.0, solver="ipfp")
        losses.append(float(loss.detach().mean()))
        if losses[-1] == 0:
            break
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    assert losses[0] > 1 and losses[-1] == 0, losses


# --- the aligner ----------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["ipfp", "lap"])
@pytest.mark.parametrize("b", [1, 2, 3, 8])
def test_aligner_edge_batch_sizes_and_gradients_to_all_modalities_and_the_gnn(solver, b):
    torch.manual_seed(b)
    al = BarycenterGraphAligner(16, solver=solver, gnn_dropout=0.0)
    z = torch.randn(3, b, 16, requires_grad=True)
    out = al(z, generator=torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.matchings.shape == (6, b, b) and out.adjacency.shape == (6, b, b) and len(out.pairs) == 6
    assert out.pairs[:2] == [("image", "barycenter"), ("barycenter", "image")]
    assert ((out.matchings.sum(-1) == 1) & (out.matchings.sum(-2) == 1)).all()
    torch.testing.assert_close(out.loss.detach(), out.hamming.mean())
    torch.testing.assert_close(out.accuracy, out.matchings.diagonal(dim1=-2, dim2=-1).mean())
    torch.testing.assert_close(out.nodes[-1], z.detach().mean(0))
    if b == 1:
        assert float(out.loss.detach()) == 0
        return
    out.loss.backward()
    if b == 8:  # a random batch is far from the identity: every modality and the GNN get gradient
        assert all(z.grad[m].abs().sum() > 0 for m in range(3))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in al.gnn.parameters())


def test_aligner_takes_bf16_nodes_and_returns_a_float32_loss():
    al = BarycenterGraphAligner(8)
    z = torch.randn(3, 5, 8).bfloat16().requires_grad_()
    out = al(z, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and z.grad.dtype == torch.bfloat16


def test_aligner_noise_is_seeded_and_shared_topology_is_the_first_graphs():
    torch.manual_seed(0)
    z = torch.randn(3, 10, 8)
    al = BarycenterGraphAligner(8, gnn_dropout=0.0)
    a = al(z, generator=torch.Generator().manual_seed(4))
    b = al(z, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.matchings, b.matchings)
    torch.testing.assert_close(a.adjacency, a.adjacency_dst)
    torch.testing.assert_close(a.adjacency[0], knn_graph(z[:1]).adjacency[0])
    own = BarycenterGraphAligner(8, gnn_dropout=0.0, share_topology=False)(z, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(own.adjacency_dst[0], knn_graph(z.mean(0, keepdim=True)).adjacency[0])


def test_aligner_invariant_to_the_order_of_the_batch():
    """Permuting the samples permutes the graphs, the matchings and nothing else (no noise)."""
    torch.manual_seed(0)
    z = torch.randn(3, 9, 8)
    al = BarycenterGraphAligner(8, gnn_dropout=0.0, noise_scale=0.0)
    perm = torch.randperm(9)
    a, b = al(z), al(z[:, perm])
    torch.testing.assert_close(b.matchings, a.matchings[:, perm][:, :, perm])
    torch.testing.assert_close(b.loss, a.loss)


# --- the model --------------------------------------------------------------------------------

CORPUS = ["human: <img> </img> is there a pleural effusion? assistant: yes, a small left pleural effusion.",
          "describe the findings of this chest x - ray . the heart is normal in size . no pneumothorax .",
          "no . which side ? left right bilateral . how severe ? mild moderate severe . cardiomegaly"] * 2
SMALL_LM = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_positions": 192}
CONVS = [[("is there a pleural effusion?", "yes, a small left pleural effusion."),
          ("describe the findings.", "the heart is normal in size.")],
         [("is there cardiomegaly?", "no.")],
         [("which side?", "left."), ("how severe?", "mild."), ("is there a pneumothorax?", "no.")]]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exgramed_tok")
    save_word_tokenizer(train_word_tokenizer(CORPUS, min_frequency=1), folder)
    return str(folder)


def make_model(tok_dir, seed=0, **cfg) -> ExGraMed:
    torch.manual_seed(seed)
    llm = LLMConfig(tokenizer=tok_dir, lora_r=4, lora_alpha=8, **SMALL_LM)
    lm, tok = load_causal_lm(llm)
    return ExGraMed(FakeImageEncoder(), lm, tok, ExGraMedConfig(**{"gnn_dropout": 0.0, **cfg}), llm)


def make_batch(model, n=3, seed=1, extended=True):
    g = torch.Generator().manual_seed(seed)
    items = [{"study_id": f"s{i}", "frontal": torch.randn(1, 16, 16, generator=g), "conversation": CONVS[i % 3],
              "extended": [a + " the heart is normal in size." for _, a in CONVS[i % 3]] if extended else None}
             for i in range(n)]
    return model.collate()(items)


def test_conversation_block_labels_only_answers_and_eos(tok_dir):
    m = make_model(tok_dir)
    b = make_batch(m)
    tok = m.tokenizer
    assert tok.decode(m.prefix_ids[0], skip_special_tokens=True) == "human : < img >"
    words = tok.convert_ids_to_tokens(b.input_ids[2][b.attention_mask[2].bool()])
    assert " ".join(words) == ("</ img > which side ? assistant : left . <eos> human : how severe ? assistant : "
                               "mild . <eos> human : is there a pneumothorax ? assistant : no . <eos>")
    labelled = tok.convert_ids_to_tokens(b.labels[2][b.labels[2] != -100])
    assert labelled == ["left", ".", "<eos>", "mild", ".", "<eos>", "no", ".", "<eos>"]
    assert (b.labels[b.attention_mask == 0] == -100).all()
    assert tok.decode(b.response_ids[2][b.response_mask[2]], skip_special_tokens=True) == "left . mild . no ."
    assert m.collate().join(["yes, an effusion", "mild.", "no."]) == "yes, an effusion. mild. no."


def test_lm_loss_equals_a_per_sample_reference(tok_dir):
    """The batched, padded conversation loss equals per-sample losses (token-weighted)."""
    m = make_model(tok_dir, alpha=0.0).eval()
    b = make_batch(m)
    out = m(b)
    total, count = 0.0, 0
    for i in range(3):
        one = m.collate()([{"study_id": "x", "frontal": b.images[i], "conversation": CONVS[i]}])
        o = m(one)
        total += float(o["lm_loss"]) * int(o["n_tokens"])
        count += int(o["n_tokens"])
    assert int(out["n_tokens"]) == count
    torch.testing.assert_close(out["lm_loss"], torch.tensor(total / count), rtol=1e-5, atol=1e-5)
    assert "align_loss" not in out  # α = 0: the LLaVA-Med baseline computes no alignment


def test_masked_pooling_ignores_pads_and_with_pads_is_the_official_mean(tok_dir):
    m = make_model(tok_dir).eval()
    b = make_batch(m)
    z = m.text_nodes(b.response_ids, b.response_mask)
    longer = F.pad(b.response_ids, (0, 5), value=m.tokenizer.pad_token_id)
    z2 = m.text_nodes(longer, F.pad(b.response_mask, (0, 5), value=False))
    torch.testing.assert_close(z, z2, rtol=1e-5, atol=1e-6)
    one = m.text_nodes(b.response_ids[1:2, :int(b.response_mask[1].sum())], b.response_mask[1:2, :int(b.response_mask[1].sum())])
    torch.testing.assert_close(z[1:2], one, rtol=1e-5, atol=1e-6)
    m.config.text_pooling = "with_pads"
    zp = m.text_nodes(b.response_ids, b.response_mask)
    hidden = m._decoder()(input_ids=b.response_ids, attention_mask=b.response_mask.long()).last_hidden_state
    torch.testing.assert_close(zp, hidden.mean(1))
    assert not torch.allclose(zp[1], z[1])  # sample 1 is padded: the official mean differs


def test_forward_gives_gradients_to_projector_lora_and_gnn_through_every_modality(tok_dir):
    m = make_model(tok_dir)
    b = make_batch(m, n=6)
    out = m(b)
    assert {"loss", "lm_loss", "align_loss", "hamming", "match_accuracy", "n_tokens"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["lm_loss"] + out["align_loss"])
    assert out["alignment"].nodes.shape == (4, 6, 32)  # image, response, extended, barycenter
    # L_align alone reaches every modality: the projector (image), LoRA through both text passes, the GNN
    m.zero_grad()
    img = m.image_tokens(b.images)
    nodes = m.node_features(b, img)
    nodes.retain_grad()
    loss, _, _ = m.alignment_loss(nodes)
    loss.backward()
    assert all(nodes.grad[k].abs().sum() > 0 for k in range(3))
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(("projector.", "aligner.")))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.parametrize("b", [1, 2, 3])
def test_small_batches_train(tok_dir, b):
    m = make_model(tok_dir)
    out = m(make_batch(m, n=b))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and (b > 1 or float(out["align_loss"]) == 0)


def test_stage_one_has_no_alignment_and_the_variants_switch_it(tok_dir):
    m = make_model(tok_dir)
    b = make_batch(m)
    m.set_stage(Stage(name="s1", trainable=["projector.*"], inputs={"align": False}))
    assert "align_loss" not in m(b)
    m.set_stage(Stage(name="s2"))
    assert "align_loss" in m(b)
    two = make_model(tok_dir, modalities=("image", "response"))
    out = two(make_batch(two, extended=False))
    assert out["alignment"].nodes.shape[0] == 3 and len(out["alignment"].pairs) == 4
    with pytest.raises(ValueError, match="extended"):
        m(make_batch(m, extended=False))
    nce = make_model(tok_dir, alignment="infonce")
    out = nce(b)
    assert out["alignment"] is None and float(out["align_loss"]) > 0 and 0 <= float(out["match_accuracy"]) <= 1


def test_bf16_lm_trains_with_a_float32_alignment(tok_dir):
    m = make_model(tok_dir).to(torch.bfloat16)
    b = make_batch(m)
    b.images = b.images.bfloat16()
    out = m(b)
    out["loss"].backward()
    assert out["alignment"].nodes.dtype == torch.float32 and torch.isfinite(out["loss"])


def test_generation_with_padded_questions_equals_one_at_a_time(tok_dir):
    m = make_model(tok_dir)
    with torch.no_grad():  # sharper attention, so that positions and padding would matter
        for name, p in m.lm.named_parameters():
            if name.endswith(("q_proj.base_layer.weight", "k_proj.base_layer.weight")):
                p.normal_(0, 0.3)
    images = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    qs = ["is there a pleural effusion?", "which side?", "describe the findings of this chest x-ray."]
    batched = m.generate(images, qs, max_new_tokens=6)
    alone = [m.generate(images[i:i + 1], [qs[i]], max_new_tokens=6)[0] for i in range(3)]
    assert batched == alone and m.training
    assert m.generate(images[:1]) == m.generate(images[:1], [m.config.describe_question])


def test_config_checks():
    for bad in ({"modalities": ("response", "extended")}, {"modalities": ("image",)}, {"solver": "lpmp"},
                {"alignment": "siglip"}, {"lam": 0}, {"text_pooling": "max"}, {"k": 0}):
        with pytest.raises(ValueError):
            ExGraMedConfig(**bad)


def test_packaged_configs_load_and_the_method_is_registered():
    from medalign_lite.config import load_config
    from medalign_lite.methods import get_method
    from medalign_lite.models.vision import VisionConfig

    spec = get_method("exgramed")
    assert spec.module is ExGraMed and spec.report_generator
    tiny = load_config(ExGraMedConfig, "exgramed_tiny", section="model")
    full = load_config(ExGraMedConfig, "exgramed_full", section="model")
    assert tiny.alpha == full.alpha == 1.0 and full.lam == 80.0 and full.k == 5 and full.projector == "mlp2x_gelu"
    vision = load_config(VisionConfig, "exgramed_full", section="vision")
    assert "clip" in vision.name.lower() and vision.image_size == 224
    llm = load_config(LLMConfig, "exgramed_full", section="llm")
    assert llm.torch_dtype == "bfloat16" and llm.gradient_checkpointing


def test_bench_exgramed_small_and_cli(capsys):
    """Structure of `medalign bench exgramed` (tiny shapes only; the targets are read off one
    run's numbers, never timed in a unit test)."""
    import json

    from medalign_lite.bench import bench_exgramed
    from medalign_lite.cli import main

    res = bench_exgramed(repeats=1, batch_sizes=(8,), paper=False)
    assert {"aligner_share", "text_pass_share", "solver_ms"} <= set(res)
    assert res["aligner_share"] > 0 and res["text_pass_share"] > 0 and set(res["solver_ms"]) == {"lap", "ipfp"}
    assert res["solver_ms"]["lap"][8] > 0 and res["tiny"]["seconds"]["full"] > res["tiny"]["seconds"]["lm"] * 0.5
    assert main(["bench", "exgramed", "--no-paper", "--repeats", "1", "--batch-sizes", "8", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["name"] == "exgramed"


def test_full_fine_tuning_without_lora(tok_dir):
    """``lora: false`` (the paper's full fine-tuning): the LM is used as it is, every weight trains."""
    from peft import PeftModel

    m = make_model(tok_dir, lora=False)
    assert not isinstance(m.lm, PeftModel) and not any("lora_" in n for n, _ in m.named_parameters())
    out = m(make_batch(m))
    out["loss"].backward()
    assert m.lm.get_input_embeddings().weight.grad is not None and float(out["align_loss"]) >= 0
    assert len(m.generate(make_batch(m).images[:2], ["which side?", "how severe?"], max_new_tokens=3)) == 2
