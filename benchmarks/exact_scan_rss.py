"""Memory of the exact ground truth (``maintain.exact_topk``): a fresh process opens an index, reads
its peak RSS, scans every shard for N queries, reads it again. The scan holds one shard and its
post-processed copy at a time, so the increase does not grow with the gallery.

    python benchmarks/exact_scan_rss.py INDEX_DIR [N_QUERIES]
"""

import sys
import time

import numpy as np

from cbir.bench.scale import peak_rss_mb
from cbir.index.ann import maintain
from cbir.index.gallery import Gallery

g = Gallery(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
q = np.random.default_rng(0).normal(size=(n, g.config["dim"])).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
before = peak_rss_mb()
t0 = time.perf_counter()
maintain.exact_topk(g, q, 10)
dt = time.perf_counter() - t0
print(
    f"{g.store.count('indexed'):,} vectors in {len(g.store.done_shards())} shards, {n} queries: {dt:.1f} s, "
    f"peak RSS {before:.0f} -> {peak_rss_mb():.0f} MB"
)
