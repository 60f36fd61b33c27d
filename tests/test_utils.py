"""Seeding, devices, RNG state capture and restore, quiet progress bars, atomic files."""
from __future__ import annotations

import io
import os
import random
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from medalign_lite import utils
from medalign_lite.utils import (
    atomic_dir,
    atomic_path,
    atomic_write,
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


# --------------------------------------------------------------------------- atomic files


@pytest.fixture
def umask():
    """Set the process umask for a test: ``umask(0o022)``; the old one is put back after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_renames_on_success(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "sub" / "table.csv"  # missing folders are made
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".table.csv.") and tmp.suffix == ".csv"
        assert tmp.exists() and not target.exists()  # an empty file, unique per process
        tmp.write_text("a,b\n")
    assert target.read_text() == "a,b\n" and not tmp.exists()
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]
    assert mode(target) == 0o644  # not mkstemp's 0600
    with atomic_path(target) as tmp:  # replaces an existing file
        tmp.write_text("c\n")
    assert target.read_text() == "c\n"


def test_atomic_path_failure_leaves_no_temp_and_no_target(tmp_path):
    target = tmp_path / "manifest.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a manifest")
        raise RuntimeError("build failed midway")
    assert list(tmp_path.iterdir()) == []
    target.write_text("previous\n")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        raise OSError("disk full")
    assert target.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["manifest.csv"]


def test_atomic_temp_names_are_unique(tmp_path):
    target = tmp_path / "x.png"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the last to finish wins
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_atomic_modes_follow_the_umask(tmp_path, umask, monkeypatch, mask, file_mode, dir_mode):
    umask(mask)
    assert atomic_write(tmp_path / "f.json", lambda p: p.write_text("{}")) == tmp_path / "f.json"
    assert mode(tmp_path / "f.json") == file_mode
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("x")
    assert mode(tmp_path / "d") == dir_mode
    assert os.umask(mask) == mask  # reading it did not change it

    def no_proc(*a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr(utils, "open", no_proc, raising=False)  # the portable way: umask(0), umask(old)
    atomic_write(tmp_path / "g.json", lambda p: p.write_text("{}"))
    assert mode(tmp_path / "g.json") == file_mode and os.umask(mask) == mask


def test_atomic_dir_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "cache" / "entry"
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent and tmp.name.startswith(".entry.")
        (tmp / "model.safetensors").write_text("weights")
        assert not target.exists()
    assert (target / "model.safetensors").read_text() == "weights"
    assert [p.name for p in target.parent.iterdir()] == ["entry"]
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "cache" / "other") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed midway")
    assert [p.name for p in target.parent.iterdir()] == ["entry"]


def test_atomic_dir_keeps_a_folder_another_process_finished_first(tmp_path):
    target = tmp_path / "tokenizer"
    with atomic_dir(target) as tmp:
        (tmp / "tokenizer.json").write_text("ours")
        target.mkdir()  # meanwhile another process renamed its complete folder into place
        (target / "tokenizer.json").write_text("theirs")
    assert (target / "tokenizer.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]  # ours is gone
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError), atomic_dir(tmp_path / "file") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "file").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tokenizer"]


def test_utils_data_and_text_import_without_torch():
    """utils imports torch inside the functions that need it: data and text stay torch-free."""
    code = ("import sys, medalign_lite.utils, medalign_lite.data.manifest, medalign_lite.text.labeler, "
            "medalign_lite.data.builders.common, medalign_lite.data.builders.realdata; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
