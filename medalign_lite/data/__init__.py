"""Data: manifests, the finding vocabulary, phantoms, report text, builders, the torch dataset.

:func:`ensure_dataset` is what notebooks call: it builds a dataset once into the data cache
(``$MEDALIGN_DATA``, default ``~/.cache/medalign_lite/data``) and returns its manifest path;
a second call with the same arguments returns at once.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


def data_home() -> Path:
    """The data cache folder: ``$MEDALIGN_DATA`` or ``~/.cache/medalign_lite/data``."""
    return Path(os.environ.get("MEDALIGN_DATA", Path.home() / ".cache" / "medalign_lite" / "data")).expanduser()


def _stamp_matches(stamp: Path, want: dict) -> bool:
    try:
        return json.loads(stamp.read_text()) == want
    except (OSError, ValueError):  # missing, unreadable or half a file: build again
        return False


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside the dataset folder ``out`` (POSIX
    ``flock``; the kernel drops it when the process dies, so a killed build never leaves a
    stale lock). Where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as f:  # the lock file stays: removing it would race
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_dataset(name: str, size: int | None = 224, limit: int | None = None, seed: int = 0,
                   root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   progress: bool = True) -> Path:
    """Manifest path of dataset ``name``, building it first when needed.

    The build goes to ``out`` or ``data_home()/<name>-<size>px[-limit<N>]-seed<seed>``; a
    ``build.json`` stamp records the arguments and builder version, so an unchanged request
    costs one file read. Two processes asking for one dataset at once (two notebooks, a
    notebook and a test run) take turns through :func:`build_lock`: the second waits and
    then finds the first one's build. The stamp is removed before a build and written
    (atomically) after it succeeded, so it never vouches for a manifest it did not see built.
    """
    from ..utils import atomic_write
    from .builders import get_builder
    from .builders.common import BUILDER_VERSION

    tag = f"{name}-{size or 'orig'}px" + (f"-limit{limit}" if limit else "") + f"-seed{seed}"
    out = Path(out) if out is not None else data_home() / tag
    stamp = out / "build.json"
    want = {"name": name, "size": size, "limit": limit, "seed": seed,
            "root": str(root) if root else None, "builder_version": BUILDER_VERSION}
    manifest = out / "manifest.csv"
    if manifest.is_file() and _stamp_matches(stamp, want):
        return manifest
    build = get_builder(name)  # an unknown name fails here, before any folder is made
    with build_lock(out):
        if manifest.is_file() and _stamp_matches(stamp, want):  # built by another process meanwhile
            return manifest
        stamp.unlink(missing_ok=True)
        path = Path(build(out, root=root, size=size, limit=limit, seed=seed, progress=progress))
        atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(want)))
    return path


def ensure_iu_phantom(extra: int = 0, size: int | None = 224, limit: int | None = None, seed: int = 0,
                      progress: bool = True) -> list[Path]:
    """The manifests of an IU-Phantom training run: ``[IU-Phantom]``, and with ``extra`` > 0
    ``[IU-Phantom, IU-Phantom-extra]`` — ``extra`` more *training* studies drawn from IU-Phantom's
    training finding lists (:mod:`.builders.iu_phantom_extra`), the same ``seed`` and ``size``.
    A :class:`~.dataset.ManifestDataset` reads the list as one table; IU-Phantom's splits are
    unchanged (every extra study is ``train``). ``limit`` caps both (smoke runs)."""
    manifests = [ensure_dataset("iu-phantom", size=size, limit=limit, seed=seed, progress=progress)]
    if extra:
        n = min(int(extra), int(limit)) if limit else int(extra)
        manifests.append(ensure_dataset("iu-phantom-extra", size=size, limit=n, seed=seed, progress=progress))
    return manifests
