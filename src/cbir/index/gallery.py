"""The index directory as one object: open it, read its settings, take a snapshot, search vectors.

Layout of INDEX_DIR:
- ``index.json``  what it was built with (``storage.config``; read as ``Settings``)
- ``meta.sqlite`` items and shards (``storage.store``)
- ``shards/``     raw vectors per shard (``storage.shards``), the source of truth; beside them local
                  features (``storage.features``), mean colours and regional descriptors
- ``index.faiss`` the FAISS index, derived from the shards (``ann.maintain``)
- ``report.json`` what the last build/add did
- ``thumbs/``     cached JPEG thumbnails by item id (``cbir.serve.thumbs``, made on first use by ``cbir serve``)

``Gallery`` keeps the lifecycle (open, the writer lock, the model), the snapshot a search reads and
the vector search (k-NN with re-ranking and spatial verification). Its other methods are bound from
the modules that own them: ``_create`` (create / discard), ``_writes`` (build, add, remove,
features, tune, report), ``_sync`` (index.faiss in step with SQLite and other processes: refresh,
reconcile), ``_reading`` (info, query vectors). An image search goes through the copy-detection cascade
(``cbir.copies.cascade``), which reads the gallery through the methods here. Safe to search from
many threads (``cbir serve``): the lazily loaded FAISS index, its GPU copy and its reconstruction map
are created under a lock, and a search reads one ``Snapshot`` from start to end.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np

from cbir import crashpoints
from cbir.copies import cascade, verify
from cbir.copies.guard import Notes
from cbir.copies.vote_cache import VoteCache
from cbir.deadline import NEVER, Deadline
from cbir.errors import CbirError
from cbir.hits import Hit
from cbir.index import _create, _reading, _sync, _writes
from cbir.index.ann import faiss_index, maintain, tuning
from cbir.index.query import rerank as _rerank
from cbir.index.query import search as _search
from cbir.index.query.rerank import DEFAULT_BUDGET, Budget, Rerank
from cbir.index.snapshot import Snapshot
from cbir.index.storage import columns
from cbir.index.storage import config as _config
from cbir.index.storage import features as _features
from cbir.index.storage.config import INDEX_JSON, SHARD_SIZE, VOTES_FILE, Settings
from cbir.index.storage.features import FeatureStore
from cbir.index.storage.lock import DirectoryGone, WriterLock
from cbir.index.storage.regions import RegionStore
from cbir.index.storage.store import Store

__all__ = ["Gallery", "Hit", "INDEX_JSON", "SHARD_SIZE", "item_key"]
item_key = _writes.item_key


class Gallery:
    """An index directory. Open an existing one with ``Gallery(dir)``; create with ``Gallery.create``.
    ``live`` (``cbir serve``): the vote index is updated aside, searches never wait for it."""

    def __init__(
        self,
        root: str | os.PathLike,
        embedder=None,
        wait: bool = False,
        search_device: str | None = None,
        live: bool = False,
    ):
        if search_device not in (None, "cuda", "cpu"):
            raise CbirError(f"--search-device {search_device!r}: choose cuda or cpu")
        self.root = Path(root)
        self.config = _config.load(self.root)  # index.json as written; read it through ``settings``
        if search_device and self.config.get("store"):
            raise CbirError(
                f"--search-device {search_device}: index {root} keeps its vectors in {self.config['store']}"
            )
        self.created = False  # True when ``create`` made this index in this process (``discard`` may undo it)
        self._made_dir = False
        self._given: dict = {}  # build settings given to this command, applied over every re-read config
        self._writer = WriterLock(self.root)
        self._writer_depth = 0
        self.wait = wait  # writers: wait for another writer instead of failing
        self.store = Store(self.root / "meta.sqlite")
        self._embedder = embedder
        self._index = None
        self._index_generation = None  # the faiss_generation of the loaded index
        self._retry_at = 0.0  # refresh: when a failed load may be retried
        self._config_sig: tuple = ()  # refresh: (inode, mtime, size) of index.json when last read
        self._config_read_at = 0.0
        self._disk_generation = None  # refresh: faiss_generation in index.json when last read
        self._reconciler: threading.Thread | None = None
        self.load_error: str | None = None  # the last failed load of a newer index.faiss (refresh)
        self.search_device = search_device  # search in PyTorch on this device (Flat, IVF-Flat, IVF-SQ8), else FAISS
        self._reconstructable = None
        self._whitening = None
        self.features = FeatureStore(self.store, self.root)  # local features by id (memory-mapped)
        self.colours, self.hashes = columns.colours(self.store, self.root), columns.hashes(self.store, self.root)
        self._regions = RegionStore(self.store, self.root)
        read = lambda ids, keep: _features.descriptors(self.store, self.root, keep, ids)  # noqa: E731
        self.votes = VoteCache(self.store, read, live, lambda: 4 * self.settings.dim, self.root / VOTES_FILE)
        self._snap: Snapshot | None = None
        self._lock = threading.RLock()
        if embedder is not None:
            self.check_model(embedder)

    # -- lifecycle ----------------------------------------------------------------------------------
    create = classmethod(_create.create)
    discard = _create.discard

    @property
    def settings(self) -> Settings:
        """index.json as typed settings (as last read or written by this object)."""
        return Settings.of(self.config)

    def save_config(self) -> None:
        """Write index.json; only a writer does (under the lock, on the config re-read when it took it)."""
        if self._writer_depth == 0:
            raise RuntimeError(
                "Gallery.save_config outside writing(): index.json is only written under the writer lock"
            )
        _config.save(self.root, self.config)
        crashpoints.hit("config-written")

    @contextmanager
    def writing(self):
        """Hold the cross-process writer lock for a write operation (re-entrant in this object). On
        taking it, index.json is read again: a writer that waited must not write back settings that
        changed meanwhile (it changes only its own fields on the fresh copy)."""
        if self._writer_depth == 0:
            self._writer.acquire(self.wait)
            try:
                self._reload_config()
            except BaseException:
                self._writer.release()
                raise
        self._writer_depth += 1
        try:
            yield
        finally:
            self._writer_depth -= 1
            if self._writer_depth == 0:
                self._writer.release()

    def _reload_config(self) -> None:
        """index.json as on disk now, plus the settings this command was given (``check_options``)."""
        if not (self.root / INDEX_JSON).is_file():
            raise DirectoryGone(
                f"--index {self.root}: the index was removed while this command waited (another "
                f"process's failed first build undid what it had made); run the command again"
            )
        config = _config.load(self.root)
        config.update(self._given)
        if config.get("faiss_generation") != self.settings.faiss_generation:
            with self._lock:  # another writer replaced index.faiss: load it again when needed
                self._index, self._reconstructable = None, None
        self.config = config

    # -- writing, keeping up with other writers, reading out (bound from ``_writes``, ``_sync``, ``_reading``)
    build, add, remove, rebuild_index = _writes.build, _writes.add, _writes.remove, _writes.rebuild_index
    extract_features, tune, set_tune_queries = _writes.extract_features, _writes.tune, _writes.set_tune_queries
    scan, commit_shard, pending_work = _writes.scan, _writes.commit_shard, _writes.pending_work
    process_pending, load_vectors, write_report = _writes.process_pending, _writes.load_vectors, _writes.write_report
    in_sync, reconcile, refresh, consistency = (
        property(_sync.in_sync),
        _sync.reconcile,
        _sync.refresh,
        _sync.consistency,
    )
    info, query_vectors = _reading.info, _reading.query_vectors

    # -- model ------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.settings.model["fingerprint"]

    check_model = _create.check_model

    def embedder(self, model: str | None = None, **kwargs):
        """The index's embedder: the one given at open, else ``model``, else the model recorded in
        index.json; always checked against the index's fingerprint and preprocessing."""
        if self._embedder is None:
            from cbir.engine.embedder import Embedder

            path = model or self.settings.model_path
            if path is None:
                raise CbirError(
                    f"--index {self.root}: built from vectors without a model; it answers vector queries "
                    f"only (rebuild it with --model to search with images)"
                )
            if not Path(path).is_file():
                gone = f"--index {self.root}: its model {path} is gone; pass --model"
                raise CbirError(f"--model {path}: no such file" if model else gone)
            self._embedder = Embedder(path, **kwargs)
            self.check_model(self._embedder)
        return self._embedder

    @property
    def whitening(self):
        if self.settings.whitening and self._whitening is None:
            from cbir.vectors import Whitening

            self._whitening = Whitening.load(self.root / "whitening.npz")
        return self._whitening

    def postprocess_queries(self, v: np.ndarray) -> np.ndarray:
        return self.whitening.apply(v) if self.whitening is not None else v

    # -- the snapshot a search reads ----------------------------------------------------------------
    @property
    def index(self):
        """The loaded FAISS index, or the ``--store`` collection as one (loaded on first use; brought up
        to date first when a writer died mid-way)."""
        if self._index is None:
            self.reconcile()
        with self._lock:
            if self._index is None:
                index = maintain.load(self.root, self.config, self.store)
                tuning.set_search_params(index, self.settings.search)
                self._index, self._index_generation = index, self.settings.faiss_generation
            return self._index

    @property
    def search_index(self):
        """The index searches run on: a GPU copy when faiss-gpu sees a GPU (k ≤ 2048), else the CPU index."""
        return self.snapshot().index

    def snapshot(self) -> Snapshot:
        """The published generation a search reads from start to end (``cbir.index.snapshot``),
        whatever a concurrent ``refresh`` swaps in: the CPU index, the index to search (its GPU copy
        or itself) and the ids it holds."""
        index = self.index
        with self._lock:
            current = self._index is index  # else a refresh swapped meanwhile: its generation is not this index's
            if self._snap is None or self._snap.cpu is not index:
                if faiss_index.is_external(index):  # a Milvus collection: searched where it lives
                    searched = index
                elif self.search_device:
                    from cbir.index.ann.torch_ivf import on_device

                    searched = on_device(index, self.search_device)
                else:
                    searched = faiss_index.to_gpu(index) if faiss_index.gpu_available() else index
                self._snap = Snapshot(index, searched, self._index_generation if current else None)
            return self._snap

    def vectors_for(self, ids: np.ndarray, snap: Snapshot | None = None) -> np.ndarray:
        """Stored (post-processed) vectors for ids [q, n] -> [q, n, D], from the snapshot's FAISS index
        (default: the current one; a search passes its own); zeros for -1 and for ids it does not hold."""
        snap = snap or self.snapshot()
        flat = np.asarray(ids, np.int64).reshape(-1)
        out = np.zeros((len(flat), self.settings.dim), np.float32)
        valid = (flat >= 0) & snap.holds(flat)
        if valid.any():
            index = snap.cpu
            with self._lock:
                if self._reconstructable is not index:
                    faiss_index.enable_reconstruct(index)
                    self._reconstructable = index
            out[valid] = index.reconstruct_batch(flat[valid])
        return out.reshape(*np.shape(ids), -1)

    def knn(self, queries: np.ndarray, k: int, snap: Snapshot | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sims, ids) of post-processed ``queries``' ``k`` nearest items on the snapshot's CPU index,
        leaving out ids SQLite no longer calls indexed (no re-ranking; rows padded with -inf / -1)."""
        snap = snap or self.snapshot()
        return _search.knn(snap.cpu, queries, min(k, snap.cpu.ntotal), None, snap.stale(self.store))

    def vote_index(self):
        """The descriptor-vote state (``votes.VoteState``) of the indexed items' stored ORB features,
        kept in step with the indexed set by ``votes`` (a ``VoteCache``); None when none exists yet."""
        return self.votes.current()

    # -- search -------------------------------------------------------------------------------------
    def rerank_config(self, rerank: Rerank | str | dict | None = None, budget: Budget = DEFAULT_BUDGET) -> Rerank:
        """The re-ranking of a search (``rerank.for_index``: the index's stored one unless ``rerank``
        names a preset, gives overrides or is a ``Rerank``), refused when over ``budget``."""
        return _rerank.for_index(self.settings, self.root, rerank, budget)

    @property
    def num_regions(self) -> int:
        """Regional descriptors per item stored by this index (its model's ``--regions``; 0: none)."""
        return self.settings.num_regions

    def regions_of(self, ids: np.ndarray):
        """(regional descriptors [n, R, D] post-processed like the vectors, present [n]) or None."""
        got = self._regions.get(ids)
        if got is None or self.whitening is None:
            return got
        g, has = got
        n, r, d = g.shape
        return self.whitening.apply(g.reshape(n * r, d)).reshape(n, r, -1) * has[:, None, None], has

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int = 10,
        rerank=None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        query_features: Sequence | None = None,
        snap: Snapshot | None = None,
        deadline: Deadline = NEVER,
        notes: Sequence[Notes] | None = None,
    ) -> list[list[Hit]]:
        """Search with already-embedded query vectors (raw model output): the cascade's ``knn`` stage.
        Only items the snapshot holds and SQLite still calls indexed are returned, min(k, their
        number) of them. ``rerank``: see ``rerank_config`` (default: the index's).
        ``query_features``: local-feature records per query for verification (None: those queries
        verify nothing). ``nprobe`` / ``ef_search`` override the recorded search parameters for this
        call; ``snap``: the snapshot to read (default: the current one); ``notes``: one per query,
        told of verification skipped past ``deadline`` or failed."""
        q = self.postprocess_queries(np.asarray(queries, np.float32))
        return self._search(q, k, rerank, nprobe, ef_search, query_features, snap, deadline, notes)

    def search_items(
        self, ids: Sequence[int], k: int = 10, rerank=None, nprobe: int | None = None, ef_search: int | None = None
    ) -> list[list[Hit]]:
        """Search with indexed items as queries (their stored vectors and local features: nothing is
        re-embedded). Raises ``CbirError`` naming an id that is not indexed (or not yet searchable)."""
        ids = np.asarray(ids, np.int64)
        snap = self.snapshot()
        live = snap.live(self.store, ids)
        if not live.all():
            raise CbirError(f"item {int(ids[~live][0])}: not in the index")
        cfg = self.rerank_config(rerank)
        feats = self.features.get(ids) if cfg.verify else None
        return self._search(self.vectors_for(ids, snap), k, cfg, nprobe, ef_search, feats, snap)

    def _search(
        self,
        q: np.ndarray,
        k: int,
        rerank,
        nprobe: int | None,
        ef_search: int | None,
        query_features: Sequence | None,
        snap: Snapshot | None = None,
        deadline: Deadline = NEVER,
        notes: Sequence[Notes] | None = None,
    ) -> list[list[Hit]]:
        """``search_vectors`` on post-processed queries ``q``."""
        if k < 1:
            raise CbirError(f"-k {k}: must be ≥ 1")
        cfg = self.rerank_config(rerank)
        snap = snap or self.snapshot()
        cpu, index, stale = snap.cpu, snap.index, snap.stale(self.store)
        if index is not cpu and (max(k, cfg.shortlist if cfg.active else 0) + len(stale) > faiss_index.GPU_MAX_K):
            index = cpu  # GPU k-selection is limited to 2048
        params = tuning.search_parameters(cpu, {"nprobe": nprobe, "efSearch": ef_search})
        if params is not None and index is not cpu:
            index = cpu  # per-call parameters: the CPU index (GPU copies take their own)
        check = None
        if cfg.verify and query_features is not None:
            check = verify.verifier(self.features.get, query_features, cfg.min_inliers, deadline, notes)
        sims, ids, inl = _search.search(
            index, q, k, cfg, lambda i: self.vectors_for(i, snap), check, params, self.regions_of, stale
        )
        paths = self.store.paths_of(np.unique(ids))
        return [
            [
                Hit(int(i), paths[int(i)], float(s), bool(v >= cfg.min_inliers), int(v) if v >= 0 else None)
                for s, i, v in zip(srow, irow, vrow)
                if int(i) in paths
            ]
            for srow, irow, vrow in zip(sims, ids, inl)
        ]

    def search(
        self,
        images: Sequence,
        k: int = 10,
        rerank=None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        deadline: Deadline = NEVER,
    ) -> list[dict]:
        """Embed query images and search them through the cascade (``cbir.copies.cascade``); bad query
        images get an ``error`` entry instead of results. With verification on, the queries' local
        features are extracted too. An answer whose stages failed or were skipped past ``deadline``
        says so (``failed``, ``partial``)."""
        cfg = self.rerank_config(rerank)
        res = self.embedder().embed_files(list(images))
        feats = [None] * len(res.indices)
        if cfg.verify and len(res.indices):
            feats = list(verify.pool().map(lambda i: verify.query_features(images[i]), res.indices))
        queries = [cascade.Query(images[pos], res.vectors[j], feats[j]) for j, pos in enumerate(res.indices)]
        found = cascade.search(self, queries, k, cfg, self.snapshot(), deadline, nprobe, ef_search)
        out: list[dict] = [{} for _ in images]
        for query, pos, hits in zip(queries, res.indices, found):
            out[pos] = {"query": str(images[pos]), "results": [h.__dict__ for h in hits]}
            notes = query.notes
            if notes.partial or notes.failed:
                out[pos].update(partial=notes.partial, skipped=notes.skipped, failed=notes.failed)
        for pos, _, reason in res.errors:
            out[pos] = {"query": str(images[pos]), "error": reason, "results": []}
        return out

    def close(self) -> None:
        self.store.close()
