"""Query expansion and database-side augmentation (DESIGN.md §3). Small NumPy functions.

- Average QE (``alpha = 0``): new query = l2n(q + Σ_{i≤n} v_i) over the top-n results.
- α-QE: weights ``max(sim_i, 0)^α`` on the top-n results (the query keeps weight 1).
- DBA: each database vector becomes l2n(Σ_{i≤n} w_i v_i) over its own top-n neighbours (itself
  included, weight 1), weights as in α-QE.
"""
from __future__ import annotations

import numpy as np

from cbir.models.whitening import l2_normalize


def expand(queries: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float = 0.0) -> np.ndarray:
    """queries [q, D]; neighbours [q, n, D] (top-n result vectors); sims [q, n] -> new queries [q, D]."""
    w = np.maximum(sims, 0.0) ** alpha if alpha > 0 else np.ones_like(sims)
    return l2_normalize(queries + np.einsum("qn,qnd->qd", w, neighbours))


def dba(vectors: np.ndarray, n: int, alpha: float = 0.0, chunk: int = 4096) -> np.ndarray:
    """Database-side augmentation with exact k-NN (brute force in chunks)."""
    x = l2_normalize(vectors)
    out = np.empty_like(x)
    n = min(n, len(x))
    for s in range(0, len(x), chunk):
        sim = x[s : s + chunk] @ x.T
        top = np.argpartition(-sim, n - 1, axis=1)[:, :n]
        tsim = np.take_along_axis(sim, top, 1)
        w = np.maximum(tsim, 0.0) ** alpha if alpha > 0 else np.ones_like(tsim)
        out[s : s + chunk] = np.einsum("qn,qnd->qd", w, x[top])
    return l2_normalize(out)
