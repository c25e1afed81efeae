"""``cbir bench class-search``: class-level retrieval through a real index — every labelled image the
index holds searched by its stored vector and local features (``Gallery.search_items``: the index's
stored re-ranking, its vector store — index.faiss or a ``--store`` collection), ranked over the whole
index. mAP, mAP@K, P@K, R@K as ``cbir bench accuracy`` reports them (the query stays in its own ranking,
as that bench's default), so the figure says whether a vector store changes what users get.
Items under ``data`` are labelled by ``eval.protocol.load_dataset``; other indexed items never count
as relevant.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.eval import metrics
from cbir.eval.protocol import load_dataset


def class_search(gallery, data: str, rerank=None, batch: int = 50) -> dict:
    """Metrics over every labelled image in the index (default re-ranking: the index's)."""
    ds = load_dataset(data)
    label_of = {str(p.resolve()): int(lab) for p, lab in zip(ds.paths, ds.labels)}
    paths = gallery.store.paths_for_ids(gallery.store.indexed_ids().tolist())
    labels = {i: label_of.get(str(Path(p).resolve()), -1) for i, p in paths.items()}
    queries = np.array(sorted(i for i, lab in labels.items() if lab >= 0), np.int64)
    if not len(queries):
        raise CbirError(f"--data {data}: none of its images is in index {gallery.root}")
    n = len(paths)
    rel = np.zeros((len(queries), n), bool)
    t0 = time.perf_counter()
    for s in range(0, len(queries), batch):
        rows = gallery.search_items(queries[s : s + batch], k=n, rerank=rerank)
        for r, hits in enumerate(rows):
            want = labels[int(queries[s + r])]
            rel[s + r, : len(hits)] = [labels.get(h.id, -1) == want for h in hits]
    seconds = time.perf_counter() - t0
    counts = np.bincount([lab for lab in labels.values() if lab >= 0], minlength=len(ds.classes))
    n_rel = counts[[labels[int(q)] for q in queries]]
    return {
        "index": str(gallery.root),
        "store": gallery.settings.store or "index.faiss",
        "rerank": gallery.rerank_config(rerank).to_dict(),
        "queries": int(len(queries)),
        "items": int(n),
        **{k: round(v, 6) for k, v in metrics.summarize(rel, n_rel).items()},
        "ms_per_query": round(seconds / len(queries) * 1e3, 2),
    }
