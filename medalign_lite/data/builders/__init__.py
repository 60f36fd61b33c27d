"""Dataset builders: each writes ``OUT/manifest.csv`` in the one manifest schema.

``get_builder(name)(out_dir, root=None, size=None, limit=None, seed=0, progress=True)``.
Modules are imported lazily so that ``medalign data build iu-phantom`` does not import the
MIMIC-CXR code and vice versa.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

BUILDERS: dict[str, str] = {
    "iu-phantom": "iu_phantom",
    "iu-phantom-extra": "iu_phantom_extra",
    "phantom-5x200": "phantom_5x200",
    "mimic-cxr": "mimic_cxr",
    "chexpert-5x200": "chexpert",
    "iu-xray": "iu_xray",
    "rsna": "rsna",
    "phantom-vqa": "phantom_vqa",
    "vqa-rad": "vqa_rad",
    "slake": "slake",
    "pathvqa": "pathvqa",
    "llava-med-instruct": "llava_med",
}


def _module(name: str):
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(BUILDERS)}")
    return importlib.import_module(f"{__name__}.{BUILDERS[name]}")


def get_builder(name: str) -> Callable:
    return _module(name).build


def builder_version(name: str) -> int | None:
    """The ``VERSION`` a builder module declares when one builder's output changed on its own
    (None: only :data:`~medalign_lite.data.builders.common.BUILDER_VERSION` applies)."""
    return getattr(_module(name), "VERSION", None)
