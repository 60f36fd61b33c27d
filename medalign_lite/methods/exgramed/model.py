"""ExGra-Med, the model: a LLaVA-style multimodal LM trained with L = L_AR + α · L_align.

Reading order: :class:`ExGraMedConfig` (every knob, the paper's value as default) →
:class:`ExGraMed` (``forward``: the autoregressive loss, the node features, the alignment;
``generate``: answers) → :func:`build_exgramed` (from a config file).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ...models.generation import generate_from_embeds
from ...models.llm import LLMConfig, apply_lora, causal_lm_loss
from ...nn import MLPProjector, freeze, info_nce, masked_mean
from .. import register_method
from .aligner import AlignmentOutput, BarycenterGraphAligner
from .matching import SOLVERS
from .prompt import ConversationCollate, InstructionBatch, PromptFormat

__all__ = ["ALIGNMENTS", "MODALITIES", "ExGraMed", "ExGraMedConfig", "build_exgramed"]

#: The node sets a graph can be built from (the paper's three modalities).
MODALITIES: tuple[str, ...] = ("image", "response", "extended")
#: How the modalities are aligned: ExGra-Med's barycenter graph matching, or the paper's
#: InfoNCE baseline (image ↔ instruction response, the official ``contrastive_loss_type="infonce"``).
ALIGNMENTS: tuple[str, ...] = ("graph", "infonce")


@dataclass
class ExGraMedConfig:
    """ExGra-Med's knobs (paper / official-code value as default; symbol in the comment)."""

    # §3.1 the LLaVA-style model
    projector: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"  # LLaVA-Med 1.5's projector
    lora: bool = True                     # LoRA adapters on the LM; False: full fine-tuning (paper, FSDP)
    human: str = "human:"                 # conversation template (PromptFormat)
    assistant: str = "assistant:"
    image_start: str = "<img>"
    image_end: str = "</img>"
    separator: str = ". "                 # joins a conversation's answers into one node text (official)
    max_tokens: int = 2048                # conversation tokens (official model_max_length 2048)
    max_text_tokens: int = 512            # node-text tokens per text-only LM pass
    # §3.2 node features and graphs
    modalities: tuple[str, ...] = MODALITIES  # ("image", "response"): the w/o-extended-caption ablation
    text_pooling: Literal["masked", "with_pads"] = "masked"  # official: mean over pads too ("with_pads")
    k: int = 5                            # k, kNN neighbours
    gnn_layers: int = 2                   # GraphConv layers (max aggregation)
    gnn_dropout: float = 0.1
    share_topology: bool = True           # second graph reuses the first's kNN edges (official)
    # §3.3 graph matching
    solver: Literal["ipfp", "lap"] = "ipfp"   # QAP local search, or the unary LAP only
    max_iter: int = 20                    # IPFP iterations
    unary_shift: float = 0.5              # c_u in U = c_u − cos − ε
    quad_shift: float = 0.25              # c_q in q = c_q − w⟨ê, f̂⟩
    quad_weight: float = 0.5              # w
    # §3.4 perturb-and-MAP with the blackbox / I-MLE gradient
    lam: float = 80.0                     # λ
    noise_scale: float = 0.05             # β of the Gumbel noise
    n_samples: int = 1                    # perturbations per step
    shared_noise: bool = True             # one node-noise draw for all matchings of a step (official)
    # the objective
    alpha: float = 1.0                    # α: L = L_AR + α L_align (0: the LLaVA-Med baseline)
    alignment: Literal["graph", "infonce"] = "graph"
    infonce_tau: float = 0.07             # τ of the InfoNCE baseline (CLIP's initial temperature)
    # answering (greedy by default: VQA answers are short)
    describe_question: str = "describe the findings of this chest x-ray."
    num_beams: int = 1
    max_new_tokens: int = 32
    repetition_penalty: float = 1.0
    generation_attention: str | None = "eager"   # LM attention kernel while decoding on a CPU
    merge_lora_for_generation: bool = True

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        if self.projector not in ("mlp2x_gelu", "linear"):
            raise ValueError(f"projector must be 'mlp2x_gelu' or 'linear', got {self.projector!r}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or "image" not in self.modalities or len(set(self.modalities)) < 2 or \
                len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct, from {MODALITIES}, with 'image' and at least one text; "
                             f"got {list(self.modalities)}")
        if self.text_pooling not in ("masked", "with_pads"):
            raise ValueError(f"text_pooling must be 'masked' or 'with_pads', got {self.text_pooling!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        for name in ("k", "gnn_layers", "n_samples", "max_tokens", "max_text_tokens", "num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if not self.lam > 0 or self.noise_scale < 0 or self.alpha < 0 or not self.infonce_tau > 0:
            raise ValueError("need lam > 0, noise_scale >= 0, alpha >= 0 and infonce_tau > 0; got "
                             f"{self.lam}, {self.noise_scale}, {self.alpha}, {self.infonce_tau}")
        if not 0 <= self.gnn_dropout < 1:
            raise ValueError(f"gnn_dropout must be in [0, 1), got {self.gnn_dropout}")

    def prompt_format(self) -> PromptFormat:
        names = {f.name for f in fields(PromptFormat)}
        return PromptFormat(**{n: getattr(self, n) for n in names})


@register_method("exgramed", config=ExGraMedConfig, kind="report_generator",
                 paper="ExGra-Med (arXiv 2410.02615, NeurIPS 2025)")
class ExGraMed(nn.Module):
    """ExGra-Med: frozen image encoder → projector → LM with LoRA, plus the barycenter graph
    alignment of (image, instruction response, extended caption) node features.

    Args:
        vision_encoder: returns ``ImageFeatures`` (``.patches`` (B, P, D_v)) and has
            ``patch_dim``; frozen (CLIP ViT-L/14's penultimate layer at paper scale).
        lm: a causal LM (wrapped with LoRA here) or a ``peft`` model already.
        tokenizer: the LM's tokenizer (pad and eos tokens).
        config: :class:`ExGraMedConfig`; llm_config: LoRA settings.

    Submodules: ``vision``, ``projector``, ``lm`` (LoRA weights match ``*lora_*``),
    ``aligner`` (the shared GNN: ``aligner.gnn.*``). ``align`` (set by a stage's
    ``inputs["align"]``, default True) switches the alignment term off in stage 1.
    """

    def __init__(self, vision_encoder: nn.Module, lm: nn.Module, tokenizer: Any,
                 config: ExGraMedConfig | None = None, llm_config: LLMConfig | None = None):
        super().__init__()
        from peft import PeftModel

        self.config = c = config or ExGraMedConfig()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad and an eos token")
        self.vision = freeze(vision_encoder)
        self.lm = lm if isinstance(lm, PeftModel) or not c.lora else apply_lora(lm, llm_config or LLMConfig())
        hidden = int(self.lm.get_input_embeddings().embedding_dim)
        v_dim = int(vision_encoder.patch_dim)
        self.projector = MLPProjector(v_dim, hidden) if c.projector == "mlp2x_gelu" else nn.Linear(v_dim, hidden)
        self.aligner = BarycenterGraphAligner(
            hidden, k=c.k, gnn_layers=c.gnn_layers, gnn_dropout=c.gnn_dropout, lam=c.lam, noise_scale=c.noise_scale,
            n_samples=c.n_samples, unary_shift=c.unary_shift, quad_shift=c.quad_shift, quad_weight=c.quad_weight,
            solver=c.solver, max_iter=c.max_iter, share_topology=c.share_topology, shared_noise=c.shared_noise,
            names=c.modalities)
        self.format = c.prompt_format()
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        prefix = bos + tokenizer(self.format.prefix(), add_special_tokens=False)["input_ids"]
        self.register_buffer("prefix_ids", torch.tensor([prefix], dtype=torch.long), persistent=False)
        self.align = True

    # ---------------------------------------------------------------- stages
    def set_stage(self, stage) -> None:
        """Stage 1 (``inputs: {align: false}``) trains the projector on captions with L_AR
        alone; stage 2 (default) adds α·L_align. Declarative: this stage only."""
        self.align = bool((getattr(stage, "inputs", None) or {}).get("align", True))

    def train(self, mode: bool = True) -> ExGraMed:
        super().train(mode)
        self.vision.eval()  # frozen: inference mode always
        return self

    def collate(self) -> ConversationCollate:
        """The data loader's collate function for this model's tokenizer and template."""
        return ConversationCollate(self.tokenizer, self.format)

    @property
    def embed_tokens(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    @property
    def aligning(self) -> bool:
        """Whether ``forward`` computes L_align (stage allows it and α > 0)."""
        return self.align and self.config.alpha > 0

    # ---------------------------------------------------------------- §3.1 the LLaVA-style input
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """C = projector(V): (B, P, H_lm), V from the frozen encoder under no_grad."""
        with torch.no_grad():
            patches = self.vision(images).patches
        return self.projector(patches.to(next(self.projector.parameters()).dtype))

    def _prefix(self, b: int) -> torch.Tensor:
        return self.embed_tokens(self.prefix_ids).expand(b, -1, -1)

    def lm_loss(self, batch: InstructionBatch, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_AR: next-token cross-entropy of the answers given image and questions (mean over
        answer tokens) → (loss, n answer tokens)."""
        emb = self.embed_tokens
        b = img.shape[0]
        prefix = self._prefix(b)
        embeds = torch.cat([prefix, img.to(prefix.dtype), emb(batch.input_ids)], 1)
        n_prompt = prefix.shape[1] + img.shape[1]
        mask = torch.cat([batch.attention_mask.new_ones(b, n_prompt), batch.attention_mask], 1)
        keep = batch.input_ids.shape[1] + 1          # the last image position predicts the first block token
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=keep)
        pad = batch.labels.new_full((b, 1), -100)
        return causal_lm_loss(out.logits, torch.cat([pad, batch.labels], 1))

    # ---------------------------------------------------------------- §3.2 node features
    def _decoder(self) -> nn.Module:
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return base.get_decoder() if hasattr(base, "get_decoder") else base.model

    def text_nodes(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The extra text-only LM pass (official ``after_de=True``): the LM's (with its LoRA)
        last hidden states, after the final norm, on ``<bos>`` + text, pooled over the sequence
        → (B, H_lm). ``text_pooling="masked"`` averages the real tokens; ``"with_pads"`` every
        position of the padded batch, as the official code does. Runs through the LM's own
        ``forward`` (one logit row kept), so an FSDP-wrapped LM gathers its parameters as usual."""
        out = self.lm(input_ids=ids, attention_mask=mask.long(), use_cache=False, output_hidden_states=True,
                      logits_to_keep=1)
        hidden = out.hidden_states[-1]
        if self.config.text_pooling == "with_pads":
            return hidden.mean(1)
        return masked_mean(hidden, mask, 1)

    def node_features(self, batch: InstructionBatch, img: torch.Tensor) -> torch.Tensor:
        """Z (M, B, H_lm): the pooled projector outputs (image; official: plain mean of the
        256 tokens, before the LM), then the response and extended-caption text passes in
        ``config.modalities`` order. The text passes share one LM call (2B sequences)."""
        texts = [m for m in self.config.modalities if m != "image"]
        ids, masks = [], []
        for m in texts:
            i, k = (batch.response_ids, batch.response_mask) if m == "response" else (batch.extended_ids,
                                                                                      batch.extended_mask)
            if i is None:
                raise ValueError(f"modality {m!r} needs the batch's {m} texts (extended answers: "
                                 "conversations_long); drop it from config.modalities to train without")
            ids.append(i)
            masks.append(k)
        width = max(i.shape[1] for i in ids)
        pad = self.tokenizer.pad_token_id
        ids = torch.cat([nn.functional.pad(i, (0, width - i.shape[1]), value=pad) for i in ids])
        masks = torch.cat([nn.functional.pad(k, (0, width - k.shape[1]), value=False) for k in masks])
        text = self.text_nodes(ids, masks).view(len(texts), img.shape[0], -1)
        nodes = {"image": img.mean(1)[None].to(text.dtype)}
        nodes.update({m: text[j:j + 1] for j, m in enumerate(texts)})
        return torch.cat([nodes[m] for m in self.config.modalities])

    # ---------------------------------------------------------------- §3.3–3.4 alignment
    def alignment_loss(self, nodes: torch.Tensor) -> tuple[torch.Tensor, dict, AlignmentOutput | None]:
        """L_align of node features (M, B, H): barycenter graph matching (:class:`BarycenterGraphAligner`)
        or InfoNCE between image and response (the baseline) → (loss, logged parts, output)."""
        if self.config.alignment == "infonce":
            loss, _, _ = info_nce(nodes[0].float(), nodes[1].float(), self.config.infonce_tau, weight_ab=1.0)
            with torch.no_grad():
                sim = nn.functional.normalize(nodes[0].float(), dim=-1) @ nn.functional.normalize(
                    nodes[1].float(), dim=-1).T
                acc = (sim.argmax(1) == torch.arange(sim.shape[0], device=sim.device)).float().mean()
            return loss, {"match_accuracy": acc}, None
        out = self.aligner(nodes)
        return out.loss, {"hamming": out.hamming.mean(), "match_accuracy": out.accuracy}, out

    def forward(self, batch: InstructionBatch) -> dict:
        """L = L_AR + α·L_align → dict(loss, lm_loss, align_loss, hamming, match_accuracy,
        n_tokens, alignment (the :class:`AlignmentOutput`, graph alignment only))."""
        img = self.image_tokens(batch.images)
        lm_loss, n = self.lm_loss(batch, img)
        out = {"loss": lm_loss, "lm_loss": lm_loss.detach(), "n_tokens": n.detach().float()}
        if self.aligning:
            loss, parts, alignment = self.alignment_loss(self.node_features(batch, img))
            out.update(loss=lm_loss + self.config.alpha * loss, align_loss=loss.detach(), alignment=alignment,
                       **{k: v.detach() for k, v in parts.items()})
        return out

    @torch.no_grad()
    def align_batch(self, batch: InstructionBatch) -> AlignmentOutput:
        """The graph alignment of a batch without the LM loss or gradients (for figures)."""
        return self.aligner(self.node_features(batch, self.image_tokens(batch.images)))

    # ---------------------------------------------------------------- answering
    def question_inputs(self, images: torch.Tensor, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[prefix] [C] [</img> Q assistant:] with each question block left padded (its pads
        masked, so every prompt ends on a real token) → (embeds (B, L, H), mask (B, L))."""
        if len(questions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(questions)} questions")
        img = self.image_tokens(images)
        prefix = self._prefix(img.shape[0])
        enc = self.tokenizer([self.format.question(q, True) for q in questions], add_special_tokens=False,
                             padding="longest", padding_side="left", return_tensors="pt")
        ids, q_mask = enc["input_ids"].to(img.device), enc["attention_mask"].to(img.device)
        embeds = torch.cat([prefix, img.to(prefix.dtype), self.embed_tokens(ids)], 1)
        mask = torch.cat([q_mask.new_ones(img.shape[0], prefix.shape[1] + img.shape[1]), q_mask], 1)
        return embeds, mask

    def generate(self, images: torch.Tensor, questions: Sequence[str] | None = None, **overrides) -> list[str]:
        """Answers to ``questions`` (one per image; default ``config.describe_question``, so
        ``generate(images)`` writes a description): greedy decoding (``num_beams``,
        ``max_new_tokens``, … from the config; ``overrides`` replace them), LoRA merged and the
        eager kernel on a CPU as S2D does. Eval mode meanwhile; the mode is restored."""
        c = self.config
        questions = list(questions) if questions is not None else [c.describe_question] * images.shape[0]
        kw = {"num_beams": c.num_beams, "max_new_tokens": c.max_new_tokens,
              "repetition_penalty": c.repetition_penalty, **overrides}
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                embeds, mask = self.question_inputs(images, questions)
            ids = generate_from_embeds(self.lm, self.tokenizer, embeds, mask,
                                       attention=c.generation_attention if images.device.type == "cpu" else None,
                                       merge_lora=c.merge_lora_for_generation, **kw)
        finally:
            self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def build_exgramed(config: str | Path = "exgramed_tiny", overrides: Sequence[str] = (),
                   vision_encoder: nn.Module | None = None) -> ExGraMed:
    """An :class:`ExGraMed` from a config file's ``model:``, ``vision:`` and ``llm:`` sections
    (``configs/exgramed_tiny.yaml``, ``exgramed_full.yaml`` or a path), ``overrides`` as
    ``section.key=value``; ``vision_encoder`` replaces the ``vision:`` section's (e.g. the
    cached aligned tiny encoder)."""
    from ...config import load_config, split_overrides
    from ...models.llm import load_causal_lm
    from ...models.vision import VisionConfig, build_image_encoder

    per = split_overrides(overrides, ("model", "vision", "llm"))
    model_cfg = load_config(ExGraMedConfig, config, per["model"], section="model")
    llm_cfg = load_config(LLMConfig, config, per["llm"], section="llm")
    if vision_encoder is None:
        vision_encoder = build_image_encoder(load_config(VisionConfig, config, per["vision"], section="vision"))
    lm, tokenizer = load_causal_lm(llm_cfg)
    return ExGraMed(vision_encoder, lm, tokenizer, model_cfg, llm_cfg)
