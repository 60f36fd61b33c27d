"""Cross-modal retrieval metrics: class-based Precision@K and instance Recall@K.

Two different numbers are called "retrieval" in the chest X-ray literature, and mixing them up is
the most common reporting error (see ``research/aga-and-peers.md`` §3):

* **Class precision P@K** (ConVIRT, GLoRIA, ALTA on CheXpert 5×200 / 8×200). A retrieved item is
  *correct* when its class equals the query's class::

      P@K = mean_q  #{g in top-K(q) : y_g = y_q} / K

  Several gallery items can be correct for one query; a random ranker scores the class prior.
* **Instance recall R@K** (CXR-CLIP, CLIP-style). Each query has its own positives (by default the
  paired item: query ``i`` ↔ gallery ``i``); a query is a hit when at least one positive is in its
  top K::

      R@K = mean_q  1[ rank_q(first positive) < K ]

  A random ranker scores about K/G.

Conventions (identical for both metrics):

* The **whole gallery** is ranked (never within mini-batches, which inflates P@K: BenchX).
* Ties are broken by gallery order: among equal similarities the lower gallery index ranks first
  (as a stable descending sort would). P@K takes ``torch.topk`` of the largest K, re-orders it
  by (score desc, index asc) and falls back to a full stable sort only for the rare rows whose
  ties straddle the cut-off; R@K needs no sort at all (rank = #better + #equal-and-earlier).
* Similarities must not be NaN. Queries are processed in chunks to bound memory.

Shapes: Q queries, G gallery items, D embedding width.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Labels = Sequence[int] | Sequence[str] | np.ndarray | torch.Tensor

_CHUNK_ELEMENTS = 1 << 22  # queries per chunk = max(1, 4M // G): a few tens of MB of temporaries


def _check_similarity(similarity: torch.Tensor) -> torch.Tensor:
    if not isinstance(similarity, torch.Tensor):
        similarity = torch.as_tensor(np.asarray(similarity))
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (Q, G), got shape {tuple(similarity.shape)}")
    if torch.isnan(similarity).any():
        raise ValueError("similarity contains NaN: ranks are undefined")
    return similarity


def _check_ks(ks: Sequence[int], n_gallery: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if max(ks) > n_gallery:
        raise ValueError(f"K={max(ks)} exceeds the gallery size {n_gallery}")
    return ks


def _chunk_size(n_gallery: int, chunk_size: int | None) -> int:
    return chunk_size if chunk_size else max(1, _CHUNK_ELEMENTS // max(n_gallery, 1))


def encode_labels(query_labels: Labels, gallery_labels: Labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Map query and gallery labels (ints or strings) to shared integer codes.

    Returns:
        (Q,) and (G,) int64 tensors; equal codes mean equal labels.
    """
    if isinstance(query_labels, torch.Tensor) and isinstance(gallery_labels, torch.Tensor):
        return query_labels.long().reshape(-1), gallery_labels.long().reshape(-1)
    _, q_codes, g_codes = _classes_and_codes(query_labels, gallery_labels)
    return q_codes, g_codes


def _classes_and_codes(query_labels: Labels, gallery_labels: Labels) -> tuple[list, torch.Tensor, torch.Tensor]:
    """The sorted union of both label sets and each item's index into it (``encode_labels``
    without its shortcut for tensors, which keeps their values as codes)."""
    q = np.asarray(query_labels.cpu() if isinstance(query_labels, torch.Tensor) else query_labels)
    g = np.asarray(gallery_labels.cpu() if isinstance(gallery_labels, torch.Tensor) else gallery_labels)
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError("single-label retrieval: labels must be 1-D (one class per item)")
    if q.dtype.kind != g.dtype.kind and {q.dtype.kind, g.dtype.kind} & {"U", "S", "O"}:
        raise TypeError(f"query labels ({q.dtype}) and gallery labels ({g.dtype}) are of different kinds")
    classes, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = torch.from_numpy(codes.reshape(-1).astype(np.int64))
    return classes.tolist(), codes[: len(q)], codes[len(q):]


def _stable_top_k(sim: torch.Tensor, k: int) -> torch.Tensor:
    """(q, k) gallery indices of each row's top k, in the order of a stable descending sort.

    ``torch.topk`` finds the k largest values but orders equal values arbitrarily, so its result
    is re-sorted by (value desc, index asc). That is exact unless items equal to the k-th value
    were left out while a later-indexed equal item got in; such rows (detected by counting the
    items ≥ the k-th value) are redone with a full stable sort.
    """
    vals, idx = torch.topk(sim, k, dim=1, sorted=True)
    idx, order = idx.sort(dim=1)                                  # index ascending ...
    vals = vals.gather(1, order)
    order = vals.sort(dim=1, descending=True, stable=True).indices  # ... then value descending
    idx = idx.gather(1, order)
    kth = vals.gather(1, order[:, -1:])                           # (q, 1) the k-th largest value
    clash = (sim >= kth).sum(dim=1) > k                           # ties straddle the cut-off
    if clash.any():
        rows = clash.nonzero().squeeze(1)
        idx[rows] = sim[rows].sort(dim=1, descending=True, stable=True).indices[:, :k]
    return idx


def precision_at_k(similarity: torch.Tensor, query_labels: Labels, gallery_labels: Labels,
                   ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None) -> dict[int, float]:
    """Class-based Precision@K (GLoRIA / ConVIRT), over the whole gallery.

    ``P@K = mean_q #{g in top-K(q): y_g = y_q} / K``; single-label (one class per item).

    Args:
        similarity: (Q, G) query–gallery scores, higher = more similar.
        query_labels: (Q,) class of each query, ints or strings.
        gallery_labels: (G,) class of each gallery item, same kind as ``query_labels``.
        ks: cut-offs, each 1 ≤ K ≤ G.
        chunk_size: queries per chunk (default: about 4M similarity entries per chunk).

    Returns:
        ``{K: P@K}`` as floats in [0, 1].
    """
    sim = _check_similarity(similarity)
    n_q, n_g = sim.shape
    ks = _check_ks(ks, n_g)
    q_codes, g_codes = encode_labels(query_labels, gallery_labels)
    if len(q_codes) != n_q or len(g_codes) != n_g:
        raise ValueError(f"labels ({len(q_codes)}, {len(g_codes)}) do not match similarity {(n_q, n_g)}")
    g_codes = g_codes.to(sim.device)
    q_codes = q_codes.to(sim.device)
    correct = torch.zeros(max(ks), dtype=torch.float64)
    step = _chunk_size(n_g, chunk_size)
    for start in range(0, n_q, step):  # loop over chunks of queries, not over queries
        top = _stable_top_k(sim[start:start + step], max(ks))              # (q, Kmax)
        match = g_codes[top] == q_codes[start:start + step, None]          # (q, Kmax) bool
        correct += match.sum(dim=0).double().cpu()                        # hits per rank position
    cum = correct.cumsum(0)                                               # hits within the top r
    return {k: float(cum[k - 1] / (n_q * k)) for k in ks}


def within_precision_at_k(embeddings: torch.Tensor, labels: Labels, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Class P@K of a set against itself (image→image, report→report): cosine similarity of
    the L2-normalised ``embeddings`` (N, D), each item's own entry left out; cut-offs ``K ≥ N``
    are dropped. ``{K: P@K}``."""
    x = F.normalize(embeddings.float(), dim=-1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    return precision_at_k(sim, labels, labels, [k for k in ks if k < len(x)])


def precision_at_k_per_query(similarity: torch.Tensor, query_labels: Labels, gallery_labels: Labels, k: int,
                              chunk_size: int | None = None) -> torch.Tensor:
    """(Q,) float64: each query's share of its top-K gallery items with its class, so that
    the mean is :func:`precision_at_k`'s P@K (same tie-stable ranking). The per-item scores a
    paired bootstrap over queries needs (:mod:`medalign_lite.experiments.claims`)."""
    sim = _check_similarity(similarity)
    n_q, n_g = sim.shape
    (k,) = _check_ks((k,), n_g)
    q_codes, g_codes = encode_labels(query_labels, gallery_labels)
    if len(q_codes) != n_q or len(g_codes) != n_g:
        raise ValueError(f"labels ({len(q_codes)}, {len(g_codes)}) do not match similarity {(n_q, n_g)}")
    g_codes, q_codes = g_codes.to(sim.device), q_codes.to(sim.device)
    step = _chunk_size(n_g, chunk_size)
    out = []
    for start in range(0, n_q, step):  # chunks of queries, not queries
        top = _stable_top_k(sim[start:start + step], k)                           # (q, K)
        out.append((g_codes[top] == q_codes[start:start + step, None]).double().mean(1).cpu())
    return torch.cat(out)


def class_confusion_at_k(similarity: torch.Tensor, query_labels: Labels, gallery_labels: Labels, k: int = 5,
                         chunk_size: int | None = None) -> tuple[list, np.ndarray]:
    """Where each class's queries land: ``(classes, C)`` with ``C[a, b]`` the share of the top-K
    gallery items of the class-``a`` queries that have class ``b`` (rows sum to 1; the same
    tie-stable ranking as :func:`precision_at_k`). Classes are the sorted union of both label
    sets; a class without queries has a row of NaN. With every class queried equally often, the
    diagonal's mean is P@K. On a gallery whose reports cluster tightly by class (Phantom-5×200),
    image→text P@K behaves like classifying each image by its nearest report class, and the
    off-diagonal cells say which classes the map confuses."""
    sim = _check_similarity(similarity)
    n_q, n_g = sim.shape
    (k,) = _check_ks((k,), n_g)
    classes, q_codes, g_codes = _classes_and_codes(query_labels, gallery_labels)
    if len(q_codes) != n_q or len(g_codes) != n_g:
        raise ValueError(f"labels ({len(q_codes)}, {len(g_codes)}) do not match similarity {(n_q, n_g)}")
    g_codes = g_codes.to(sim.device)
    n = len(classes)
    counts = torch.zeros(n * n, dtype=torch.float64)
    step = _chunk_size(n_g, chunk_size)
    for start in range(0, n_q, step):  # chunks of queries, not queries
        top = _stable_top_k(sim[start:start + step], k)                               # (q, K)
        pair = q_codes[start:start + step, None] * n + g_codes[top].cpu()             # (q, K) row-major cell
        counts += torch.bincount(pair.reshape(-1), minlength=n * n).double()
    counts = counts.reshape(n, n).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return classes, counts / counts.sum(1, keepdims=True)


def first_positive_rank(similarity: torch.Tensor, positives: torch.Tensor | None = None,
                        chunk_size: int | None = None) -> torch.Tensor:
    """0-based rank of each query's best-ranked positive in the whole gallery.

    ``rank_q = #{g: s_qg > s*} + #{g < g*: s_qg = s*}`` where ``g*`` is the best positive
    (highest score, lowest index among equals) and ``s*`` its score: the position a stable
    descending sort would give it.

    Args:
        similarity: (Q, G) scores.
        positives: (Q, G) bool, True where gallery ``g`` is a correct match for query ``q``.
            Default: the pairing ``q ↔ q`` (requires Q ≤ G).

    Returns:
        (Q,) int64 ranks (0 = retrieved first).
    """
    sim = _check_similarity(similarity)
    n_q, n_g = sim.shape
    if positives is None:
        if n_q > n_g:
            raise ValueError(f"paired default needs Q ≤ G, got {(n_q, n_g)}")
    else:
        positives = torch.as_tensor(positives, dtype=torch.bool, device=sim.device)
        if positives.shape != sim.shape:
            raise ValueError(f"positives {tuple(positives.shape)} must match similarity {tuple(sim.shape)}")
    arange_g = torch.arange(n_g, device=sim.device)
    out = []
    step = _chunk_size(n_g, chunk_size)
    for start in range(0, n_q, step):
        s = sim[start:start + step]
        rows = torch.arange(s.shape[0], device=sim.device)
        if positives is None:                                 # the paired item is the positive
            best_idx = (rows + start)[:, None]                                             # (q, 1)
            best_val = s.gather(1, best_idx)
        else:
            pos = positives[start:start + step]
            if not pos.any(dim=1).all():
                bad = start + int((~pos.any(dim=1)).nonzero()[0])
                raise ValueError(f"query {bad} has no positive in the gallery")
            best_val = s.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)      # (q, 1)
            best_idx = (pos & (s == best_val)).byte().argmax(dim=1, keepdim=True)       # first one
        rank = (s > best_val).sum(dim=1)
        n_tied = (s >= best_val).sum(dim=1) - rank            # items equal to s*, itself included
        tie = (n_tied > 1).nonzero().squeeze(1)
        if len(tie):                                          # rare: earlier equal items go first
            earlier = (s[tie] == best_val[tie]) & (arange_g[None, :] < best_idx[tie])
            rank[tie] += earlier.sum(dim=1)
        out.append(rank)
    return torch.cat(out)


def recall_at_k(similarity: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                positives: torch.Tensor | None = None, chunk_size: int | None = None) -> dict[int, float]:
    """Instance Recall@K (CXR-CLIP / CLIP style): fraction of queries with a positive in the top K.

    Args:
        similarity: (Q, G) scores.
        ks: cut-offs, each 1 ≤ K ≤ G.
        positives: optional (Q, G) bool of correct matches, e.g. every gallery report whose text
            equals the query's own (:func:`positives_from_duplicates`). Default: query ``i``'s
            only positive is gallery item ``i`` (paired data).

    Returns:
        ``{K: R@K}`` as floats in [0, 1].
    """
    sim = _check_similarity(similarity)
    ks = _check_ks(ks, sim.shape[1])
    ranks = first_positive_rank(sim, positives, chunk_size)
    return {k: float((ranks < k).double().mean()) for k in ks}


def positives_from_duplicates(items: Sequence[str] | Sequence[int] | np.ndarray) -> torch.Tensor:
    """(N, N) bool: ``items[q] == items[g]``, the positives of paired retrieval with repeated texts.

    IU X-Ray / MIMIC contain many identical normal reports; counting only the paired copy as
    correct punishes a model for retrieving an identical one (CXR-CLIP de-duplicates for this).
    """
    _, codes = np.unique(np.asarray(items), return_inverse=True)
    codes = torch.from_numpy(codes.reshape(-1).astype(np.int64))
    return codes[:, None] == codes[None, :]


def retrieval_report(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: Labels | None = None,
                     ks: Sequence[int] = (1, 5, 10), positives: torch.Tensor | None = None,
                     chunk_size: int | None = None) -> dict[str, float]:
    """Both directions, both metrics, names that say which is which.

    Embeddings are L2-normalised here; ``sim = img @ txtᵀ`` (cosine). Image→text uses ``sim``
    (queries are images, gallery the N reports); text→image uses ``simᵀ``.

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (N, D) embeddings of the paired reports (row i describes image i).
        labels: optional (N,) class per pair, shared by the image and its report; enables P@K.
        ks: cut-offs.
        positives: optional (N, N) bool of image→text positives (default: the diagonal);
            its transpose is used for text→image.

    Returns:
        ``{"i2t_P@K", "t2i_P@K"}`` class precision (when ``labels`` is given),
        ``{"i2t_R@K", "t2i_R@K"}`` instance recall, and ``{"i2t_MeanR", "t2i_MeanR"}`` the mean
        1-based rank of the first positive.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    out: dict[str, float] = {}
    pos_t = None if positives is None else torch.as_tensor(positives, dtype=torch.bool).T
    for name, s, pos in (("i2t", sim, positives), ("t2i", sim.T.contiguous(), pos_t)):
        if labels is not None:
            for k, v in precision_at_k(s, labels, labels, ks, chunk_size).items():
                out[f"{name}_P@{k}"] = v
        ranks = first_positive_rank(s, pos, chunk_size)
        for k in _check_ks(ks, s.shape[1]):
            out[f"{name}_R@{k}"] = float((ranks < k).double().mean())
        out[f"{name}_MeanR"] = float(ranks.double().mean() + 1)
    return out


def bench_retrieval(n_query: int = 1000, n_gallery: int = 1000, dim: int = 512, n_classes: int = 5,
                    ks: Sequence[int] = (1, 5, 10, 100), repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Time the retrieval metrics on random data (CPU). Target: 1,000 × 1,000 in well under 1 s.

    Returns:
        median seconds of ``precision_at_k`` (``p_at_k_s``), ``recall_at_k`` (``r_at_k_s``) on a
        (Q, G) similarity, and of the full two-direction :func:`retrieval_report` from (N, D)
        embeddings with N = ``n_query`` (``report_s``), plus the sizes and torch's thread count.
    """
    gen = torch.Generator().manual_seed(seed)
    sim = torch.randn(n_query, n_gallery, generator=gen)
    q_lab = torch.randint(n_classes, (n_query,), generator=gen)
    g_lab = torch.randint(n_classes, (n_gallery,), generator=gen)
    img = torch.randn(n_query, dim, generator=gen)
    txt = img + torch.randn(n_query, dim, generator=gen)
    ks = tuple(k for k in ks if k <= n_gallery)
    positives = None if n_query <= n_gallery else q_lab[:, None] == g_lab[None, :]

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return {
        "n_query": n_query, "n_gallery": n_gallery, "dim": dim, "threads": torch.get_num_threads(),
        "p_at_k_s": timed(lambda: precision_at_k(sim, q_lab, g_lab, ks)),
        "r_at_k_s": timed(lambda: recall_at_k(sim, ks, positives)),
        "report_s": timed(lambda: retrieval_report(img, txt, q_lab, ks)),
    }
