"""ExGra-Med §3.1, the LLaVA-style input: a multi-turn conversation around the image's soft
tokens, tokenised once per batch in the data loader (:class:`ConversationCollate`).

The LM input of a training example (one batched tensor, right padded):

    [<bos> human: <img>]  [P soft tokens = projector(V)]  [</img> Q₁ assistant:] [A₁ <eos>]
    [human: Q₂ assistant:] [A₂ <eos>] … [padding]

The first block is the same for every sample (``prefix_ids``); the soft tokens follow; the rest
(the *conversation block*) is tokenised per sample here. Labels are the answer tokens and the
``<eos>`` closing each answer; −100 everywhere else (LLaVA's target masking). The two extra
text-only inputs of the alignment (ExGra-Med's node features) are tokenised here too: the
instruction response, the answers joined with ". " (``<bos>`` + tokens, no image, no
questions), and the extended caption, the extended answers (``conversations_long``) joined
the same way.

Tokenisation is data preparation (a Python loop over samples at collate time, in the loader's
workers); the model's forward is batched tensor work only.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ...models.llm import IGNORE_INDEX

__all__ = ["ConversationCollate", "InstructionBatch", "PromptFormat"]


@dataclass(frozen=True)
class PromptFormat:
    """The conversation template (LLaVA v0 style, shortened for word-level tokenizers)."""

    human: str = "human:"
    assistant: str = "assistant:"
    image_start: str = "<img>"
    image_end: str = "</img>"
    separator: str = ". "            # joins a conversation's answers into one node text (official: ". ")
    max_tokens: int = 2048           # conversation block tokens (paper: model_max_length 2048)
    max_text_tokens: int = 512       # node-text tokens (response, extended caption)

    def prefix(self) -> str:
        """The text before the image tokens (after ``<bos>``)."""
        return f"{self.human} {self.image_start}"

    def question(self, q: str, first: bool) -> str:
        """The prompt part of one turn: ``</img> Q assistant:`` (first turn) or
        ``human: Q assistant:``."""
        return f"{self.image_end if first else self.human} {q.strip()} {self.assistant}"


@dataclass
class InstructionBatch:
    """A collated batch of conversations. B samples, T conversation-block tokens.

    Attributes:
        images: (B, C, H, W) images, or (B, P, D) precomputed frozen patches.
        study_ids: B ids.
        conversations: B lists of (question, answer) turns (for display).
        input_ids, attention_mask, labels: (B, T) the conversation block after the soft
            tokens: ids, 1 on real tokens, answer tokens + ``<eos>`` (−100 elsewhere).
        response_ids, response_mask: (B, Tr) ``<bos>`` + the answers joined; mask bool.
        extended_ids, extended_mask: (B, Te) the same on the extended answers, or None.
    """

    images: torch.Tensor
    study_ids: list[str]
    conversations: list[list[tuple[str, str]]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    extended_ids: torch.Tensor | None = None
    extended_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device, non_blocking: bool = False) -> InstructionBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=non_blocking)
        return InstructionBatch(**moved)


def _pad(rows: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    width = max(1, max((len(r) for r in rows), default=0)) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):  # collate-time padding, not a model forward
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class ConversationCollate:
    """Items ``{"study_id", "frontal", "conversation": [(q, a), …], "extended": [a′, …] or
    None}`` → :class:`InstructionBatch`, tokenised with the model's tokenizer and
    :class:`PromptFormat`.

    Every item needs at least one turn. ``extended`` (one extended answer per turn) is kept when
    every item of the batch has it, else the batch has none.
    """

    def __init__(self, tokenizer, fmt: PromptFormat):
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs an eos and a pad token")
        self.tok, self.fmt = tokenizer, fmt

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def conversation_block(self, conversations: Sequence[Sequence[tuple[str, str]]]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels) (B, T) of the conversation blocks."""
        fmt, eos = self.fmt, self.tok.eos_token_id
        qs = [fmt.question(q, t == 0) for conv in conversations for t, (q, _) in enumerate(conv)]
        ans = [a.strip() for conv in conversations for _, a in conv]
        q_ids, a_ids = self._ids(qs), self._ids(ans)
        ids, labels, k = [], [], 0
        for conv in conversations:
            if not conv:
                raise ValueError("a conversation needs at least one (question, answer) turn")
            row, lab = [], []
            for _ in conv:
                a = a_ids[k] + [eos]
                row += q_ids[k] + a
                lab += [IGNORE_INDEX] * len(q_ids[k]) + a
                k += 1
            ids.append(row[:fmt.max_tokens])
            labels.append(lab[:fmt.max_tokens])
        input_ids = _pad(ids, self.tok.pad_token_id)
        mask = _pad([[1] * len(r) for r in ids], 0, input_ids.shape[1])
        return input_ids, mask, _pad(labels, IGNORE_INDEX, input_ids.shape[1])

    def node_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``<bos>`` + tokens of each text (≤ ``max_text_tokens``), right padded → ids, mask."""
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        rows = [(bos + r)[:self.fmt.max_text_tokens] for r in self._ids(texts)]
        ids = _pad(rows, self.tok.pad_token_id)
        return ids, _pad([[1] * len(r) for r in rows], 0, ids.shape[1]).bool()

    def join(self, answers: Sequence[str]) -> str:
        """One node text from a conversation's answers: joined with ``separator`` (". "), an
        answer that already ends with it (a period) not doubled."""
        sep = self.fmt.separator
        end = sep.strip()
        parts = [a.strip() for a in answers if a.strip()]
        return " ".join(p if end and p.endswith(end) else p + end for p in parts[:-1]) + \
            (" " if len(parts) > 1 else "") + (parts[-1] if parts else "")

    def __call__(self, items: list[dict]) -> InstructionBatch:
        convs = [[(str(q), str(a)) for q, a in it["conversation"]] for it in items]
        ids, mask, labels = self.conversation_block(convs)
        r_ids, r_mask = self.node_text([self.join([a for _, a in c]) for c in convs])
        ext = [it.get("extended") for it in items]
        e_ids = e_mask = None
        if all(e for e in ext):
            e_ids, e_mask = self.node_text([self.join([str(a) for a in e]) for e in ext])
        return InstructionBatch(images=torch.stack([torch.as_tensor(it["frontal"]) for it in items]),
                                study_ids=[str(it["study_id"]) for it in items], conversations=convs,
                                input_ids=ids, attention_mask=mask, labels=labels, response_ids=r_ids,
                                response_mask=r_mask, extended_ids=e_ids, extended_mask=e_mask)
