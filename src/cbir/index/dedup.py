"""Duplicates in an index, without re-embedding: ``find(gallery)`` → groups.

- ``exact``: indexed items with the same content hash (SHA-1 of the file bytes, recorded at build).
- ``near``: pairs whose stored vectors are k-NN of each other (``k``, default 10) with cosine ≥
  ``threshold`` (default 0.5), kept when spatially verified (RANSAC inliers ≥ the index's
  ``min_inliers``, default 15). Groups are stars, not connected components: the image with the most
  inliers summed over its verified pairs becomes a group's seed and takes its unassigned verified
  neighbours, then the next, and so on — every member matches its seed directly, so a shared overlay
  (the same caption or watermark on different photos) cannot chain photos together. The low
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
from functools import lru_cache

import numpy as np

from cbir.cores import all_cores
from cbir.engine import local_features
from cbir.errors import CbirError
from cbir.index.ann import faiss_index

K = 10
THRESHOLD = 0.5
BATCH = 1024


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
        weighted = _verified(gallery, pairs_list, cfg.min_inliers, progress)
    else:
        weighted = [(a, b, 1) for a, b in pairs_list]
    groups = [("exact", g) for g in exact] + [("near", g) for g in star_groups(weighted)]
    paths = gallery.store.paths_for_ids([i for _, g in groups for i in g])
    out = [{"kind": kind, "ids": g, "paths": [paths[i] for i in g]} for kind, g in groups]
    return sorted(out, key=lambda d: (-len(d["ids"]), d["kind"], d["ids"][0]))


def _all_ids(store) -> list[int]:
    return [r[0] for r in store.conn.execute("SELECT id FROM items WHERE state = 'indexed' ORDER BY id")]


def star_groups(pairs: list[tuple[int, int, int]]) -> list[list[int]]:
    """Groups from weighted pairs (a, b, inliers): seeds by summed weight (ties: lower id), each
    taking its not yet assigned neighbours."""
    nbrs: dict[int, list[int]] = defaultdict(list)
    weight: dict[int, int] = defaultdict(int)
    for a, b, w in pairs:
        nbrs[a].append(b)
        nbrs[b].append(a)
        weight[a] += w
        weight[b] += w
    assigned: set[int] = set()
    groups = []
    for seed in sorted(nbrs, key=lambda i: (-weight[i], i)):
        if seed in assigned:
            continue
        members = [seed] + [j for j in nbrs[seed] if j not in assigned]
        assigned.update(members)
        if len(members) > 1:
            groups.append(sorted(members))
    return groups


def _verified(gallery, pairs: list[tuple[int, int]], min_inliers: int, progress: bool) -> list[tuple[int, int, int]]:
    """(a, b, inliers) of the pairs that verify: with the stored features, else with a's mirrored
    features (a flipped copy; ORB descriptors are not mirror-invariant, so they are extracted from
    a's file, once per item; a file that cannot be read is not tried mirrored)."""
    items = sorted({i for p in pairs for i in p})
    feats = dict(zip(items, gallery.features.get(items)))
    paths = gallery.store.paths_for_ids(items)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), unit="pair", desc="verify", file=sys.stderr)

    @lru_cache(maxsize=4096)
    def mirror(i: int):
        try:
            return local_features.detect(local_features.mirror(local_features.gray(paths[i], paths[i])))
        except Exception:  # moved, unreadable: the pair keeps what its stored features say
            return None

    def check(p):
        a, b = p
        fa, fb = feats[a], feats[b]
        n = 0
        if fa is not None and fb is not None:
            n = local_features.inliers(fa, fb)
            if n < min_inliers and mirror(a) is not None:
                n = local_features.inliers(mirror(a), fb)
        if bar is not None:
            bar.update(1)
        return n

    with ThreadPoolExecutor(all_cores()) as pool:
        counts = list(pool.map(check, pairs))
    if bar is not None:
        bar.close()
    return [(a, b, n) for (a, b), n in zip(pairs, counts) if n >= min_inliers]
