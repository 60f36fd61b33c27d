"""Word-level tokenizer for the tiny language models, trained on report text.

Radiology reports use a small vocabulary (the 3,955 IU X-Ray reports hold ~2,000 distinct
lower-cased words, ~1,500 seen at least twice), so a word-level model keeps sequences short
and generated text readable, as R2Gen-style report generators do.

Recipe (``tokenizers`` library): ``WordLevel`` model; NFKC + lower-case normaliser;
``Whitespace`` pre-tokenizer (``\\w+|[^\\w\\s]+``: words and runs of punctuation are tokens);
special tokens ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2), ``<unk>`` (3); words seen fewer than
``min_frequency`` times map to ``<unk>``. Encoding prepends ``<bos>`` only, as LLaMA
tokenizers do (``add_special_tokens=False`` gives the bare words); a training target appends
``tokenizer.eos_token_id`` itself (or writes ``"<eos>"`` in the text: special tokens are matched
before lower-casing). Decoding joins words with spaces.

The result is a :class:`transformers.PreTrainedTokenizerFast` (padding, truncation, batching,
``save_pretrained``). :func:`cached_word_tokenizer` trains once on a corpus and caches the result
outside the repository, keyed by vocabulary size, minimum frequency and a hash of the corpus;
the IU report corpus and its tokenizer are data's (``data/iu_xray.py``: ``report_corpus``,
``report_tokenizer``), since text never imports data.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..utils import atomic_dir

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
#: Bumped when the recipe changes, so cached tokenizers are rebuilt.
RECIPE_VERSION = 1
#: Env variable naming the cache root (default ``~/.cache/medalign_lite``).
CACHE_ENV = "MEDALIGN_CACHE"


def train_word_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2,
                         model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on ``texts``.

    Args:
        texts: training sentences/reports.
        vocab_size: maximum vocabulary size, special tokens included (the most frequent words
            are kept).
        min_frequency: words seen fewer times become ``<unk>``.
        model_max_length: default truncation length of the returned tokenizer.
    """
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
    if [ids[s] for s in SPECIAL_TOKENS] != [0, 1, 2, 3]:
        raise RuntimeError(f"unexpected special token ids {ids}")
    tok.post_processor = processors.TemplateProcessing(  # LLaMA convention: <bos> only
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, ids[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, model_max_length=model_max_length, padding_side="right")


def save_word_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | os.PathLike) -> Path:
    """Save to ``folder`` (``tokenizer.json`` + ``tokenizer_config.json``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def load_word_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_word_tokenizer`."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"No word tokenizer in '{folder}' (tokenizer.json missing)")
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def cache_root() -> Path:
    """``$MEDALIGN_CACHE`` or ``~/.cache/medalign_lite``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medalign_lite")


def cached_word_tokenizer(corpus: Sequence[str], name: str, cache_dir: str | os.PathLike | None = None,
                          vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """The word tokenizer of ``corpus``, trained once and cached on disk.

    The cache folder is ``{cache_dir}/{name}_v{vocab_size}_f{min_frequency}_{corpus hash}``
    (``cache_dir`` defaults to ``cache_root() / "tokenizers"``); it is written atomically, so
    concurrent callers do not see half-written files. Only the derived vocabulary is stored.
    """
    digest = hashlib.sha256(f"recipe{RECIPE_VERSION}\n".encode())
    for text in corpus:
        digest.update(text.encode("utf-8") + b"\x00")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "tokenizers"
    folder = root / f"{name}_v{vocab_size}_f{min_frequency}_{digest.hexdigest()[:12]}"
    if (folder / "tokenizer.json").is_file():
        return load_word_tokenizer(folder)
    tok = train_word_tokenizer(corpus, vocab_size=vocab_size, min_frequency=min_frequency)
    with atomic_dir(folder) as tmp:  # if another process got there first, theirs is kept
        save_word_tokenizer(tok, tmp)
    return load_word_tokenizer(folder)


__all__ = [
    "SPECIAL_TOKENS",
    "cached_word_tokenizer",
    "load_word_tokenizer",
    "save_word_tokenizer",
    "train_word_tokenizer",
]
