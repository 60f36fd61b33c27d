"""Retrieval metrics against a per-query reference, ties, and a hand-computed example."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medalign_lite.eval.retrieval import (bench_retrieval, class_confusion_at_k, first_positive_rank,
                                          positives_from_duplicates, precision_at_k, recall_at_k, retrieval_report,
                                          within_precision_at_k)


def _ranking(row: list[float]) -> list[int]:
    """Gallery indices by decreasing score, ties by increasing index (the documented rule)."""
    return sorted(range(len(row)), key=lambda g: (-row[g], g))


def ref_precision(sim, q_lab, g_lab, ks):
    out = {}
    for k in ks:
        vals = []
        for q, row in enumerate(sim.tolist()):
            top = _ranking(row)[:k]
            vals.append(sum(g_lab[g] == q_lab[q] for g in top) / k)
        out[k] = float(np.mean(vals))
    return out


def ref_recall(sim, ks, positives):
    ranks = []
    for q, row in enumerate(sim.tolist()):
        order = _ranking(row)
        ranks.append(min(order.index(g) for g in range(len(row)) if positives[q][g]))
    return {k: float(np.mean([r < k for r in ranks])) for k in ks}, ranks


def _tied_similarity(gen, n_q, n_g, levels=4):
    """Scores drawn from a few levels so that ties are everywhere, including at the cut-offs."""
    return torch.randint(levels, (n_q, n_g), generator=gen).float() / levels


def test_hand_computed_example():
    # query 0 ("a"): scores [1, 1, 1, 0] -> order 0,1,2,3 (ties by index); gallery labels b a a b
    #   P@1 = 0, P@2 = 1/2, P@3 = 2/3
    # query 1 ("b"): scores [0, 1, 1, 1] -> order 1,2,3,0
    #   P@1 = 0, P@2 = 0,   P@3 = 1/3
    sim = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    p = precision_at_k(sim, ["a", "b"], ["b", "a", "a", "b"], ks=(1, 2, 3))
    assert p == pytest.approx({1: 0.0, 2: 0.25, 3: 0.5})
    # paired recall: query 0's positive is gallery 0 (rank 0); query 1's is gallery 1 (rank 0)
    assert recall_at_k(sim, ks=(1,)) == {1: 1.0}
    # query 1 with positive gallery 3: items 1 and 2 tie with it and come first -> rank 2
    pos = torch.tensor([[True, False, False, False], [False, False, False, True]])
    assert first_positive_rank(sim, pos).tolist() == [0, 2]
    assert recall_at_k(sim, ks=(1, 2, 3), positives=pos) == pytest.approx({1: 0.5, 2: 0.5, 3: 1.0})


@pytest.mark.parametrize("tied", [False, True])
def test_precision_matches_reference(tied):
    gen = torch.Generator().manual_seed(1)
    n_q, n_g = 37, 53
    sim = _tied_similarity(gen, n_q, n_g) if tied else torch.randn(n_q, n_g, generator=gen)
    q_lab = torch.randint(4, (n_q,), generator=gen).tolist()
    g_lab = torch.randint(4, (n_g,), generator=gen).tolist()
    ks = (1, 3, 5, 10, 53)
    expected = ref_precision(sim, q_lab, g_lab, ks)
    got = precision_at_k(sim, q_lab, g_lab, ks)
    assert got == pytest.approx(expected, abs=1e-12)
    # chunking over queries changes nothing
    assert precision_at_k(sim, q_lab, g_lab, ks, chunk_size=5) == pytest.approx(expected, abs=1e-12)
    # string labels give the same numbers as int labels
    names = np.array(["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion"])
    assert precision_at_k(sim, names[q_lab], names[g_lab], ks) == pytest.approx(expected, abs=1e-12)


def test_tie_break_is_gallery_order_not_label_friendly():
    # all scores equal: the top-k is the first k gallery items, whatever their label
    sim = torch.zeros(2, 6)
    g_lab = [0, 0, 0, 1, 1, 1]
    assert precision_at_k(sim, [1, 0], g_lab, ks=(3, 6)) == pytest.approx({3: 0.5, 6: 0.5})
    assert precision_at_k(sim, [1, 1], g_lab, ks=(3,)) == {3: 0.0}


@pytest.mark.parametrize("tied", [False, True])
def test_recall_matches_reference(tied):
    gen = torch.Generator().manual_seed(2)
    n = 41
    sim = _tied_similarity(gen, n, n) if tied else torch.randn(n, n, generator=gen)
    ks = (1, 5, 10)
    eye = torch.eye(n, dtype=torch.bool)
    expected, ranks = ref_recall(sim, ks, eye.tolist())
    assert recall_at_k(sim, ks) == pytest.approx(expected)
    assert first_positive_rank(sim, chunk_size=7).tolist() == ranks
    # several positives per query (duplicated reports)
    texts = [f"report {i % 13}" for i in range(n)]
    pos = positives_from_duplicates(texts)
    assert pos.sum() > n
    expected, ranks = ref_recall(sim, ks, pos.tolist())
    assert recall_at_k(sim, ks, positives=pos) == pytest.approx(expected)
    assert first_positive_rank(sim, pos, chunk_size=4).tolist() == ranks


def test_retrieval_report_names_and_directions():
    gen = torch.Generator().manual_seed(3)
    img = torch.randn(30, 8, generator=gen)
    txt = 3 * img + 0.5 * torch.randn(30, 8, generator=gen)   # scale must not matter (L2-normalised)
    labels = torch.randint(3, (30,), generator=gen)
    rep = retrieval_report(img, txt, labels, ks=(1, 5))
    assert set(rep) == {f"{d}_{m}@{k}" for d in ("i2t", "t2i") for m in ("P", "R") for k in (1, 5)} | {
        "i2t_MeanR", "t2i_MeanR"}
    sim = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    assert rep["i2t_P@5"] == pytest.approx(ref_precision(sim, labels.tolist(), labels.tolist(), (5,))[5])
    assert rep["t2i_P@5"] == pytest.approx(ref_precision(sim.T, labels.tolist(), labels.tolist(), (5,))[5])
    assert rep["i2t_R@1"] == pytest.approx(ref_recall(sim, (1,), torch.eye(30, dtype=torch.bool).tolist())[0][1])
    assert rep["t2i_R@5"] == pytest.approx(ref_recall(sim.T, (5,), torch.eye(30, dtype=torch.bool).tolist())[0][5])
    assert rep["i2t_R@1"] > 0.9          # near-identical pairs are retrieved
    assert "i2t_P@1" not in retrieval_report(img, txt, None, ks=(1,))


def test_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        precision_at_k(torch.tensor([[float("nan"), 1.0]]), [0], [0, 1], ks=(1,))
    with pytest.raises(ValueError, match="exceeds"):
        precision_at_k(torch.zeros(1, 2), [0], [0, 1], ks=(3,))
    with pytest.raises(ValueError, match="no positive"):
        recall_at_k(torch.zeros(2, 2), ks=(1,), positives=torch.tensor([[True, False], [False, False]]))


def test_bench_runs_small():
    out = bench_retrieval(n_query=50, n_gallery=60, dim=8, repeats=1)
    assert out["p_at_k_s"] > 0 and out["report_s"] > 0


def test_within_precision_leaves_each_item_out_and_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g)
    labels = [i % 3 for i in range(12)]
    got = within_precision_at_k(x, labels, ks=(1, 3, 12))
    assert set(got) == {1, 3}  # K = N has no room once the item itself is out
    xn = torch.nn.functional.normalize(x, dim=-1)
    for k in (1, 3):
        hits = []
        for q in range(12):
            others = sorted((j for j in range(12) if j != q), key=lambda j: -float(xn[q] @ xn[j]))
            hits.append(sum(labels[j] == labels[q] for j in others[:k]) / k)
        assert got[k] == pytest.approx(sum(hits) / 12)
    # duplicated items: with itself left out each one's nearest neighbour is its twin
    assert within_precision_at_k(torch.cat([x[:3], x[:3]]), [0, 1, 2, 0, 1, 2], ks=(1,))[1] == 1.0


@pytest.mark.parametrize("k,chunk", [(1, None), (3, 2), (5, 7)])
def test_class_confusion_matches_a_per_query_loop_and_its_diagonal_is_p_at_k(k, chunk):
    g = torch.Generator().manual_seed(1)
    sim = torch.randint(0, 4, (9, 11), generator=g).float()  # many ties: the stable ranking decides
    q_lab = ["b", "a", "c", "a", "b", "c", "a", "b", "c"]
    g_lab = ["a", "b", "c", "d", "a", "b", "c", "d", "a", "b", "c"]
    classes, conf = class_confusion_at_k(sim, q_lab, g_lab, k=k, chunk_size=chunk)
    assert classes == ["a", "b", "c", "d"]
    want = np.zeros((4, 4))
    for q, row in enumerate(sim.tolist()):
        for gi in _ranking(row)[:k]:
            want[classes.index(q_lab[q]), classes.index(g_lab[gi])] += 1
    with np.errstate(invalid="ignore"):
        want = want / want.sum(1, keepdims=True)
    np.testing.assert_allclose(conf[:3], want[:3])
    assert np.isnan(conf[3]).all()  # "d" has no queries
    np.testing.assert_allclose(conf[:3].sum(1), 1.0)
    # three queries per class: the diagonal's mean is P@K
    assert np.mean(np.diag(conf)[:3]) == pytest.approx(ref_precision(sim, q_lab, g_lab, (k,))[k])


def test_class_confusion_codes_tensor_labels_by_their_sorted_values():
    # tensor labels that are not 0..n-1 (encode_labels would keep 7 and 3 as codes)
    sim = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    classes, conf = class_confusion_at_k(sim, torch.tensor([7, 3]), torch.tensor([7, 3, 3]), k=2)
    assert classes == [3, 7]
    np.testing.assert_allclose(conf, [[1.0, 0.0], [0.5, 0.5]])  # row 3: items 1, 2; row 7: items 0, 2


def test_class_confusion_checks_its_inputs():
    with pytest.raises(ValueError, match="do not match"):
        class_confusion_at_k(torch.zeros(2, 3), [0, 1], [0, 1], k=1)
    with pytest.raises(ValueError):
        class_confusion_at_k(torch.zeros(2, 3), [0, 1], [0, 1, 0], k=4)
