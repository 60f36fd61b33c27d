"""Fixtures of the model tests: a word tokenizer of a few report sentences, and a recorder of
the progress bars transformers would draw."""
from __future__ import annotations

import pytest

from medalign_lite.text.tokenizer import save_word_tokenizer, train_word_tokenizer

CORPUS = ["the heart is normal in size .", "the lungs are clear .", "no pleural effusion .",
          "small left pleural effusion .", "no pneumothorax .", "the heart is enlarged ."] * 2
#: A tiny Llama: enough to test loading, LoRA and generation in milliseconds.
SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_positions": 64}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A word tokenizer trained on :data:`CORPUS`, saved to a folder (its path)."""
    folder = tmp_path_factory.mktemp("word_tok")
    save_word_tokenizer(train_word_tokenizer(CORPUS, min_frequency=1), folder)
    return str(folder)


@pytest.fixture
def bars(monkeypatch):
    """Descriptions (``desc``) of the tqdm bars that transformers creates during the test.

    Runs as a notebook under papermill does: ``TQDM_DISABLE`` unset and progress bars enabled.
    Bars are recorded whatever tqdm would print (transformers only builds one when its bars are
    on). The progress-bar state found before the test, huggingface_hub's groups included, is put
    back afterwards.
    """
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from medalign_lite.models.loading import _hub_bar_states

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    created: list[str | None] = []

    def record(*args, **kwargs):
        created.append(kwargs.get("desc"))
        return hf_logging.EmptyTqdm(*args, **kwargs)

    monkeypatch.setattr(hf_logging.tqdm_lib, "tqdm", record)
    was_on, hub_was_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    states = _hub_bar_states()
    saved = dict(states)
    hf_logging.enable_progress_bar()
    yield created
    if was_on:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    states.clear()
    states.update(saved)
    assert hub_utils.are_progress_bars_disabled() == hub_was_off

