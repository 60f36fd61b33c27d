"""Offline-first resolution and safe weight loading (no network: HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from medalign_lite.models import loading
from medalign_lite.models.loading import (
    ModelNotAvailable,
    checkpoint_nbytes,
    downloads_allowed,
    load_state_dict,
    minilm_path,
    parse_dtype,
    quiet_hub_progress,
    resolve_pretrained,
)


def test_minilm_resolves_to_the_package_folder():
    path = Path(resolve_pretrained("minilm"))
    assert path == Path(minilm_path())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_local_path_wins(tmp_path):
    assert resolve_pretrained(tmp_path) == str(tmp_path)
    assert resolve_pretrained(f"hf:{tmp_path}") == str(tmp_path)


def test_missing_hub_id_raises_one_clear_line():
    with pytest.raises(ModelNotAvailable) as err:
        resolve_pretrained("medalign-test-org/no-such-model")
    msg = str(err.value)
    assert "\n" not in msg
    assert "medalign-test-org/no-such-model" in msg
    assert "allow_download=True" in msg and "local" in msg
    assert "HF_HUB_OFFLINE" in msg  # downloads could not happen even if allowed


def test_missing_local_path_raises(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_pretrained(str(tmp_path / "nope" / "model"))


def test_download_permission_respects_offline(monkeypatch):
    assert not downloads_allowed(True)  # HF_HUB_OFFLINE=1 wins
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert downloads_allowed(True)
    assert not downloads_allowed(False)
    monkeypatch.setenv("MEDALIGN_ALLOW_DOWNLOAD", "1")
    assert downloads_allowed(False)


def test_load_state_dict_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    sd = {"w": torch.randn(3, 2), "b": torch.zeros(3)}
    save_file(sd, tmp_path / "model.safetensors")
    got = load_state_dict(tmp_path)  # folder → model.safetensors
    assert torch.equal(got["w"], sd["w"])
    torch.save({"state_dict": {"module.w": sd["w"]}}, tmp_path / "ckpt.pt")
    got = load_state_dict(tmp_path / "ckpt.pt")
    assert list(got) == ["w"] and torch.equal(got["w"], sd["w"])


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict(path)
    other = tmp_path / "weights.pkl"
    other.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ValueError, match="Refusing"):
        load_state_dict(other)


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16
    assert parse_dtype("float32") is torch.float32
    assert parse_dtype("auto") == "auto"
    with pytest.raises(ValueError):
        parse_dtype("float13")


def _bar_state() -> tuple[bool, bool, bool]:
    """(transformers bars on, huggingface_hub global bars off, hub group 'medalign.test' off)."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    return (hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled(),
            hub_utils.are_progress_bars_disabled("medalign.test"))


def test_checkpoint_nbytes(tmp_path):
    from safetensors.torch import save_file

    layer = torch.nn.Linear(4, 3)  # 12 + 3 float32
    assert checkpoint_nbytes(layer) == 15 * 4
    save_file(layer.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}" * 1000)  # not weights
    size = (tmp_path / "model.safetensors").stat().st_size
    assert checkpoint_nbytes(tmp_path) == checkpoint_nbytes(tmp_path / "model.safetensors") == size
    assert checkpoint_nbytes("some-org/some-model") is None  # a Hub id: unknown


def test_quiet_hub_progress_switches_bars_off_for_small_sources_and_restores_them(bars):
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    hub_utils.disable_progress_bars("medalign.test")  # a group setting of someone else's
    before = _bar_state()
    assert before == (True, False, True)
    small = torch.nn.Linear(2, 2)
    for source in (small, None):  # None: the caller vouches the source is small
        with quiet_hub_progress(source) as quiet:
            assert quiet and _bar_state()[:2] == (False, True)
            with quiet_hub_progress(small) as inner:  # nested: left alone
                assert not inner and _bar_state()[:2] == (False, True)
            assert _bar_state()[:2] == (False, True)
        assert _bar_state() == before
    with quiet_hub_progress(small, small_bytes=1) as quiet:  # "big": bars stay
        assert not quiet and _bar_state() == before
    with quiet_hub_progress("some-org/some-model") as quiet:  # size unknown: bars stay
        assert not quiet and _bar_state() == before
    with pytest.raises(RuntimeError), quiet_hub_progress(small):
        raise RuntimeError("load failed")
    assert _bar_state() == before
    hf_logging.disable_progress_bar()  # bars already off: stay off
    with quiet_hub_progress(small) as quiet:
        assert not quiet
    assert _bar_state()[:2] == (False, True)


def test_the_size_limit_is_read_at_call_time(monkeypatch, bars):
    small = torch.nn.Linear(2, 2)
    with quiet_hub_progress(small) as quiet:
        assert quiet
    monkeypatch.setattr(loading, "SMALL_CHECKPOINT_BYTES", 1)
    with quiet_hub_progress(small) as quiet:
        assert not quiet
