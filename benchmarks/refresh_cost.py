"""Cost of Gallery.refresh() (what cbir serve does before every search) on an unchanged index."""

import tempfile
import timeit
from pathlib import Path

import numpy as np

from cbir.index.gallery import Gallery
from cbir.index.ingest.from_vectors import VectorSource, ingest, read_paths

d = Path(tempfile.mkdtemp())
np.save(d / "v.npy", np.random.default_rng(0).normal(size=(10000, 320)).astype(np.float32))
(d / "p.txt").write_text("".join(f"/x/{i}\n" for i in range(10000)))
g = Gallery.create(d / "idx", None, dim=320)
ingest(g, VectorSource(d / "v.npy"), read_paths(d / "p.txt", 10000))
r = Gallery(d / "idx")
_ = r.index
q = np.random.default_rng(1).normal(size=(1, 320)).astype(np.float32)
n = 2000
t_refresh = min(timeit.repeat(r.refresh, number=n, repeat=5)) / n * 1e6
t_search = min(timeit.repeat(lambda: r.search_vectors(q, k=10, rerank="none"), number=200, repeat=5)) / 200 * 1e6
print(
    f"refresh {t_refresh:.1f} us/call; plain k-NN search of 10k x 320 {t_search:.1f} us/query; ratio {t_refresh / t_search:.3f}"
)
from cbir.index.storage import config as C  # noqa: E402

print("load json", min(timeit.repeat(lambda: C.load(r.root), number=n, repeat=5)) / n * 1e6)
print("generation", min(timeit.repeat(lambda: r.store.generation, number=n, repeat=5)) / n * 1e6)
import os  # noqa: E402

print("stat", min(timeit.repeat(lambda: os.stat(r.root / "index.json"), number=n, repeat=5)) / n * 1e6)
