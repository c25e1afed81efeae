"""How a ``Gallery`` is written: scan → embed pending shards → local features → index.faiss, resumable
per shard (``build``, ``add``), ``remove``, ``extract_features`` (``cbir index features``), ``tune``,
and report.json. Each runs under the writer lock (``Gallery.writing``) and is bound to ``Gallery``
as a method of the same name; the parts live in ``cbir.index.ingest`` (getting items in) and
``cbir.index.ann.maintain`` (index.faiss from the shards).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

from cbir import crashpoints, fsio
from cbir.errors import CbirError
from cbir.index import _sync
from cbir.index.ann import maintain, tuning
from cbir.index.ingest import pipeline as _build
from cbir.index.storage import features as _features


def item_key(path: str | os.PathLike) -> str:
    """How an item is named in SQLite: a URI as given, a local path made absolute."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def scan(
    gallery, paths: Sequence[str | os.PathLike], retry_failed: bool = False, parquet=None, restore: bool = False
) -> _build.Scan:
    return _build.scan(gallery.store, gallery.settings.shard_size, paths, retry_failed, parquet, restore)


def commit_shard(gallery, shard: int, out) -> tuple[int, int]:
    return _build.commit_shard(gallery.store, shard, out)


def pending_work(gallery) -> list[tuple[int, list[tuple[int, str]]]]:
    return _build.pending_work(gallery.store)


def process_pending(
    gallery, batch_size: int | None = None, progress: bool = False, distributed: dict | None = None
) -> dict:
    if distributed is not None:
        from cbir.index.ingest.ray import process_with_ray

        _build.adopt_outputs(gallery.store, gallery.root)
        return process_with_ray(gallery, batch_size=batch_size, progress=progress, **distributed)
    return _build.process_pending(gallery, batch_size, progress)


def load_vectors(gallery, shards: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, raw vectors) of the indexed items whose current vectors are in ``shards`` (default all)."""
    return maintain.load_vectors(gallery.store, gallery.root, gallery.settings.model_dim, shards)


def rebuild_index(gallery) -> None:
    """(Re)build index.faiss from the shards: [whitening] → [DBA] → FAISS."""
    with gallery.writing():
        _sync.set_index(gallery, maintain.rebuild(gallery))


def build(
    gallery,
    images: Sequence[str | os.PathLike],
    batch_size: int | None = None,
    progress: bool = False,
    distributed: dict | None = None,
    retry_failed: bool = False,
    parquet=None,
    restore: bool = False,
) -> dict:
    """Scan, embed pending shards, build the FAISS index, write report.json. ``images``: folders,
    files, tar shards, Parquet files (with ``parquet``: a ``sources.ParquetSpec``), URLs."""
    with gallery.writing():
        t0 = time.perf_counter()
        scanned = gallery.scan(images, retry_failed, parquet, restore)
        maintain.resolve_factory(gallery.config, gallery.store.count("indexed") + gallery.store.count("pending"))
        work = gallery.process_pending(batch_size, progress, distributed)
        _timed_features(gallery, work, progress)
        gallery.rebuild_index()
        _timed_votes(gallery, work)
        return gallery.write_report(work, scanned, t0)


def add(
    gallery,
    paths: Sequence[str | os.PathLike],
    batch_size: int | None = None,
    progress: bool = False,
    retry_failed: bool = False,
    parquet=None,
    restore: bool = False,
) -> dict:
    """Embed only new or changed files (removed ones only with ``restore``) and update the index
    in place where FAISS allows."""
    with gallery.writing():
        return _add(gallery, paths, batch_size, progress, retry_failed, parquet, restore)


def _add(gallery, paths, batch_size: int, progress: bool, retry_failed: bool, parquet, restore: bool) -> dict:
    t0 = time.perf_counter()
    was_in_sync = gallery.in_sync
    before = gallery.store.pending_shards()
    scanned = gallery.scan(paths, retry_failed, parquet, restore)
    new_shards = gallery.store.pending_shards()
    changed = [i for s in new_shards for i, _ in gallery.store.shard_items(s)]
    work = gallery.process_pending(batch_size, progress)
    _timed_features(gallery, work, progress)
    if before or not was_in_sync:  # an interrupted write left work behind: rebuild from the shards
        gallery.rebuild_index()
    else:
        _sync.set_index(gallery, maintain.update(gallery, np.array(changed, np.int64), new_shards))
    _timed_votes(gallery, work)
    return gallery.write_report(work, scanned, t0)


def _timed_features(gallery, work: dict, progress: bool) -> None:
    t0 = time.perf_counter()
    warnings = work.setdefault("warnings", [])  # the decode workers' (``process_pending``) come first
    if gallery.extract_features(
        progress, on_problem=lambda p, r: warnings.append({"path": p, "stage": "local features", "error": r})
    ):
        work["timings"]["local_features"] = round(time.perf_counter() - t0, 4)


def _timed_votes(gallery, work: dict) -> None:
    """The descriptor-vote index brought up to date and saved (``VoteCache.make``), so that no later
    search — in this process or another — waits for it or goes without it."""
    if not gallery.settings.local_features:
        return
    t0 = time.perf_counter()
    gallery.votes.make()
    work.setdefault("timings", {})["vote_index"] = round(time.perf_counter() - t0, 4)
    if gallery.votes.error:
        work.setdefault("warnings", []).append(
            {"path": str(gallery.root), "stage": "vote index", "error": gallery.votes.error}
        )


def extract_features(
    gallery, progress: bool = False, enable: bool = False, on_problem: Callable[[str, str], None] | None = None
) -> int:
    """Local features for every done shard lacking them (resumable per shard); ``enable`` turns
    them on for an index built without, and writes again those of an older version that lack
    the frame size (``cbir index features``). Returns shards written.
    ``on_problem(path, reason)``: an image that gave no features because of an error (it stays
    indexed and verifies nothing)."""
    with gallery.writing():
        if enable and not gallery.settings.local_features:
            if gallery.settings.vectors_only:
                raise CbirError(
                    f"--index {gallery.root}: built from vectors, it has no images to take local features from"
                )
            gallery.config["local_features"] = _features.KIND
            gallery.save_config()
        if not gallery.settings.local_features:
            return 0
        written = _features.ensure(gallery.store, gallery.root, progress, on_problem, upgrade=enable)
        if enable and written:  # ``cbir index features``: records written again, so the votes from scratch
            gallery.votes.make(rebuild=True)
        return written


def remove(gallery, paths: Sequence[str | os.PathLike]) -> dict:
    """Remove files (or everything under folders) from the index by path; files need not exist."""
    with gallery.writing():
        ids = sorted({i for p in paths for i in gallery.store.ids_under(item_key(p))})
        if not ids:
            raise CbirError(f"{', '.join(map(str, paths))}: not in the index")
        in_sync = gallery.in_sync
        with gallery.store.transaction():
            gallery.store.mark_removed(ids)
        crashpoints.hit("removed-committed")
        if in_sync:
            _sync.set_index(gallery, maintain.update(gallery, np.array(ids, np.int64)))
        else:  # index.faiss was already behind (an earlier crash): rebuild, do not patch
            _sync.set_index(gallery, maintain.rebuild(gallery))
        _timed_votes(gallery, {})
        return {"removed": len(ids), "count": gallery.store.count("indexed")}


def write_report(gallery, work: dict, scanned: _build.Scan, t0: float) -> dict:
    """report.json (and the return value) of a build or add: counts, failures, timings."""
    timings = dict(work["timings"])
    timings["total"] = round(time.perf_counter() - t0, 3)
    report = {
        "indexed": work["indexed"],
        "failed": gallery.store.failed(),
        "skipped": scanned.unchanged,
        "still_failed": scanned.still_failed,
        "still_removed": scanned.still_removed,
        "queued": scanned.queued,
        "warnings": work.get("warnings", []),
        "count": gallery.store.count("indexed"),
        "timings": timings,
    }
    fsio.write_json(gallery.root / "report.json", report)
    return report


def tune(gallery, target_recall: float, max_ms: float | None = None, queries: np.ndarray | None = None) -> dict:
    """Tune nprobe / efSearch of the built index to ``target_recall`` (recall@10 vs exact search)
    and record it in index.json; returns the tuning record. ``queries`` (from ``query_vectors``):
    tune on them, and keep them (INDEX_DIR/tune-queries.npy) for every later rebuild; else the
    queries the index was tuned on before, else held-out gallery vectors. A target these queries
    cannot reach changes nothing."""
    with gallery.writing():
        index = gallery.index
        saved = (dict(gallery.settings.search or {}), gallery.settings.tuning)
        try:
            maintain.tune(gallery, index, target_recall, max_ms, queries=queries)
        except CbirError:
            gallery.config["search"], gallery.config["tuning"] = saved
            tuning.set_search_params(index, saved[0])
            raise
        if queries is not None:
            gallery.set_tune_queries(queries)
        tuning.set_search_params(index, gallery.settings.search)
        gallery.save_config()
        return gallery.settings.tuning


def set_tune_queries(gallery, queries: np.ndarray) -> None:
    """Keep ``queries`` (from ``query_vectors``) as the ones every later tuning of this index uses
    (INDEX_DIR/tune-queries.npy; the build's ``--factory auto`` tuning included)."""
    with gallery.writing():
        with fsio.atomic_path(gallery.root / maintain.TUNE_QUERIES, suffix=".npy") as tmp:
            np.save(tmp, np.ascontiguousarray(queries, np.float32))
