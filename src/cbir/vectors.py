"""Vector maths in NumPy (torch-free): L2 normalisation, PCA-whitening, query expansion, DBA.

PCA-whitening (DESIGN.md §3): fit in NumPy, apply as ``P(x − m)`` then L2.

Fitting on too few vectors per output dimension whitens noise directions into the signal
(measured: 1,000 Corel vectors to 256 dims dropped mAP from 0.90 to 0.30), so ``fit`` refuses
fewer than ``min_per_dim`` samples per output dimension unless ``force=True``, and shrinks the
eigenvalues toward their mean (λ' = (1−s)·λ + s·mean(λ), s = 0.1 by default).

Query expansion and database-side augmentation:
- Average QE (``alpha = 0``): new query = l2n(q + Σ_{i≤n} v_i) over the top-n results.
- α-QE: weights ``max(sim_i, 0)^α`` on the top-n results (the query keeps weight 1).
- DBA: each database vector becomes l2n(Σ_{i≤n} w_i v_i) over its own top-n neighbours (itself
  included, weight 1), weights as in α-QE.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbir.errors import CbirError

MIN_PER_DIM = 10
SHRINKAGE = 0.1


@dataclass
class Whitening:
    """Mean ``m`` [d] and projection ``P`` [d', d]; ``apply(x) = l2n(P(x − m))``."""

    mean: np.ndarray
    proj: np.ndarray
    info: dict

    @property
    def in_dim(self) -> int:
        return self.proj.shape[1]

    @property
    def out_dim(self) -> int:
        return self.proj.shape[0]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.mean.astype(np.float32).tobytes())
        h.update(self.proj.astype(np.float32).tobytes())
        return h.hexdigest()[:16]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten and L2-normalise rows of x [n, d] -> [n, d'] float32."""
        if x.shape[1] != self.in_dim:
            raise CbirError(f"whitening expects {self.in_dim}-d vectors, got {x.shape[1]}-d")
        y = (x.astype(np.float32) - self.mean) @ self.proj.T
        return l2_normalize(y)

    def save(self, path: str | Path) -> None:
        from cbir import fsio

        with fsio.atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez appends .npz otherwise
            np.savez(tmp, mean=self.mean, proj=self.proj, info=json.dumps(self.info))

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["mean"].astype(np.float32), z["proj"].astype(np.float32), json.loads(str(z["info"])))
        except (OSError, KeyError, ValueError) as e:
            raise CbirError(f"{path}: not a cbir whitening file ({e})") from None


def l2_normalize(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Rows divided by (‖row‖ + eps), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)


def fit(
    x: np.ndarray,
    dim: int | None = None,
    shrinkage: float = SHRINKAGE,
    min_per_dim: int = MIN_PER_DIM,
    force: bool = False,
) -> Whitening:
    """Fit PCA-whitening on rows of x [n, d]. ``dim`` = output dims (default: d, capped at rank)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise CbirError(f"whitening fit: expected a 2-d array of vectors, got shape {x.shape}")
    n, d = x.shape
    dim = d if dim is None else dim
    if not 1 <= dim <= d:
        raise CbirError(f"--dim {dim}: must be between 1 and the vector dimension {d}")
    if not 0.0 <= shrinkage <= 1.0:
        raise CbirError(f"--shrinkage {shrinkage}: must be in [0, 1]")
    if n < min_per_dim * dim and not force:
        raise CbirError(
            f"whitening fit: {n} vectors for {dim} output dims is {n / dim:.1f} per dim; at least "
            f"{min_per_dim} per dim are required (use fewer --dim, more vectors, or --force)"
        )
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(n - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.clip(eigval[order], 0.0, None), eigvec[:, order]
    rank = int(np.sum(eigval > eigval[0] * 1e-10)) if eigval[0] > 0 else 0
    if dim > rank and not force:
        raise CbirError(f"--dim {dim}: the vectors span only {rank} dimensions")
    reg = (1.0 - shrinkage) * eigval + shrinkage * eigval.mean() + 1e-12
    proj = (eigvec[:, :dim] / np.sqrt(reg[:dim])).T
    info = {"n": n, "in_dim": d, "out_dim": dim, "shrinkage": shrinkage, "per_dim": n / dim}
    return Whitening(mean.astype(np.float32), proj.astype(np.float32), info)


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
