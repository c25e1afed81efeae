"""k-NN search with re-ranking (``rerank``), shared by ``Gallery`` and ``cbir bench accuracy``."""

from __future__ import annotations

from typing import Callable

import numpy as np

from cbir.index.ann import faiss_index
from cbir.index.query.rerank import Rerank, rerank

# verify(query row, candidate ids [n]) -> inliers [n]
Verifier = Callable[[int, np.ndarray], np.ndarray]
# regions_of(candidate ids [n]) -> (regional descriptors [n, R, D], present [n]) or None
RegionsOf = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


def knn(
    index, queries: np.ndarray, k: int, params=None, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``faiss_index.search`` without the ``exclude`` ids (sorted; e.g. ``Snapshot.stale``): it
    fetches that many more and drops them, so a row is short only when the index holds fewer than
    ``k`` others. Rows are padded with -inf / -1."""
    if exclude is None or not len(exclude):
        return faiss_index.search(index, queries, k, params)
    sims, ids = faiss_index.search(index, queries, k + len(exclude), params)
    keep = (ids >= 0) & ~np.isin(ids, exclude)
    width = max(1, min(k, index.ntotal))
    out_s = np.full((len(ids), width), -np.inf, np.float32)
    out_i = np.full((len(ids), width), -1, np.int64)
    for r in range(len(ids)):
        got = np.flatnonzero(keep[r])[:width]
        out_s[r, : len(got)], out_i[r, : len(got)] = sims[r, got], ids[r, got]
    return out_s, out_i


def search(
    index,
    queries: np.ndarray,
    k: int,
    cfg: Rerank | None = None,
    vectors_of: Callable[[np.ndarray], np.ndarray] | None = None,
    verify: Verifier | None = None,
    params=None,
    regions_of: RegionsOf | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [q, k], ids [q, k], inliers [q, k]) — ids -1 and inliers -1 (not checked) pad short rows.
    Without an active ``cfg`` this is the plain k-NN search. ``vectors_of(ids [n]) -> [n, D]`` returns
    stored vectors; ``verify`` is needed when ``cfg.verify`` > 0 (None: nothing is verified).
    ``regions_of`` is needed when ``cfg.regional`` > 0 (None: nothing is re-scored by regions).
    ``params``: per-call ``faiss.SearchParameters`` (nprobe / efSearch), else the index's own.
    ``exclude``: ids never returned (``knn``)."""
    cfg = cfg or Rerank()
    if not cfg.active:
        sims, ids = knn(index, queries, k, params, exclude)
        return sims, ids, np.full(ids.shape, -1, np.int64)
    _, ids = knn(index, queries, max(1, min(cfg.shortlist, index.ntotal)), params, exclude)
    out_s = np.full((len(queries), k), -np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    out_v = np.full((len(queries), k), -1, np.int64)
    for r, (q, row) in enumerate(zip(queries, ids)):
        cand = row[row >= 0]
        if not len(cand):
            continue
        inl = np.full(len(cand), -1, np.int64)
        if cfg.verify and verify is not None:
            inl[: cfg.verify] = verify(r, cand[: cfg.verify])
        got_i, got_s, got_v, q2 = rerank(q, cand, vectors_of(cand), cfg, inl, regions_of if cfg.regional else None)
        if k > len(got_i) and index.ntotal > len(got_i):  # the tail: a k-NN search with the final query
            s2, i2 = knn(index, q2[None], min(k, index.ntotal), params, exclude)
            keep = (i2[0] >= 0) & ~np.isin(i2[0], got_i)
            got_i = np.concatenate([got_i, i2[0][keep]])
            got_s = np.concatenate([got_s, s2[0][keep]])
            got_v = np.concatenate([got_v, np.full(int(keep.sum()), -1, np.int64)])
        m = min(k, len(got_i))
        out_s[r, :m], out_i[r, :m], out_v[r, :m] = got_s[:m], got_i[:m], got_v[:m]
    return out_s, out_i, out_v
