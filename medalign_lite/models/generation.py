"""Beam search over a soft prompt, for the methods that generate reports with an LM (S2D-ALIGN,
ExGra-Med): the prompt is a tensor of input embeddings, not token ids (projector or memory
tokens between embedded prompt words), and the LM may carry LoRA adapters.

Shapes: B images, k beams per image, N = B·k beam rows, T prompt positions, t tokens generated
so far, D the LM width, h heads of width d = D / h, ℓ layers.

:func:`generate_from_embeds` runs ``lm.generate(inputs_embeds=E (B, T, D), ...)`` with three
mechanisms around it, none of which changes a generated token (the tests compare tokens):

1. **Prefill once, beams share the prompt's cache** (``prefill_once``; :func:`share_prompt_cache`,
   :class:`SharedPromptBeamLayer`). ``generate`` alone repeats E to (N, T, D) and runs the
   prompt through the LM once per beam, then, with its ``DynamicCache``, concatenates the new
   keys/values to (N, h, T + t, d) and ``index_select``s the whole cache by the beams' parents
   at every step: O(N·(T + t)) copied twice per layer and step, where T (a few hundred soft
   tokens) dwarfs t. Here the first T − 1 positions run once per image, (B, T − 1, D) → keys
   and values (B, h, T − 1, d) per layer, which are repeated to (N, h, T − 1, d) into a buffer
   preallocated for T + max_new_tokens positions; ``generate`` then runs only the last prompt
   position (it needs one uncached position for the first logits). The k rows of an image
   hold the same prompt keys, and beams never move between images, so a beam reorder
   permutes the generated positions only: O(N·t), written in place.
2. **The attention kernel while decoding** (``attention``; :func:`attention_implementation`).
   A decode step's query is one token, (N, h, 1, d) against (N, h, T + t, d); for that shape
   transformers' eager attention beat PyTorch's SDPA CPU kernel by ~12 % (the tiny S2D at
   beam 3). The kernels compute the same attention; the LM gets its own kernel back after.
3. **LoRA folded into the weights while decoding** (``merge_lora``; :func:`merged_lora`). An
   adapted linear computes W₀x + (α / r)·B(A x): two more (small) matmuls per layer and step,
   whose fixed cost dominates when a step has only N rows. W = W₀ + (α / r)·B A (D_out × D_in)
   is one matmul; it costs one copy of the adapted weights (off for a 7B LM on a small GPU)
   and the originals are put back bit for bit.

Decoding settings (:func:`generation_kwargs`): deterministic beam search (``do_sample=False``)
with the cache on, the tokenizer's pad / eos / bos ids, and ``length_penalty`` only for beams.

The KV cache is a ``Cache`` object named ``cache`` in recent transformers 5 releases (5.25 here),
as an argument of ``forward`` / ``generate`` and as a field of the model output;
``past_key_values`` is deprecated there (``FutureWarning``s, to be removed in 5.40 for
``forward``, 6.0 for ``generate``). :data:`CACHE_KEY` is the name the installed version uses.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

#: The KV cache's name in ``forward`` / ``generate`` arguments and model outputs: ``"cache"`` where
#: the output dataclasses have that field (``past_key_values`` is deprecated there), else the old name.
CACHE_KEY = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


# --- 1. a KV cache for beams that share a prompt ----------------------------------------------
class SharedPromptBeamLayer(DynamicLayer):
    """One layer's KV cache for beam search whose k beams per image share the image's prompt.

    Keys and values live in one preallocated buffer (N = B·k, h, capacity, d): the prompt's
    are written once (repeated per beam), each step writes the new token's in place and
    attention reads a view of the first T + t positions. Beam search reorders beams at every
    step (``reorder_cache(beam_idx)``); beams never move between images and the prompt rows of
    an image's beams are equal, so only the generated positions are permuted. Per step this
    moves O(N·t) instead of O(N·(T + t)) twice (``DynamicLayer`` concatenates and
    ``index_select``s the whole cache).
    """

    is_croppable = False  # crop() raises (transformers asks before cropping a returned cache)

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        n, h, length, d = keys.shape
        capacity = max(capacity, length + 1)
        self.dtype, self.device = keys.dtype, keys.device
        self._k = keys.new_empty(n, h, capacity, d)
        self._v = values.new_empty(n, h, capacity, values.shape[-1])
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self.prompt_len = self.length = length
        self.is_initialized = True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # built initialised

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[2]:  # grow (not reached when capacity covers max_new_tokens)
            grow = max(end, 2 * self._k.shape[2]) - self._k.shape[2]
            self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], grow, self._k.shape[3])], 2)
            self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], grow, self._v.shape[3])], 2)
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Row r takes row beam_idx[r]'s generated keys/values; on CPU only the rows that
        change are copied (a beam that continues itself stays where it is)."""
        lo, hi = self.prompt_len, self.length
        if hi <= lo:
            return
        idx = beam_idx.to(self.device)
        rows: torch.Tensor | slice = slice(None)
        if self.device.type == "cpu":  # no device sync to pay for: skip the rows that stay
            rows = (idx != torch.arange(idx.shape[0], device=idx.device)).nonzero().squeeze(1)
            if rows.numel() == 0:
                return
            idx = idx[rows]
        self._k[rows, :, lo:hi] = self._k[idx, :, lo:hi]
        self._v[rows, :, lo:hi] = self._v[idx, :, lo:hi]

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SharedPromptBeamLayer is built already repeated for the beams")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("SharedPromptBeamLayer does not select batch rows")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SharedPromptBeamLayer is not croppable")


def share_prompt_cache(cache, num_beams: int, capacity: int):
    """Turn the ``DynamicCache`` of a prompt prefilled once per image (B rows) into a cache for
    ``num_beams`` beams per image (B·k rows) made of :class:`SharedPromptBeamLayer`; ``None``
    when the cache is of another kind (``generate`` then runs the prompt itself)."""
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or not layers or any(type(l) is not DynamicLayer for l in layers):
        return None
    cache.layers = [SharedPromptBeamLayer(l.keys.repeat_interleave(num_beams, 0),
                                          l.values.repeat_interleave(num_beams, 0), capacity)
                    for l in layers]
    return cache


# --- 2. the attention kernel ------------------------------------------------------------------
@contextlib.contextmanager
def attention_implementation(lm: nn.Module, name: str | None) -> Iterator[None]:
    """The transformers model inside ``lm`` (a peft wrapper or not) uses attention kernel
    ``name`` (``"eager"``, ``"sdpa"``, ...) for the block, then its own again; ``None`` or a
    model without ``set_attn_implementation``: no change. The kernels compute the same
    attention (the tests compare generated tokens)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    old = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if name is None or old is None or name == old or not hasattr(base, "set_attn_implementation"):
        yield
        return
    base.set_attn_implementation(name)
    try:
        yield
    finally:
        base.set_attn_implementation(old)


# --- 3. LoRA folded into the weights ----------------------------------------------------------
@contextlib.contextmanager
def merged_lora(peft_model: nn.Module) -> Iterator[bool]:
    """LoRA folded into the base weights for the duration of the block, for faster decoding:

        W = W₀ + (α / r) · B A     (a new tensor; the adapters are switched off meanwhile)

    Each adapted linear layer gets W in place of its weight ``Parameter``; on exit the original
    ``Parameter`` objects W₀ are put back, untouched (bit for bit, unlike peft's
    ``merge_adapter`` / ``unmerge_adapter``, which add and subtract in place). Needs one copy
    of the adapted weights. For inference: the merged path has no LoRA dropout. Yields
    whether it merged: nothing is done when the adapters are disabled or merged already, or a
    layer is not a plain ``nn.Linear``.
    """
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    ok = (layers and hasattr(peft_model, "disable_adapter") and not getattr(peft_model, "_adapters_disabled", False)
          and all(isinstance(m.get_base_layer(), nn.Linear) and not m.merged and not m.disable_adapters
                  for m in layers))
    if not ok:
        yield False
        return
    swapped: list[tuple[nn.Linear, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for m in layers:
                base = m.get_base_layer()
                w0 = base.weight
                delta = sum(m.get_delta_weight(a) for a in m.active_adapters if a in m.lora_A)
                base.weight = nn.Parameter(w0.detach() + delta.to(w0.dtype), requires_grad=False)
                swapped.append((base, w0))
        with peft_model.disable_adapter():
            yield True
    finally:
        for base, w0 in swapped:
            base.weight = w0


# --- beam search over inputs_embeds -----------------------------------------------------------
def generation_kwargs(tokenizer: Any, *, num_beams: int, max_new_tokens: int, **kwargs) -> dict:
    """``generate`` keyword arguments: deterministic search (``do_sample=False``) with the KV
    cache (``use_cache=True``), the tokenizer's pad / eos (/ bos) ids, then ``kwargs``
    (``min_new_tokens``, ``repetition_penalty``, ``length_penalty``, ``no_repeat_ngram_size``,
    ... override any of these). ``length_penalty`` is dropped at ``num_beams=1`` (a
    beam-search-only setting that ``generate`` would warn about)."""
    kw = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False, "use_cache": True,
          "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if tokenizer.bos_token_id is not None:
        kw["bos_token_id"] = tokenizer.bos_token_id
    kw.update(kwargs)
    if kw["num_beams"] == 1:
        kw.pop("length_penalty", None)
    return kw


def generate_from_embeds(lm: nn.Module, tokenizer: Any, inputs_embeds: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, *, num_beams: int, max_new_tokens: int,
                         prefill_once: bool = True, attention: str | None = None, merge_lora: bool = False,
                         **kwargs) -> torch.LongTensor:
    """New token ids (B, ≤ max_new_tokens) of beam search on the prompt ``inputs_embeds``
    (B, T, D) (``attention_mask`` (B, T), 1 on attended positions; ``None``: all ones).

    Args:
        lm: a causal LM with ``generate`` (a ``peft`` model or a transformers one).
        tokenizer: gives the pad / eos / bos ids (:func:`generation_kwargs`).
        num_beams, max_new_tokens: beams per prompt k and the most new tokens.
        prefill_once: run the first T − 1 prompt positions once per prompt and let the k beams
            share their keys/values (:func:`share_prompt_cache`); the same tokens as without.
        attention: the attention kernel meanwhile (:func:`attention_implementation`; ``None``:
            the LM's own).
        merge_lora: fold LoRA into copies of the weights meanwhile (:func:`merged_lora`).
        kwargs: more ``generate`` arguments (:func:`generation_kwargs`).

    Runs ``lm`` in eval mode under ``torch.inference_mode`` and restores its training mode.
    The prefill takes the positions ``generate`` gives a masked prompt (running count of
    attended positions − 1), so a padded prompt decodes the same either way.
    """
    kw = generation_kwargs(tokenizer, num_beams=num_beams, max_new_tokens=max_new_tokens, **kwargs)
    if attention_mask is None:
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    merge = merged_lora(lm) if merge_lora else contextlib.nullcontext()
    was_training = lm.training
    lm.eval()
    try:
        with merge, attention_implementation(lm, attention), torch.inference_mode(), warnings.catch_warnings():
            # a soft prompt has no token ids: the repetition penalty and the n-gram block apply to
            # generated tokens only, as wanted (transformers warns that they skip the prompt)
            warnings.filterwarnings("ignore", message=".*repetition_penalty.*inputs_embeds.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds.*", category=UserWarning)
            if prefill_once and kw["use_cache"] and inputs_embeds.shape[1] > 1:
                mask = attention_mask[:, :-1]
                positions = (mask.long().cumsum(1) - 1).masked_fill(mask == 0, 0)  # as generate's
                out = lm(inputs_embeds=inputs_embeds[:, :-1], attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
                cache = share_prompt_cache(getattr(out, CACHE_KEY, None), num_beams,
                                           capacity=inputs_embeds.shape[1] + max_new_tokens)
                if cache is not None:
                    kw[CACHE_KEY] = cache
            return lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kw)
    finally:
        lm.train(was_training)


__all__ = [
    "CACHE_KEY",
    "SharedPromptBeamLayer",
    "attention_implementation",
    "generate_from_embeds",
    "generation_kwargs",
    "merged_lora",
    "share_prompt_cache",
]
