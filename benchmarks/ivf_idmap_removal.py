"""Why cbir no longer wraps IVF indexes in IndexIDMap2 (issue 24): after removals, how many stored
vectors still find their own id — the old wrapping vs the index ``faiss_index.create`` makes now."""

import faiss
import numpy as np

from cbir.index.ann import faiss_index

d, n = 32, 5000
x = np.random.default_rng(0).normal(size=(n, d)).astype("float32")
x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit vectors: inner product = cosine, each its own nearest
ids = np.arange(1, n + 1)
for name, index in (
    (
        "IndexIDMap2(IVF16,Flat) (before)",
        faiss.IndexIDMap2(faiss.index_factory(d, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)),
    ),
    ("faiss_index.create('IVF16,Flat') (now)", faiss_index.create(d, "IVF16,Flat")),
):
    index.train(x)
    index.add_with_ids(x, ids)
    index.remove_ids(faiss.IDSelectorArray(np.array([7], np.int64)))
    index.remove_ids(faiss.IDSelectorArray(np.arange(100, 300, dtype=np.int64)))
    faiss.extract_index_ivf(index).nprobe = 16
    keep = ~np.isin(ids, [7, *range(100, 300)])
    _, found = index.search(x[keep], 1)
    print(f"{name}: {int((found[:, 0] == ids[keep]).sum())} of {int(keep.sum())} stored vectors find their own id")
