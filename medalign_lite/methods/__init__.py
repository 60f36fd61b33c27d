"""The method registry: every method of the tutorial, by name (timm style).

A method's file registers its module class once, with its config class and what it can do::

    @register_method("aga", config=AGAConfig, kind="dual_encoder", paper="AGA (Li et al., 2025)")
    class AGA(DualEncoder): ...

``kind`` is ``"dual_encoder"`` (``encode_image`` / ``encode_text``: retrieval, zero-shot,
grounding), ``"report_generator"`` (``generate(images)``: report generation) or ``"both"``.
The experiments layer, ``medalign bench`` and the cross-method benchmark enumerate methods
through :func:`list_methods` and build them through :func:`get_method`; nothing else keeps a
name → class table. Each method's configurations live in ``medalign_lite/configs`` as
``<name>_<scale>.yaml`` (:meth:`MethodSpec.config_name`).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["KINDS", "MethodSpec", "get_method", "list_methods", "register_method"]

KINDS = ("dual_encoder", "report_generator", "both")

#: The modules whose import registers the methods (imported on the first look-up, so that
#: importing one method does not import every other method's dependencies).
_MODULES = ("medalign_lite.methods.baselines", "medalign_lite.methods.aga", "medalign_lite.methods.s2d",
            "medalign_lite.methods.exgramed", "medalign_lite.methods.alta")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: ``name``, its ``nn.Module`` class, its config dataclass, its kind
    and the paper it implements."""

    name: str
    module: type
    config: type
    kind: str
    paper: str = ""

    def config_name(self, scale: str = "tiny") -> str:
        """The packaged config of this method at ``scale`` (``"tiny"``, ``"full"``)."""
        return f"{self.name}_{scale}"

    @property
    def dual_encoder(self) -> bool:
        return self.kind in ("dual_encoder", "both")

    @property
    def report_generator(self) -> bool:
        return self.kind in ("report_generator", "both")


_REGISTRY: dict[str, MethodSpec] = {}
_loaded = False


def register_method(name: str, *, config: type, kind: str, paper: str = "") -> Callable[[type], type]:
    """Class decorator: record ``name`` → (the class, ``config``, ``kind``). Registering a
    name twice with another class is an error."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(cls: type) -> type:
        old = _REGISTRY.get(name)
        if old is not None and old.module.__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is already registered by {old.module.__module__}.{old.module.__qualname__}")
        _REGISTRY[name] = MethodSpec(name, cls, config, kind, paper)
        return cls

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        for m in _MODULES:
            importlib.import_module(m)
        _loaded = True


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_methods(kind: str | None = None) -> list[str]:
    """Registered method names in the package's order (the modules of ``_MODULES``: ConVIRT,
    GLoRIA, AGA, S2D-ALIGN, ExGra-Med, ALTA), then methods registered elsewhere in registration
    order — the same list in every process, whichever method module was imported first.
    ``kind``: only those that can serve as a ``"dual_encoder"`` or a ``"report_generator"``
    (``"both"`` counts for each)."""
    _load()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def home(item: tuple[int, MethodSpec]) -> tuple[int, int]:
        where = item[1].module.__module__
        rank = next((i for i, m in enumerate(_MODULES) if where == m or where.startswith(m + ".")), len(_MODULES))
        return rank, item[0]

    specs = [s for _, s in sorted(enumerate(_REGISTRY.values()), key=home)]
    if kind == "dual_encoder":
        specs = [s for s in specs if s.dual_encoder]
    elif kind == "report_generator":
        specs = [s for s in specs if s.report_generator]
    elif kind == "both":
        specs = [s for s in specs if s.kind == "both"]
    return [s.name for s in specs]
