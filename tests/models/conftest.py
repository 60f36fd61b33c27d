"""Fixtures of the model tests: a recorder of the progress bars transformers would draw."""
from __future__ import annotations

import pytest


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

