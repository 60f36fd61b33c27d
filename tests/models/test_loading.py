"""Offline-first resolution and safe weight loading (no network: HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from medalign_lite.models.loading import (
    ModelNotAvailable,
    downloads_allowed,
    load_state_dict,
    minilm_path,
    parse_dtype,
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
