"""Rank a labelled set against itself with the index's own search path (``cbir.index.query.search``,
re-ranking included) and score the rankings (``metrics``). Used by ``cbir bench accuracy`` and by the
fidelity gate's ΔmAP (``cbir.validate``)."""

from __future__ import annotations

import numpy as np

from cbir.copies import verify
from cbir.eval import metrics
from cbir.index.ann import faiss_index
from cbir.index.query.rerank import Rerank
from cbir.index.query.search import search
from cbir.vectors import l2_normalize

KS = (10, 20, 100)


def regions_lookup(regions: np.ndarray):
    """regions_of(gallery positions) over an array of the first len(regions) positions' regional
    descriptors (positions beyond it, e.g. distractors, have none)."""
    n = len(regions)
    return lambda ids: (regions[np.minimum(ids, n - 1)], ids < n)


def rank(
    index,
    gallery: np.ndarray,
    queries: np.ndarray,
    k: int,
    cfg: Rerank | None = None,
    query_features: np.ndarray | None = None,
    gallery_features: np.ndarray | None = None,
    gallery_regions: np.ndarray | None = None,
) -> np.ndarray:
    """Rankings [q, k] of gallery positions (ids are gallery positions), re-ranked with ``cfg``;
    verification needs both feature arrays, regional re-ranking ``gallery_regions`` [n, R, D]."""
    check = None
    if cfg is not None and cfg.verify and query_features is not None:  # as the index's search verifies
        check = verify.verifier(lambda ids: [gallery_features[j] for j in ids], query_features, cfg.min_inliers)
    regions_of = regions_lookup(gallery_regions) if gallery_regions is not None else None
    _, ranking, _ = search(index, queries, k, cfg, lambda ids: gallery[ids], check, regions_of=regions_of)
    return ranking


def evaluate(
    vectors: np.ndarray,
    labels: np.ndarray,
    query_idx: np.ndarray,
    exclude_self: bool = False,
    cfg: Rerank | None = None,
    index=None,
    features: np.ndarray | None = None,
    depth: int | None = None,
    regions: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """(overall metrics, per-class metrics) for queries ``query_idx`` against all ``vectors`` (full
    rankings, or the top ``depth``: relevant items below it count as missed, so mAP is then a lower
    bound); ``features``: local-feature records of ``vectors`` for verification; ``regions``: their
    regional descriptors for regional re-ranking."""
    vectors = l2_normalize(vectors)
    if index is None:
        index, _ = faiss_index.build(vectors, np.arange(len(vectors)), "Flat")
    qf = features[query_idx] if features is not None else None
    ranking = rank(
        index, vectors, vectors[query_idx], min(depth or index.ntotal, index.ntotal), cfg, qf, features, regions
    )
    rel, n_rel = metrics.relevance(labels[query_idx], labels, ranking, query_idx if exclude_self else None)
    return metrics.summarize(rel, n_rel, KS), metrics.per_class(rel, n_rel, labels[query_idx], KS)
