"""Causal language models for report generation: a tiny Llama trained from scratch, or a real
LLaMA/Vicuna checkpoint, plus LoRA adapters through ``peft``.

* ``name="tiny"``: ``LlamaForCausalLM(LlamaConfig(...))`` with random weights (hidden 256,
  4 layers, 4 heads, MLP 688, RoPE, 512 positions; ~4 M parameters with the ~1.5 k-word IU
  vocabulary) and the word-level report tokenizer of :mod:`medalign_lite.text.tokenizer`.
  It learns IU-style reports in CPU minutes; the same code path serves a 7B model.
* any other name: a Hugging Face id (``"lmsys/vicuna-7b-v1.5"``) or a local folder, loaded with
  ``AutoModelForCausalLM`` / ``AutoTokenizer`` via
  :func:`~medalign_lite.models.loading.resolve_pretrained` (offline-first). LLaMA tokenizers
  have no pad token: the ``unk`` (else ``eos``) token is used, so the embeddings keep their size.

LoRA (:func:`apply_lora`): every targeted linear W₀ (d_out × d_in) becomes
    h = W₀ x + (α / r) · B A x,    A ∈ ℝ^{r×d_in}, B ∈ ℝ^{d_out×r}, B₀ = 0,
with W₀ frozen, so training starts from the base model. Defaults r = 16, α = 32, dropout 0.05
on the attention projections q/k/v/o (our S2D / ExGra-Med setting; R2GenGPT: r = 16, α = 16).

The training objective of the LM-based methods (:func:`causal_lm_loss`): next-token
cross-entropy over the labelled positions, labels −100 (:data:`IGNORE_INDEX`) elsewhere.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .loading import (
    ModelNotAvailable,
    parse_dtype,
    quiet_hub_progress,
    resolve_pretrained,
)


@dataclass
class LLMConfig:
    """Which causal LM to build, and its LoRA settings.

    Attributes:
        name: ``"tiny"`` or a Hugging Face id / local folder (Vicuna / LLaMA family).
        tokenizer: tokenizer folder/id when it differs from ``name``; for ``"tiny"``, a folder
            saved by :func:`~medalign_lite.text.tokenizer.save_word_tokenizer` (``None`` = the
            cached IU report tokenizer).
        hidden_size, num_layers, num_heads, intermediate_size, max_positions, rope_theta,
        tie_embeddings: the tiny Llama architecture.
        word_vocab_size, word_min_frequency: the IU report tokenizer of the tiny model (the
            model's vocab is that tokenizer's actual size).
        tokenizer_cache: cache folder of the report tokenizer (``None`` = default cache).
        torch_dtype: ``"auto"`` (checkpoint dtype; float32 for tiny), ``"float32"``,
            ``"bfloat16"``, ``"float16"``; passed as ``dtype`` (transformers 5).
        gradient_checkpointing: recompute activations in backward (non-reentrant).
        attn_implementation: ``None`` (transformers' default, SDPA), ``"eager"``, ...
        lora_r: LoRA rank r.
        lora_alpha: LoRA scale α (the update is scaled by α / r).
        lora_dropout: dropout on the LoRA input.
        lora_targets: names of the linear modules that get adapters.
        trust_remote_code: allow a checkpoint's own code; off by default.
        allow_download: permit a one-time download (see ``loading``).
    """

    name: str = "tiny"
    tokenizer: str | None = None
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 688
    max_positions: int = 512
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    word_vocab_size: int = 2000
    word_min_frequency: int = 2
    tokenizer_cache: str | None = None
    torch_dtype: str = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    lora_r: int = 16  # r
    lora_alpha: float = 32.0  # α
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    trust_remote_code: bool = False
    allow_download: bool = False

    def __post_init__(self):
        if self.name == "tiny" and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        self.lora_targets = tuple(self.lora_targets)


def _tiny_tokenizer(cfg: LLMConfig):
    from medalign_lite.data.iu_xray import report_tokenizer
    from medalign_lite.text.tokenizer import load_word_tokenizer

    if cfg.tokenizer is not None:
        return load_word_tokenizer(resolve_pretrained(cfg.tokenizer))
    return report_tokenizer(cfg.tokenizer_cache, vocab_size=cfg.word_vocab_size,
                            min_frequency=cfg.word_min_frequency)


def tiny_llama_config(cfg: LLMConfig, tokenizer) -> Any:
    """The ``LlamaConfig`` of the tiny model, sized to ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def load_causal_lm(cfg: LLMConfig | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for ``cfg``: the random tiny Llama, or a real checkpoint offline-first.

    Raises:
        ModelNotAvailable: a real model that is neither local nor cached (downloads off).
    """
    import transformers

    cfg = cfg or LLMConfig()
    dtype = parse_dtype(cfg.torch_dtype)
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.name == "tiny":
        tokenizer = _tiny_tokenizer(cfg)
        config = tiny_llama_config(cfg, tokenizer)
        model = transformers.AutoModelForCausalLM.from_config(config, **extra)  # LlamaForCausalLM
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
    else:
        source = resolve_pretrained(cfg.name, cfg.allow_download)
        tok_source = resolve_pretrained(cfg.tokenizer, cfg.allow_download) if cfg.tokenizer else source
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                tok_source, local_files_only=True, trust_remote_code=cfg.trust_remote_code)
            with quiet_hub_progress(source):  # no "Loading weights" bar for a small local LM
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    source, local_files_only=True, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra)
        except OSError as e:
            raise ModelNotAvailable(f"Model '{cfg.name}': files missing in '{source}' ({e}); download "
                                    "them with allow_download=True or pass a local path") from e
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None and model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:  # transformers 5 renamed it activation checkpointing
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def apply_lora(model: nn.Module, cfg: LLMConfig | None = None):
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA on ``cfg.lora_targets``.

    Only ``lora_A`` / ``lora_B`` are trainable afterwards; the base weights are frozen.

    Raises:
        ValueError: when no module of ``model`` matches ``cfg.lora_targets``.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = cfg or LLMConfig()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg.lora_targets if t not in names]
    if missing:
        raise ValueError(f"LoRA targets {missing} are not linear modules of this model "
                         f"(available: {sorted(names)})")
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets), bias="none")
    with warnings.catch_warnings():
        # peft (0.21) PeftModel.__init__ reads model.is_gradient_checkpointing, a FutureWarning in
        # transformers 5 (renamed is_activation_checkpointing), for every model: no call of ours avoids it
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


#: The label of positions the LM loss ignores (prompt, soft tokens, padding).
IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over the labelled positions (mean over tokens):

        L = −1/N Σ_{b,t: y_{b,t+1} ≠ −100} log softmax(z_{b,t})[y_{b,t+1}]

    logits z (B, L, V) and labels y (B, L) of the same positions (the position t predicts
    the label at t + 1). Computed in float32. Returns (L, N); N = 0 gives L = 0.
    """
    pred = logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    n = (target != IGNORE_INDEX).sum()
    return nll / n.clamp_min(1), n


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["IGNORE_INDEX", "LLMConfig", "apply_lora", "causal_lm_loss", "count_parameters", "load_causal_lm",
           "tiny_llama_config"]
