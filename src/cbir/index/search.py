"""k-NN search with optional query expansion, shared by ``Gallery`` and ``cbir bench accuracy``."""
from __future__ import annotations

from typing import Callable

import numpy as np

from cbir import vectors
from cbir.index import faiss_index


def search_with_qe(index, queries: np.ndarray, k: int, qe_n: int = 0, qe_alpha: float = 0.0,
                   vectors_of: Callable[[np.ndarray], np.ndarray] | None = None,
                   params=None) -> tuple[np.ndarray, np.ndarray]:
    """(sims [q, k], ids [q, k]). With ``qe_n`` > 0 the queries are first expanded with their top
    ``qe_n`` results (average QE, or α-QE with ``qe_alpha``); ``vectors_of(ids [q, n]) -> [q, n, D]``
    returns the stored vectors of those results (rows of -1 ids are ignored). ``params``: per-call
    ``faiss.SearchParameters`` (nprobe / efSearch), else the index's own settings."""
    if qe_n > 0:
        sims, ids = faiss_index.search(index, queries, qe_n, params)
        queries = vectors.expand(queries, vectors_of(ids), np.where(ids >= 0, sims, 0.0), qe_alpha)
    return faiss_index.search(index, queries, k, params)
