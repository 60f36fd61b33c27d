"""ConVIRT and GLoRIA: the batched GLoRIA local loss equals a per-pair reference (GLoRIA's
own loop structure), gradients reach both encoders, masks are honoured."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from medalign_lite.data.dataset import Batch
from medalign_lite.methods.baselines import (ConVIRT, GLoRIA, GLoRIAConfig, gloria_local_loss,
                                             gloria_local_similarity)
from .fakes import FakeImageEncoder, FakeTextEncoder


def reference_local_similarity(words, mask, regions, temp1, temp2):
    """GLoRIA's loop: for each report, its valid words against each image, one pair at a time."""
    bt, bi = words.shape[0], regions.shape[0]
    z = torch.zeros(bt, bi, dtype=words.dtype)
    for i in range(bt):
        w = words[i, mask[i]]                                   # (n, D)
        for j in range(bi):
            r = regions[j]                                      # (P, D)
            a = torch.softmax(w @ r.t(), dim=0)                 # softmax over words, per region
            a = torch.softmax(temp1 * a, dim=1)                 # then over regions
            c = a @ r                                           # (n, D)
            cos = F.cosine_similarity(w, c, dim=-1)
            z[i, j] = torch.log(torch.exp(temp2 * cos).sum())
    return z


def _batch(b=4, t=7, size=16, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (b, t), generator=g)
    lengths = lengths or [t - (i % 3) for i in range(b)]
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    return Batch(images=torch.randn(b, 1, size, size, generator=g), texts=[""] * b, study_ids=[str(i) for i in range(b)],
                 labels=torch.zeros(b, 14), input_ids=ids * mask, attention_mask=mask.long())


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(1, 8), p=st.integers(1, 9), d=st.integers(2, 6),
       seed=st.integers(0, 10_000), chunk=st.sampled_from([None, 1, 2]), route=st.sampled_from(["gram", "context"]))
def test_batched_local_similarity_matches_reference(b, t, p, d, seed, chunk, route):
    """Both routes (the attended context built, or its norm from the regions' Gram matrix)
    equal GLoRIA's loop, whatever P against D."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    regions = torch.randn(b, p, d, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t)[None] < lengths[:, None]
    got = gloria_local_similarity(words, mask, regions, 4.0, 5.0, chunk=chunk, route=route)
    want = reference_local_similarity(words, mask, regions, 4.0, 5.0)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    got_max = gloria_local_similarity(words, mask, regions, 4.0, 5.0, agg="max", chunk=chunk, route=route)
    want_max = gloria_local_similarity(words, mask, regions, 4.0, 5.0, agg="max", route="context")
    assert torch.allclose(got_max, want_max, atol=1e-7, rtol=0)


def test_gram_route_gradients_equal_the_context_route():
    torch.manual_seed(1)
    words = torch.randn(5, 9, 32, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(5, 16, 32, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(9)[None] < torch.tensor([9, 4, 1, 7, 9])[:, None]
    grads = []
    for route in ("gram", "context"):
        gloria_local_loss_sum = sum(gloria_local_loss(words, mask, regions, route=route))
        grads.append(torch.autograd.grad(gloria_local_loss_sum, (words, regions)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-9), (a - b).abs().max()


def test_local_loss_fp32_within_1e5_and_padding_ignored():
    torch.manual_seed(0)
    words, regions = torch.randn(6, 11, 16), torch.randn(6, 25, 16)
    mask = torch.arange(11)[None] < torch.tensor([11, 3, 1, 7, 11, 5])[:, None]
    z = gloria_local_similarity(words, mask, regions)
    assert (z - reference_local_similarity(words, mask, regions, 4.0, 5.0)).abs().max() < 1e-5
    poisoned = words.clone()
    poisoned[~mask] = 1e3  # padding content must not matter
    assert torch.allclose(gloria_local_similarity(poisoned, mask, regions), z)
    l0, l1 = gloria_local_loss(words, mask, regions)
    assert torch.isfinite(l0) and torch.isfinite(l1)


def test_gloria_and_convirt_train_both_encoders():
    for model in (GLoRIA(FakeImageEncoder(), FakeTextEncoder(), GLoRIAConfig(embed_dim=8)),
                  ConVIRT(FakeImageEncoder(), FakeTextEncoder())):
        out = model(_batch())
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        assert model.image_encoder.conv.weight.grad.abs().sum() > 0
        assert model.text_encoder.emb.weight.grad.abs().sum() > 0
    assert out.keys() >= {"loss", "loss_i2t", "loss_t2i"}


def test_gloria_outputs_attention_maps_and_retrieval_embeddings():
    model = GLoRIA(FakeImageEncoder(), FakeTextEncoder(), GLoRIAConfig(embed_dim=8))
    batch = _batch(b=3, t=5)
    out = model(batch)
    assert out["attn"].shape == (3, 5, 16)  # (B, T, P): 4×4 patch grid
    assert torch.allclose(out["attn"].sum(-1), torch.ones(3, 5))
    e = model.encode_image(batch.images)
    assert e.shape == (3, 8) and torch.allclose(e.norm(dim=-1), torch.ones(3))
    s = model.local_similarity(batch.images, batch.input_ids, batch.attention_mask)
    assert s.shape == (3, 3)
