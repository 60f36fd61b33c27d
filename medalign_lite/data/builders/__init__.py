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
}


def get_builder(name: str) -> Callable:
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(BUILDERS)}")
    return importlib.import_module(f"{__name__}.{BUILDERS[name]}").build
