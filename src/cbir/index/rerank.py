"""Re-ranking of a k-NN shortlist: shortlist DBA, α-query expansion, diffusion, regional re-ranking,
spatial verification.

A search with re-ranking: (1) the k-NN search returns a shortlist of ``shortlist`` candidates
(default 400) and their stored vectors; (2) ``verify``: the first ``verify`` candidates (k-NN order)
are matched against the query's local features, and those with ≥ ``min_inliers`` RANSAC inliers are
*verified*; (3) the ``STAGES`` run in order on the shortlist; (4) the answer is the verified
candidates first (most inliers first), then the rest of the shortlist by the final score, then —
only when k exceeds the shortlist — a second k-NN search with the final query fills the tail.

Formulas (x_i the shortlist's L2-normalised vectors, q the query, s_i = q·x_i, ‖·‖ L2-normalisation):

- ``shortlist_dba`` (n, α): x_i ← ‖Σ_{j ∈ NN_n(i)} max(x_i·x_j, 0)^α x_j‖, NN over the shortlist (i included):
  database-side augmentation (Arandjelović & Zisserman 2012) restricted to the shortlist, so it
  costs O(N²D) per query and no O(n²) pass at build (the build-time ``--dba`` still exists).
- ``qe`` (n, α): q ← ‖q + Σ_{i ∈ top_n(s)} max(s_i, 0)^α x_i‖ (α-QE, Radenović et al. 2018; α = 0 is
  average QE); verified candidates always join the expansion (spatially verified QE, Chum et al. 2007).
- ``diffusion`` (k, α = 0.99, γ = 3): A_ij = max(x_i·x_j, 0)^γ on the mutual k-NN graph of the
  shortlist, S = D^-½ A D^-½; solve (I − αS) f = y, y_i = max(s_i, 0)^γ for the query's top k, by
  conjugate gradient (Iscen et al., CVPR 2017, truncated to the shortlist: never an n×n matrix);
  the score is f.
- ``regional`` (n): the first n by the score so far are re-scored as r_i = max(q·x_i, max_w q·g_iw)
  — q the final query, x_i the stored vector (before shortlist DBA), g_iw the item's regional
  descriptors (``cbir export --regions``) — and re-ordered by r ahead of the rest (class-agnostic
  spatial re-ranking, Salvador et al. 2016: a crop of a gallery image matches one of its windows).
  Items without regions keep r_i = q·x_i.

``PRESETS`` name the useful combinations; an index stores one in index.json (``rerank``) and every
search may override it (``resolve``). Out-of-range values are refused with one line naming them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import numpy as np

from cbir.errors import CbirError
from cbir.vectors import expand, l2_normalize


@dataclass(frozen=True)
class Rerank:
    """Re-ranking settings; all stages off by default (plain k-NN)."""

    shortlist: int = 400
    shortlist_dba: int = 0
    shortlist_dba_alpha: float = 3.0
    qe: int = 0
    qe_alpha: float = 3.0
    diffusion: int = 0
    diffusion_alpha: float = 0.99
    regional: int = 0
    verify: int = 0
    min_inliers: int = 15

    @property
    def active(self) -> bool:
        return bool(self.shortlist_dba or self.qe or self.diffusion or self.regional or self.verify)

    def to_dict(self) -> dict:
        return asdict(self)


LIMITS = {"shortlist": (1, 10_000), "shortlist_dba": (0, 1000), "shortlist_dba_alpha": (0.0, 20.0), "qe": (0, 1000), "qe_alpha": (0.0, 20.0),
          "diffusion": (0, 1000), "diffusion_alpha": (0.0, 0.9999), "regional": (0, 10_000), "verify": (0, 100), "min_inliers": (4, 10_000)}

PRESETS = {
    "none": Rerank(),
    "class": Rerank(shortlist_dba=20, qe=30),            # "images like this": class-level mAP
    "copy": Rerank(verify=10),                 # "find this photo": the original first
    "default": Rerank(shortlist_dba=20, qe=30, verify=10),  # both: verified copies first, the class re-ranking orders the rest
}


def resolve(base: dict | None = None, preset: str | None = None, **overrides) -> Rerank:
    """``base`` (an index's stored settings) ← ``preset`` ← ``overrides`` (None = unchanged)."""
    cfg = Rerank(**(base or {}))
    if preset is not None:
        if preset not in PRESETS:
            raise CbirError(f"--rerank {preset}: unknown; choose one of {', '.join(PRESETS)}")
        cfg = PRESETS[preset]
    names = {f.name: f.type for f in fields(Rerank)}
    given = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in names:
            raise CbirError(f"re-ranking option {key!r}: unknown; choose from {', '.join(names)}")
        lo, hi = LIMITS[key]
        try:
            v = float(value) if isinstance(lo, float) else int(value)
        except (TypeError, ValueError):
            raise CbirError(f"{key}={value!r}: not a number") from None
        if isinstance(lo, int) and float(value) != v:
            raise CbirError(f"{key}={value!r}: must be an integer")
        if not lo <= v <= hi:
            raise CbirError(f"{key}={value}: must be between {lo} and {hi}")
        given[key] = v
    return replace(cfg, **given)


def shortlist_dba(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """[N, D] -> [N, D]: each vector replaced by the weighted sum of its n nearest in the set."""
    n = min(n, len(x))
    sim = x @ x.T
    top = np.argpartition(-sim, n - 1, axis=1)[:, :n]
    w = np.maximum(np.take_along_axis(sim, top, 1), 0.0) ** alpha
    return l2_normalize(np.einsum("nk,nkd->nd", w, x[top]))


def conjugate_gradient(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, iters: int = 20,
                       tol: float = 1e-6) -> np.ndarray:
    """Solve A f = b for a symmetric positive-definite A given as ``matvec``."""
    f = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = float(r @ r)
    for _ in range(iters):
        if rs <= tol * tol:
            break
        ap = matvec(p)
        step = rs / float(p @ ap)
        f += step * p
        r -= step * ap
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return f


def diffusion(x: np.ndarray, s: np.ndarray, k: int, alpha: float = 0.99, gamma: float = 3.0) -> np.ndarray:
    """Diffusion scores f [N] of the shortlist x [N, D] for query similarities s [N] (see module doc)."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return s.copy()
    x, s = np.asarray(x, np.float64), np.asarray(s, np.float64)  # conjugate gradient in double precision
    a = np.maximum(x @ x.T, 0.0) ** gamma
    np.fill_diagonal(a, 0.0)
    nn = np.argpartition(-a, k - 1, axis=1)[:, :k]
    mask = np.zeros_like(a, bool)
    np.put_along_axis(mask, nn, True, axis=1)
    w = np.where(mask & mask.T, a, 0.0)
    d = w.sum(1)
    d_is = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    sn = d_is[:, None] * w * d_is[None, :]
    y = np.zeros(n)
    top = np.argsort(-s)[:k]
    y[top] = np.maximum(s[top], 0.0) ** gamma
    return conjugate_gradient(lambda v: v - alpha * (sn @ v), y)


def regional_scores(q: np.ndarray, x: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """max(q·x_i, max_w q·g_iw) for x [n, D] and regions [n, R, D] (rows of zeros score 0)."""
    return np.maximum(x @ q, (regions @ q).max(axis=1))


STAGES = ("shortlist_dba", "qe", "diffusion", "regional")


def rerank(q: np.ndarray, ids: np.ndarray, vecs: np.ndarray, cfg: Rerank, inliers: np.ndarray | None = None,
           regions_of: Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"] | None = None,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank one query's shortlist (``ids`` [N] in k-NN order, ``vecs`` [N, D], ``inliers`` [N]
    with -1 where not checked; ``regions_of(ids [n])`` -> (descriptors [n, R, D], present [n]) or
    None, for ``regional``: only the re-scored candidates are looked up).
    Returns (ids, scores, inliers, final query) in the new order."""
    x = raw = l2_normalize(np.asarray(vecs, np.float32))  # float32: half the time of float64 for N = 400
    q = l2_normalize(np.asarray(q, np.float32)[None])[0]
    inl = np.full(len(ids), -1, np.int64) if inliers is None else np.asarray(inliers, np.int64)
    verified = inl >= cfg.min_inliers
    if cfg.shortlist_dba:
        x = shortlist_dba(x, cfg.shortlist_dba, cfg.shortlist_dba_alpha)
    s = x @ q
    if cfg.qe:
        top = np.argsort(-s)[: cfg.qe]
        top = np.union1d(top, np.flatnonzero(verified))
        q = expand(q[None], x[top][None], s[top][None], cfg.qe_alpha)[0]
        s = x @ q
    score = diffusion(x, s, cfg.diffusion, cfg.diffusion_alpha) if cfg.diffusion else s
    group = np.zeros(len(ids), np.int8)  # 0: re-scored by regions (ahead), 1: the rest
    got = None
    if cfg.regional and regions_of is not None:
        top = np.argsort(-score, kind="stable")[: cfg.regional]
        got = regions_of(ids[top])
    if got is not None:
        g, has = got
        r = raw[top] @ q
        r[has] = regional_scores(q, raw[top][has], np.asarray(g[has], np.float32))
        score = score.astype(np.float32, copy=True)
        score[top] = r
        group[:] = 1
        group[top] = 0
    # verified first, most inliers first; then the regionally re-scored, then by score (stable: ties keep k-NN order)
    order = np.lexsort((-score, group, -np.where(verified, inl, -1), ~verified))
    return ids[order], score[order].astype(np.float32), inl[order], q.astype(np.float32)
