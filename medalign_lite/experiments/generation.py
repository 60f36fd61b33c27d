"""Report generation, shared pieces: a frozen aligned vision encoder, retrieval baselines, scoring.

The report-generation notebook (``05_s2d_full``) generates reports for IU-Phantom's test split
and compares them with two baselines. This module holds what it needs besides the generator:

1. :func:`pretrained_vision_encoder` — S2D-ALIGN freezes a pretrained Rad-DINO. Its tiny
   stand-in is a vision encoder first aligned on IU-Phantom with the engine's global contrastive
   objective (ConVIRT: image–report InfoNCE, :mod:`medalign_lite.methods.baselines`), then
   frozen. It is trained once per (recipe, manifest) and cached as safetensors.
2. :func:`encode_dataset` / :func:`image_features` — one encoder pass over a whole dataset:
   pooled, L2-normalised features (and the patches).
3. Baselines that put the generator's scores in context:

   - :func:`nearest_neighbour_reports` copies the training report of the most similar training
     image (cosine of pooled features). It is the retrieval floor a generator must beat, and
     it measures how much the frozen features know: a good encoder gives it a good CE F1.
   - :func:`majority_report` writes the most frequent training report for every study
     (typically a "no acute cardiopulmonary disease" normal report): the CE F1 of a system
     that always says "normal". On IU X-Ray, where ~40 % of studies are normal, it scores
     surprisingly well on BLEU and micro F1 and near zero on macro F1.
4. :func:`score_reports` — NLG metrics (:func:`medalign_lite.eval.generation.nlg_metrics`)
   and clinical efficacy (:func:`medalign_lite.eval.clinical.ce_metrics` on our rule labeler's
   labels) in one flat dict for ``metrics.json``.

The CE numbers come from this package's rule labeler, an offline proxy of the CheXpert
labeler: compare them with each other, never with published CE F1 (which use CheXbert or the
Stanford labeler; ``research/alta-s2d-report-eval.md`` §3.2).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data.dataset import Collate, ManifestDataset
from .data.findings import CHEXPERT_LABELS
from .eval.clinical import CHEXPERT_5, LABELER, POLICIES, ce_metrics
from .eval.generation import METRIC_KEYS, clean_report, nlg_metrics
from .nn import l2norm
from .utils import module_device, quiet_progress

__all__ = [
    "CACHE_VERSION",
    "LABELER",
    "default_encoder_recipe",
    "encode_dataset",
    "encoder_cache_key",
    "freeze",
    "image_features",
    "majority_report",
    "nearest_neighbour_reports",
    "pretrain_report_lm",
    "pretrained_vision_encoder",
    "score_key_order",
    "score_reports",
]

#: Bumped when the way an encoder is trained or stored changes, so old cache entries are ignored.
CACHE_VERSION = 1

_POLICY_TAG = {"zero": "u0", "one": "u1"}


# --------------------------------------------------------------------------- 1. frozen encoder


def default_encoder_recipe(**overrides):
    """The alignment recipe of the S2D notebooks' stand-in for Rad-DINO (notebook 01's settings).

    ConVIRT (global InfoNCE, τ = 0.1, λ = 0.75) on ``tiny_cnn`` at 128 px with all-MiniLM-L6-v2
    frozen (trained: the image encoder and the four projections), lr 1e-3, batch 32, 2 epochs,
    on the report writer's text (``written_findings``, ``written_impression``: the text that
    describes exactly what the phantom shows). ``overrides`` replace fields (``max_steps=3``
    for a smoke run). At paper scale S2D's Rad-DINO is already pretrained: build it with
    :func:`~medalign_lite.models.vision.build_image_encoder` and :func:`freeze` it instead.
    """
    from .models.text import TextConfig
    from .models.vision import VisionConfig
    from .recipes import AlignmentRecipe

    base = AlignmentRecipe(method="convirt", vision=VisionConfig(name="tiny_cnn", image_size=128),
                           text=TextConfig(name="minilm", max_length=64), embed_dim=128, image_size=128,
                           batch_size=32, epochs=2, lr=1e-3, trainable=["image_encoder.*", "img_*", "txt_*"],
                           text_columns=("written_findings", "written_impression"))
    return replace(base, **overrides)


def _cache_root() -> Path:
    from .text.tokenizer import cache_root

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


def encoder_cache_key(manifest: str | os.PathLike, recipe) -> str:
    """``convirt-tiny_cnn-128px-<16 hex>``: readable prefix + sha256 of the recipe fields (all
    but ``device``), the manifest's content identity and :data:`CACHE_VERSION`."""
    manifest = Path(manifest)
    payload = json.dumps({"version": CACHE_VERSION, "recipe": _recipe_fields(recipe),
                          **_manifest_identity(manifest)}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    vision = recipe.vision.name.replace(":", "_").replace("/", "_")
    return f"{recipe.method}-{vision}-{recipe.image_size}px-{digest}"


def freeze(module: nn.Module) -> nn.Module:
    """``requires_grad=False`` on every parameter and ``eval()`` (BatchNorm uses its running
    statistics, dropout is off); returns ``module``.

    A parent's ``.train()`` switches the children back to training mode, and a BatchNorm in
    training mode updates its running statistics even without gradients: a model holding a
    frozen encoder must call ``freeze`` (or ``encoder.eval()``) again in its own ``train``.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path`` (readers never see a half-written file)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)                      # mkstemp makes 0600 files; a cache is shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pretrained_vision_encoder(manifest: str | os.PathLike, recipe=None, cache_dir: str | os.PathLike | None = None,
                              progress: bool = False) -> nn.Module:
    """A vision encoder aligned with reports on ``manifest`` (ConVIRT by default), frozen.

    S2D-ALIGN's encoder is a frozen Rad-DINO; ours is trained here, once: a
    :func:`~medalign_lite.recipes.build_model` of ``recipe`` (default
    :func:`default_encoder_recipe`) is trained by
    :func:`~medalign_lite.recipes.train_alignment` on the manifest's train split, and only its
    ``image_encoder`` is kept. It is cached as
    ``{cache_dir}/{encoder_cache_key(manifest, recipe)}.safetensors`` with the recipe and the
    run's summary in a ``.json`` beside it (both written atomically); ``cache_dir`` defaults to
    ``$MEDALIGN_CACHE/encoders`` (``~/.cache/medalign_lite/encoders``). The key covers every
    recipe field except ``device`` and the manifest's content (sha256 of the CSV and its
    ``build.json``), so a second call with the same arguments loads the weights in about a
    second, and a changed recipe or rebuilt dataset trains anew.

    Args:
        manifest: the training manifest (IU-Phantom: ``ensure_dataset("iu-phantom")``).
        recipe: an :class:`~medalign_lite.recipes.AlignmentRecipe`; ``None`` = the default.
        cache_dir: cache folder (see above).
        progress: print one line on what happens (training, or loading from the cache).

    Returns:
        The :class:`~medalign_lite.models.vision.ImageEncoder` (``forward(images)`` →
        ``ImageFeatures`` with ``pooled`` (B, Dg) and ``patches`` (B, P, Dl)), on the CPU,
        frozen with :func:`freeze` (read its caveat about a parent's ``.train()``), with
        ``encoder.alignment_info = {"cache_path", "loaded", "key", "seconds", "final_loss",
        "recipe", "created", "threads"}``: ``loaded`` is True when the weights came from the
        cache; ``seconds`` is the training or loading time; ``final_loss`` the last logged
        training loss, ``created`` when and ``threads`` with how many torch threads it was
        trained (from the JSON when loaded; None for entries written before threads were
        recorded). The key does not cover the thread count or the code version, and a CPU's
        float reductions depend on both: an entry trained elsewhere is the same recipe, not
        necessarily the same weights.
    """
    from .models.vision import VisionConfig, build_image_encoder
    from .recipes import build_model, train_alignment
    from .train import load_weights, save_weights

    recipe = recipe if recipe is not None else default_encoder_recipe()
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
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
            result = train_alignment(model, manifest, recipe, run_dir)
        losses = [r["loss"] for r in result.history if "loss" in r]
        final_loss = float(losses[-1]) if losses else None
        encoder = model.image_encoder.cpu()
        train_seconds = time.perf_counter() - t0
        meta = {"cache_version": CACHE_VERSION, "key": key, "recipe": _recipe_fields(recipe),
                "manifest": str(manifest.resolve()), **{k: v for k, v in _manifest_identity(manifest).items()
                                                        if k == "manifest_sha256"},
                "train_seconds": round(train_seconds, 2), "final_loss": final_loss,
                "steps": max((r.get("global_step", 0) for r in result.history), default=0),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
        _atomic_write(weights, lambda p: save_weights(encoder.state_dict(), p))  # last: marks the entry complete
        loaded = False
        if progress:
            print(f"aligned in {train_seconds:.1f} s, final loss {final_loss}")
    freeze(encoder)
    encoder.alignment_info = {"cache_path": str(weights), "loaded": loaded, "key": key,
                              "seconds": round(time.perf_counter() - t0, 3), "final_loss": final_loss,
                              "recipe": _recipe_fields(recipe), "created": meta.get("created"),
                              "threads": meta.get("threads")}
    return encoder


# --------------------------------------------------------------------------- 2. features


def pretrain_report_lm(texts: Sequence[str], llm=None, epochs: int = 3, batch_size: int = 32, lr: float = 1e-3,
                       max_tokens: int = 128, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                       progress: bool = False) -> Path:
    """A tiny Llama pre-trained on report text, saved as a Hugging Face folder (cached).

    S2D-ALIGN tunes Vicuna-7B with LoRA: a language model that already writes text. The tiny
    stand-in's random weights cannot be taught language through rank-16 adapters alone, so it
    is first trained on the training reports (full weights, next-token cross-entropy on
    ``<bos> report <eos>``, AdamW with cosine decay) — the analogue of the LLM's pre-training,
    on text only; images come later, through the SMA. The folder (``config.json``,
    ``model.safetensors``, tokenizer files) loads with ``LLMConfig(name=str(folder))``.

    Cached under ``{cache_dir or $MEDALIGN_CACHE/lms}/tiny-<sha>`` keyed by the texts, the LLM
    config and the training settings; written to a temporary folder and renamed (atomic).
    Returns the folder; ``folder / "pretrain.json"`` records the settings, seconds and the
    final loss.
    """
    from .models.llm import LLMConfig, load_causal_lm
    from .text.tokenizer import cache_root

    llm = llm or LLMConfig()
    if llm.name != "tiny":
        raise ValueError(f"pretrain_report_lm trains the tiny model, not {llm.name!r} (a real LLM is already pre-trained)")
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("pretrain_report_lm needs at least one non-empty report")
    settings = {"llm": json.loads(json.dumps(asdict(llm), default=str)), "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "max_tokens": max_tokens, "seed": seed, "version": CACHE_VERSION}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\x00")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "lms"
    folder = root / f"tiny-{h.hexdigest()[:16]}"
    if (folder / "model.safetensors").is_file() and (folder / "pretrain.json").is_file():
        return folder
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model, tok = load_causal_lm(replace(llm, torch_dtype="float32"))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_batches = (len(texts) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * n_batches),
                                                pct_start=0.05, anneal_strategy="cos")
    losses = []
    for _ in quiet_progress(range(epochs), desc="pretrain LM", enabled=progress or None):
        order = torch.randperm(len(texts), generator=g).tolist()
        for i in range(0, len(order), batch_size):
            enc = tok([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                      max_length=max_tokens - 1, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            ids = torch.cat([ids, ids.new_full((ids.shape[0], 1), tok.pad_token_id)], 1)
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], 1)], 1)
            ends = mask.sum(1, keepdim=True)                       # <eos> after the last token
            ids, mask = ids.scatter(1, ends, tok.eos_token_id), mask.scatter(1, ends, 1)
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=root))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        tail = losses[-max(1, n_batches // 4):]
        (tmp / "pretrain.json").write_text(json.dumps({**settings, "n_texts": len(texts), "steps": len(losses),
                                                       "final_loss": sum(tail) / len(tail),
                                                       "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@torch.no_grad()
def encode_dataset(encoder: nn.Module, dataset, batch_size: int = 64, patches: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int] | None]:
    """One pass of ``encoder`` over every study of ``dataset`` (its ``frontal`` images), in
    order → (pooled (N, Dg) L2-normalised, patches (N, P, Dl) or None, grid).

    ``encoder`` is an image encoder (``encoder(images)`` → ``ImageFeatures``) or a dual
    encoder with ``embed_images`` (its projected features). Runs under ``no_grad`` in eval
    mode on the encoder's device (the mode is restored after); returns CPU float32 tensors.
    ``patches=False`` keeps only the pooled vectors (less memory for big datasets).
    """
    was_training = encoder.training
    encoder.eval()
    pooled, local, grid = [], [], None
    try:
        dev = module_device(encoder)
        embed = getattr(encoder, "embed_images", encoder)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate())
        for batch in quiet_progress(loader, desc="image features"):
            f = embed(batch.images.to(dev))
            pooled.append(l2norm(f.pooled.float()).cpu())
            if patches:
                local.append(f.patches.float().cpu())
                grid = f.grid
    finally:
        encoder.train(was_training)
    if not pooled:
        raise ValueError("encode_dataset: the dataset is empty")
    return torch.cat(pooled), (torch.cat(local) if patches else None), grid


def image_features(encoder: nn.Module, dataset: ManifestDataset, batch_size: int = 64) -> torch.Tensor:
    """(N, D) pooled, L2-normalised image features of every study of ``dataset``, in order
    (:func:`encode_dataset` without the patches)."""
    return encode_dataset(encoder, dataset, batch_size, patches=False)[0]


# --------------------------------------------------------------------------- 3. baselines


def nearest_neighbour_reports(train_feats: torch.Tensor, train_reports: Sequence[str], query_feats: torch.Tensor,
                              chunk: int = 4096, return_index: bool = False, tol: float = 1e-6):
    """Copy the training report of the most similar training image (the retrieval baseline).

    For query q and training image n: s_qn = cos(f_q, f_n) (features are L2-normalised here,
    so pass them as they are); the answer is ``train_reports[argmax_n s_qn]``. Ties — and
    near-ties within ``tol``, which a matmul's rounding can create between equal training
    rows — go to the **lowest** training index, so results do not depend on the BLAS.

    Args:
        train_feats: (N, D) features of the training images.
        train_reports: their N reports.
        query_feats: (Q, D) features of the images to report on.
        chunk: queries per matmul (memory O(chunk · N)).
        return_index: also return the (Q,) long tensor of chosen training indices.

    Returns:
        Q reports (and the indices with ``return_index``).
    """
    train_feats, query_feats = torch.as_tensor(train_feats), torch.as_tensor(query_feats)
    if train_feats.ndim != 2 or query_feats.ndim != 2 or train_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(f"features must be (N, D) and (Q, D); got {tuple(train_feats.shape)} and "
                         f"{tuple(query_feats.shape)}")
    if len(train_reports) != train_feats.shape[0]:
        raise ValueError(f"{train_feats.shape[0]} training features but {len(train_reports)} training reports")
    if train_feats.shape[0] == 0:
        raise ValueError("nearest_neighbour_reports: no training items")
    bank = l2norm(train_feats.float())
    queries = l2norm(query_feats.float())
    picks = []
    for s in range(0, queries.shape[0], chunk):        # chunks of queries, each one matmul
        sims = queries[s:s + chunk] @ bank.T                               # (q, N)
        top = sims.max(dim=1, keepdim=True).values
        picks.append((sims >= top - tol).to(torch.uint8).argmax(dim=1))   # first index at the max
    index = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    reports = [train_reports[i] for i in index.tolist()]
    return (reports, index) if return_index else reports


def majority_report(train_reports: Sequence[str]) -> str:
    """The most frequent training report, compared after R2Gen cleaning
    (:func:`~medalign_lite.eval.generation.clean_report`: case, punctuation, numbering).

    Returns the first training report (original text) of the most frequent cleaned form; ties
    go to the form seen first. Empty reports are ignored. Use it for every test study: the
    "always normal" baseline that puts CE F1 in context.
    """
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for r in train_reports:
        key = clean_report(r or "")
        if not key:
            continue
        counts[key] += 1
        first.setdefault(key, r)
    if not counts:
        raise ValueError("majority_report: no non-empty training report")
    return first[counts.most_common(1)[0][0]]   # most_common keeps first-seen order among ties


# --------------------------------------------------------------------------- 4. scoring


def score_reports(references: Sequence[str], hypotheses: Sequence[str], uncertain: str = "zero",
                  nlg: bool = True, meteor: bool = True) -> dict:
    """NLG and clinical-efficacy scores of generated reports, flat, for ``metrics.json``.

    Keys (floats unless said):

    - NLG (with ``nlg``; :func:`~medalign_lite.eval.generation.nlg_metrics`, pycocoevalcap,
      R2Gen cleaning): ``BLEU_1``, ``BLEU_2``, ``BLEU_3``, ``BLEU_4``, ``METEOR``, ``ROUGE_L``,
      ``CIDEr``. ``METEOR`` is absent when Java is missing (a warning says so) or ``meteor``
      is False (it starts a JVM: ~10 s).
    - CE over the 14 CheXpert observations (:func:`~medalign_lite.eval.clinical.ce_metrics`
      on :func:`~medalign_lite.text.labeler.label_reports` labels of both sides, blank → 0),
      with the uncertain policy in the key — ``u0``: -1 → 0 (R2Gen, the default),
      ``u1``: -1 → 1 (f1chexbert / MAIRA / LLaVA-Rad):
      ``ce_{micro,macro,example}_{precision,recall,f1}_{u0|u1}``, e.g. ``ce_micro_f1_u0``.
    - CE over the 5 competition observations (F1-5): ``ce5_{micro,macro}_f1_{u0|u1}``.
    - ``n_reports``: the number of report pairs.
    - ``per_observation``: ``{observation: F1}`` (14, :data:`CHEXPERT_LABELS` order) under the
      same policy, the one non-float value (for :func:`medalign_lite.viz.ce_bars`).

    The labeler is this package's rule labeler (``medalign_lite.eval.clinical.LABELER``), a
    proxy: these CE numbers are comparable with each other, not with published ones.
    """
    from .text.labeler import label_reports

    if uncertain not in POLICIES:
        raise ValueError(f"uncertain must be one of {sorted(POLICIES)}, got {uncertain!r}")
    refs, hyps = list(references), list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"score_reports: {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("score_reports: no reports")
    out: dict = {}
    if nlg:
        out.update(nlg_metrics(refs, hyps, meteor=meteor))
    tag = _POLICY_TAG[uncertain]
    ref_labels, hyp_labels = label_reports(refs), label_reports(hyps)
    ce = ce_metrics(ref_labels, hyp_labels, uncertain)
    for avg in ("micro", "macro", "example"):
        for m in ("precision", "recall", "f1"):
            out[f"ce_{avg}_{m}_{tag}"] = float(ce[avg][m])
    ce5 = ce_metrics(ref_labels, hyp_labels, uncertain, observations=CHEXPERT_5)
    out[f"ce5_micro_f1_{tag}"] = float(ce5["micro"]["f1"])
    out[f"ce5_macro_f1_{tag}"] = float(ce5["macro"]["f1"])
    out["n_reports"] = float(len(refs))
    out["per_observation"] = {o: float(ce["per_class"][o]["f1"]) for o in CHEXPERT_LABELS}
    return out


def score_key_order(uncertain: str = "zero") -> list[str]:
    """The float keys of :func:`score_reports` in table order (METEOR included)."""
    tag = _POLICY_TAG[uncertain]
    ce = [f"ce_{a}_{m}_{tag}" for a in ("micro", "macro", "example") for m in ("precision", "recall", "f1")]
    return [*METRIC_KEYS, *ce, f"ce5_micro_f1_{tag}", f"ce5_macro_f1_{tag}", "n_reports"]
