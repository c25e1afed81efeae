"""Rank a labelled set against itself with the index's own search path and score the rankings
(``metrics``). Used by ``cbir bench accuracy`` and by the fidelity gate's ΔmAP (``cbir.validate``)."""
from __future__ import annotations

import numpy as np

from cbir.bench import metrics
from cbir.index import faiss_index
from cbir.index.search import search_with_qe
from cbir.vectors import l2_normalize

KS = (10, 20, 100)


def search_all(index, gallery: np.ndarray, queries: np.ndarray, qe_n: int = 0, qe_alpha: float = 0.0) -> np.ndarray:
    """Full rankings [q, n] of gallery indices (ids are gallery positions)."""
    _, ranking = search_with_qe(index, queries, index.ntotal, qe_n, qe_alpha, lambda ids: gallery[ids])
    return ranking


def evaluate(vectors: np.ndarray, labels: np.ndarray, query_idx: np.ndarray, exclude_self: bool = False,
             qe_n: int = 0, qe_alpha: float = 0.0, index=None) -> tuple[dict, dict]:
    """(overall metrics, per-class metrics) for queries ``query_idx`` against all ``vectors``."""
    vectors = l2_normalize(vectors)
    if index is None:
        index, _ = faiss_index.build(vectors, np.arange(len(vectors)), "Flat")
    ranking = search_all(index, vectors, vectors[query_idx], qe_n, qe_alpha)
    rel, n_rel = metrics.relevance(labels[query_idx], labels, ranking, query_idx if exclude_self else None)
    return metrics.summarize(rel, n_rel, KS), metrics.per_class(rel, n_rel, labels[query_idx], KS)
