"""Retrieval metrics on rankings (DESIGN.md §5). Small NumPy functions.

``rel`` is a boolean [n_queries, n_ranked] matrix: rel[q, k] is True when the item at rank k+1 is
relevant to query q; ``n_relevant[q]`` = R_q, the relevant items in the whole gallery.
- AP(q) = (1/R_q) Σ_k P(k)·rel(k) over the whole ranking (0 when R_q = 0).
- AP@K(q) = Σ_{k≤K} P(k)·rel(k) / (relevant items retrieved in the top K) (0 when none retrieved).
- P@K = hits in top K / K; R@K = hits in top K / R_q (0 when R_q = 0).
Ties are broken by the ranking given (``rank_by_score`` sorts by descending score, stable by index).
"""

from __future__ import annotations

import numpy as np


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Indices sorting each row by descending score; ties keep gallery order."""
    return np.argsort(-scores, axis=1, kind="stable")


def precision_curve(rel: np.ndarray) -> np.ndarray:
    """P(k) for k = 1..n for every query."""
    return np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)


def average_precision(rel: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    rel = np.asarray(rel, bool)
    n_relevant = np.asarray(n_relevant, np.float64)
    s = np.sum(precision_curve(rel) * rel, axis=1)
    return np.divide(s, n_relevant, out=np.zeros_like(s), where=n_relevant > 0)


def average_precision_at(rel: np.ndarray, k: int) -> np.ndarray:
    rel = np.asarray(rel, bool)[:, :k]
    s = np.sum(precision_curve(rel) * rel, axis=1)
    hits = rel.sum(axis=1).astype(np.float64)
    return np.divide(s, hits, out=np.zeros_like(s), where=hits > 0)


def precision_at(rel: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(rel, bool)[:, :k].sum(axis=1) / k


def recall_at(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    hits = np.asarray(rel, bool)[:, :k].sum(axis=1).astype(np.float64)
    n_relevant = np.asarray(n_relevant, np.float64)
    return np.divide(hits, n_relevant, out=np.zeros_like(hits), where=n_relevant > 0)


def relevance(
    query_labels: np.ndarray, gallery_labels: np.ndarray, ranking: np.ndarray, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """rel matrix and R_q from labels and a ranking [q, n] of gallery indices.

    ``exclude[q]`` (a gallery index or −1) is dropped from query q's ranking and from R_q.
    """
    g = np.asarray(gallery_labels)
    rel = g[ranking] == np.asarray(query_labels)[:, None]
    n_rel = (g[None, :] == np.asarray(query_labels)[:, None]).sum(axis=1)
    if exclude is not None:
        keep = ranking != np.asarray(exclude)[:, None]
        rel = np.stack([r[k] for r, k in zip(rel, keep)]) if len(rel) else rel
        n_rel = n_rel - (np.asarray(exclude) >= 0) * (g[np.maximum(exclude, 0)] == np.asarray(query_labels))
    return rel, n_rel


def summarize(rel: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...] = (10, 20, 100)) -> dict[str, float]:
    """mAP and mAP@K, P@K, R@K for each K, averaged over queries."""
    out = {"mAP": float(average_precision(rel, n_relevant).mean())}
    for k in ks:
        out[f"mAP@{k}"] = float(average_precision_at(rel, k).mean())
        out[f"P@{k}"] = float(precision_at(rel, k).mean())
        out[f"R@{k}"] = float(recall_at(rel, n_relevant, k).mean())
    return out


def per_class(rel: np.ndarray, n_relevant: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (10, 20, 100)) -> dict:
    """``summarize`` per query class (Table III style)."""
    labels = np.asarray(labels)
    return {str(c): summarize(rel[labels == c], n_relevant[labels == c], ks) for c in np.unique(labels)}
