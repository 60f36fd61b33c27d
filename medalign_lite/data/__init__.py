"""Data: manifests, the finding vocabulary, phantoms, report text, builders, the torch dataset.

:func:`ensure_dataset` is what notebooks call: it builds a dataset once into the data cache
(``$MEDALIGN_DATA``, default ``~/.cache/medalign_lite/data``) and returns its manifest path;
a second call with the same arguments returns at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def data_home() -> Path:
    """The data cache folder: ``$MEDALIGN_DATA`` or ``~/.cache/medalign_lite/data``."""
    return Path(os.environ.get("MEDALIGN_DATA", Path.home() / ".cache" / "medalign_lite" / "data")).expanduser()


def ensure_dataset(name: str, size: int | None = 224, limit: int | None = None, seed: int = 0,
                   root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   progress: bool = True) -> Path:
    """Manifest path of dataset ``name``, building it first when needed.

    The build goes to ``out`` or ``data_home()/<name>-<size>px[-limit<N>]-seed<seed>``; a
    ``build.json`` stamp records the arguments and builder version, so an unchanged request
    costs one file read.
    """
    from .builders import get_builder
    from .builders.common import BUILDER_VERSION

    build = get_builder(name)
    tag = f"{name}-{size or 'orig'}px" + (f"-limit{limit}" if limit else "") + f"-seed{seed}"
    out = Path(out) if out is not None else data_home() / tag
    stamp = out / "build.json"
    want = {"name": name, "size": size, "limit": limit, "seed": seed,
            "root": str(root) if root else None, "builder_version": BUILDER_VERSION}
    manifest = out / "manifest.csv"
    if manifest.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == want:
                return manifest
        except json.JSONDecodeError:
            pass
    path = build(out, root=root, size=size, limit=limit, seed=seed, progress=progress)
    stamp.write_text(json.dumps(want))
    return Path(path)
