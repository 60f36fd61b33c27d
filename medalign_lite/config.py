"""Dataclass configs: YAML files, ``--set a.b=c`` overrides, strict keys and typed values.

Every configurable object of the library is a dataclass with defaults (the paper's values for
method knobs). This module reads and writes them::

    cfg = load_config(TrainConfig)                                   # the defaults
    cfg = load_config(TrainConfig, "my_run.yaml")                     # a YAML file
    cfg = load_config(TrainConfig, "s2d_lite", ["stages.0.lr=3e-4",   # a packaged file
                                                "batch_size=16"])     # + overrides
    save_config(cfg, "outputs/run/config.yaml")

- A name without a path is looked up as ``medalign_lite/configs/<name>.yaml``.
- ``section="train"`` reads one top-level key of the YAML file (one file per experiment).
- Overrides are ``dotted.key=value``; list items are addressed by index (``stages.1.lr=1e-4``),
  dict-typed fields accept new keys (``stages.2.inputs.key_phrases=true``). The value is read
  with ``yaml.safe_load`` (``16`` → int, ``1e-4``/``0.5`` → float, ``true`` → bool, ``[a, b]``
  → list, ``null`` → None), except for text fields, which keep the text as written.
- Unknown keys raise :class:`ConfigError` naming the key and the allowed ones; values are
  checked against the field's type (bool, int, float, str, Path, Literal, Optional, list,
  tuple, dict, nested dataclasses). An int is accepted for a float field, and so is a string
  that reads as a number (YAML 1.1 reads ``1e-4`` without a dot as text).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import enum
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Union

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_MISSING = object()


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass."""


# --------------------------------------------------------------------------- type helpers


def _hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # pragma: no cover - a broken annotation is a programming error
        raise ConfigError(f"cannot resolve the type annotations of {cls.__name__}: {e}") from e


def _init_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _strip_optional(tp):
    """``X | None`` → X (other unions are returned as they are)."""
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp) -> str:
    if tp is Any:
        return "any"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_text(tp) -> bool:
    """Does a field of this type take text as written (str, Path, Literal of strings)?"""
    tp = _strip_optional(tp)
    if tp in (str, Path):
        return True
    if typing.get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    return False


def _coerce(tp, value, where: str):
    """Check ``value`` against type ``tp`` and convert it (dict → dataclass, list → tuple ...)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return _coerce(others[0], value, where)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (list, collections.abc.Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r} ({type(value).__name__})")
        item = args[0] if args else Any
        return [_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r} ({type(value).__name__})")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}: {value!r}")
        return tuple(_coerce(a, v, f"{where}.{i}") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r} ({type(value).__name__})")
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, f"{where}.<key>"): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected text, got {value!r} ({type(value).__name__}); quote it in YAML")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r} ({type(value).__name__})")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for m in tp:
            if value == m.value or value == m.name:
                return m
        raise ConfigError(f"{where}: expected one of {[m.value for m in tp]}, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value  # an annotation we do not check (Callable, TypeVar ...)


# --------------------------------------------------------------------------- dict <-> dataclass


def from_dict(cls, data: dict, *, where: str = ""):
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys, missing required fields
    and values of the wrong type raise :class:`ConfigError` (with the dotted key)."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    flds = _init_fields(cls)
    allowed = [f.name for f in flds]
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' for {cls.__name__}; allowed: {', '.join(allowed)}")
    missing = [f.name for f in flds if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{cls.__name__}: missing required key(s) {', '.join(prefix + m for m in missing)}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def to_dict(obj) -> Any:
    """Plain YAML-ready data: dataclasses → dicts, tuples → lists, Paths → str, enums → values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {to_dict(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def save_config(obj, path: str | Path) -> Path:
    """Write ``to_dict(obj)`` as YAML (field order kept); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True))
    return path


def _defaults(cls) -> dict:
    """The fields of ``cls`` that have defaults, as plain data."""
    out = {}
    for f in _init_fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
    return out


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


# --------------------------------------------------------------------------- files


def available_configs() -> list[str]:
    """Names of the packaged YAML files (``medalign_lite/configs/<name>.yaml``)."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(path_or_name: str | Path) -> Path:
    """An existing YAML file, or the packaged config of that name."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    name = str(path_or_name)
    if "/" not in name and "\\" not in name:
        packaged = CONFIG_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
        if packaged.is_file():
            return packaged
    raise FileNotFoundError(f"no config file {name!r} and no packaged config of that name "
                            f"(packaged: {', '.join(available_configs()) or 'none'})")


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping (an empty file gives ``{}``)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[str, str]:
    """``"a.b=c"`` → ``("a.b", "c")`` (the value is parsed later, knowing the field's type)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. stages.0.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.startswith("--set"):
        key = key[len("--set"):].strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    return key, raw.strip()


def _parse_value(tp, raw: str, where: str):
    if _is_text(tp):
        if raw in ("null", "~", "None", "") and _strip_optional(tp) is not tp:
            return None
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            return raw[1:-1]
        return raw
    try:
        return yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {where}={raw!r}: cannot read the value: {e}") from e


def apply_override(data: dict, cls, key: str, raw: str) -> dict:
    """Set ``key`` (dotted) to the value read from ``raw`` in ``data``, the plain-data form of ``cls``."""
    parts = key.split(".")
    node: Any = data
    tp: Any = cls
    done: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(done + [part])
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if _is_dataclass_type(tp):
            allowed = [f.name for f in _init_fields(tp)]
            if part not in allowed:
                raise ConfigError(f"unknown key '{here}' for {tp.__name__}; allowed: {', '.join(allowed)}")
            child_tp = _hints(tp)[part]
            slot = part
        elif origin in (list, tuple) or tp in (list, tuple):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"'{here}': '{'.'.join(done)}' is a list, address its items by index")
            slot = int(part)
            if not isinstance(node, list) or not -len(node) <= slot < len(node):
                n = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"'{here}': index {slot} out of range, '{'.'.join(done)}' has {n} item(s)")
            args = typing.get_args(tp)
            child_tp = (args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)
                        else args[slot] if args else Any)
        elif origin is dict or tp is dict:
            slot = part
            args = typing.get_args(tp)
            child_tp = args[1] if args else Any
        elif tp is Any:
            slot, child_tp = part, Any
            if not isinstance(node, dict):
                raise ConfigError(f"'{here}': '{'.'.join(done)}' is not a section")
        else:
            raise ConfigError(f"'{here}': '{'.'.join(done)}' is a {_type_name(tp)} value, not a section")
        if last:
            node[slot] = _parse_value(child_tp, raw, here)
        else:
            child = node[slot] if isinstance(node, list) else node.get(slot)
            if child is None:
                inner = _strip_optional(child_tp)
                if _is_dataclass_type(inner):
                    child = _defaults(inner)
                elif typing.get_origin(inner) is dict or inner is dict or inner is Any:
                    child = {}
                else:
                    raise ConfigError(f"'{here}' is empty; set the whole value instead")
                node[slot] = child
            if isinstance(child, tuple):
                child = list(child)
                node[slot] = child
            node = child
            tp = child_tp
        done.append(part)
    return data


def split_overrides(overrides: Iterable[str], sections: Iterable[str]) -> dict[str, list[str]]:
    """``["model.memory_size=32", "llm.name=/p"]`` → ``{"model": ["memory_size=32"], "llm":
    ["name=/p"], ...}`` with every section present; an item naming no known section is an
    error that lists the expected forms."""
    per: dict[str, list[str]] = {s: [] for s in sections}
    for item in overrides:
        section, _, rest = item.partition(".")
        if section not in per or not rest:
            forms = ", ".join(f"{s}.KEY=V" for s in per)
            raise ValueError(f"override {item!r}: expected one of {forms}")
        per[section].append(rest)
    return per


def load_config(cls, path_or_name: str | Path | None = None, overrides: Iterable[str] = (), *,
                section: str | None = None):
    """Build dataclass ``cls`` from its defaults, a YAML file and ``key=value`` overrides (in that order).

    Args:
        cls: the config dataclass.
        path_or_name: a YAML path, the name of a packaged config, or None for the defaults.
        overrides: ``"dotted.key=value"`` strings (the CLI's ``--set`` arguments).
        section: read this top-level key of the file instead of the whole file.
    """
    data: dict = {}
    if path_or_name is not None:
        path = config_path(path_or_name)
        data = read_yaml(path)
        if section is not None:
            if section not in data:
                raise ConfigError(f"{path}: no section {section!r} (sections: {', '.join(map(str, data)) or 'none'})")
            data = data[section] or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: section {section!r} must be a mapping")
    merged = _merge(_defaults(cls), data)
    for item in overrides or ():
        key, raw = parse_override(item)
        apply_override(merged, cls, key, raw)
    return from_dict(cls, merged)
