"""Causal LM: tiny Llama forward/generate with KV cache, LoRA freezing, offline errors."""
from __future__ import annotations

import pytest
import torch

from medalign_lite.models.llm import (
    LLMConfig,
    apply_lora,
    count_parameters,
    load_causal_lm,
)
from medalign_lite.models.loading import ModelNotAvailable, quiet_hub_progress

from .conftest import CORPUS, SMALL


def _lm_loss(model, tok, texts):
    batch = tok([t + " <eos>" for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels).loss


def test_tiny_defaults_build_a_llama(tok_dir):
    model, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir))
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.max_position_embeddings) == (256, 4, 4, 688, 512)
    assert c.vocab_size == len(tok) and c.pad_token_id == tok.pad_token_id == 0
    assert model.dtype == torch.float32
    # embeddings + lm_head (2·V·256) + 4 blocks of (4·256² attention + 3·256·688 MLP + norms) + final norm
    per_block = 4 * 256 * 256 + 3 * 256 * 688 + 2 * 256
    assert count_parameters(model) == 2 * len(tok) * 256 + 4 * per_block + 256


def test_forward_and_cached_generation(tok_dir):
    model, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    model.eval()
    with torch.no_grad():
        loss = _lm_loss(model, tok, CORPUS[:3])
        assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(len(tok))).item()) < 1.0
        prompt = tok(["the heart"], return_tensors="pt")
        kw = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False, "pad_token_id": tok.pad_token_id}
        cached = model.generate(**prompt, use_cache=True, **kw)
        plain = model.generate(**prompt, use_cache=False, **kw)
    assert cached.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert torch.equal(cached, plain)  # the KV cache changes speed, not the greedy tokens
    assert isinstance(tok.decode(cached[0]), str)


def test_lora_trains_only_adapters(tok_dir):
    model, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    peft_model = apply_lora(model, LLMConfig(lora_r=4, lora_alpha=8, **SMALL))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    _lm_loss(peft_model, tok, CORPUS[:4]).backward()
    opt.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # base weights untouched
    assert any("lora_B" in n for n in changed)


def test_lora_targets_are_configurable(tok_dir):
    model, _ = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    peft_model = apply_lora(model, LLMConfig(lora_targets=("q_proj", "down_proj"), lora_r=2, **SMALL))
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_" in n}
    assert wrapped == {"q_proj", "down_proj"}
    assert count_parameters(peft_model, trainable_only=True) == 2 * (2 * (32 + 32) + 2 * (64 + 32))
    model, _ = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    with pytest.raises(ValueError, match="qkv"):
        apply_lora(model, LLMConfig(lora_targets=("qkv",), **SMALL))


def test_local_folder_loads_through_auto_classes(tok_dir, tmp_path):
    model, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir, gradient_checkpointing=True, **SMALL))
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(str(tmp_path / "lm"))
    again, tok2 = load_causal_lm(LLMConfig(name=str(tmp_path / "lm"), torch_dtype="float32"))
    ids = tok(["no pleural effusion ."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert tok2.get_vocab() == tok.get_vocab()


def test_loading_a_small_saved_model_from_a_folder_draws_no_bar(tok_dir, tmp_path, monkeypatch, bars):
    """End to end: the bars transformers would draw (whatever TQDM_DISABLE says) are recorded."""
    from transformers.utils import logging as hf_logging

    from medalign_lite.models import loading

    model, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    with quiet_hub_progress(model):
        model.save_pretrained(tmp_path / "lm")
        tok.save_pretrained(str(tmp_path / "lm"))
    load_causal_lm(LLMConfig(name=str(tmp_path / "lm")))
    assert bars == [] and hf_logging.is_progress_bar_enabled()
    monkeypatch.setattr(loading, "SMALL_CHECKPOINT_BYTES", 1)  # a "big" checkpoint keeps its bar
    load_causal_lm(LLMConfig(name=str(tmp_path / "lm")))
    assert "Loading weights" in bars


def test_saving_a_tiny_lm_quietly_draws_no_bar(tok_dir, tmp_path, monkeypatch, bars):
    """What experiments/pretrain.py does around lm.save_pretrained / tok.save_pretrained."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from medalign_lite.models import loading

    model, tok = load_causal_lm(LLMConfig(tokenizer=tok_dir, **SMALL))
    model.save_pretrained(tmp_path / "loud")
    assert "Writing model shards" in bars  # what the recorder sees without the helper
    bars.clear()
    with quiet_hub_progress(model):
        model.save_pretrained(tmp_path / "lm")
        tok.save_pretrained(str(tmp_path / "lm"))
    assert bars == []
    assert hf_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    again, _ = load_causal_lm(LLMConfig(name=str(tmp_path / "lm"), torch_dtype="float32"))
    torch.testing.assert_close(again.state_dict(), model.state_dict())
    monkeypatch.setattr(loading, "SMALL_CHECKPOINT_BYTES", 1)  # big models keep their bar
    with quiet_hub_progress(model):
        model.save_pretrained(tmp_path / "big")
    assert "Writing model shards" in bars


def test_missing_model_error_line():
    with pytest.raises(ModelNotAvailable) as err:
        load_causal_lm(LLMConfig(name="medalign-test-org/vicuna-does-not-exist"))
    msg = str(err.value)
    assert msg.count("\n") == 0
    assert "medalign-test-org/vicuna-does-not-exist" in msg and "allow_download" in msg
