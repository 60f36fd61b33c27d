"""Report generation around any generator: encode a dataset, generate, baselines, scoring.

What the report-generation notebooks (``05_s2d_full``, ExGra-Med's) need besides the generator:

1. :func:`encode_dataset` / :func:`image_features` — one encoder pass over a whole dataset:
   pooled, L2-normalised features (and the patches). With a frozen encoder and the
   deterministic eval transform the patches are the same at every epoch, so they are computed
   once (:class:`PrecomputedPatches`, :class:`PatchItems`, optionally standardised per channel,
   :func:`patch_statistics`).
2. :func:`generate_reports` — batched generation from the image (or its patches) alone;
   :func:`sampled_finding_rates` — what the generator knows about each finding, from sampled reports.
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

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import Collate, ManifestDataset
from ..data.findings import CHEXPERT_LABELS
from ..eval.clinical import CHEXPERT_5, LABELER, POLICIES, binarize, ce_metrics
from ..eval.generation import METRIC_KEYS, clean_report, nlg_metrics
from ..models.features import ImageFeatures
from ..nn import l2norm
from ..utils import module_device, quiet_progress

__all__ = [
    "LABELER",
    "PatchItems",
    "PrecomputedPatches",
    "encode_dataset",
    "generate_reports",
    "image_features",
    "majority_report",
    "nearest_neighbour_reports",
    "patch_statistics",
    "sampled_finding_rates",
    "score_key_order",
    "score_reports",
]

_POLICY_TAG = {"zero": "u0", "one": "u1"}


# --------------------------------------------------------------------------- 1. features


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



class PrecomputedPatches(nn.Module):
    """The frozen image encoder, optionally standardised, or its features computed beforehand.

    ``forward(x)``: (B, C, H, W) images run through ``encoder`` and its patches are
    standardised per channel, V' = (V − μ) / σ, when ``mean`` and ``std`` (Dl,) are given;
    (B, P, D) tensors are taken to be such features already (computed once by the caller) and
    pass through as ``ImageFeatures(pooled = mean over P, patches = x, grid)``. ``patch_dim``
    is the encoder's. Used only where the encoder is frozen and the inputs deterministic, so
    both paths give the same patches.
    """

    def __init__(self, encoder: nn.Module, grid: tuple[int, int], mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.encoder = encoder
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch_dim = int(encoder.patch_dim)
        self.standardize = mean is not None
        if self.standardize:
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1))

    def forward(self, x: torch.Tensor) -> ImageFeatures:
        if x.ndim == 3:
            if x.shape[1] != self.grid[0] * self.grid[1] or x.shape[2] != self.patch_dim:
                raise ValueError(f"precomputed patches must be (B, {self.grid[0] * self.grid[1]}, {self.patch_dim}), "
                                 f"got {tuple(x.shape)}")
            return ImageFeatures(pooled=x.mean(1), patches=x, grid=self.grid)
        f = self.encoder(x)
        if self.standardize:
            f = ImageFeatures(pooled=f.pooled, patches=(f.patches - self.mean) / self.std, grid=f.grid)
        return f



def patch_statistics(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (Dl,) of (N, P, Dl) patch features over studies and patches."""
    flat = patches.reshape(-1, patches.shape[-1]).double()
    return flat.mean(0).float(), flat.std(0).clamp_min(eps).float()



class PatchItems(Dataset):
    """A :class:`~medalign_lite.data.dataset.ManifestDataset`'s studies with precomputed patch
    features in place of the image: item ``i`` is ``{study_id, text, labels, prior_report,
    frontal: patches[i] (P, D)}`` (no image is read). :class:`Collate` stacks them into a
    ``Batch`` whose ``images`` are (B, P, D)."""

    def __init__(self, base, patches: torch.Tensor):
        if len(base) != patches.shape[0]:
            raise ValueError(f"{len(base)} studies but {patches.shape[0]} feature rows")
        self.patches = patches
        self.texts = list(base.texts)
        self.labels = base.labels
        self.study_ids = list(base.df["study_id"])
        self.prior_reports = ([str(r or "") for r in base.df["prior_report"]]
                              if getattr(base, "prior_report", False) and "prior_report" in base.df else None)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        item = {"study_id": self.study_ids[i], "text": self.texts[i], "labels": self.labels[i],
                "frontal": self.patches[i]}
        if self.prior_reports is not None:
            item["prior_report"] = self.prior_reports[i]
        return item


# --------------------------------------------------------------------------- 2. generation


def generate_reports(model: nn.Module, dataset, indices: Sequence[int] | None = None, batch_size: int = 64,
                     progress: bool | None = None, **overrides) -> list[str]:
    """Reports for ``dataset[i]`` (``i`` in ``indices``, default all), generated from the image
    (or its precomputed patches) only, ``batch_size`` studies per ``model.generate(images)`` call
    (a registered report generator, e.g. :meth:`~medalign_lite.methods.s2d.S2D.generate`);
    ``overrides`` go to ``generate`` (``num_beams``, ``max_new_tokens``, ...)."""
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    dev = module_device(model)
    out: list[str] = []
    for s in quiet_progress(range(0, len(idx), batch_size), desc="generate", enabled=progress):
        images = torch.stack([dataset[i]["frontal"] for i in idx[s:s + batch_size]]).to(dev)
        out += model.generate(images, **overrides)
    return out


class ReportCurve:
    """A report generator's learning curve (the trainer's ``eval_fn``): reports for fixed
    validation studies — greedy, from the image alone — scored by clinical efficacy.

    ``items``: the studies (e.g. :class:`PatchItems` of the validation split), ``references``
    their target texts. Returns ``{"val_ce_micro_f1", "val_ce_macro_f1", "val_ce5_macro_f1",
    "val_distinct"}`` (uncertain → 0; distinct: how many different reports, a template
    generator writes few). A class, not a closure, so that worker processes receive it."""

    def __init__(self, items, references: Sequence[str], batch_size: int = 64, **generation):
        if len(items) != len(references):
            raise ValueError(f"{len(items)} studies but {len(references)} references")
        self.items, self.references = items, list(references)
        self.batch_size, self.generation = batch_size, {"num_beams": 1, **generation}

    def __call__(self, model: nn.Module) -> dict:
        from ..eval.clinical import ce_from_texts

        reports = generate_reports(model, self.items, None, self.batch_size, progress=False, **self.generation)
        ce = ce_from_texts(self.references, reports)
        ce5 = ce_from_texts(self.references, reports, observations=CHEXPERT_5)
        return {"val_ce_micro_f1": ce["micro"]["f1"], "val_ce_macro_f1": ce["macro"]["f1"],
                "val_ce5_macro_f1": ce5["macro"]["f1"], "val_distinct": len(set(reports))}


def sampled_finding_rates(model: nn.Module, dataset, k: int = 10, seed: int = 0, batch_size: int = 64,
                          progress: bool | None = None, **generation) -> tuple[np.ndarray, list[list[str]]]:
    """What a report generator knows about each finding: the share of ``k`` reports *sampled*
    from it (ancestral sampling at temperature 1, no top-k or top-p cut: its own distribution) that name each
    CheXpert observation as present (rule labeler, uncertain → 0).

    The rate estimates the generator's marginal p(observation in the report | image), the
    quantity beam search hides: a finding the model gives 30 % enters about 3 of 10 samples
    and rarely the beam report. Scored against the references by
    :func:`~medalign_lite.eval.clinical.observation_auroc` it separates two reasons for a low
    CE F1 — the model does not read the finding from the image (low AUROC), or it does but its
    decoder never writes it (high AUROC, F1 near 0).

    Args:
        model: a generator (``model.generate(images, **kw)``), as :func:`generate_reports` takes.
        dataset: its evaluation items (images, or :class:`PatchItems`).
        k: samples per study; the rates are multiples of 1/k.
        seed: round r draws under ``torch.manual_seed(seed + r)`` inside a forked RNG (the
            caller's random state is left as it was). The draws also depend on ``batch_size``
            (one sampling call draws for its whole batch) and the torch thread count.
        generation: further ``generate`` arguments (sampling settings are fixed above).

    Returns:
        ``(rates, samples)``: rates (N, 14) float in [0, 1], columns in ``CHEXPERT_LABELS``
        order; samples: ``k`` lists of N reports.
    """
    from ..text.labeler import label_reports

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dev = module_device(model)
    samples: list[list[str]] = []
    for r in quiet_progress(range(k), desc="sampled reports", enabled=progress):
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed + r)
            samples.append(generate_reports(model, dataset, None, batch_size, progress=False,
                                            **{**generation, "num_beams": 1, "do_sample": True, "top_p": 1.0,
                                               "top_k": 0, "temperature": 1.0}))
    rates = np.mean([binarize(label_reports(s)) for s in samples], axis=0)  # uncertain → 0, as CE F1
    return rates, samples


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
    from ..text.labeler import label_reports

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

