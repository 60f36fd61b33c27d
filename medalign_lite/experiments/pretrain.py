"""Pre-training of the cached stand-ins: an aligned vision encoder and a tiny report LM.

S2D-ALIGN (and ExGra-Med) freeze a pretrained image encoder and tune a pretrained LLM with LoRA;
ALTA adapts a pretrained masked autoencoder. At laptop scale none of them exists, so each is
trained here once, through the same :class:`~medalign_lite.train.Trainer` as every method, and
cached on disk:

1. :func:`pretrained_vision_encoder` — a ``tiny_cnn`` aligned with reports by ConVIRT
   (image–report InfoNCE, :mod:`medalign_lite.methods.baselines`; the recipe
   :func:`default_encoder_recipe`, read from ``configs/convirt_tiny.yaml``), then frozen.
2. :func:`pretrain_report_lm` — a tiny Llama trained on the training reports (next-token
   cross-entropy), saved as a Hugging Face folder.
3. :func:`pretrained_mae` — a small ViT masked autoencoder (transformers ``ViTMAEForPreTraining``)
   trained by masked autoencoding on the training split's frontal and lateral images, saved
   as a Hugging Face folder: the stand-in for ALTA's MRM weights.

**What a cache key covers.** Everything that changes the weights: the recipe or settings, the
training data (the manifest's sha256, or the texts), :func:`code_fingerprint` (the source of the
modules that compute the entry, docstrings and comments excluded, and the torch / transformers
versions) and torch's intra-op thread count (a CPU's float reductions depend on it, so 1 and 2
threads give different weights). A changed thread count therefore trains a new entry rather than
reusing one that is only nearly the same.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..nn import freeze
from ..train import Stage, TrainConfig, Trainer, load_weights, save_weights
from ..utils import atomic_dir, atomic_write

__all__ = [
    "CACHE_VERSION",
    "MAEObjective",
    "MAEPretrainConfig",
    "ReportLMObjective",
    "cache_aligned_encoder",
    "code_fingerprint",
    "default_encoder_recipe",
    "encoder_cache_key",
    "pretrain_report_lm",
    "pretrained_mae",
    "pretrained_vision_encoder",
]

#: Bumped when the way an entry is stored changes (the code itself is covered by
#: :func:`code_fingerprint`).
CACHE_VERSION = 2

#: The modules whose code decides a cached entry's weights (relative to the package).
FINGERPRINTED = ("models", "methods/baselines.py", "methods/dual.py", "nn.py", "train", "data/dataset.py",
                 "data/iu_xray.py", "text/tokenizer.py", "experiments/contrastive.py", "experiments/pretrain.py")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits of sha256 over the code of :data:`FINGERPRINTED` (each module's AST without
    docstrings, so comments and documentation do not invalidate a cache) and the versions of
    torch and transformers."""
    import transformers

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for rel in FINGERPRINTED:
        p = root / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(root)).encode())
            h.update(ast.dump(_strip_docstrings(ast.parse(f.read_text()))).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- 1. aligned encoder


def default_encoder_recipe(overrides: Sequence[str] = (), **fields):
    """The recipe of the S2D notebook's stand-in for Rad-DINO: ``configs/convirt_tiny.yaml``.

    ConVIRT (global InfoNCE, τ = 0.1, λ = 0.75) on ``tiny_cnn`` at 128 px with all-MiniLM-L6-v2
    frozen (trained: the image encoder and the four projections), lr 1e-3, batch 32, 2 epochs,
    on the report writer's text (``written_findings``, ``written_impression``: the text that
    describes exactly what the phantom shows). ``overrides`` are ``section.key=value`` strings
    on that file (``"train.stages.0.max_steps=3"``); ``fields`` replace recipe fields after
    (``seed=1``). At paper scale S2D's Rad-DINO is already pretrained: build it with
    :func:`~medalign_lite.models.vision.build_image_encoder` and :func:`freeze` it instead.
    """
    from .contrastive import recipe_from_config

    return replace(recipe_from_config("convirt_tiny", overrides), **fields)


def _cache_root() -> Path:
    from ..text.tokenizer import cache_root

    return cache_root() / "encoders"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_identity(manifest: Path) -> dict:
    """What identifies a manifest's content: the CSV's sha256, and ``build.json`` beside it
    (the builder's arguments and version) when there is one."""
    ident = {"manifest_sha256": _file_sha256(manifest)}
    stamp = manifest.parent / "build.json"
    if stamp.is_file():
        ident["build"] = stamp.read_text()
    return ident


def _recipe_fields(recipe) -> dict:
    """The recipe as JSON-able fields, without ``device`` (where it ran does not change what
    the cache entry is)."""
    fields = asdict(recipe)
    fields.pop("device", None)
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def _manifests(manifest) -> list[Path]:
    """One manifest path, or a list of them (IU-Phantom and IU-Phantom-extra), as a list."""
    return [Path(m) for m in manifest] if isinstance(manifest, (list, tuple)) else [Path(manifest)]


def encoder_cache_key(manifest, recipe, threads: int | None = None) -> str:
    """``convirt-tiny_cnn-128px-<16 hex>``: readable prefix + sha256 of the recipe fields (all
    but ``device``), the content identity of the manifest (or of each of a list of them),
    :data:`CACHE_VERSION`, :func:`code_fingerprint` and the torch thread count (``threads``,
    default the current one)."""
    manifests = _manifests(manifest)
    ident = _manifest_identity(manifests[0]) if len(manifests) == 1 else {
        "manifests": [_manifest_identity(m) for m in manifests]}
    payload = json.dumps({"version": CACHE_VERSION, "code": code_fingerprint(),
                          "threads": int(threads if threads is not None else torch.get_num_threads()),
                          "recipe": _recipe_fields(recipe), **ident}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    vision = recipe.vision.name.replace(":", "_").replace("/", "_")
    return f"{recipe.method}-{vision}-{recipe.image_size}px-{digest}"


def cache_aligned_encoder(model: nn.Module, history: Sequence[dict], manifest, recipe, train_seconds: float,
                          cache_dir: str | os.PathLike | None = None) -> Path:
    """Store the ``image_encoder`` of a dual encoder trained by ``recipe`` on ``manifest`` as the
    :func:`pretrained_vision_encoder` cache entry of that pair → the weights' path.

    For a run that trained exactly what the cache would (the same recipe on the same manifests,
    with this process's torch thread count, which the key covers): notebook 06's ConVIRT job is
    the very training S2D's and ExGra-Med's stand-in encoder needs, so it stores its encoder here
    and they load it instead of training it again. ``history``: the trainer's rows (the final
    loss, steps and any ``eval/`` curve go into the entry's JSON). An entry that exists is left
    as it is. The JSON is written first and the weights last, each atomically: an entry is
    complete once its weights exist.
    """
    manifests = _manifests(manifest)
    manifest = manifests[0] if len(manifests) == 1 else manifests
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    key = encoder_cache_key(manifest, recipe)
    weights, meta_path = root / f"{key}.safetensors", root / f"{key}.json"
    if weights.is_file():
        return weights
    root.mkdir(parents=True, exist_ok=True)
    losses = [r["loss"] for r in history if "loss" in r]
    meta = {"cache_version": CACHE_VERSION, "key": key, "recipe": _recipe_fields(recipe),
            "manifest": [str(m.resolve()) for m in manifests] if len(manifests) > 1 else str(manifests[0].resolve()),
            "manifest_sha256": [_manifest_identity(m)["manifest_sha256"] for m in manifests]
            if len(manifests) > 1 else _manifest_identity(manifests[0])["manifest_sha256"],
            "train_seconds": round(train_seconds, 2), "final_loss": float(losses[-1]) if losses else None,
            "steps": max((r.get("global_step", 0) for r in history), default=0),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "code": code_fingerprint(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "curve": [{k: v for k, v in r.items() if k == "global_step" or k.startswith("eval/")}
                      for r in history if any(k.startswith("eval/") for k in r)]}
    state = {k: v.detach().cpu() for k, v in model.image_encoder.state_dict().items()}
    atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
    atomic_write(weights, lambda p: save_weights(state, p))  # last: marks the entry complete
    return weights


def pretrained_vision_encoder(manifest, recipe=None, cache_dir: str | os.PathLike | None = None,
                              progress: bool = False, curve=None, eval_every: int = 0) -> nn.Module:
    """A vision encoder aligned with reports on ``manifest`` (ConVIRT by default), frozen.

    S2D-ALIGN's encoder is a frozen Rad-DINO; ours is trained here, once: a
    :func:`~medalign_lite.experiments.contrastive.build_model` of ``recipe`` (default
    :func:`default_encoder_recipe`) is trained by
    :func:`~medalign_lite.experiments.contrastive.train_alignment` on the manifest's train
    split, and only its
    ``image_encoder`` is kept. It is cached as
    ``{cache_dir}/{encoder_cache_key(manifest, recipe)}.safetensors`` with the recipe and the
    run's summary in a ``.json`` beside it (both written atomically); ``cache_dir`` defaults to
    ``$MEDALIGN_CACHE/encoders`` (``~/.cache/medalign_lite/encoders``). The key
    (:func:`encoder_cache_key`) covers every recipe field except ``device``, the manifest's
    content (sha256 of the CSV and its ``build.json``), the code and the torch thread count, so
    a second call with the same arguments loads the weights in about a second, and a changed
    recipe, rebuilt dataset, changed code or thread count trains anew.

    Args:
        manifest: the training manifest (IU-Phantom: ``ensure_dataset("iu-phantom")``), or a list
            of manifests read as one (:func:`~medalign_lite.data.ensure_iu_phantom`).
        recipe: an :class:`~medalign_lite.experiments.contrastive.AlignmentRecipe`; ``None`` =
            the default.
        cache_dir: cache folder (see above).
        progress: print one line on what happens (training, or loading from the cache).
        curve, eval_every: a learning curve while it trains (``eval_fn`` every ``eval_every``
            steps, e.g. a :class:`~medalign_lite.experiments.variants.RetrievalCurve`), stored
            in the entry's JSON (``"curve"``: the ``eval/`` rows) and returned by later loads;
            evaluation changes no weight, so it is not part of the key.

    Returns:
        The :class:`~medalign_lite.models.vision.ImageEncoder` (``forward(images)`` →
        ``ImageFeatures`` with ``pooled`` (B, Dg) and ``patches`` (B, P, Dl)), on the CPU,
        frozen with :func:`freeze` (read its caveat about a parent's ``.train()``), with
        ``encoder.alignment_info = {"cache_path", "loaded", "key", "seconds", "final_loss",
        "recipe", "created", "threads", "curve"}``: ``loaded`` is True when the weights came from the
        cache; ``seconds`` is the training or loading time; ``final_loss`` the last logged
        training loss, ``created`` when and ``threads`` with how many torch threads it was
        trained (from the JSON when loaded).
    """
    from ..models.vision import VisionConfig, build_image_encoder
    from .contrastive import build_model, train_alignment

    recipe = recipe if recipe is not None else default_encoder_recipe()
    manifests = _manifests(manifest)
    for m in manifests:
        if not m.is_file():
            raise FileNotFoundError(f"manifest {m} not found")
    manifest = manifests[0] if len(manifests) == 1 else manifests
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    key = encoder_cache_key(manifest, recipe)
    weights, meta_path = root / f"{key}.safetensors", root / f"{key}.json"
    t0 = time.perf_counter()

    if weights.is_file():
        # every weight and buffer comes from the file: build without loading published weights
        cfg = VisionConfig(**{**asdict(recipe.vision), "image_size": recipe.image_size, "pretrained": False})
        encoder = build_image_encoder(cfg)
        encoder.load_state_dict(load_weights(weights), strict=True)
        encoder.cfg = VisionConfig(**{**asdict(recipe.vision), "image_size": recipe.image_size})
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        loaded, final_loss = True, meta.get("final_loss")
        if progress:
            print(f"aligned encoder loaded from {weights}")
    else:
        if progress:
            print(f"aligning {recipe.vision.name} with {recipe.method} on {manifest} "
                  f"(cached to {weights} afterwards)")
        root.mkdir(parents=True, exist_ok=True)
        model = build_model(recipe)
        with tempfile.TemporaryDirectory(prefix=f"{key}.run-", dir=root) as run_dir:
            result = train_alignment(model, manifest, recipe, run_dir, eval_fn=curve, eval_every=eval_every)
        encoder = model.image_encoder.cpu()
        cache_aligned_encoder(model, result.history, manifest, recipe, time.perf_counter() - t0, cache_dir)
        meta = json.loads(meta_path.read_text())
        final_loss, train_seconds, loaded = meta["final_loss"], meta["train_seconds"], False
        if progress:
            print(f"aligned in {train_seconds:.1f} s, final loss {final_loss}")
    freeze(encoder)
    encoder.alignment_info = {"cache_path": str(weights), "loaded": loaded, "key": key,
                              "seconds": round(time.perf_counter() - t0, 3), "final_loss": final_loss,
                              "recipe": _recipe_fields(recipe), "created": meta.get("created"),
                              "threads": meta.get("threads"), "curve": meta.get("curve", [])}
    return encoder


# --------------------------------------------------------------------------- 2. tiny report LM


class _Texts(Dataset):
    """Report strings as a map-style dataset (items are the strings)."""

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


class _TokenizeReports:
    """Collate report strings into ``<bos> report <eos>`` ids (B, T), the attention mask and
    the labels (pad positions −100), truncated to ``max_tokens`` with the ``<eos>`` kept."""

    def __init__(self, tokenizer, max_tokens: int):
        self.tok, self.max_tokens = tokenizer, int(max_tokens)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tok
        enc = tok(list(texts), padding=True, truncation=True, max_length=self.max_tokens - 1, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        ids = torch.cat([ids, ids.new_full((ids.shape[0], 1), tok.pad_token_id)], 1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], 1)], 1)
        ends = mask.sum(1, keepdim=True)                       # <eos> after the last token
        ids, mask = ids.scatter(1, ends, tok.eos_token_id), mask.scatter(1, ends, 1)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class ReportLMObjective(nn.Module):
    """A causal LM as a trainer model: ``forward(batch)`` → ``{"loss": next-token CE}`` on a
    batch of :class:`_TokenizeReports` (``lm(**batch).loss``, labels shifted inside the LM)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, batch: dict) -> dict:
        return {"loss": self.lm(**batch).loss}


def pretrain_report_lm(texts: Sequence[str], llm=None, epochs: int = 3, batch_size: int = 32, lr: float = 1e-3,
                       max_tokens: int = 128, seed: int = 0, warmup_ratio: float = 0.05, device: str = "auto",
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """A tiny Llama pre-trained on report text, saved as a Hugging Face folder (cached).

    S2D-ALIGN tunes Vicuna-7B with LoRA: a language model that already writes text. The tiny
    stand-in's random weights cannot be taught language through rank-16 adapters alone, so it
    is first trained on the training reports — every weight, next-token cross-entropy on
    ``<bos> report <eos>`` (:class:`ReportLMObjective`), one :class:`~medalign_lite.train.Stage`
    of the trainer (AdamW, weight decay 0.01 on matrices, linear warm-up over ``warmup_ratio``
    then cosine decay, gradient norm clipped at 1) — the analogue of the LLM's pre-training,
    on text only; images come later, through the SMA. The folder (``config.json``,
    ``model.safetensors``, tokenizer files) loads with ``LLMConfig(name=str(folder))``.

    Cached under ``{cache_dir or $MEDALIGN_CACHE/lms}/tiny-<sha>``, keyed by the texts, the LLM
    config, the training settings, :func:`code_fingerprint` and the torch thread count; written
    to a temporary folder and renamed (atomic). Returns the folder; ``folder / "pretrain.json"``
    records the settings, steps, seconds and the final loss (mean over the last quarter epoch).
    """
    from ..models.llm import LLMConfig, load_causal_lm
    from ..models.loading import quiet_hub_progress
    from ..text.tokenizer import cache_root

    llm = llm or LLMConfig()
    if llm.name != "tiny":
        raise ValueError(f"pretrain_report_lm trains the tiny model, not {llm.name!r} (a real LLM is already pre-trained)")
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("pretrain_report_lm needs at least one non-empty report")
    settings = {"llm": json.loads(json.dumps(asdict(llm), default=str)), "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "max_tokens": max_tokens, "seed": seed, "warmup_ratio": warmup_ratio,
                "version": CACHE_VERSION, "code": code_fingerprint(), "threads": torch.get_num_threads()}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "lms"
    folder = root / f"tiny-{h.hexdigest()[:16]}"
    if (folder / "model.safetensors").is_file() and (folder / "pretrain.json").is_file():
        return folder
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    lm, tok = load_causal_lm(replace(llm, torch_dtype="float32"))
    n_batches = (len(texts) + batch_size - 1) // batch_size
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=folder.name + ".run-", dir=root) as run_dir:
        cfg = TrainConfig(output_dir=run_dir, batch_size=batch_size, seed=seed, device=device,
                          log_every=max(1, n_batches // 4), max_grad_norm=1.0,
                          stages=[Stage(name="pretrain_lm", epochs=epochs, lr=lr, trainable=["*"],
                                        weight_decay=0.01, warmup_ratio=warmup_ratio)])
        result = Trainer(ReportLMObjective(lm), _Texts(texts), cfg, collate_fn=_TokenizeReports(tok, max_tokens)).fit(
            resume=False)
    rows = [r for r in result.history if "loss" in r]
    lm = lm.cpu()
    with atomic_dir(folder) as tmp, quiet_hub_progress(lm):  # no "Writing model shards" bar
        lm.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "pretrain.json").write_text(json.dumps({**settings, "n_texts": len(texts), "steps": len(rows) and
                                                       rows[-1]["global_step"],
                                                       "final_loss": rows[-1]["loss"] if rows else None,
                                                       "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return folder


# --------------------------------------------------------------------------- 3. masked autoencoder


@dataclass
class MAEPretrainConfig:
    """How the tutorial's MAE is pre-trained (the ``mae_pretrain:`` section of ``alta_tiny.yaml``).

    MAE's recipe (He et al.) at CPU scale: AdamW β = (0.9, 0.95), weight decay 0.05, warm-up then
    cosine; masking at the model config's ``mask_ratio`` (0.75) and its norm-pix loss. The images
    are the training split's ``views`` at the recipe's size, without augmentation (random masking
    is the augmentation), kept in memory.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.05
    max_steps: int | None = None
    views: tuple[str, ...] = ("frontal", "lateral")

    def __post_init__(self):
        self.views = tuple(self.views)
        if not self.views or self.views[0] != "frontal":
            raise ValueError(f"views must start with 'frontal', got {self.views}")


class MAEObjective(nn.Module):
    """A ``ViTMAEForPreTraining`` as a trainer model: ``forward(batch)`` → ``{"loss"}``, its
    norm-pix MSE on the masked patches of every image of the batch (the current frontal and each
    other view a study has, stacked)."""

    def __init__(self, mae: nn.Module, views: Sequence[str] = ("frontal",)):
        super().__init__()
        self.mae, self.views = mae, tuple(views)

    def forward(self, batch) -> dict:
        images = [batch.images]
        for v in self.views[1:]:
            x, present = getattr(batch, v, None), getattr(batch, f"{v}_present", None)
            if x is not None:
                images.append(x[present])
        x = torch.cat(images)
        c = int(self.mae.config.num_channels)
        return {"loss": self.mae(pixel_values=x.expand(-1, c, -1, -1) if x.shape[1] != c else x).loss}


def pretrained_mae(manifest: str | os.PathLike, vision, settings: MAEPretrainConfig | None = None, seed: int = 0,
                   device: str = "auto", cache_dir: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """The folder of a masked autoencoder pre-trained on ``manifest``'s training images (cached).

    ALTA adapts MRM's ViT-B/16, an MAE pre-trained on MIMIC-CXR. Our stand-in is the random MAE
    that ``vision`` (a :class:`~medalign_lite.models.vision.VisionConfig` with a ``vit_mae``
    ``hf_config``, ``pretrained=False``, at ``vision.image_size``) describes, trained here by
    masked autoencoding (:class:`MAEObjective`, every weight but the fixed sin-cos position
    embeddings, one trainer stage with ``settings``) on the train split's frontal and lateral
    images. The result is a Hugging Face
    folder (``config.json``, ``model.safetensors``, ``pretrain.json`` with the settings, steps,
    seconds and final loss) that ``build_mae(VisionConfig(pretrained=str(folder)))`` loads.

    Cached under ``{cache_dir or $MEDALIGN_CACHE/encoders}/mae-<sha>``; the key covers the
    vision config, the settings, the seed, the manifest's content, :func:`code_fingerprint` and
    the torch thread count. Two processes asking for one entry take turns on a lock beside it;
    the folder is written to a temporary name and renamed.
    """
    from ..data import build_lock
    from ..data.dataset import Collate, ManifestDataset
    from ..models.loading import quiet_hub_progress
    from ..models.mae import build_mae

    settings = settings or MAEPretrainConfig()
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
    if vision.hf_config is None or vision.pretrained is not False:
        raise ValueError("pretrained_mae trains a random MAE: give vision.hf_config and pretrained=False")
    key = {"version": CACHE_VERSION, "code": code_fingerprint(), "threads": torch.get_num_threads(),
           "vision": json.loads(json.dumps(asdict(vision), sort_keys=True, default=str)),
           "settings": json.loads(json.dumps(asdict(settings), default=str)), "seed": seed,
           **_manifest_identity(manifest)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    folder = root / f"mae-{vision.image_size}px-{digest}"

    def done() -> bool:
        return (folder / "model.safetensors").is_file() and (folder / "pretrain.json").is_file()

    if done():
        if progress:
            print(f"MAE loaded from {folder}")
        return folder
    with build_lock(folder):
        if done():  # trained by another process meanwhile
            return folder
        if progress:
            print(f"pre-training the MAE on {manifest} (cached to {folder} afterwards)")
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        mae = build_mae(vision)
        # every weight but the fixed sin-cos position embeddings (MAE's; requires_grad False)
        trainable = [f"mae.{n}" for n, p in mae.named_parameters() if p.requires_grad]
        ds = ManifestDataset(manifest, split="train", views=settings.views, image_size=vision.image_size,
                             text_columns=("findings",), cache=True)
        with tempfile.TemporaryDirectory(prefix=folder.name + ".run-", dir=root) as run_dir:
            cfg = TrainConfig(output_dir=run_dir, batch_size=settings.batch_size, seed=seed, device=device,
                              log_every=10, max_grad_norm=None, drop_last=True,
                              stages=[Stage(name="mae_pretrain", epochs=settings.epochs, lr=settings.lr,
                                            trainable=trainable, weight_decay=settings.weight_decay,
                                            betas=settings.betas, warmup_ratio=settings.warmup_ratio,
                                            max_steps=settings.max_steps)])
            result = Trainer(MAEObjective(mae, settings.views), ds, cfg, collate_fn=Collate()).fit(resume=False)
        rows = [r for r in result.history if "loss" in r]
        mae = mae.cpu()
        info = {**key, "manifest": str(manifest.resolve()), "steps": rows[-1]["global_step"] if rows else 0,
                "first_loss": rows[0]["loss"] if rows else None, "final_loss": rows[-1]["loss"] if rows else None,
                "seconds": round(time.perf_counter() - t0, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "history": [{"step": r["global_step"], "loss": round(r["loss"], 5)} for r in rows]}
        with atomic_dir(folder) as tmp, quiet_hub_progress(mae):
            mae.save_pretrained(str(tmp), safe_serialization=True)
            (tmp / "pretrain.json").write_text(json.dumps(info, indent=1))
    if progress:
        print(f"MAE pre-trained in {info['seconds']} s, loss {info['first_loss']:.3f} -> {info['final_loss']:.3f}")
    return folder
