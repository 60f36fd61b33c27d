"""Generation plumbing: the shared-prompt beam cache against transformers' DynamicLayer, the
prefill-once path of generate_from_embeds against generate alone (plain, LoRA, padded prompt),
the LoRA merge restoring the very same weights, the attention-kernel switch, the kwargs."""
from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from medalign_lite.models.generation import (
    SharedPromptBeamLayer,
    attention_implementation,
    generate_from_embeds,
    generation_kwargs,
    merged_lora,
    share_prompt_cache,
)
from medalign_lite.models.llm import LLMConfig, apply_lora, load_causal_lm

from .conftest import SMALL


def tiny_lm(tok_dir, lora: bool = False, seed: int = 0):
    """A random 2-layer Llama (sharper attention than its init, so that positions matter);
    with ``lora``, LoRA r = 4 on q/k/v/o with B ≠ 0 (so that merging matters)."""
    torch.manual_seed(seed)
    lm, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.normal_(0, 0.3)
    if lora:
        lm = apply_lora(lm, LLMConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, **SMALL))
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return lm, tok


def prompt(lm, b=2, t=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    width = lm.get_input_embeddings().embedding_dim
    return torch.randn(b, t, width, generator=g)


# --- the shared-prompt cache -------------------------------------------------------------------
def test_shared_prompt_layer_equals_dynamic_layer_under_beam_reorders():
    g = torch.Generator().manual_seed(0)
    b, k, h, t, d = 2, 3, 2, 5, 4
    keys, values = torch.randn(b, h, t, d, generator=g), torch.randn(b, h, t, d, generator=g)
    ref = DynamicLayer()
    ref.update(keys.repeat_interleave(k, 0), values.repeat_interleave(k, 0))
    ours = SharedPromptBeamLayer(keys.repeat_interleave(k, 0), values.repeat_interleave(k, 0), capacity=t + 2)
    assert ours.get_seq_length() == ref.get_seq_length() == t
    for step in range(4):  # the 4th step grows the buffer past its capacity
        new_k, new_v = torch.randn(b * k, h, 1, d, generator=g), torch.randn(b * k, h, 1, d, generator=g)
        ref.update(new_k, new_v)
        out_k, out_v = ours.update(new_k, new_v)  # what attention reads: the first t positions
        assert torch.equal(out_k, ref.keys) and torch.equal(out_v, ref.values)
        # beams move within their image only: image i's rows are i·k … i·k + k − 1
        beam_idx = torch.stack([torch.randint(0, k, (k,), generator=g) + i * k for i in range(b)]).flatten()
        if step == 1:
            beam_idx = torch.arange(b * k)  # every beam continues itself: nothing to copy
        for layer in (ref, ours):
            layer.reorder_cache(beam_idx)
        assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)
    assert ours.get_seq_length() == t + 4 and not ours.is_croppable
    with pytest.raises(NotImplementedError):
        ours.crop(-1)


def test_share_prompt_cache_only_converts_a_dynamic_cache():
    keys = torch.randn(2, 2, 3, 4)
    cache = DynamicCache()
    cache.update(keys, keys.clone(), 0)
    shared = share_prompt_cache(cache, num_beams=3, capacity=10)
    assert shared is cache and all(type(layer) is SharedPromptBeamLayer for layer in shared.layers)
    assert shared.layers[0].keys.shape == (6, 2, 3, 4) and shared.get_seq_length() == 3
    torch.testing.assert_close(shared.layers[0].keys[3:6], keys[1:2].expand(3, -1, -1, -1))
    assert share_prompt_cache(None, 3, 10) is None
    assert share_prompt_cache(DynamicCache(), 3, 10) is None  # no layer to share


# --- generate_from_embeds ----------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_prefill_once_gives_generates_own_tokens(tok_dir, lora, num_beams, monkeypatch):
    from medalign_lite.models import generation

    lm, tok = tiny_lm(tok_dir, lora=lora)
    lm.train()
    embeds = prompt(lm)
    kw = {"num_beams": num_beams, "max_new_tokens": 6, "min_new_tokens": 6, "merge_lora": lora}
    shared_caches = []
    share = generation.share_prompt_cache
    monkeypatch.setattr(generation, "share_prompt_cache", lambda *a, **k: shared_caches.append(share(*a, **k))
                        or shared_caches[-1])
    shared = generate_from_embeds(lm, tok, embeds, prefill_once=True, **kw)
    assert len(shared_caches) == 1 and isinstance(shared_caches[0].layers[0], SharedPromptBeamLayer)
    # T − 1 prefilled positions, the last prompt position, then the first 5 of the 6 new tokens
    assert shared_caches[0].get_seq_length() == embeds.shape[1] - 1 + 1 + 5
    assert lm.training  # the mode is restored
    assert shared.shape == (2, 6) and shared.dtype == torch.long
    assert torch.equal(shared, generate_from_embeds(lm, tok, embeds, prefill_once=False, **kw))
    # a prompt padded on the left (row 1: 3 padding positions) decodes the same either way
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    mask[1, :3] = 0
    padded = generate_from_embeds(lm, tok, embeds, mask, prefill_once=True, **kw)
    assert torch.equal(padded, generate_from_embeds(lm, tok, embeds, mask, prefill_once=False, **kw))
    assert torch.equal(padded[0], shared[0])  # the unpadded row is unchanged
    # …and row 1 is its own unpadded prompt
    alone = generate_from_embeds(lm, tok, embeds[1:, 3:], prefill_once=False, **kw)
    assert torch.equal(padded[1:], alone)


def test_merging_lora_changes_no_token(tok_dir):
    lm, tok = tiny_lm(tok_dir, lora=True)
    embeds = prompt(lm)
    kw = {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 6}
    merged = generate_from_embeds(lm, tok, embeds, merge_lora=True, **kw)
    assert torch.equal(merged, generate_from_embeds(lm, tok, embeds, merge_lora=False, **kw))
    with lm.disable_adapter():  # and the adapters did count
        assert not torch.equal(merged, generate_from_embeds(lm, tok, embeds, **kw))


def test_merged_lora_restores_the_very_same_weights(tok_dir):
    lm, _ = tiny_lm(tok_dir, lora=True)
    lm.eval()  # (no LoRA dropout)
    params = dict(lm.named_parameters())
    x = torch.randint(4, 20, (2, 5))
    with torch.no_grad():
        before = lm(input_ids=x).logits
        with merged_lora(lm) as merged:
            assert merged
            during = lm(input_ids=x).logits
        after = lm(input_ids=x).logits
        with lm.disable_adapter(), merged_lora(lm) as merged:  # adapters off: nothing to merge
            assert not merged
    assert all(params[n] is p for n, p in lm.named_parameters())  # the same Parameter objects
    torch.testing.assert_close(during, before, rtol=1e-4, atol=1e-5)
    assert torch.equal(after, before)
    plain, _ = tiny_lm(tok_dir)
    with merged_lora(plain) as merged:  # no LoRA at all
        assert not merged


def test_attention_kernel_switches_for_the_call_and_back(tok_dir):
    lm, tok = tiny_lm(tok_dir, lora=True)
    base = lm.get_base_model()
    loaded = base.config._attn_implementation
    assert loaded != "eager"
    embeds = prompt(lm)
    kw = {"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 6}
    ref = generate_from_embeds(lm, tok, embeds, attention=None, **kw)
    seen = []
    original = base.set_attn_implementation
    base.set_attn_implementation = lambda name: (seen.append(name), original(name))
    try:
        assert torch.equal(ref, generate_from_embeds(lm, tok, embeds, attention="eager", **kw))
        with attention_implementation(lm, loaded):  # already that kernel: no switch
            pass
        with attention_implementation(lm, None):
            pass
    finally:
        del base.set_attn_implementation
    assert seen == ["eager", loaded] and base.config._attn_implementation == loaded


def test_generation_kwargs():
    tok = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1})()
    kw = generation_kwargs(tok, num_beams=3, max_new_tokens=5, length_penalty=2.0, use_cache=False)
    assert kw == {"num_beams": 3, "max_new_tokens": 5, "do_sample": False, "use_cache": False,
                  "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1, "length_penalty": 2.0}
    assert "length_penalty" not in generation_kwargs(tok, num_beams=1, max_new_tokens=5, length_penalty=2.0)
    tok.bos_token_id = None
    assert "bos_token_id" not in generation_kwargs(tok, num_beams=2, max_new_tokens=5)
