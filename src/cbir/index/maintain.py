"""FAISS maintenance of an index directory: ``index.faiss`` is derived from the shard files (the
source of truth) — rebuilt whole, or updated in place (remove changed ids, add new shards) where the
index type allows it. Post-processing on the way in: [whitening] → [DBA] → FAISS.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cbir import vectors
from cbir.index import faiss_index
from cbir.index.shards import read_shard


def load_vectors(store, root, dim: int, shards: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, raw vectors) of the indexed items whose current vectors are in ``shards`` (default all)."""
    ids_parts, vec_parts = [], []
    for shard in store.done_shards() if shards is None else shards:
        live = store.indexed_ids_of_shard(shard)
        if not live:
            continue
        out = read_shard(root, shard)
        keep = np.fromiter((i in live for i in out.ids.tolist()), bool, len(out.ids))
        ids_parts.append(out.ids[keep])
        vec_parts.append(out.vectors[keep])
    if not ids_parts:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32)
    return np.concatenate(ids_parts), np.concatenate(vec_parts)


def rebuild(gallery) -> object:
    """(Re)build index.faiss from the shards; returns the new index."""
    cfg = gallery.config
    ids, vecs = load_vectors(gallery.store, gallery.root, cfg["model"]["dim"])
    vecs = gallery.postprocess_queries(vecs) if len(vecs) else np.empty((0, cfg["dim"]), np.float32)
    if cfg.get("dba") and len(vecs):
        vecs = vectors.dba(vecs, int(cfg["dba"]), float(cfg.get("dba_alpha", 0.0)))
    index, trained = faiss_index.build(vecs, ids, cfg["factory"])
    faiss_index.save(index, gallery.root / "index.faiss")
    cfg["trained_on"] = trained
    gallery.save_config()
    return index


def update(gallery, changed_ids: np.ndarray, new_shards: Sequence[int] = ()) -> object:
    """Update index.faiss in place: drop ``changed_ids``, add the vectors of ``new_shards``. Falls
    back to a full rebuild for DBA and for index types that cannot remove ids; returns the index."""
    path = gallery.root / "index.faiss"
    if gallery.config.get("dba") or not path.is_file():
        return rebuild(gallery)
    index = faiss_index.load(path)
    if not faiss_index.remove(index, changed_ids):
        return rebuild(gallery)
    ids, vecs = load_vectors(gallery.store, gallery.root, gallery.config["model"]["dim"], new_shards)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(gallery.postprocess_queries(vecs), np.float32), ids)
    faiss_index.save(index, path)
    return index
