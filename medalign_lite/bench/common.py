"""What every benchmark shares: synchronised timing, peak memory, the device's name, the load
average, and the random-weight stand-ins (a patch-input encoder, a Llama of a given shape)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ..utils import PeakMemory  # noqa: F401  (the benches import it from here)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_avg() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the OS has none): every time a
    shared machine gives is an upper bound, to be read with these."""
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def load_1min() -> float | None:
    """The 1-minute load average (None where the OS has none): what a bench records before and
    after it measures."""
    avg = load_avg()
    return avg[0] if avg else None


class PatchInput(torch.nn.Module):
    """A stand-in frozen image encoder that takes its patches as input: (B, P, D) →
    ImageFeatures (pooled = the patch mean). For benches whose method reads precomputed patches."""

    def __init__(self, patch_dim: int):
        super().__init__()
        self.patch_dim = patch_dim

    def forward(self, x):
        from ..models.features import ImageFeatures

        return ImageFeatures(pooled=x.mean(1), patches=x, grid=(1, x.shape[1]))


def random_llama(hidden: int, layers: int, heads: int, intermediate: int, *, vocab_words: int = 1000,
                 vocab_size: int | None = None, max_positions: int = 512, texts: Sequence[str] = (),
                 seed: int = 0, **llm_options):
    """A random-weight Llama of the given shape (nothing downloaded) and a word tokenizer over
    ``vocab_words`` synthetic words ``w0 … w{n-1}`` plus the words of ``texts`` (e.g. a
    method's prompt). ``vocab_size``: widen the embeddings and the LM head to a real model's
    vocabulary (e.g. 32,000 for Vicuna), so the head costs what it costs there; the extra rows
    are never produced by the tokenizer. ``llm_options``: further
    :class:`~medalign_lite.models.llm.LLMConfig` fields (LoRA, ``torch_dtype``,
    ``gradient_checkpointing``). Returns (lm, tokenizer, LLMConfig, words); the LM is on the CPU."""
    import random
    import shutil
    import tempfile

    from ..models.llm import LLMConfig, load_causal_lm
    from ..text.tokenizer import save_word_tokenizer, train_word_tokenizer

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab_words)]
    corpus = [" ".join(rng.choices(words, k=20)) for _ in range(200)] + list(texts) * 5
    folder = tempfile.mkdtemp(prefix="bench-tok-")
    size = vocab_words + 32 + sum(len(t.split()) for t in texts)   # room for the specials and the texts' words
    save_word_tokenizer(train_word_tokenizer(corpus, vocab_size=size, min_frequency=1), folder)
    llm = LLMConfig(tokenizer=folder, hidden_size=hidden, num_layers=layers, num_heads=heads,
                    intermediate_size=intermediate, max_positions=max_positions, **llm_options)
    torch.manual_seed(seed)
    try:
        lm, tok = load_causal_lm(llm)
    finally:
        shutil.rmtree(folder, ignore_errors=True)   # the tokenizer is in memory now
    if vocab_size is not None and vocab_size > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    return lm, tok, llm, words
