"""Seeding, devices, RNG state capture and restore, quiet progress bars."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from medalign_lite import utils
from medalign_lite.utils import (
    env_flag,
    get_rng_state,
    preserved_rng,
    progress_enabled,
    quiet_progress,
    resolve_device,
    seed_everything,
    set_rng_state,
)


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


@pytest.fixture
def restore_determinism():
    """seed_everything changes process-wide torch flags: put them back after the test."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[2], flags[3]


def test_seed_everything_repeats_every_generator(restore_determinism):
    assert seed_everything(5, deterministic=False) == 5
    a = draws()
    seed_everything(5, deterministic=False)
    assert draws() == a
    seed_everything(6, deterministic=False)
    assert draws() != a
    torch.use_deterministic_algorithms(False)
    seed_everything(5)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    with pytest.raises(TypeError):
        seed_everything(1.5)
    with pytest.raises(TypeError):
        seed_everything(True)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError):
        resolve_device("")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve_device("cuda:3")


def test_rng_state_round_trip_through_a_safe_file():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    draws()
    state = get_rng_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # no pickled code needed
    expected = draws()
    draws()
    set_rng_state(loaded)
    assert draws() == expected


def test_preserved_rng_isolates_a_block():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    with preserved_rng():
        inside = draws()
    assert draws() == inside  # the block's draws did not move the generators
    with pytest.raises(RuntimeError), preserved_rng():
        torch.rand(5)
        raise RuntimeError("boom")
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    assert draws() == inside  # restored after an exception too


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_quiet_progress_rules(monkeypatch):
    monkeypatch.setattr(utils.sys, "stderr", FakeTTY())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_enabled()
    bar = quiet_progress(range(3), desc="x")
    assert not bar.disable and list(bar) == [0, 1, 2]
    for value, quiet in [("1", True), ("true", True), ("0", False), ("", False), ("no", False)]:
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert progress_enabled() is not quiet
        assert quiet_progress(total=2).disable is quiet
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(utils.sys, "stderr", io.StringIO())  # not a terminal: CI logs, papermill, nbval
    assert not progress_enabled() and quiet_progress(total=2).disable
    assert not quiet_progress(total=2, enabled=True).disable
    monkeypatch.setattr(utils.sys, "stderr", FakeTTY())
    assert quiet_progress(total=2, enabled=False).disable
    off = quiet_progress(total=2, enabled=False)
    off.update(1)
    off.set_postfix(loss=1.0)
    off.close()


def test_env_flag(monkeypatch):
    monkeypatch.setenv("MEDALIGN_X", "Yes")
    assert env_flag("MEDALIGN_X")
    monkeypatch.setenv("MEDALIGN_X", "off")
    assert not env_flag("MEDALIGN_X")
    monkeypatch.delenv("MEDALIGN_X")
    assert not env_flag("MEDALIGN_X")
