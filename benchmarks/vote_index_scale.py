"""Build time and per-query vote time of the descriptor-vote index (``cbir.copies.votes``) at
1k-item and 100k-item sizes (500 and 33 descriptors per item: the 128 MiB cap), random codes.

    .venv/bin/python benchmarks/vote_index_scale.py
"""

import time

import numpy as np

from cbir.copies import votes

rng = np.random.default_rng(0)
for items in (1_000, 100_000):
    per = votes.per_item(items)
    n = items * per
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    t = time.perf_counter()
    index = votes.build(codes, np.arange(n) // per)
    built = time.perf_counter() - t
    query = {"n": 1000, "desc": rng.integers(0, 256, (1000, 32), dtype=np.uint8)}
    ms = []
    for _ in range(5):
        t = time.perf_counter()
        votes.counts(index, [query])
        ms.append((time.perf_counter() - t) * 1e3)
    print(
        f"{items} items x {per} descriptors: build {built:.1f} s, nlist {index.nlist}, "
        f"vote (1,000 query descriptors) median {np.median(ms):.1f} ms, {n * votes.BYTES / 2**20:.0f} MiB"
    )
