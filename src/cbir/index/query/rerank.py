"""Re-ranking of a k-NN shortlist: shortlist DBA, α-query expansion, diffusion, regional re-ranking,
spatial verification.

A search with re-ranking: (1) the k-NN search returns a shortlist of ``shortlist`` candidates
(default 400) and their stored vectors; (2) ``verify``: the first ``verify`` candidates (k-NN order)
are matched against the query's local features (``cbir.copies.verify``), and those with
≥ ``min_inliers`` RANSAC inliers are *verified*; (3) the ``STAGES`` run in order on the shortlist;
(4) the answer is the verified candidates first (most inliers first), then the rest of the shortlist
by the final score, then — only when k exceeds the shortlist — a second k-NN search with the final
query fills the tail. What follows for an image query is the cascade's (``cbir.copies.cascade``).

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
- ``partial`` (n): when an image query has nothing verified after (4), the cascade's second look
  verifies the first n k-NN of each of its windows, and the items that share the most ORB
  descriptors with it (``cbir.copies.windows``). A vector or an item as query has no windows.
- ``keep_first`` (c): the k-NN's first candidate stays first after the verified ones when its cosine
  to the query is ≥ c (0 = off): a copy too degraded to verify (a chain of edits, a perspective
  warp) is often the plain k-NN's first, and the class re-ranking would otherwise move a look-alike
  ahead of it. The default's 0.7 lies above every top-1 cosine of 630 edited photos that are not in
  the Corel gallery (at most 0.68); class queries that are not in the gallery rank the same at 0.7,
  0.8 or off (BENCHMARKS.md).
- ``regional`` (n): the first n by the score so far are re-scored as r_i = max(q·x_i, max_w q·g_iw)
  — q the final query, x_i the stored vector (before shortlist DBA), g_iw the item's regional
  descriptors (``cbir export --regions``) — and re-ordered by r ahead of the rest (class-agnostic
  spatial re-ranking, Salvador et al. 2016: a crop of a gallery image matches one of its windows).
  Items without regions keep r_i = q·x_i.

Cost: every stage works in row chunks (``CHUNK_FLOATS``), so one query needs memory linear in the
shortlist apart from the diffusion graph's N·k edges; ``cost`` gives (MiB, GFLOP) for a setting and
``check_budget`` refuses a search beyond a ``Budget`` (each knob has its own range too, ``LIMITS``,
but only the products bound the work).

``PRESETS`` name the useful combinations; an index stores one in index.json (``rerank``) and every
search may override it (``resolve``). Out-of-range values are refused with one line naming them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import numpy as np

from cbir.copies import cascade
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
    partial: int = 0
    keep_first: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.shortlist_dba or self.qe or self.diffusion or self.regional or self.verify)

    def to_dict(self) -> dict:
        return asdict(self)


LIMITS = {
    "shortlist": (1, 10_000),
    "shortlist_dba": (0, 1000),
    "shortlist_dba_alpha": (0.0, 20.0),
    "qe": (0, 1000),
    "qe_alpha": (0.0, 20.0),
    "diffusion": (0, 1000),
    "diffusion_alpha": (0.0, 0.9999),
    "regional": (0, 10_000),
    "verify": (0, 100),
    "min_inliers": (4, 10_000),
    "partial": (0, 20),
    "keep_first": (0.0, 1.0),
}

PRESETS = {
    "none": Rerank(),
    "class": Rerank(shortlist_dba=20, qe=30),  # "images like this": class-level mAP
    "copy": Rerank(verify=10, partial=3),  # "find this photo": the original first
    # both: verified copies first, the class re-ranking orders the rest
    "default": Rerank(shortlist_dba=20, qe=30, verify=10, partial=3, keep_first=0.7),
}


@dataclass(frozen=True)
class Budget:
    """The most one search may cost: ``mib`` of working memory and ``gflop`` of arithmetic (ORB
    matching counted as ``VERIFY_GFLOP`` per candidate). Defaults: 256 MiB and 10 GFLOP per search;
    ``cbir serve`` gives GET requests, which any web page can make a
    browser send, ``GET_BUDGET``."""

    mib: float = 256.0
    gflop: float = 10.0


DEFAULT_BUDGET = Budget()
GET_BUDGET = Budget(mib=64.0, gflop=3.0)


def cost(cfg: Rerank, dim: int, regions: int = 0) -> tuple[float, float]:
    """(MiB, GFLOP) one query's re-ranking needs at most, at dimension ``dim`` with ``regions``
    regional descriptors per item — the products that matter (shortlist × DBA neighbours × d,
    shortlist² × d, diffusion edges, re-scored items × windows × d), following the chunked code above."""
    if not cfg.active:
        return 0.0, 0.0
    n = cfg.shortlist
    b = 3 * n * dim * 4.0  # the shortlist's vectors: stored, normalised, expanded
    f = 2.0 * n * dim * (2 + (cfg.qe > 0))
    if cfg.shortlist_dba:
        m = min(cfg.shortlist_dba, n)
        b += 4.0 * CHUNK_FLOATS + 4.0 * n * dim
        f += 2.0 * n * n * dim + 2.0 * n * m * dim
    if cfg.diffusion:
        e = n * min(cfg.diffusion, n)
        # affinity chunk and its sort, float64 copy, neighbour lists, edge keys and matches, mutual edges
        b += 16.0 * CHUNK_FLOATS + 8.0 * n * dim + 64.0 * e
        f += 2.0 * n * n * dim + 20 * 4.0 * e  # affinities, then ≤ 20 sparse mat-vecs
    if cfg.regional and regions:
        r = min(cfg.regional, n)
        b += 2 * r * regions * dim * 4.0
        f += 2.0 * r * regions * dim
    f += cascade.gflop(cfg) * 1e9  # verification and the second look (``cbir.copies.cascade``)
    return b / 2**20, f / 1e9


def check_budget(cfg: Rerank, dim: int, regions: int = 0, budget: Budget = DEFAULT_BUDGET) -> None:
    """Refuse, in one line naming the settings, a re-ranking that would cost more than ``budget``."""
    mib, gflop = cost(cfg, dim, regions)
    if mib <= budget.mib and gflop <= budget.gflop:
        return
    knobs = ", ".join(
        f"{k}={getattr(cfg, k)}"
        for k in ("shortlist", "shortlist_dba", "diffusion", "regional", "verify")
        if getattr(cfg, k)
    )
    raise CbirError(
        f"re-ranking {knobs} at d={dim} needs about {mib:,.0f} MiB and {gflop:,.1f} GFLOP per query; "
        f"the limit is {budget.mib:,.0f} MiB and {budget.gflop:,.1f} GFLOP: lower the shortlist or the stage sizes"
    )


def resolve(base: dict | None = None, preset: str | None = None, **overrides) -> Rerank:
    """``base`` (an index's stored settings) ← ``preset`` ← ``overrides`` (None = unchanged). A stored
    setting this version does not know (written by a newer cbir) is ignored, not fatal."""
    known = {f.name for f in fields(Rerank)}
    cfg = Rerank(**{k: v for k, v in (base or {}).items() if k in known})
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


CHUNK_FLOATS = 4_000_000  # working arrays of a stage are cut into row chunks of about this many values (16 MB)


def _rows_per_chunk(width: int) -> int:
    return int(max(1, min(1024, CHUNK_FLOATS // max(1, width))))


def shortlist_dba(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """[N, D] -> [N, D]: each vector replaced by the weighted sum of its n nearest in the set.
    Computed in row chunks: memory O(chunk × (N + n·D)), never N × N."""
    n = min(n, len(x))
    out = np.empty_like(x)
    step = _rows_per_chunk(len(x) + n * x.shape[1])
    for c in range(0, len(x), step):
        sim = x[c : c + step] @ x.T
        top = np.argpartition(-sim, n - 1, axis=1)[:, :n]
        w = np.maximum(np.take_along_axis(sim, top, 1), 0.0) ** alpha
        out[c : c + step] = np.einsum("nk,nkd->nd", w, x[top])
    return l2_normalize(out)


def conjugate_gradient(
    matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, iters: int = 20, tol: float = 1e-6
) -> np.ndarray:
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
    """Diffusion scores f [N] of the shortlist x [N, D] for query similarities s [N] (see module doc).
    The mutual k-NN graph is kept as N·k edges (row chunks of affinities, then a sparse mat-vec by
    ``bincount``): memory O(N·k + chunk·N), never an N × N matrix."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return s.copy()
    x, s = np.asarray(x, np.float64), np.asarray(s, np.float64)  # conjugate gradient in double precision
    nn = np.empty((n, k), np.int32)  # each row's k nearest, sorted by index, and their affinities
    av = np.empty((n, k), np.float64)
    step = _rows_per_chunk(n)
    for c in range(0, n, step):
        a = np.maximum(x[c : c + step] @ x.T, 0.0) ** gamma
        a[np.arange(len(a)), np.arange(c, c + len(a))] = 0.0
        top = np.sort(np.argpartition(-a, k - 1, axis=1)[:, :k], axis=1)
        nn[c : c + len(a)], av[c : c + len(a)] = top, np.take_along_axis(a, top, 1)
    del a
    keys = (np.arange(n, dtype=np.int64)[:, None] * n + nn).ravel()  # edge (i, j) as i·n + j: sorted already
    back = nn.ravel().astype(np.int64) * n + np.repeat(np.arange(n, dtype=np.int64), k)  # (j, i)
    pos = np.minimum(np.searchsorted(keys, back), len(keys) - 1)
    mutual = keys[pos] == back  # (i, j) kept when j also lists i
    del keys, back, pos
    i = np.repeat(np.arange(n, dtype=np.int32), k)[mutual]
    j, v = nn.ravel()[mutual], av.ravel()[mutual]
    del nn, av
    d = np.bincount(i, weights=v, minlength=n)
    d_is = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    w = d_is[i] * v * d_is[j]
    y = np.zeros(n)
    top = np.argsort(-s)[:k]
    y[top] = np.maximum(s[top], 0.0) ** gamma
    return conjugate_gradient(lambda f: f - alpha * np.bincount(i, weights=w * f[j], minlength=n), y)


def regional_scores(q: np.ndarray, x: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """max(q·x_i, max_w q·g_iw) for x [n, D] and regions [n, R, D] (rows of zeros score 0)."""
    return np.maximum(x @ q, (regions @ q).max(axis=1))


STAGES = ("shortlist_dba", "qe", "diffusion", "regional")


def rerank(
    q: np.ndarray,
    ids: np.ndarray,
    vecs: np.ndarray,
    cfg: Rerank,
    inliers: np.ndarray | None = None,
    regions_of: Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray] | None"] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank one query's shortlist (``ids`` [N] in k-NN order, ``vecs`` [N, D], ``inliers`` [N]
    with -1 where not checked; ``regions_of(ids [n])`` -> (descriptors [n, R, D], present [n]) or
    None, for ``regional``: only the re-scored candidates are looked up).
    Returns (ids, scores, inliers, final query) in the new order."""
    x = raw = l2_normalize(np.asarray(vecs, np.float32))  # float32: half the time of float64 for N = 400
    q = q0 = l2_normalize(np.asarray(q, np.float32)[None])[0]
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
    first = np.zeros(len(ids), np.int8)
    if cfg.keep_first and float(raw[0] @ q0) >= cfg.keep_first:
        first[0] = 1
    # verified first, most inliers first; then a kept k-NN first; then the regionally re-scored, then
    # by score (stable: ties keep k-NN order)
    order = np.lexsort((-score, group, -first, -np.where(verified, inl, -1), ~verified))
    return ids[order], score[order].astype(np.float32), inl[order], q.astype(np.float32)


def for_index(settings, root, rerank: Rerank | str | dict | None = None, budget: Budget = DEFAULT_BUDGET) -> Rerank:
    """The re-ranking of a search on the index at ``root`` (``settings``: its ``Settings``): the
    index's stored one (index.json ``rerank``; none for an index made before it existed), or a
    preset name, a dict of overrides, or a ``Rerank``; refused when the index cannot run it (no local
    features to verify with, no regional descriptors) or it would cost more than ``budget``."""
    s = settings
    if isinstance(rerank, Rerank):
        cfg = rerank
    elif isinstance(rerank, str):
        cfg = resolve(preset=rerank)
    else:
        cfg = resolve(s.rerank, **(rerank or {}))
    if cfg.verify and not s.local_features:
        raise CbirError(
            f"--index {root}: built without local features, so nothing can be verified; "
            f"add them with `cbir index features {root}`, or search without verification "
            f"(--rerank class, or --verify 0)"
        )
    if cfg.regional and not s.num_regions:
        raise CbirError(
            f"--index {root}: its model has no regional descriptors, so nothing can be re-ranked "
            f"by regions; export the model with `cbir export ... --regions` and build an index with "
            f"it, or search with --regional 0"
        )
    check_budget(cfg, s.dim, s.num_regions, budget)
    return cfg
