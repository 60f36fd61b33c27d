"""Dataclass configs: YAML, packaged names, `--set` overrides, strict keys, type checks, round trips."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

import medalign_lite.config as config_mod
from medalign_lite.config import (
    ConfigError,
    apply_override,
    available_configs,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)
from medalign_lite.train import Stage, TrainConfig


@dataclass
class Optim:
    lr: float = 1e-3  # η
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Model:
    name: str = "tiny"
    width: int = 64
    tau: float = 0.07  # τ
    pool: Literal["mean", "cls"] = "mean"
    frozen: bool = False
    checkpoint: Path | None = None
    layers: list[int] = field(default_factory=lambda: [1, 2])
    extra: dict[str, Any] = field(default_factory=dict)
    optim: Optim = field(default_factory=Optim)
    head: Optim | None = None


@dataclass
class Needs:
    path: str
    size: int = 1


def write(tmp_path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_file_and_overrides_in_order(tmp_path):
    assert load_config(Model) == Model()
    p = write(tmp_path, "width: 128\noptim:\n  lr: 0.01\nlayers: [3]\n")
    cfg = load_config(Model, p, ["optim.lr=0.5", "tau=1e-4", "frozen=true", "layers.0=7", "pool=cls"])
    assert cfg.width == 128 and cfg.layers == [7] and cfg.frozen is True and cfg.pool == "cls"
    assert cfg.optim == Optim(lr=0.5) and cfg.tau == 1e-4 and isinstance(cfg.tau, float)
    assert cfg.optim.betas == (0.9, 0.999)  # nested defaults kept when the file sets a sibling


def test_override_values_follow_the_field_type():
    cfg = load_config(Model, None, ["name=007", "width=16", "layers=[4, 5]", "extra.new_key=[a, 1]",
                                    "checkpoint=ckpt/model.safetensors", "optim.betas=[0.8, 0.9]"])
    assert cfg.name == "007"  # text fields keep the text as written
    assert cfg.width == 16 and cfg.layers == [4, 5] and cfg.extra == {"new_key": ["a", 1]}
    assert cfg.checkpoint == Path("ckpt/model.safetensors") and cfg.optim.betas == (0.8, 0.9)
    assert load_config(Model, None, ["checkpoint=null"]).checkpoint is None
    assert load_config(Model, None, ["name='x y'"]).name == "x y"
    assert load_config(Model, None, ["head.lr=2"]).head == Optim(lr=2.0)  # an empty optional section is created


def test_unknown_keys_name_the_key_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' for Optim; allowed: lr, betas"):
        load_config(Model, None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'widht' for Model; allowed: name, width, tau"):
        load_config(Model, write(tmp_path, "widht: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'stages.1.lrr' for Stage; allowed: name, epochs, lr"):
        load_config(TrainConfig, None, ["stages=[{name: a}, {name: b}]", "stages.1.lrr=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'stages.0.lrr'"):
        load_config(TrainConfig, write(tmp_path, "stages:\n  - {name: a, lrr: 1}\n"))


def test_type_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"width: expected an integer, got 'wide'"):
        load_config(Model, None, ["width=wide"])
    with pytest.raises(ConfigError, match=r"width: expected an integer, got 1.5"):
        load_config(Model, None, ["width=1.5"])
    with pytest.raises(ConfigError, match=r"frozen: expected true/false, got 1"):
        load_config(Model, write(tmp_path, "frozen: 1\n"))
    with pytest.raises(ConfigError, match=r"pool: expected one of \['mean', 'cls'\], got 'max'"):
        load_config(Model, None, ["pool=max"])
    with pytest.raises(ConfigError, match=r"layers.1: expected an integer"):
        load_config(Model, None, ["layers=[1, x]"])
    with pytest.raises(ConfigError, match=r"optim.betas: expected 2 items"):
        load_config(Model, None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"name: expected text, got 3"):
        load_config(Model, write(tmp_path, "name: 3\n"))
    with pytest.raises(ConfigError, match=r"tau: expected a number"):
        load_config(Model, None, ["tau=fast"])
    assert load_config(Model, write(tmp_path, "tau: 1e-4\n")).tau == 1e-4  # YAML 1.1 reads this as text


def test_override_syntax_and_structure_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("width")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("optim..lr=1")
    assert parse_override("--set a.b=c=d") == ("a.b", "c=d")
    with pytest.raises(ConfigError, match="'width.x': 'width' is a int value, not a section"):
        load_config(Model, None, ["width.x=1"])
    with pytest.raises(ConfigError, match="index 5 out of range, 'layers' has 2"):
        load_config(Model, None, ["layers.5=1"])
    with pytest.raises(ConfigError, match="address its items by index"):
        load_config(Model, None, ["layers.first=1"])


def test_missing_required_and_post_init_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing required key"):
        load_config(Needs)
    assert load_config(Needs, None, ["path=/x"]) == Needs(path="/x")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        load_config(TrainConfig, None, ["batch_size=0"])
    with pytest.raises(ConfigError, match="stages.0: stage 'a': lr must be > 0"):
        load_config(TrainConfig, None, ["stages=[{name: a, lr: 0}]"])
    assert issubclass(ConfigError, ValueError)  # the CLI turns ValueErrors into one-line messages
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Model, write(tmp_path, "a: [\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Model, write(tmp_path, "- 1\n- 2\n"))


def test_sections_and_packaged_names(tmp_path, monkeypatch):
    p = write(tmp_path, "model:\n  width: 5\ntrain:\n  batch_size: 2\n  stages:\n    - {name: s1, lr: 3.0e-4}\n")
    assert load_config(Model, p, section="model").width == 5
    train = load_config(TrainConfig, p, ["stages.0.epochs=3"], section="train")
    assert train.batch_size == 2 and train.stages == [Stage(name="s1", lr=3e-4, epochs=3)]
    with pytest.raises(ConfigError, match="no section 'data' \\(sections: model, train\\)"):
        load_config(Model, p, section="data")

    monkeypatch.setattr(config_mod, "CONFIG_DIR", tmp_path)
    write(tmp_path, "width: 9\n", "tiny_demo.yaml")
    assert "tiny_demo" in available_configs()
    assert load_config(Model, "tiny_demo").width == 9
    with pytest.raises(FileNotFoundError, match="no config file 'nope'.*packaged: c, tiny_demo"):
        load_config(Model, "nope")


def test_packaged_folder_exists_with_readme():
    assert (config_mod.CONFIG_DIR / "README.md").is_file()
    assert all(isinstance(n, str) for n in available_configs())


def test_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig(output_dir="o", batch_size=3, precision="bf16", max_grad_norm=None,
                      stages=[Stage(name="a", lr=3e-4, trainable=["sma.*", "*.lora_*"], inputs={"ref": True}),
                              Stage(name="b", lr=5e-5, betas=(0.9, 0.95), max_steps=10)])
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    text = path.read_text()
    assert text.index("output_dir") < text.index("stages")  # field order kept
    assert load_config(TrainConfig, path) == cfg
    m = Model(checkpoint=Path("a/b"), head=Optim())
    assert to_dict(m)["checkpoint"] == "a/b" and to_dict(m)["optim"]["betas"] == [0.9, 0.999]
    assert from_dict(Model, to_dict(m)) == m


def test_apply_override_on_plain_data():
    data = {"layers": [1, 2], "extra": {}}
    apply_override(data, Model, "extra.k", "3")
    assert data["extra"] == {"k": 3}
    with pytest.raises(TypeError):
        from_dict(dict, {})


def test_split_overrides_by_section():
    from medalign_lite.config import split_overrides

    per = split_overrides(["model.memory_size=32", "llm.name=/m", "model.heads=4"], ("model", "vision", "llm"))
    assert per == {"model": ["memory_size=32", "heads=4"], "vision": [], "llm": ["name=/m"]}
    with pytest.raises(ValueError, match="model.KEY=V, vision.KEY=V"):
        split_overrides(["text.name=x"], ("model", "vision"))
    with pytest.raises(ValueError, match="'model'"):
        split_overrides(["model"], ("model",))
