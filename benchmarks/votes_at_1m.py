"""Descriptor votes at 1M items: does the second look's vote shortlist still find the originals the
CNN misses, when the vote index holds a million items' descriptors?

A million photos with local features do not fit this machine's sessions, so the 900,000 items past
a real 101k gallery are *stand-ins* in the vote index only: each takes the kept descriptors of a real
distractor (an indexed item outside ``--data``) with every bit flipped with probability ``--flip``
(default 0.1, ~26 of 256 bits: the distance between ORB descriptors of one point seen twice, well
under the ~128 of unrelated points) — another photo with the same kind of local structure, so the
ratio test and the counts meet the crowding a real 1M vote index would bring. A model, not a
measurement of real photos.

For each copy of the suite whose original the CNN puts past 10 (pixel shuffles aside: no ORB
evidence survives them): is the original among the 2 most-voted items (what ``windows.look``
verifies, ``votes.VOTES``)? Three vote indexes, built and queried in this one run:

- ``real``: the gallery's own items at its per-item budget (``votes.per_item``, with the vector floor);
- ``1M floor``: the real items and the stand-ins at the budget a 1M gallery gets now (32 for 320-d);
- ``1M 128MiB``: the same at the old 128 MiB cap (3 per item).

Reported per index: descriptors, MiB (``votes.BYTES`` each), build seconds, median ms per vote (all
of a query's variants), originals found, per edit. Usage:

    python benchmarks/votes_at_1m.py --index IDX --data C --suite S [--items 1001000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cbir.bench.copy_search import original_ids
from cbir.copies import votes, windows
from cbir.copies.verify import query_features
from cbir.index.gallery import Gallery
from cbir.index.storage import features
from cbir.sources import find_images

FAKE_IDS = 1 << 40  # stand-in items' ids: above any real one
CHUNK = 500_000


def needing_votes(g: Gallery, data: str, suite: Path, per_aug: int) -> list[tuple[str, str, int]]:
    """(edit, copy path, original id) of every copy whose original the CNN puts past 10."""
    key, out = original_ids(g, data), []
    for aug in sorted(d.name for d in (suite / "copies").iterdir() if d.name != "shuffle_pixels"):
        files = sorted(find_images([suite / "copies" / aug]))[:per_aug]
        want = [key[str(f.relative_to(suite / "copies" / aug).with_suffix(""))] for f in files]
        vecs = g.postprocess_queries(g.embedder().embed_files([str(f) for f in files]).vectors)
        _, ids = g.knn(vecs, 10)
        out += [(aug, str(f), w) for f, w, row in zip(files, want, ids) if w not in row]
    return out


def stand_ins(descs: np.ndarray, owners: np.ndarray, parents: np.ndarray, count: int, flip: float, seed: int):
    """Descriptors and owners of ``count`` stand-in items, each a random parent's with bits flipped."""
    rng = np.random.default_rng(seed)
    order = np.argsort(owners, kind="stable")
    start = np.searchsorted(owners[order], parents)
    end = np.searchsorted(owners[order], parents, side="right")
    pick = rng.integers(0, len(parents), count)
    rows = np.concatenate([order[start[p] : end[p]] for p in pick])
    own = np.repeat(FAKE_IDS + np.arange(count), (end - start)[pick])
    out = np.empty((len(rows), descs.shape[1]), np.uint8)
    for s in range(0, len(rows), CHUNK):  # each bit flipped with probability ``flip``
        r = rows[s : s + CHUNK]
        out[s : s + CHUNK] = descs[r] ^ np.packbits(rng.random((len(r), 8 * descs.shape[1]), np.float32) < flip, axis=1)
    return out, own


def measure(name: str, descs, owners, g: Gallery, need, common) -> dict:
    t0 = time.perf_counter()
    index = votes.build(descs, owners)
    built = time.perf_counter() - t0
    found, ms, by = 0, [], {}
    for aug, f, want in need:
        t = time.perf_counter()
        got: dict[int, int] = {}
        for variant in windows._query_variants(f, f, query_features(f), common):
            for i, c in votes.counts(index, variant).items():
                got[i] = max(got.get(i, 0), c)
        ms.append((time.perf_counter() - t) * 1e3)
        top = sorted((i for i, c in got.items() if c >= votes.MIN_VOTES), key=lambda i: (-got[i], i))[: votes.VOTES]
        found += want in top
        by[aug] = by.get(aug, 0) + (want in top)
    row = {
        "index": name,
        "descriptors": int(index.ntotal),
        "mib": round(index.ntotal * votes.BYTES / 2**20, 1),
        "build_s": round(built, 1),
        "vote_ms_median": round(float(np.median(ms)), 1),
        "need": len(need),
        "found_top2": found,
        "by_edit": by,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--items", type=int, default=1_001_000)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--per-aug", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    g = Gallery(a.index)
    need = needing_votes(g, a.data, Path(a.suite), a.per_aug)
    real = len(g.store.indexed_ids())
    under = set(original_ids(g, a.data).values())
    rows = []
    dim_bytes = 4 * g.settings.dim
    for name, items, floor in (("real", real, dim_bytes), ("1M floor", a.items, dim_bytes), ("1M 128MiB", a.items, 0)):
        keep = votes.per_item(items, vector_bytes=floor)
        descs, owners, ids, aspects = features.descriptors(g.store, g.root, lambda n, k=keep: votes.kept(n, k))
        common = votes.common_aspects(aspects)  # the gallery's shapes, as its vote state has them
        if items > real:
            parents = np.array(sorted(set(ids.tolist()) - under), np.int64)
            d2, o2 = stand_ins(descs, owners, parents, items - real, a.flip, a.seed)
            descs, owners = np.concatenate([descs, d2]), np.concatenate([owners, o2])
        rows.append({"keep": keep, "items": items, **measure(name, descs, owners, g, need, common)})
        del descs, owners
    if a.json:
        Path(a.json).write_text(json.dumps({"flip": a.flip, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
