"""S2D-ALIGN: Shallow-to-Deep Auxiliary Learning for anatomically grounded report generation
(arXiv 2511.11066, AAAI 2026), in the paper's order.

1. **MLLM backbone**: a frozen image encoder E_v (Rad-DINO: 37×37 = 1369 patches, 768-d at
   518 px) gives patches V (B, P, D_v); a causal LM (Vicuna-7B) is tuned with LoRA, rank
   r = 16 (:func:`~medalign_lite.models.llm.apply_lora`).
2. **SMA, the Shallow-to-deep Memory Adapter** (:class:`SMA`): N_mem = 64 learned memory
   queries Q_mem ∈ ℝ^{M×d_m} read a modality's tokens X (B, N, D_in) with 8-head
   cross-attention, then a 3-layer MLP maps them to M soft tokens of the LM's width:

       X' = X W_in,   H = LN(Q_mem + MHA(Q_mem, X', X')),   C = MLP(H) ∈ ℝ^{B×M×H_lm}

   One SMA per input kind: SMA_v (image patches), SMA_t (reference report), SMA_p (key
   phrases), and **the same memory bank Q_mem is shared by all three** (one ``nn.Parameter``,
   ``S2D.memory``), so what the memory learns from the image in stage 1 is what reads the
   text in stages 2–3 ("implicit feature sharing").
3. **PAG, progressive alignment** (the curriculum; a list of trainer stages): stage 1 aligns
   image and report (C1 = SMA_v(V)); stage 2 starts from stage 1 and adds the reference
   report (C2 = SMA_t); stage 3 starts from stage 2 and adds key phrases (C3 = SMA_p). LR
   3e-4 → 1e-4 → 5e-5, 8 / 5 / 3 epochs. The loss is always the LM's next-token
   cross-entropy on the target report (:func:`causal_lm_loss`).
4. **Inference** uses the image path only: prefix, C1, suffix; the auxiliary signals have
   shaped the memory and LoRA weights and are not needed (:meth:`S2D.generate`).

The LM input of a training example (one batched tensor, right padded):

    [prompt prefix] [C1: M soft tokens] [C2: M, stage ≥ 2] [C3: M, stage 3] [prompt suffix]
    [report tokens … <eos>] [padding]

Labels are −100 everywhere except the report tokens and ``<eos>``.

**Our readings** of what the paper summary leaves open (each one a field of
:class:`S2DConfig`):

- Auxiliary text embedding (``aux_text="lm"``): the reference report and the key phrases are
  embedded by the LM's own frozen input-embedding table (no extra text encoder; the paper's
  component map names CXR-BERT, which we do not load). SMA_t / SMA_p's input Linear maps
  H_lm → d_m. The embeddings are detached: the table stays frozen.
- Where the auxiliary soft tokens go: after C1, before the prompt suffix, in the order C2, C3
  (``S2D.aux``, set by a stage's ``inputs["aux"]``). Stage 3 keeps the reference report (it
  trains all three SMAs, so SMA_t needs an input).
- A study with no reference report (or no key phrase) has no valid key for its SMA: the
  attention of that SMA is all-masked (zeros, never NaN) and its M soft tokens are masked out
  of the LM's attention. Position ids are the running count of attended tokens,
  ``position_ids = cumsum(attention_mask) − 1``, so a masked block takes no position: such a
  study is exactly the study without that block (the stage-1 input).
- Key phrases: ``batch.key_phrases`` when the data gives them, else
  :func:`~medalign_lite.text.phrases.extract_phrases` of the *target report* (the paper takes
  RadGraph phrases of the ground-truth report); each study's phrases are joined with "; ".
- The reference report is ``batch.prior_reports`` (the study's prior report; the paper uses
  MIMIC-CXR's longitudinal prior). "" means none.
- Residual + LayerNorm around the attention, no feed-forward between attention and MLP; the
  MLP has GELUs between its ``mlp_layers`` linears and hidden width ``mlp_hidden`` (None: the
  LM's hidden size, e.g. 768 → 4096 → 4096 → 4096 for Vicuna-7B).
- Memory init N(0, 0.02²); the unshared ablation (``shared_memory=False``) gives each SMA its
  own bank with the same initial values.
- The MLP-projector ablation (``projector="mlp"``, LLaVA-style): a 2-layer GELU MLP applied to
  every token, no memory; C1 then has P tokens, C2 / C3 one per (valid) text token.
- Generation (ours; the paper gives none): beam 3, ≤ 120 new tokens, as R2GenGPT. R2GenGPT's
  repetition penalty 2.0 suits LLaMA sub-words on MIMIC; with the word-level IU tokenizer
  31 % of a real report's tokens repeat an earlier token of the same report (".", "the",
  "no", "is"), and 38 % of reports repeat a word trigram, so the tiny default is no penalty
  (1.0) and no n-gram blocking; ``s2d_full.yaml`` uses R2GenGPT's 2.0 / length penalty 2.0.
- Generation is :func:`~medalign_lite.models.generation.generate_from_embeds` on [prefix, C1,
  suffix] (``prefill_once``: the prompt runs through the LM once per image and its beams share
  its keys/values; ``merge_lora_for_generation``: LoRA folded into copies of the weights while
  decoding; ``generation_attention``: eager attention for the decode steps on a CPU, where
  SDPA's kernel was ~12 % slower for a one-token query); the same tokens as ``generate``
  alone. Together: 5.5 → 10–12.5 reports/s for ``s2d_tiny`` at beam 3 in one process on a
  2-core CPU, 26 with two one-thread processes (``medalign bench s2d-generate [--processes 2]``,
  46-token reports; ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..models.generation import generate_from_embeds
from ..models.llm import IGNORE_INDEX, LLMConfig, apply_lora, causal_lm_loss
from ..nn import CrossAttention, MLPProjector, freeze, mlp
from ..text.phrases import extract_phrases
from . import register_method

#: Auxiliary soft-token groups that training may add after the image's, in their order.
AUX_GROUPS: tuple[str, ...] = ("reference", "key_phrases")


@dataclass
class S2DConfig:
    """S2D-ALIGN's knobs (paper symbol in the comment; see the module docstring for our readings)."""

    # §SMA
    memory_size: int = 64            # N_mem, memory queries = soft tokens per SMA (paper: 64)
    memory_dim: int = 256            # d_m, width of Q_mem (paper: 768, Rad-DINO's; 256 for the tiny LM)
    heads: int = 8                   # cross-attention heads (paper: 8)
    mlp_layers: int = 3              # linears of the MLP to the LM width (paper: 3)
    mlp_hidden: int | None = None    # hidden width of that MLP (None: the LM's hidden size)
    attn_dropout: float = 0.0        # dropout on the SMA attention weights
    memory_init_std: float = 0.02    # Q_mem ~ N(0, std²)
    shared_memory: bool = True       # one Q_mem for SMA_v, SMA_t, SMA_p (paper); False: ablation
    projector: Literal["sma", "mlp"] = "sma"  # "mlp": LLaVA-style 2-layer GELU MLP per token (ablation)
    # auxiliary inputs (training only)
    aux_text: Literal["lm"] = "lm"   # reference / phrase embedding: the LM's frozen input embeddings
    max_aux_tokens: int = 96         # reference report / key phrases are truncated to this
    phrase_separator: str = "; "     # joins a study's key phrases into one text
    # the prompt and the target
    prompt_prefix: str = "Human: <img>"
    prompt_suffix: str = "</img> Write the findings and impression of this chest X-ray. Assistant:"
    max_report_tokens: int = 128     # target tokens, <eos> included (IU, word-level: 99th pct 129)
    # generation (R2GenGPT: beam 3, max 120 new tokens)
    num_beams: int = 3
    max_new_tokens: int = 120
    min_new_tokens: int = 0          # R2GenGPT: 80 (MIMIC, sub-words); IU word-level mean is 46
    repetition_penalty: float = 1.0  # R2GenGPT: 2.0; 1.0 for word-level reports (module docstring)
    length_penalty: float = 1.0      # beam score = Σ log p / length^α (R2GenGPT: 2.0)
    no_repeat_ngram_size: int = 0    # 0: off (38 % of IU reports repeat a word trigram)
    prefill_once: bool = True        # prefill the prompt once per image, beams share its KV cache
    generation_attention: str | None = "eager"  # LM attention kernel while generating on a CPU
    #                                   (one-token decode steps: eager beat SDPA by ~12 %); None: as loaded
    merge_lora_for_generation: bool = True  # fold LoRA into copies of W₀ while generating (costs
    #                                   one copy of the adapted weights: off for a 7B LM)

    def __post_init__(self):
        for name in ("memory_size", "memory_dim", "heads", "mlp_layers", "max_aux_tokens",
                     "max_report_tokens", "num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.memory_dim % self.heads:
            raise ValueError(f"memory_dim {self.memory_dim} is not divisible by heads {self.heads}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be >= 1 or None, got {self.mlp_hidden}")
        if self.projector not in ("sma", "mlp"):
            raise ValueError(f"projector must be 'sma' or 'mlp', got {self.projector!r}")
        if self.aux_text != "lm":
            raise ValueError(f"aux_text must be 'lm' (the LM's input embeddings), got {self.aux_text!r}")
        if self.max_report_tokens < 2:
            raise ValueError(f"max_report_tokens must be >= 2 (a word and <eos>), got {self.max_report_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


# --- §SMA ----------------------------------------------------------------------------------
class SMA(nn.Module):
    """Shallow-to-deep Memory Adapter: M memory queries read N input tokens.

        X' = X W_in + b_in                                  (B, N, d_m)
        H  = LN(Q_mem + MHA(Q_mem, X', X'; key mask))       (B, M, d_m), 8 heads
        C  = MLP(H)                                         (B, M, H_lm), 3 linears, GELU

    ``memory`` is the (M, d_m) ``nn.Parameter`` Q_mem, passed in so that several SMAs can
    share the very same object. ``forward(x (B, N, D_in), mask (B, N) bool or None,
    return_attention=False)`` → C, or (C, attention (B, M, N) averaged over heads). A sample
    with no valid key gets all-zero attention and finite soft tokens (the caller masks them).
    """

    def __init__(self, in_dim: int, out_dim: int, memory: nn.Parameter, heads: int = 8,
                 mlp_layers: int = 3, mlp_hidden: int | None = None, attn_dropout: float = 0.0):
        super().__init__()
        if memory.ndim != 2:
            raise ValueError(f"memory must be (M, d_m), got {tuple(memory.shape)}")
        d_m = memory.shape[1]
        self.memory = memory
        self.proj = nn.Linear(in_dim, d_m)                      # W_in, per SMA (D_v ≠ H_lm)
        self.attn = CrossAttention(d_m, heads, dropout=attn_dropout)
        self.norm = nn.LayerNorm(d_m)
        self.mlp = mlp(d_m, mlp_hidden or out_dim, out_dim, mlp_layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False):
        x = self.proj(x.to(self.proj.weight.dtype))
        q = self.memory.unsqueeze(0).expand(x.shape[0], -1, -1)              # (B, M, d_m)
        u, attn = self.attn(q, x, mask)                                      # attn (B, h, M, N)
        c = self.mlp(self.norm(q + u))
        if return_attention:
            return c, attn.mean(1)
        return c


@dataclass
class S2DInputs:
    """The LM input of a batch (L = prompt + soft tokens + T report positions).

    Attributes:
        inputs_embeds: (B, L, H_lm).
        attention_mask: (B, L) long, 0 on padding and on masked soft-token blocks.
        position_ids: (B, L) = cumsum(attention_mask) − 1 (clamped at 0).
        labels: (B, L), the report tokens and <eos>; −100 on prompt, soft tokens, padding.
        n_soft: (B,) soft tokens attended per study.
        target_len: T, the report block's padded length (the last T positions).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    n_soft: torch.Tensor
    target_len: int


# --- the model -----------------------------------------------------------------------------
@register_method("s2d", config=S2DConfig, kind="report_generator",
                 paper="S2D-ALIGN (arXiv 2511.11066, AAAI 2026)")
class S2D(nn.Module):
    """S2D-ALIGN: frozen image encoder → SMA_v (and SMA_t, SMA_p in training) → LM with LoRA.

    Args:
        vision_encoder: returns :class:`~medalign_lite.models.features.ImageFeatures`, has
            ``patch_dim``; frozen (``requires_grad=False``, eval mode, run under no_grad).
        lm: a causal LM (wrapped with LoRA here) or a ``peft`` model already (used as is).
        tokenizer: the LM's tokenizer (needs pad and eos tokens).
        config: :class:`S2DConfig`.
        llm_config: LoRA settings for :func:`~medalign_lite.models.llm.apply_lora`.

    Submodules: ``vision``, ``memory`` (the shared Q_mem; absent when unshared or with the MLP
    projector), ``sma_v``, ``sma_t``, ``sma_p``, ``lm`` (the peft model: LoRA weights match
    ``*lora_*``). ``aux`` is the tuple of auxiliary groups training adds (from
    ``set_stage``); generation ignores it.
    """

    def __init__(self, vision_encoder: nn.Module, lm: nn.Module, tokenizer: Any,
                 config: S2DConfig | None = None, llm_config: LLMConfig | None = None):
        super().__init__()
        from peft import PeftModel

        self.config = c = config or S2DConfig()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad and an eos token")
        self.vision = freeze(vision_encoder)
        self.lm = lm if isinstance(lm, PeftModel) else apply_lora(lm, llm_config or LLMConfig())
        hidden = int(self.lm.get_input_embeddings().embedding_dim)
        v_dim = int(vision_encoder.patch_dim)
        if c.projector == "sma":
            init = torch.randn(c.memory_size, c.memory_dim) * c.memory_init_std
            if c.shared_memory:
                self.memory = nn.Parameter(init)
                banks = [self.memory] * 3
            else:  # ablation: independent banks, same initial values
                banks = [nn.Parameter(init.clone()) for _ in range(3)]
            kw = {"heads": c.heads, "mlp_layers": c.mlp_layers, "mlp_hidden": c.mlp_hidden,
                  "attn_dropout": c.attn_dropout}
            self.sma_v = SMA(v_dim, hidden, banks[0], **kw)
            self.sma_t = SMA(hidden, hidden, banks[1], **kw)
            self.sma_p = SMA(hidden, hidden, banks[2], **kw)
        else:
            self.sma_v = MLPProjector(v_dim, hidden)
            self.sma_t = MLPProjector(hidden, hidden)
            self.sma_p = MLPProjector(hidden, hidden)
        prefix = tokenizer(c.prompt_prefix, add_special_tokens=True)["input_ids"]      # <bos> + prefix
        suffix = tokenizer(c.prompt_suffix, add_special_tokens=False)["input_ids"]
        self.register_buffer("prefix_ids", torch.tensor([prefix], dtype=torch.long), persistent=False)
        self.register_buffer("suffix_ids", torch.tensor([suffix], dtype=torch.long), persistent=False)
        self._aux: tuple[str, ...] = ()

    # ---------------------------------------------------------------- stages
    @property
    def aux(self) -> tuple[str, ...]:
        """Auxiliary soft-token groups that training adds after C1: a subset of
        ``("reference", "key_phrases")``, kept in that order."""
        return self._aux

    @aux.setter
    def aux(self, groups: Iterable[str]) -> None:
        groups = (groups,) if isinstance(groups, str) else tuple(groups)
        unknown = [g for g in groups if g not in AUX_GROUPS]
        if unknown:
            raise ValueError(f"unknown auxiliary input(s) {unknown}; choose from {list(AUX_GROUPS)}")
        self._aux = tuple(g for g in AUX_GROUPS if g in groups)

    def set_stage(self, stage) -> None:
        """PAG: the stage's ``inputs["aux"]`` (``[]``, ``["reference"]``, ``["reference",
        "key_phrases"]``) says which auxiliary groups training adds. Declarative: depends on
        this stage only."""
        self.aux = (getattr(stage, "inputs", None) or {}).get("aux", []) or []

    def train(self, mode: bool = True) -> S2D:
        super().train(mode)
        self.vision.eval()  # frozen: batch-norm statistics and dropout stay in inference mode
        return self

    # ---------------------------------------------------------------- pieces
    @property
    def embed_tokens(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def _tokenize(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bare tokens (no <bos>), truncated to ``max_len``, right padded → ids (B, T ≥ 1),
        mask (B, T) bool."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_len,
                             padding="longest", padding_side="right", return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        if ids.shape[1] == 0:  # every text empty: one padding column
            ids = torch.full((len(texts), 1), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(texts), 1, dtype=torch.bool)
        dev = self.prefix_ids.device
        return ids.to(dev), mask.to(dev)

    def _targets(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Report tokens + <eos> (at most ``max_report_tokens``), right padded → ids (B, T),
        mask (B, T) bool."""
        ids, mask = self._tokenize(texts, self.config.max_report_tokens - 1)
        b = ids.shape[0]
        ids = torch.cat([ids, ids.new_full((b, 1), self.tokenizer.pad_token_id)], 1)
        mask = torch.cat([mask, mask.new_zeros(b, 1)], 1)
        lengths = mask.sum(1, keepdim=True)                                  # the <eos> position
        ids = ids.scatter(1, lengths, self.tokenizer.eos_token_id)
        mask = mask.scatter(1, lengths, True)
        return ids, mask

    def key_phrase_texts(self, batch) -> list[str]:
        """One key-phrase text per study: ``batch.key_phrases`` if given, else the phrases
        :func:`~medalign_lite.text.phrases.extract_phrases` finds in the target report; joined
        with ``phrase_separator``."""
        sep = self.config.phrase_separator
        if batch.key_phrases is not None:
            return [sep.join(p) for p in batch.key_phrases]
        return [sep.join(k.text() for k in extract_phrases(t)) for t in batch.texts]

    def image_patches(self, images: torch.Tensor) -> torch.Tensor:
        """V = E_v(I): (B, P, D_v) from the frozen encoder, under no_grad."""
        with torch.no_grad():
            return self.vision(images).patches

    def _soft(self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft tokens of one SMA (or MLP projector) → (C (B, M or N, H_lm), attended (B, ·) bool).

        An SMA's M tokens are attended iff its input has a valid token."""
        c = module(x, mask)
        b, n = c.shape[:2]
        if mask is None:
            keep = torch.ones(b, n, dtype=torch.bool, device=c.device)
        elif isinstance(module, SMA):
            keep = mask.any(1, keepdim=True).expand(b, n)
        else:
            keep = mask
        return c, keep

    def _text_soft(self, module: nn.Module, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._tokenize(texts, self.config.max_aux_tokens)
        x = self.embed_tokens(ids).detach()                                  # frozen LM embeddings
        return self._soft(module, x, mask)

    def _prompt(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed_tokens
        return (emb(self.prefix_ids).expand(b, -1, -1), emb(self.suffix_ids).expand(b, -1, -1))

    # ---------------------------------------------------------------- training
    def build_inputs(self, batch) -> S2DInputs:
        """The batched LM input of ``batch`` (see :class:`S2DInputs`): prefix, C1, the
        ``aux`` groups (C2 reference report, C3 key phrases), suffix, report + <eos>."""
        images = batch.images
        b = images.shape[0]
        emb = self.embed_tokens
        dtype = emb.weight.dtype
        prefix, suffix = self._prompt(b)
        dev = prefix.device
        ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=dev)
        c1, k1 = self._soft(self.sma_v, self.image_patches(images), None)
        blocks, keeps = [prefix, c1.to(dtype)], [ones(prefix.shape[1]), k1]
        if "reference" in self._aux:
            refs = batch.prior_reports if batch.prior_reports is not None else [""] * b
            c2, k2 = self._text_soft(self.sma_t, refs)
            blocks.append(c2.to(dtype))
            keeps.append(k2)
        if "key_phrases" in self._aux:
            c3, k3 = self._text_soft(self.sma_p, self.key_phrase_texts(batch))
            blocks.append(c3.to(dtype))
            keeps.append(k3)
        target, t_mask = self._targets(batch.texts)
        blocks += [suffix, emb(target)]
        keeps += [ones(suffix.shape[1]), t_mask]
        attention = torch.cat(keeps, 1)
        n_prompt = attention.shape[1] - target.shape[1]
        labels = torch.cat([torch.full((b, n_prompt), IGNORE_INDEX, dtype=torch.long, device=dev),
                            target.masked_fill(~t_mask, IGNORE_INDEX)], 1)
        attention = attention.long()
        n_soft = sum(k.sum(1) for k in keeps[1:-2])
        return S2DInputs(inputs_embeds=torch.cat(blocks, 1), attention_mask=attention,
                         position_ids=(attention.cumsum(1) - 1).clamp_min(0), labels=labels,
                         n_soft=n_soft, target_len=target.shape[1])

    def forward(self, batch) -> dict:
        """L = next-token cross-entropy of the report given prompt and soft tokens (mean over
        report tokens). → dict(loss, lm_loss, n_tokens, n_soft_tokens (mean per study)).

        Logits are computed for the report block only (``logits_to_keep``)."""
        inp = self.build_inputs(batch)
        keep = inp.target_len + 1  # the last suffix position predicts the first report token
        out = self.lm(inputs_embeds=inp.inputs_embeds, attention_mask=inp.attention_mask,
                      position_ids=inp.position_ids, use_cache=False, logits_to_keep=keep)
        loss, n = causal_lm_loss(out.logits, inp.labels[:, -keep:])
        return {"loss": loss, "lm_loss": loss.detach(), "n_tokens": n.detach().float(),
                "n_soft_tokens": inp.n_soft.detach().float().mean()}

    # ---------------------------------------------------------------- inference
    def memory_attention(self, images: torch.Tensor) -> torch.Tensor:
        """Where each memory query of SMA_v looks: attention (B, M, P) over the patch grid
        (averaged over heads; rows sum to 1). ``vision(images).grid`` gives (h, w)."""
        if self.config.projector != "sma":
            raise ValueError(f"memory_attention needs projector='sma', got {self.config.projector!r}")
        with torch.no_grad():
            _, attn = self.sma_v(self.image_patches(images), None, return_attention=True)
        return attn

    def generation_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The image-only prompt: [prefix] [C1] [suffix] → (B, L, H_lm), equal length for every
        image (no padding)."""
        b = images.shape[0]
        prefix, suffix = self._prompt(b)
        c1 = self.sma_v(self.image_patches(images))
        return torch.cat([prefix, c1.to(prefix.dtype), suffix], 1)

    def generate_ids(self, images: torch.Tensor, prefill_once: bool | None = None, **overrides) -> torch.Tensor:
        """New token ids (B, ≤ max_new_tokens) for ``images`` (image path only; ``aux`` and
        any auxiliary input are ignored): :func:`~medalign_lite.models.generation.generate_from_embeds`
        on :meth:`generation_inputs` with the config's decoding settings. ``overrides`` are
        ``generate`` keyword arguments (``num_beams``, ``max_new_tokens``, ``min_new_tokens``,
        ``repetition_penalty``, ...). Runs in eval mode and restores the training mode.

        ``prefill_once`` (default ``config.prefill_once``): the prompt runs through the LM once
        per image and the image's beams share its keys/values; the tokens are the same. With
        ``config.merge_lora_for_generation`` the LoRA update is folded into copies of the
        weights meanwhile; on a CPU the LM decodes with ``config.generation_attention``."""
        c = self.config
        kw = {"num_beams": c.num_beams, "max_new_tokens": c.max_new_tokens, "min_new_tokens": c.min_new_tokens,
              "repetition_penalty": c.repetition_penalty, "length_penalty": c.length_penalty,
              "no_repeat_ngram_size": c.no_repeat_ngram_size, **overrides}
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                embeds = self.generation_inputs(images)
            return generate_from_embeds(
                self.lm, self.tokenizer, embeds, prefill_once=c.prefill_once if prefill_once is None else prefill_once,
                attention=c.generation_attention if images.device.type == "cpu" else None,
                merge_lora=c.merge_lora_for_generation, **kw)
        finally:
            self.train(was_training)

    def generate(self, images: torch.Tensor, **overrides) -> list[str]:
        """Reports for ``images`` (B, C, H, W): beam search on [prefix, C1, suffix] with the KV
        cache, decoded without special tokens and stripped."""
        ids = self.generate_ids(images, **overrides)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def generate_batch(self, batch, **overrides) -> list[str]:
        """:meth:`generate` on ``batch.images``; the batch's prior reports and key phrases are
        not used (inference is image-only)."""
        return self.generate(batch.images, **overrides)


def build_s2d(config: str | Path = "s2d_tiny", overrides: Sequence[str] = (),
              vision_encoder: nn.Module | None = None) -> S2D:
    """An :class:`S2D` from a config file's ``model:``, ``vision:`` and ``llm:`` sections
    (``medalign_lite/configs/s2d_tiny.yaml``, ``s2d_full.yaml``, or a path); its ``train:``
    section is the curriculum (``load_config(TrainConfig, config, section="train")``).

    ``overrides`` are ``section.key=value`` (``"model.memory_size=32"``,
    ``"llm.name=/path/to/vicuna"``, ``"vision.pretrained=PATH"``). ``vision_encoder``
    replaces the one the ``vision:`` section describes (e.g. one pre-aligned by contrastive
    training).
    """
    from ..config import load_config, split_overrides
    from ..models.llm import load_causal_lm
    from ..models.vision import VisionConfig, build_image_encoder

    per = split_overrides(overrides, ("model", "vision", "llm"))
    model_cfg = load_config(S2DConfig, config, per["model"], section="model")
    llm_cfg = load_config(LLMConfig, config, per["llm"], section="llm")
    if vision_encoder is None:
        vision_encoder = build_image_encoder(load_config(VisionConfig, config, per["vision"], section="vision"))
    lm, tokenizer = load_causal_lm(llm_cfg)
    return S2D(vision_encoder, lm, tokenizer, model_cfg, llm_cfg)


__all__ = [
    "AUX_GROUPS",
    "S2D",
    "SMA",
    "MLPProjector",
    "S2DConfig",
    "S2DInputs",
    "build_s2d",
    "causal_lm_loss",
    "mlp",
]
