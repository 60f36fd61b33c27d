"""Zero-shot prompts, pooling and metrics against sklearn and per-sample references."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medalign_lite.eval.zeroshot import (CHEXPERT_5X200_CLASSES, all_chexpert_prompts, auroc,
                                         chexpert_5x200_prompts, embed_prompts, prompt_scores,
                                         rsna_prompts, zero_shot_classify)


def test_chexpert_prompts_seeded_distinct_and_from_the_pool():
    a = chexpert_5x200_prompts(5, seed=0)
    assert list(a) == list(CHEXPERT_5X200_CLASSES)
    assert a == chexpert_5x200_prompts(5, seed=0)
    assert a != chexpert_5x200_prompts(5, seed=1)
    pools = all_chexpert_prompts()
    for c, prompts in a.items():
        assert len(prompts) == 5 == len(set(prompts))
        assert set(prompts) <= set(pools[c])
        assert all(p == " ".join(p.split()) for p in prompts)   # no double / edge spaces
    assert chexpert_5x200_prompts(None) == pools
    assert len(chexpert_5x200_prompts(20, seed=3)["Edema"]) == 20
    with pytest.raises(ValueError):
        chexpert_5x200_prompts(10_000)


def test_rsna_prompts_are_the_biovil_pair():
    p = rsna_prompts()
    assert list(p.values()) == [["No evidence of pneumonia"], ["Findings suggesting pneumonia"]]


def _fake_encoder(dim=16):
    def encode(texts):
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=dim) for t in texts]
        return np.stack(rows)
    return encode


def test_embed_prompts_shapes_and_ragged():
    enc = _fake_encoder()
    emb = embed_prompts(chexpert_5x200_prompts(4), enc)
    assert isinstance(emb, torch.Tensor) and emb.shape == (5, 4, 16)
    ragged = embed_prompts({"a": ["x", "y", "z"], "b": ["w"]}, enc)
    assert [tuple(e.shape) for e in ragged] == [(3, 16), (1, 16)]
    assert torch.allclose(ragged[1][0], torch.as_tensor(enc(["w"])[0]).float())


@pytest.mark.parametrize("pooling", ["mean", "max", "embedding"])
def test_prompt_scores_match_reference(pooling):
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(7, 6, generator=gen)
    ragged = [torch.randn(n, 6, generator=gen) for n in (3, 1, 4)]

    def ref(x, prompts):
        x = x / x.norm()
        sims = [float(x @ (p / p.norm())) for p in prompts]
        if pooling == "mean":
            return np.mean(sims)
        if pooling == "max":
            return np.max(sims)
        m = torch.stack([p / p.norm() for p in prompts]).mean(0)
        return float(x @ (m / m.norm()))

    got = prompt_scores(img, ragged, pooling)
    expected = torch.tensor([[ref(x, prompts) for prompts in ragged] for x in img])
    assert got.shape == (7, 3)
    assert torch.allclose(got, expected.float(), atol=1e-5)
    # equal counts: the (C, P, D) tensor path agrees with the list path
    full = torch.randn(3, 2, 6, generator=gen)
    assert torch.allclose(prompt_scores(img, full, pooling), prompt_scores(img, list(full), pooling), atol=1e-6)


def test_auroc_matches_sklearn_with_ties_and_masks():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(6, 40)).astype(float)   # many ties
    targets = rng.random((6, 40)) < 0.4
    valid = rng.random((6, 40)) < 0.8
    got = auroc(torch.tensor(scores), torch.tensor(targets), torch.tensor(valid))
    for r in range(6):
        v = valid[r]
        assert got[r].item() == pytest.approx(roc_auc_score(targets[r, v], scores[r, v]))
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])).isnan()
    assert auroc(torch.tensor([0.3, 0.1, 0.2]), torch.tensor([1, 0, 0])).item() == 1.0


def _clustered(gen, n_per, centers, noise):
    """Images scattered around class centres; labels 0..C-1."""
    c, d = centers.shape
    y = torch.arange(c).repeat_interleave(n_per)
    x = centers[y] + noise * torch.randn(len(y), d, generator=gen)
    return x, y


def test_multiclass_metrics_match_sklearn():
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 12, generator=gen)
    img, y = _clustered(gen, 20, centers, noise=1.2)
    prompts = centers[:, None, :] + 0.8 * torch.randn(5, 3, 12, generator=gen)
    out = zero_shot_classify(3.0 * img, prompts, y, pooling="mean")
    probs = out["probs"].numpy()
    assert out["mode"] == "multiclass"
    assert np.allclose(probs.sum(1), 1)
    assert out["auroc"] == pytest.approx(roc_auc_score(y.numpy(), probs, multi_class="ovr", average="macro"))
    assert out["f1"] == pytest.approx(f1_score(y.numpy(), out["preds"].numpy(), average="macro"))
    assert out["accuracy"] == pytest.approx(accuracy_score(y.numpy(), out["preds"].numpy()))
    assert 0.4 < out["accuracy"] < 1.0                      # informative but not trivial data
    # the prediction is the argmax of the pooled cosine scores (no hidden re-weighting)
    assert torch.equal(out["preds"], out["scores"].argmax(1))
    # embeddings are normalised inside: rescaling the images changes nothing
    again = zero_shot_classify(img, prompts, y, pooling="mean")
    assert again["auroc"] == pytest.approx(out["auroc"]) and torch.equal(again["preds"], out["preds"])


def test_zscore_removes_a_per_class_offset():
    # class 0's prompt shares a large direction with every image -> it always wins without z-scoring
    e = torch.eye(3)
    prompts = torch.stack([F.normalize(e[0] + 3 * e[2], dim=0), e[1]])[:, None, :]
    y = torch.tensor([0] * 5 + [1] * 5)
    a = torch.linspace(0.2, 0.4, 5)
    img = torch.cat([torch.stack([a, 0 * a, 5 + 0 * a], 1), torch.stack([0 * a, a, 5 + 0 * a], 1)])
    plain = zero_shot_classify(img, prompts, y)
    assert plain["preds"].tolist() == [0] * 10
    assert zero_shot_classify(img, prompts, y, zscore=True)["accuracy"] == 1.0


def test_binary_rsna_mode():
    gen = torch.Generator().manual_seed(2)
    neg, pos = torch.randn(2, 8, generator=gen)
    y = (torch.rand(60, generator=gen) < 0.3).long()
    img = torch.where(y[:, None].bool(), pos, neg) + 1.5 * torch.randn(60, 8, generator=gen)
    text = torch.stack([neg, pos])[:, None, :]               # (2, 1, D): [negative, positive]
    out = zero_shot_classify(img, text, y)
    assert out["mode"] == "binary"
    p1 = out["probs"][:, 1].numpy()
    # softmax over the pair at τ = 1 on cosines (CXR-CLIP): p1 = sigmoid(cos_pos - cos_neg)
    cos = F.normalize(img, dim=1) @ F.normalize(text[:, 0], dim=1).T
    assert np.allclose(p1, torch.sigmoid(cos[:, 1] - cos[:, 0]).numpy(), atol=1e-6)
    assert out["auroc"] == pytest.approx(roc_auc_score(y.numpy(), p1))
    assert out["f1"] == pytest.approx(f1_score(y.numpy(), out["preds"].numpy()))
    assert out["f1_macro"] == pytest.approx(f1_score(y.numpy(), out["preds"].numpy(), average="macro"))
    assert out["accuracy"] == pytest.approx(accuracy_score(y.numpy(), p1 > 0.5))


def test_multilabel_ignores_nan_per_class():
    gen = torch.Generator().manual_seed(3)
    n, c, d = 50, 3, 10
    img = torch.randn(n, d, generator=gen)
    text = torch.randn(c, 2, 4, d, generator=gen)
    y = (torch.rand(n, c, generator=gen) < 0.4).double()
    y[torch.rand(n, c, generator=gen) < 0.2] = float("nan")
    out = zero_shot_classify(img, text, y, pooling="max", multilabel=True)
    s = prompt_scores(img, text, "max")
    assert torch.allclose(out["probs"], torch.softmax(s, -1)[..., 1])
    per_auc, per_f1 = [], []
    for k in range(c):
        v = ~torch.isnan(y[:, k])
        per_auc.append(roc_auc_score(y[v, k].numpy(), out["probs"][v, k].numpy()))
        per_f1.append(f1_score(y[v, k].numpy(), (out["probs"][v, k] > 0.5).numpy()))
    assert out["per_class_auroc"] == pytest.approx(per_auc)
    assert out["per_class_f1"] == pytest.approx(per_f1)
    assert out["auroc"] == pytest.approx(np.mean(per_auc))
    with pytest.raises(ValueError, match="negative, positive"):
        zero_shot_classify(img, torch.randn(c, 3, 4, d), y, multilabel=True)


def test_label_errors():
    with pytest.raises(ValueError):
        zero_shot_classify(torch.randn(4, 3), torch.randn(2, 1, 3), [0, 1, 2, 0])
