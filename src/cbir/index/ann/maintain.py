"""FAISS maintenance of an index directory: ``index.faiss`` is derived from the shard files (the
source of truth) — rebuilt whole, or updated in place (remove changed ids, add new shards) where the
index type allows it. Post-processing on the way in: [whitening] → [DBA] → FAISS.

Streaming rebuild: a trained factory is trained on a seeded sample (at most ``TRAIN_SAMPLE`` vectors,
drawn shard by shard), then vectors are added one shard at a time, so peak memory is the index plus
one shard, never all raw vectors. DBA is the exception: it needs every vector's neighbours, so a DBA
index loads all vectors (documented in the README).

``on_disk`` (IVF factories): each shard is added to a copy of the trained, empty index and written as a
block; ``faiss.contrib.ondisk.merge_ondisk`` merges the blocks' lists into one ``ivflists-*.bin``
file that index.faiss refers to and that is memory-mapped at search time, so neither the build nor
the search needs the lists in RAM. Such an index is rebuilt (streaming) on add and remove.

``--factory auto``: the factory is chosen from the number of indexed vectors, their dimension and the
memory budget (``tuning.choose_factory``), recorded as ``index_factory``, and its search knob is tuned
to the target recall on held-out real vectors from the shards (``tuning``); the chosen parameters and
the measured recall, ms/query and bytes are recorded under ``search`` / ``tuning`` in index.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cbir import vectors
from cbir.errors import CbirError
from cbir.index.ann import faiss_index, tuning
from cbir.index.storage.shards import read_shard

HELD_OUT = 500  # queries for tuning


def load_vectors(store, root, dim: int, shards: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, raw vectors) of the indexed items whose current vectors are in ``shards`` (default all)."""
    ids_parts, vec_parts = [], []
    for ids, vecs in iter_shard_vectors(store, root, shards):
        ids_parts.append(ids)
        vec_parts.append(vecs)
    if not ids_parts:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32)
    return np.concatenate(ids_parts), np.concatenate(vec_parts)


def iter_shard_vectors(store, root, shards: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, raw vectors) of the indexed items, one shard at a time."""
    for shard in store.done_shards() if shards is None else shards:
        live = store.indexed_ids_of_shard(shard)
        if not live:
            continue
        out = read_shard(root, shard)
        keep = np.fromiter((i in live for i in out.ids.tolist()), bool, len(out.ids))
        if keep.any():
            yield out.ids[keep], out.vectors[keep]


def sample_vectors(store, root, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded uniform sample of at most ``limit`` (ids, raw vectors), read shard by shard."""
    total = store.count("indexed")
    rng = np.random.default_rng(seed)
    ids_parts, vec_parts = [], []
    for ids, vecs in iter_shard_vectors(store, root):
        take = len(ids) if total <= limit else rng.binomial(len(ids), limit / total)
        pick = rng.choice(len(ids), min(take, len(ids)), replace=False)
        ids_parts.append(ids[pick])
        vec_parts.append(vecs[pick])
    if not ids_parts:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    return np.concatenate(ids_parts), np.concatenate(vec_parts)


def exact_topk(gallery, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (sims, ids) of ``queries`` over every stored vector, streamed shard by
    shard and ``chunk`` queries at a time (``faiss.knn``: all cores). Memory: one shard, its
    post-processed copy and chunk × k results — never the gallery (10M × 320 reads 12.8 GB in shards)."""
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for ids, vecs in iter_shard_vectors(gallery.store, gallery.root):
        vecs = np.ascontiguousarray(gallery.postprocess_queries(vecs), np.float32)
        kk = min(k, len(ids))
        for c in range(0, len(queries), chunk):
            s, pos = faiss.knn(queries[c : c + chunk], vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
            cat_s = np.concatenate([best_s[c : c + chunk], s], 1)
            cat_i = np.concatenate([best_i[c : c + chunk], np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)], 1)
            keep = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
            best_s[c : c + chunk], best_i[c : c + chunk] = (
                np.take_along_axis(cat_s, keep, 1),
                np.take_along_axis(cat_i, keep, 1),
            )
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def resolve_factory(cfg: dict, n: int) -> str:
    if cfg["factory"] != "auto":
        return cfg["factory"]
    if cfg.get("on_disk"):  # the lists live on disk: the budget is not spent on them, keep exact codes
        return f"IVF{tuning.nlist_for(n)},Flat"
    return tuning.choose_factory(n, cfg["dim"], tuning.parse_bytes(cfg["memory_budget"]))


def published(root, config: dict) -> bool:
    """A vector store was written for this index: index.faiss, or (``--store``) a recorded generation."""
    if config.get("store"):
        return config.get("faiss_generation") is not None
    return (Path(root) / "index.faiss").is_file()


def load(root, config: dict, store):
    """The index a search reads: index.faiss, or the ``--store`` collection (``milvus_store``)."""
    if config.get("store"):
        from cbir.index.ann import milvus_store

        return milvus_store.open_index(config, store)
    path = Path(root) / "index.faiss"
    if not path.is_file():
        raise CbirError(
            f"--index {root}: no index.faiss yet (the build did not finish: run `cbir index build --resume`)"
        )
    return faiss_index.load(path)


def stored_ids(index) -> np.ndarray:
    """Every id the vector store really holds: a collection is read whole (its ``MilvusIndex`` holds
    the ledger's ids when opened in step with it — not a check of it)."""
    return index.collection_ids() if faiss_index.is_external(index) else faiss_index.stored_ids(index)


def rebuild(gallery) -> object:
    """(Re)build index.faiss from the shards, streaming — or bring the ``--store`` collection to the
    ledger; returns the new index."""
    cfg = gallery.config
    n = gallery.store.count("indexed")
    factory = resolve_factory(cfg, n)
    if cfg.get("store"):
        return _sync_store(gallery, factory, None)
    if cfg.get("dba") and n:
        ids, vecs = load_vectors(gallery.store, gallery.root, cfg["model"]["dim"])
        vecs = vectors.dba(gallery.postprocess_queries(vecs), int(cfg["dba"]), float(cfg.get("dba_alpha", 0.0)))
        index, trained = faiss_index.build(vecs, ids, factory)
    else:
        on_disk = bool(cfg.get("on_disk"))
        index = faiss_index.create(cfg["dim"], factory, id_map=not on_disk)
        trained = 0
        if n and not index.is_trained:
            _, sample = sample_vectors(gallery.store, gallery.root, faiss_index.TRAIN_SAMPLE)
            trained = faiss_index.train(index, gallery.postprocess_queries(sample), factory)
        shards = (
            (ids, np.ascontiguousarray(gallery.postprocess_queries(v), np.float32))
            for ids, v in iter_shard_vectors(gallery.store, gallery.root)
        )
        if on_disk:
            faiss_index.fill_on_disk(index, shards, gallery.root, factory)
        else:
            for ids, vecs in shards:
                index.add_with_ids(vecs, ids)
    cfg["index_factory"], cfg["trained_on"] = factory, trained
    if cfg["factory"] == "auto":
        tune(gallery, index)
    faiss_index.save(index, gallery.root / "index.faiss")
    cfg["index_bytes"] = (gallery.root / "index.faiss").stat().st_size
    gallery.save_config()
    return index


def _sync_store(gallery, factory: str, changed: np.ndarray | None, new_shards: Sequence[int] = ()) -> object:
    """``milvus_store.sync`` (whole when ``changed`` is None: then tuned when ``--factory auto``, as a
    rebuild of index.faiss is), the factory recorded."""
    from cbir.index.ann import milvus_store

    cfg = gallery.config
    index = milvus_store.sync(gallery, factory, changed, new_shards)
    cfg["index_factory"], cfg["trained_on"], cfg["index_bytes"] = factory, 0, None
    if cfg["factory"] == "auto" and changed is None:
        tune(gallery, index)
    gallery.save_config()
    return index


TUNE_QUERIES = "tune-queries.npy"  # INDEX_DIR: the post-processed query vectors the index is tuned on


def tune(
    gallery,
    index,
    target: float | None = None,
    max_ms: float | None = None,
    k: int = 10,
    queries: np.ndarray | None = None,
) -> dict:
    """Tune the index's search knob and record ``search`` and ``tuning`` (with its ``basis``).
    Basis ``queries``: ``queries`` (post-processed, L2-normalised), else INDEX_DIR/tune-queries.npy
    when the index was tuned on queries before — recall of real queries against an exact scan.
    Basis ``gallery``: 500 held-out stored vectors (their own id excluded) — what autofaiss does, and
    right only for queries that look like the gallery."""
    cfg = gallery.config
    target = float(target if target is not None else cfg.get("target_recall", 0.95))
    path = gallery.root / TUNE_QUERIES
    if queries is None and path.is_file():
        queries = np.load(path, allow_pickle=False)
    if queries is not None:
        q, own, basis = np.ascontiguousarray(queries, np.float32), None, "queries"
    else:
        own, held = sample_vectors(gallery.store, gallery.root, HELD_OUT, seed=1)
        q, basis = np.ascontiguousarray(gallery.postprocess_queries(held), np.float32), "gallery"
    shortlist = None
    if len(q) == 0 or index.ntotal == 0:
        result = {"params": {}, "recall": 1.0, "per_query": np.ones(0), "ms_per_query": None, "tried": []}
    else:
        truth = _truth(gallery, index, q, own, k)
        result = tuning.tune(index, q, truth, target, max_ms, own=own)
        shortlist = _tune_shortlist(gallery, index, q, own, result, target, max_ms, k)
    cfg["search"] = result["params"]
    cfg["tuning"] = {
        "target_recall": target,
        "recall_at_10": round(result["recall"], 4),
        "shortlist": shortlist,
        "recall_ci95": tuning.interval95(result["per_query"]),
        "basis": basis,
        "queries": int(len(q)),
        "held_out_queries": int(len(q)),
        "ms_per_query": result["ms_per_query"],
        "tried": result["tried"],
        "index_factory": cfg.get("index_factory", cfg["factory"]),
    }
    return result


def _truth(gallery, index, q: np.ndarray, own, k: int) -> np.ndarray:
    """Exact top-k ids of ``q`` (each query's own id left out when ``own`` is given)."""
    kk = min(k, max(1, index.ntotal - (own is not None)))
    _, truth = exact_topk(gallery, q, kk + (own is not None))
    if own is not None:
        truth = np.stack([row[row != o][:kk] for row, o in zip(truth, own)])  # its own id does not count
    return truth


def _tune_shortlist(gallery, index, q: np.ndarray, own, result: dict, target: float, max_ms, k: int) -> dict | None:
    """When the index's stored re-ranking reads a shortlist deeper than k, what comes back depends on
    the shortlist's recall too: measure recall@shortlist at the chosen knob and raise the knob until
    it also meets the target (``result`` is updated in place). None without re-ranking or a knob."""
    try:
        rr = gallery.rerank_config()
    except CbirError:
        return None
    name = tuning.knob(index)
    depth = min(rr.shortlist, index.ntotal - (own is not None)) if rr.active else 0
    if name is None or depth <= k:
        return None
    deep = _truth(gallery, index, q, own, depth)
    tuning.set_search_params(index, result["params"])
    recall = tuning.recall_at_k(deep, tuning.search_excluding(index, q, deep.shape[1], own))
    if recall < target:
        try:
            deeper = tuning.tune(index, q, deep, target, max_ms, own=own)
        except CbirError:  # the shortlist cannot reach it: keep the recall@k choice, say what it gets
            tuning.set_search_params(index, result["params"])
            return {"depth": depth, "recall": round(recall, 4), "reached": False}
        recall = deeper["recall"]
        result["params"] = {name: max(result["params"].get(name, 1), deeper["params"][name])}
        tuning.set_search_params(index, result["params"])
        per = tuning.recall_per_query(
            deep[:, :k], tuning.search_excluding(index, q, k, own)
        )  # exact order: top k first
        result.update(recall=float(per.mean()), per_query=per, ms_per_query=tuning.query_ms(index, q, k, 3))
    return {"depth": depth, "recall": round(recall, 4), "reached": True}


GALLERY_BASIS_NOTE = (
    "recall measured on held-out gallery vectors: it holds for queries that look like the gallery; "
    "tune on real queries with `cbir index tune {root} --queries Q...` (images, folders or a .npy)"
)


def update(gallery, changed_ids: np.ndarray, new_shards: Sequence[int] = ()) -> object:
    """Update index.faiss in place: drop ``changed_ids``, add the vectors of ``new_shards``. Falls
    back to a full rebuild for DBA and for index types that cannot remove ids; returns the index."""
    if gallery.config.get("store"):  # the same index type, as an in-place FAISS update keeps it
        return _sync_store(gallery, gallery.settings.index_factory, np.asarray(changed_ids, np.int64), new_shards)
    path = gallery.root / "index.faiss"
    if gallery.settings.dba or gallery.settings.on_disk or not path.is_file():
        return rebuild(gallery)  # on-disk lists are written once, by a streaming merge
    index = faiss_index.load(path)
    if not faiss_index.remove(index, changed_ids):
        return rebuild(gallery)
    for ids, vecs in iter_shard_vectors(gallery.store, gallery.root, new_shards):
        index.add_with_ids(np.ascontiguousarray(gallery.postprocess_queries(vecs), np.float32), ids)
    faiss_index.save(index, path)
    return index
