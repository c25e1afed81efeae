"""Vectors-only distractors: a gallery grown past the photos at hand (``cbir bench distractors OUT.npy
--vectors-of INDEX``, ``cbir bench copy-search --from-vectors OUT.npy``).

A million real photos do not fit this machine's sessions (writing and indexing the 100k image
distractors took ~45 minutes); their vectors do. ``jitter`` makes ``n`` vectors from real ones (the
*parents*: the vectors of an index's items under a folder, e.g. the image distractors): each is a
parent plus Gaussian noise shaped like the parents' own spread (their covariance, so the noise moves
along the directions real photos differ in), scaled so that a child is as near its parent as the
parents' median nearest neighbour *in another folder* is to them (a crop of another source photo,
not another crop of the same one: ``cbir bench distractors`` cuts ~900 overlapping crops of each
source, whose nearest neighbours are near-duplicates) — another photo of the parent's kind, in the
region real photos occupy, not a vector scattered where no photo lies (uniform noise on the sphere
would be far from everything and change nothing). Deterministic for a seed.

What such items test: the CNN shortlist (a copy's original among 1M vectors) and the cost of the
exact scan; they have no local features, so they verify nothing and cast no descriptor votes — but
they count as items, so the vote index keeps ``votes.per_item`` of the whole gallery per item, the
budget a gallery of that size gets. Their paths are ``<npy>#<row>``: nothing to open.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from cbir.bench.distractors import source_of
from cbir.errors import CbirError
from cbir.vectors import l2_normalize

CHUNK = 100_000
SAMPLE = 2_000  # parents whose nearest neighbour and children calibrate the noise


def parents_under(gallery, under: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(the stored vectors of ``gallery``'s indexed items whose paths lie under ``under``, each one's
    folder number — folders of one name count as one: ``cbir bench distractors`` names them
    ``NNNN-<source>``, and a source cut in two sets has two)."""
    root = Path(under).resolve()
    paths = gallery.store.paths_for_ids(gallery.store.indexed_ids().tolist())
    inside = sorted((i, s) for i, p in paths.items() if (s := source_of(p, root)) is not None)
    if len(inside) < 2:
        raise CbirError(f"--under {under}: {len(inside)} indexed items lie under it; the noise needs at least 2")
    _, folders = np.unique([f for _, f in inside], return_inverse=True)
    return gallery.vectors_for(np.array([i for i, _ in inside], np.int64)), folders


def _neighbour_cosine(parents: np.ndarray, folders: np.ndarray, rng: np.random.Generator) -> float:
    """The median cosine of a sample of parents to their nearest parent in another folder (any other
    parent when all share one)."""
    pick = rng.choice(len(parents), min(SAMPLE, len(parents)), replace=False)
    best = np.empty(len(pick), np.float32)
    one_folder = len(np.unique(folders)) == 1
    for s in range(0, len(pick), 200):
        rows = pick[s : s + 200]
        sims = parents[rows] @ parents.T
        sims[np.arange(len(rows)), rows] = -np.inf
        if not one_folder:
            sims[folders[rows][:, None] == folders[None, :]] = -np.inf
        best[s : s + 200] = sims.max(1)
    return float(np.median(best))


def _children(parents: np.ndarray, rows: np.ndarray, basis: np.ndarray, sigma: float, rng) -> np.ndarray:
    noise = rng.standard_normal((len(rows), basis.shape[0])).astype(np.float32) @ basis
    return l2_normalize(parents[rows] + sigma * noise)


def jitter(parents: np.ndarray, n: int, seed: int = 0, folders: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """(``n`` unit vectors made from ``parents`` (in ``folders``, default one) as the module
    docstring says, the calibration: neighbour cosine aimed at, sigma, the children's median cosine
    to their nearest parent)."""
    rng = np.random.default_rng(seed)
    parents = l2_normalize(np.asarray(parents, np.float32))
    target = _neighbour_cosine(parents, np.zeros(len(parents), np.int64) if folders is None else folders, rng)
    vals, vecs = np.linalg.eigh(np.cov(parents, rowvar=False).astype(np.float64))
    basis = (np.sqrt(np.clip(vals, 0, None))[:, None] * vecs.T).astype(np.float32)  # z @ basis ~ N(0, cov)
    probe = rng.integers(0, len(parents), SAMPLE)
    z = rng.standard_normal((SAMPLE, basis.shape[0])).astype(np.float32) @ basis
    lo, hi = 0.0, 16.0
    for _ in range(30):  # the child-parent cosine falls as sigma grows: bisect onto the target
        mid = (lo + hi) / 2
        cos = np.median((l2_normalize(parents[probe] + mid * z) * parents[probe]).sum(1))
        lo, hi = (mid, hi) if cos > target else (lo, mid)
    sigma = (lo + hi) / 2
    out = np.empty((n, parents.shape[1]), np.float32)
    for s in range(0, n, CHUNK):
        out[s : s + CHUNK] = _children(parents, rng.integers(0, len(parents), min(CHUNK, n - s)), basis, sigma, rng)
    reached = float(np.median((out[: min(n, SAMPLE)] @ parents.T).max(1))) if n else 0.0
    return out, {
        "neighbour_cosine": round(target, 4),
        "sigma": round(sigma, 4),
        "child_nearest_parent_cosine": round(reached, 4),
    }


def write(out: str | os.PathLike, gallery, under: str | os.PathLike, n: int, seed: int = 0) -> dict:
    """``jitter`` ``n`` vectors from the items of ``gallery`` under ``under`` into the .npy ``out``."""
    t0 = time.perf_counter()
    parents, folders = parents_under(gallery, under)
    vecs, calib = jitter(parents, n, seed, folders)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vecs)
    return {"vectors": n, "parents": len(parents), **calib, "out": str(out), "s": round(time.perf_counter() - t0, 1)}


def grow(gallery, npy: str | os.PathLike, size: int, progress: bool = False) -> dict:
    """Add rows of ``npy``, in order, to ``gallery`` as items ``<npy>#<row>`` until it holds ``size``
    indexed items (rows added by an earlier call stay; none when it holds that many already):
    {"added_vectors": rows indexed now, "add_vectors_s": seconds}."""
    from cbir.index.ingest.from_vectors import VectorSource, ingest

    source, name = VectorSource(npy), str(Path(npy).resolve())
    want = size - gallery.store.count("indexed")
    if want <= 0:
        return {"added_vectors": 0, "add_vectors_s": 0.0}
    have = sum(p.startswith(f"{name}#") for p in gallery.store.items_by_paths())
    if have + want > len(source):
        raise CbirError(f"--from-vectors {npy}: holds {len(source)} vectors, {have + want} needed")
    t0 = time.perf_counter()
    done = ingest(gallery, source, [f"{name}#{r}" for r in range(have + want)], progress=progress)
    return {"added_vectors": int(done.get("indexed", 0)), "add_vectors_s": round(time.perf_counter() - t0, 1)}
