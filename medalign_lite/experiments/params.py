"""Checks of a notebook's parameters: a bad value is a ``ValueError`` that names the parameter,
its value and what is allowed (papermill users set parameters by hand, ``-p n_seeds 0``)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["check", "check_choice", "check_int", "check_number", "check_strings", "check_subset", "loaded",
           "smoke_mode"]


def _fail(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"parameter {name} = {value!r}: {allowed}")


def smoke_mode(smoke: Any) -> bool:
    """``smoke`` (a bool) or the environment's ``MEDALIGN_SMOKE=1`` (nbval runs set it)."""
    if not isinstance(smoke, bool):
        raise _fail("smoke", smoke, "must be True or False")
    return smoke or os.environ.get("MEDALIGN_SMOKE") == "1"


def check(name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise unless ``ok``; ``allowed`` says what the parameter accepts."""
    if not ok:
        raise _fail(name, value, allowed)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    check(name, value, value in choices, f"must be one of {choices}")


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    """An int (not a bool) within [low, high]."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    rng = f"an integer{f' >= {low}' if low is not None else ''}{f' <= {high}' if high is not None else ''}"
    check(name, value, ok and (low is None or value >= low) and (high is None or value <= high), f"must be {rng}")


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    bound = (f" {'>' if low_open else '>='} {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    check(name, value, ok, f"must be a number{bound}")


def check_strings(name: str, value: Any) -> None:
    check(name, value, isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
          "must be a list of strings")


def check_subset(name: str, value: Any, allowed: Sequence[Any], nonempty: bool = False) -> None:
    ok = isinstance(value, (list, tuple)) and set(value) <= set(allowed) and (bool(value) or not nonempty)
    check(name, value, ok, f"must be a {'non-empty ' if nonempty else ''}list drawn from {list(allowed)}")


def loaded(name: str, load: Callable, *args, **kwargs):
    """``load(*args, **kwargs)``, its ``ValueError`` (a config key or value) or
    ``FileNotFoundError`` (no such config) reported as a ``ValueError`` of parameter ``name``."""
    try:
        return load(*args, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"parameter {name}: {e}") from None
