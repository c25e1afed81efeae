"""Duplicates in an index, without re-embedding: ``find(gallery)`` → groups.

- ``exact``: indexed items with the same content hash (SHA-1 of the file bytes, recorded at build).
- ``near``: pairs whose stored vectors are k-NN of each other (``k``, default 10) with cosine ≥
  ``threshold`` (default 0.5), kept when spatially verified (RANSAC inliers ≥ the index's
  ``min_inliers``, default 15); groups are the connected components of the kept pairs. The low
  threshold is deliberate: edited copies of Lite0 GAP vectors go down to cos 0.5 (heavy downscaling,
  rotation), while the verification is what rejects same-class look-alikes. ``verify=False`` keeps
  every pair over the threshold (use a high one, e.g. 0.9). Exact duplicates are one member each
  in the near search (so a group is never both).

Cost: one k-NN search per item over the index's own search structure, plus ``k`` feature matches
per item (~1 ms each on one core; all cores are used).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cbir.cores import all_cores
from cbir.engine import local_features
from cbir.errors import CbirError
from cbir.index import faiss_index

K = 10
THRESHOLD = 0.5
BATCH = 1024


class _Groups:
    """Union-find over item ids."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for x in self.parent:
            out[self.find(x)].append(x)
        return [sorted(v) for v in out.values() if len(v) > 1]


def exact_groups(store) -> list[list[int]]:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in store.conn.execute("SELECT id, sha1 FROM items WHERE state = 'indexed' AND sha1 IS NOT NULL"):
        by_hash[h].append(int(i))
    return [sorted(v) for v in by_hash.values() if len(v) > 1]


def find(gallery, k: int = K, threshold: float = THRESHOLD, verify: bool = True, progress: bool = False) -> list[dict]:
    """``[{"kind": "exact"|"near", "ids": [...], "paths": [...]}, ...]``, largest groups first."""
    if not 1 <= k <= 1000:
        raise CbirError(f"-k {k}: must be between 1 and 1000")
    if not -1.0 <= threshold <= 1.0:
        raise CbirError(f"--threshold {threshold}: a cosine, between -1 and 1")
    cfg = gallery.rerank_config()
    if verify and not gallery.config.get("local_features"):
        raise CbirError(f"--index {gallery.root}: built without local features, so near-duplicates cannot be verified; "
                        f"add them with `cbir index features {gallery.root}`, or pass --no-verify with a high --threshold")
    exact = exact_groups(gallery.store)
    dup_of_first = {i for g in exact for i in g[1:]}
    ids = np.array([i for i in gallery.store.paths_for_ids(_all_ids(gallery.store)) if i not in dup_of_first], np.int64)
    index = gallery.index
    pairs: set[tuple[int, int]] = set()
    bar = None
    if progress and len(ids):
        from tqdm import tqdm

        bar = tqdm(total=len(ids), unit="img", desc="dedup", file=sys.stderr)
    keep = set(ids.tolist())
    for s in range(0, len(ids), BATCH):
        chunk = ids[s : s + BATCH]
        sims, nn = faiss_index.search(index, gallery.vectors_for(chunk), min(k + 1, index.ntotal))
        for a, srow, nrow in zip(chunk, sims, nn):
            for b, sim in zip(nrow, srow):
                if b >= 0 and b != a and sim >= threshold and int(b) in keep:
                    pairs.add((min(int(a), int(b)), max(int(a), int(b))))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    pairs_list = sorted(pairs)
    if verify and pairs_list:
        pairs_list = _verified(gallery, pairs_list, cfg.min_inliers, progress)
    uf = _Groups()
    for a, b in pairs_list:
        uf.union(a, b)
    groups = [("exact", g) for g in exact] + [("near", g) for g in uf.groups()]
    paths = gallery.store.paths_for_ids([i for _, g in groups for i in g])
    out = [{"kind": kind, "ids": g, "paths": [paths[i] for i in g]} for kind, g in groups]
    return sorted(out, key=lambda d: (-len(d["ids"]), d["kind"], d["ids"][0]))


def _all_ids(store) -> list[int]:
    return [r[0] for r in store.conn.execute("SELECT id FROM items WHERE state = 'indexed' ORDER BY id")]


def _verified(gallery, pairs: list[tuple[int, int]], min_inliers: int, progress: bool) -> list[tuple[int, int]]:
    items = sorted({i for p in pairs for i in p})
    feats = dict(zip(items, gallery.features.get(items)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), unit="pair", desc="verify", file=sys.stderr)

    def check(p):
        fa, fb = feats[p[0]], feats[p[1]]
        ok = fa is not None and fb is not None and local_features.inliers(fa, fb) >= min_inliers
        if bar is not None:
            bar.update(1)
        return ok

    with ThreadPoolExecutor(all_cores()) as pool:
        keep = list(pool.map(check, pairs))
    if bar is not None:
        bar.close()
    return [p for p, ok in zip(pairs, keep) if ok]
