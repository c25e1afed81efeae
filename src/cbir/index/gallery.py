"""The index directory as one object: create/open, build (resumable), add, remove, info, search.

Layout of INDEX_DIR:
- ``index.json``  what it was built with (``config``)
- ``meta.sqlite`` items and shards (``store``)
- ``shards/``     raw vectors per shard (``shards``), the source of truth; beside them local features
                  (``features``) and regional descriptors (``regions``, when the model has them)
- ``index.faiss`` the FAISS index, derived from the shards (``maintain``)
- ``report.json`` what the last build/add did
- ``thumbs/``     cached JPEG thumbnails by item id (``cbir.serve.thumbs``, made on first use by ``cbir serve``)

The pieces live in sub-packages: ``storage`` (index.json, SQLite, shard/feature/region files, the
writer lock), ``build`` (scan → embed → commit; vectors in; Ray), ``ann`` (FAISS from the shards and
its tuning), ``query`` (k-NN + re-ranking); ``check`` verifies and repairs, ``dedup`` groups copies.
Thumbnails and contact sheets live with their users (``cbir.serve.thumbs``, ``cbir.cli.contact_sheet``).
``Gallery`` ties them together and is safe to search from many threads (``cbir serve``): the lazily
loaded FAISS index, its GPU copy and its reconstruction map are created under a lock. A search reads
one ``Snapshot`` (``cbir.index.snapshot``) from start to end; its stages and their order are in
``cbir.index.query.cascade``; the vote index is a ``VoteCache`` (updated aside with ``live=True``).

Integrity: SQLite's generation (``store``) moves with every change to the indexed set; index.json's
``faiss_generation`` says which generation index.faiss holds, written after index.faiss. Opening the
FAISS index when they differ (a writer died between the two) rebuilds it from the shards first — if
no other writer is at work; a reader that cannot take the writer lock searches the index as it is,
and still never shows a removed or failed item (search keeps only ids SQLite calls indexed).
``refresh()`` picks up a newer index.faiss written by another process (``cbir serve`` calls it), and
swaps it in atomically: searches already running finish on the old one.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir import crashpoints, fsio
from cbir.deadline import NEVER, Deadline
from cbir.engine import colour, local_features
from cbir.errors import CbirError, ImageError
from cbir.index.ann import faiss_index, maintain, tuning
from cbir.index.ingest import pipeline as _build
from cbir.index.query import rerank as _rerank
from cbir.index.query import search as _search
from cbir.index.query import votes as _votes
from cbir.index.query.cascade import Notes, guarded, second_look
from cbir.index.query.rerank import DEFAULT_BUDGET, Budget, Rerank
from cbir.index.query.vote_cache import VoteCache
from cbir.index.snapshot import Snapshot
from cbir.index.storage import config as _config
from cbir.index.storage import features as _features
from cbir.index.storage.colours import ColourStore
from cbir.index.storage.config import INDEX_JSON, SHARD_SIZE
from cbir.index.storage.features import FeatureStore
from cbir.index.storage.lock import LOCK_NAME, DirectoryGone, WriterLock
from cbir.index.storage.regions import RegionStore
from cbir.index.storage.store import Store

__all__ = ["Gallery", "Hit", "INDEX_JSON", "SHARD_SIZE"]


def item_key(path: str | os.PathLike) -> str:
    """How an item is named in SQLite: a URI as given, a local path made absolute."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


@dataclass
class Hit:
    id: int
    path: str
    score: float
    verified: bool = False  # spatially verified: RANSAC inliers ≥ min_inliers (such hits come first)
    inliers: int | None = None  # None: not checked
    by: str = "vector"  # "colour": the mean-colour answer to a pixel-shuffled query (``search_colour``)


def _refuse_foreign(root: Path) -> None:
    foreign = _config.foreign_entries(root)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CbirError(
            f"--index {root}: exists and is not a cbir index (it holds {shown}); "
            f"give a new or empty folder, nothing there was changed"
        )


@lru_cache(maxsize=1)
def _verify_pool() -> ThreadPoolExecutor:
    """Threads for local-feature matching (OpenCV and FAISS release the GIL): one per core, shared;
    each runs FAISS single-threaded (``faiss_index.single_threaded``: the pool is the parallelism)."""
    from cbir.cores import all_cores

    return ThreadPoolExecutor(all_cores(), thread_name_prefix="cbir-verify", initializer=faiss_index.single_threaded)


def _query_features(source):
    """A query's local-feature variants (``extract_query``: itself and its mirror); None when it
    has none to give (verifies nothing)."""
    try:
        return local_features.extract_query(
            source, str(source) if isinstance(source, (str, os.PathLike)) else "<query>"
        )
    except Exception:  # the query was embedded; an image ORB cannot use just verifies nothing
        return None


class Gallery:
    """An index directory. Open an existing one with ``Gallery(dir)``; create with ``Gallery.create``."""

    def __init__(
        self,
        root: str | os.PathLike,
        embedder=None,
        wait: bool = False,
        search_device: str | None = None,
        live: bool = False,
    ):
        self.root = Path(root)
        self.config = _config.load(self.root)
        self.created = False  # True when ``create`` made this index in this process (``discard`` may undo it)
        self._made_dir = False
        self._settings: dict = {}  # build settings given to this command, applied over every re-read config
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
        if search_device not in (None, "cuda", "cpu"):
            raise CbirError(f"--search-device {search_device!r}: choose cuda or cpu")
        self.search_device = search_device  # exact search in PyTorch on this device (Flat indexes), else FAISS
        self._reconstructable = None
        self._whitening = None
        self._features = None
        self._regions = None
        self._colours = None
        self.votes = VoteCache(self.store, self.root, background=live)  # live (``cbir serve``): updated aside
        self._snap: Snapshot | None = None
        self._lock = threading.RLock()
        if embedder is not None:
            self.check_model(embedder)

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        embedder,
        factory: str | None = None,
        shard_size: int | None = None,
        whitening: str | None = None,
        dba: int | None = None,
        dba_alpha: float | None = None,
        memory_budget: str | None = None,
        target_recall: float | None = None,
        wait: bool = False,
        dim: int | None = None,
        on_disk: bool | None = None,
        local_features: str | None = None,
        rerank: str | None = None,
    ) -> "Gallery":
        """Create INDEX_DIR for ``embedder``'s model, or open it if it exists (same model, and the
        same options where they are given: ``None`` = as recorded, or the default for a new index).
        ``embedder=None`` with ``dim``: an index of existing vectors with no model (vectors-only).
        ``local_features``: ``orb`` (default with a model: stored per shard for spatial verification)
        or ``none``; ``rerank``: the stored re-ranking preset (default ``default`` with local
        features, else ``class``; ``none`` for vectors-only and on-disk indexes)."""
        from cbir.vectors import Whitening

        root = Path(root)
        if local_features not in (None, "orb", "none"):
            raise CbirError(f"--local-features {local_features}: choose orb or none")
        given = {
            "factory": factory,
            "shard_size": shard_size,
            "dba": dba,
            "dba_alpha": dba_alpha,
            "memory_budget": memory_budget,
            "target_recall": target_recall,
            "on_disk": on_disk,
        }
        wt = Whitening.load(whitening) if whitening else None
        if (root / INDEX_JSON).is_file():
            try:
                return cls._open_existing(root, embedder, wait, {**given, "whitening": wt.fingerprint if wt else None})
            except (sqlite3.Error, CbirError):
                if (root / INDEX_JSON).is_file():
                    raise
                # a failing first build discarded the index while this one opened it: create it afresh below
        if root.exists() and not root.is_dir():
            raise CbirError(f"--index {root}: exists and is not a directory")
        _refuse_foreign(root)
        options = {k: _config.DEFAULTS[k] if v is None else v for k, v in given.items()}
        if options["shard_size"] < 1:
            raise CbirError(f"--shard-size {options['shard_size']}: must be ≥ 1")
        if embedder is None and not dim:
            raise CbirError(f"--index {root}: a new index needs a model (--model) or the vectors' dimension")
        dim = model_dim = embedder.dim if embedder is not None else dim
        if wt is not None and wt.in_dim != dim:
            raise CbirError(f"--whitening {whitening}: fitted on {wt.in_dim}-d vectors, the model gives {dim}-d")
        dim = wt.out_dim if wt else dim
        if options["factory"] == "auto":  # validate now, not after embedding
            tuning.parse_bytes(options["memory_budget"])
            if not 0 < options["target_recall"] <= 1:
                raise CbirError(f"--target-recall {options['target_recall']}: must be in (0, 1]")
        else:
            faiss_index.create(dim, options["factory"], id_map=not options["on_disk"])
        feats = (local_features or "orb") if embedder is not None else "none"
        options["local_features"] = None if feats == "none" else feats
        # vectors from elsewhere (no model) or an on-disk index: plain k-NN unless asked; images: both kinds of query
        plain = embedder is None or options["on_disk"]
        preset = rerank or ("none" if plain else "default" if options["local_features"] else "class")
        options["rerank"] = _rerank.resolve(preset=preset).to_dict()
        if options["rerank"]["verify"] and not options["local_features"]:
            raise CbirError(
                f"--rerank {rerank}: verifies, and the index would have no local features (--local-features none)"
            )
        lock = WriterLock(root)
        for attempt in range(5):  # every check is done: only now is anything written
            try:
                root.mkdir(parents=True)
                made_dir = True
            except FileExistsError:
                made_dir = False
            try:  # two first builds at once: one creates, the other waits and opens what it made
                lock.acquire(wait=True)
                break
            except DirectoryGone:  # the other one failed and removed the folder it had made: start afresh
                if attempt == 4:
                    raise
        try:
            if (root / INDEX_JSON).is_file():  # opened under the lock: its maker cannot discard it meanwhile
                return cls._open_existing(root, embedder, wait, {**given, "whitening": wt.fingerprint if wt else None})
            _refuse_foreign(root)
            if wt is not None:
                wt.save(root / "whitening.npz")
            _config.save(root, _config.new(embedder, options, dim, wt.fingerprint if wt else None, model_dim))
        finally:
            lock.release()
        g = cls(root, embedder, wait=wait)
        g.created, g._made_dir = True, made_dir
        return g

    @classmethod
    def _open_existing(cls, root: Path, embedder, wait: bool, given: dict) -> "Gallery":
        g = cls(root, embedder, wait=wait)
        g._settings = _config.check_options(root, g.config, given)
        return g

    def discard(self) -> bool:
        """Undo ``create`` after a first build failed before any shard was done: delete only what cbir
        made in INDEX_DIR (and the folder if ``create`` made it and it is empty now). Returns False,
        changing nothing, when the index holds work (another writer's included) or is being written."""
        if not self.created or not self._writer.acquire(blocking_error=False):
            return False
        try:
            if self.store.done_shards() or not (self.root / INDEX_JSON).is_file():
                return False
            self.store.close()
            import shutil

            for entry in sorted(self.root.iterdir(), key=lambda e: e.name == LOCK_NAME):  # the lock file last
                if _config.is_own_name(entry.name):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
            if self._made_dir:
                try:
                    self.root.rmdir()
                except OSError:  # something else appeared meanwhile: leave the folder
                    pass
            return True
        finally:
            self._writer.release()

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
        config.update(self._settings)
        if config.get("faiss_generation") != self.config.get("faiss_generation"):
            with self._lock:  # another writer replaced index.faiss: load it again when needed
                self._index, self._reconstructable = None, None
        self.config = config

    # -- model ---------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.config["model"]["fingerprint"]

    def check_model(self, embedder) -> None:
        if embedder.fingerprint != self.fingerprint:
            m = self.config["model"]
            raise CbirError(
                f"--model {embedder.model_path}: this index was built with another model "
                f"({m['arch']} Block {m['block']} {m['pooling']}, fingerprint {self.fingerprint}; "
                f"given {embedder.info.arch} Block {embedder.info.block} {embedder.info.pooling}, "
                f"fingerprint {embedder.fingerprint}); use that model or build a new index"
            )
        want = self.config.get("preprocess")
        if want is not None and embedder.preprocess.policy != want:
            raise CbirError(
                f"--model {embedder.model_path}: this index was built with preprocessing {want}, "
                f"the embedder uses {embedder.preprocess.policy}; its vectors would not be comparable"
            )

    def embedder(self, model: str | None = None, **kwargs):
        """The index's embedder: the one given at open, else ``model``, else the model recorded in
        index.json; always checked against the index's fingerprint and preprocessing."""
        if self._embedder is None:
            from cbir.engine.embedder import Embedder

            path = model or self.config["model_path"]
            if path is None:
                raise CbirError(
                    f"--index {self.root}: built from vectors without a model; it answers vector queries "
                    f"only (rebuild it with --model to search with images)"
                )
            if not Path(path).is_file():
                raise CbirError(
                    f"--model {path}: no such file"
                    if model
                    else f"--index {self.root}: its model {path} is gone; pass --model"
                )
            self._embedder = Embedder(path, **kwargs)
            self.check_model(self._embedder)
        return self._embedder

    @property
    def whitening(self):
        if self.config.get("whitening") and self._whitening is None:
            from cbir.vectors import Whitening

            self._whitening = Whitening.load(self.root / "whitening.npz")
        return self._whitening

    def postprocess_queries(self, v: np.ndarray) -> np.ndarray:
        return self.whitening.apply(v) if self.whitening is not None else v

    # -- building ------------------------------------------------------------------------------
    def scan(
        self, paths: Sequence[str | os.PathLike], retry_failed: bool = False, parquet=None, restore: bool = False
    ) -> _build.Scan:
        return _build.scan(self.store, self.config["shard_size"], paths, retry_failed, parquet, restore)

    def commit_shard(self, shard: int, out) -> tuple[int, int]:
        return _build.commit_shard(self.store, shard, out)

    def pending_work(self) -> list[tuple[int, list[tuple[int, str]]]]:
        return _build.pending_work(self.store)

    def process_pending(
        self, batch_size: int | None = None, progress: bool = False, distributed: dict | None = None
    ) -> dict:
        if distributed is not None:
            from cbir.index.ingest.ray import process_with_ray

            _build.adopt_outputs(self.store, self.root)
            return process_with_ray(self, batch_size=batch_size, progress=progress, **distributed)
        return _build.process_pending(self, batch_size, progress)

    def load_vectors(self, shards: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, raw vectors) of the indexed items whose current vectors are in ``shards`` (default all)."""
        return maintain.load_vectors(self.store, self.root, self.config["model"]["dim"], shards)

    def _set_index(self, index) -> None:
        """Adopt a freshly written index.faiss: record the SQLite generation it holds, swap it in."""
        self.config["faiss_generation"] = self.store.generation
        self.save_config()
        tuning.set_search_params(index, self.config.get("search"))
        with self._lock:
            self._index, self._reconstructable = index, None
            self._index_generation = self.config["faiss_generation"]

    @property
    def in_sync(self) -> bool:
        """index.faiss holds what SQLite says is indexed (same generation)."""
        return (self.root / "index.faiss").is_file() and self.config.get("faiss_generation") == self.store.generation

    def reconcile(self) -> bool:
        """Rebuild index.faiss from the shards when it is behind SQLite and no other writer is at
        work (one died between its SQLite commit and index.faiss); returns True if it rebuilt."""
        if self.in_sync or not (self.store.done_shards() or (self.root / "index.faiss").is_file()):
            return False
        if self._writer_depth == 0:
            if not self._writer.acquire(blocking_error=False):
                return False  # someone is writing: they will bring index.faiss up to date
            self._writer_depth = 1
            try:
                self._reload_config()  # the writer before us may have saved a newer one
                if self.in_sync:
                    return False
                self._set_index(maintain.rebuild(self))
            finally:
                self._writer_depth = 0
                self._writer.release()
        else:  # this object is the writer: its config is the current one
            self._set_index(maintain.rebuild(self))
        return True

    def refresh(self, reconcile_in_background: bool = True) -> bool:
        """Pick up what another process wrote (``cbir serve`` calls this before each search); True if
        a new index was swapped in. Changes are seen by index.json's ``revision`` (not its mtime) and
        SQLite's generation. index.json is read again when its (inode, mtime, size) changed, and at
        least once a second whatever they say (two writes in one clock tick, an inode reused): a
        check costs a stat and one SQLite read (~12 µs) instead of a JSON parse (~45 µs). A newer
        index.faiss that fails to load is reported in ``load_error`` and retried (at most once a
        second) while the old one keeps answering; an index.faiss left behind by a writer that died
        is rebuilt in a background thread (``reconcile``)."""
        swapped = False
        now = time.monotonic()
        if now >= self._retry_at:
            st = (self.root / INDEX_JSON).stat()
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if sig != self._config_sig or now - self._config_read_at >= 1.0:
                config = _config.load(self.root)
                self._config_sig, self._config_read_at = sig, now
                self._disk_generation = config.get("faiss_generation")
                if config.get("revision") != self.config.get("revision"):
                    swapped = self._adopt_config(config)
        if self.votes.background:
            self.votes.current()  # a change of the indexed set starts the vote index's update aside
        disk = self._disk_generation if self._disk_generation is not None else self.config.get("faiss_generation")
        if reconcile_in_background and self.store.generation != disk:  # index.faiss on disk is behind SQLite
            self._reconcile_in_background()
        return swapped

    def _adopt_config(self, config: dict) -> bool:
        loaded = self._index is not None
        if loaded and config.get("faiss_generation") != self._index_generation:
            try:
                index = faiss_index.load(self.root / "index.faiss")
            except Exception as e:  # keep answering from the index we have; try again shortly
                self.load_error = f"{self.root / 'index.faiss'}: cannot load ({type(e).__name__}: {e})"
                self._retry_at = time.monotonic() + 1.0
                self._config_sig = ()  # read index.json again on the retry
                return False
            tuning.set_search_params(index, config.get("search"))
            with self._lock:
                self._index, self._reconstructable = index, None
                self._index_generation = config.get("faiss_generation")
                self.config = config
            self.load_error = None
            return True
        if loaded and config.get("search") != self.config.get("search"):
            tuning.set_search_params(self._index, config.get("search"))  # `cbir index tune` ran
        self.config = config
        self.load_error = None
        return False

    def _reconcile_in_background(self) -> None:
        with self._lock:
            if self._reconciler is not None and self._reconciler.is_alive():
                return
            if not self._writer.acquire(blocking_error=False):
                return  # a writer is at work (it will write index.faiss): nothing died
            self._writer.release()

            def run():
                try:
                    self.reconcile()
                except Exception as e:
                    self.load_error = (
                        f"{self.root}: rebuilding index.faiss after a writer died failed ({type(e).__name__}: {e})"
                    )

            self._reconciler = threading.Thread(target=run, name="cbir-reconcile", daemon=True)
            self._reconciler.start()

    def consistency(self) -> dict:
        """Ids FAISS holds vs ids SQLite calls indexed (both empty sets = consistent)."""
        held = set(faiss_index.stored_ids(self.index).tolist())
        want = set(self.store.indexed_ids().tolist())
        return {
            "generation": self.store.generation,
            "faiss_generation": self.config.get("faiss_generation"),
            "missing_from_faiss": sorted(want - held),
            "not_indexed_in_faiss": sorted(held - want),
        }

    def tune(self, target_recall: float, max_ms: float | None = None, queries: np.ndarray | None = None) -> dict:
        """Tune nprobe / efSearch of the built index to ``target_recall`` (recall@10 vs exact search)
        and record it in index.json; returns the tuning record. ``queries`` (from ``query_vectors``):
        tune on them, and keep them (INDEX_DIR/tune-queries.npy) for every later rebuild; else the
        queries the index was tuned on before, else held-out gallery vectors. A target these queries
        cannot reach changes nothing."""
        with self.writing():
            index = self.index
            saved = (dict(self.config.get("search") or {}), self.config.get("tuning"))
            try:
                maintain.tune(self, index, target_recall, max_ms, queries=queries)
            except CbirError:
                self.config["search"], self.config["tuning"] = saved
                tuning.set_search_params(index, saved[0])
                raise
            if queries is not None:
                self.set_tune_queries(queries)
            tuning.set_search_params(index, self.config["search"])
            self.save_config()
            return self.config["tuning"]

    def set_tune_queries(self, queries: np.ndarray) -> None:
        """Keep ``queries`` (from ``query_vectors``) as the ones every later tuning of this index uses
        (INDEX_DIR/tune-queries.npy; the build's ``--factory auto`` tuning included)."""
        with self.writing():
            with fsio.atomic_path(self.root / maintain.TUNE_QUERIES, suffix=".npy") as tmp:
                np.save(tmp, np.ascontiguousarray(queries, np.float32))

    def query_vectors(self, specs: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """Post-processed, L2-normalised query vectors from ``specs``: one ``.npy`` [n, D] of raw model
        vectors, or images, folders and URIs (embedded with the index's model). Raises ``CbirError``
        in one line for a wrong dimension, an unreadable file or no usable query."""
        from cbir.vectors import l2_normalize

        specs = [os.fspath(s) for s in specs]
        if not specs:
            raise CbirError("--queries: give images, folders, URIs or one .npy of query vectors")
        if len(specs) == 1 and specs[0].endswith(".npy"):
            try:
                v = np.load(specs[0], allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CbirError(f"--queries {specs[0]}: not a readable .npy array ({e})") from None
            want = self.config["model"]["dim"]
            if v.ndim != 2 or v.dtype.kind != "f" or v.shape[1] != want:
                raise CbirError(
                    f"--queries {specs[0]}: need float vectors [n, {want}] (the index's model dimension), "
                    f"got {v.dtype} {list(v.shape)}"
                )
            v = v[np.isfinite(v).all(axis=1) & (np.abs(v).sum(axis=1) > 0)].astype(np.float32)
        else:
            from cbir.sources import expand

            items = expand(specs)
            if not items:
                raise CbirError(f"--queries {' '.join(specs)}: no images there")
            res = self.embedder().embed_files(items)
            for _, src, reason in res.errors:
                print(f"cbir: query {src}: {reason} (left out)", file=sys.stderr)
            v = res.vectors
        if len(v) == 0:
            raise CbirError(f"--queries {' '.join(specs)}: no usable query (all unreadable or empty)")
        return self.postprocess_queries(l2_normalize(np.asarray(v, np.float32)))

    def rebuild_index(self) -> None:
        """(Re)build index.faiss from the shards: [whitening] → [DBA] → FAISS."""
        with self.writing():
            self._set_index(maintain.rebuild(self))

    def build(
        self,
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
        with self.writing():
            t0 = time.perf_counter()
            scanned = self.scan(images, retry_failed, parquet, restore)
            maintain.resolve_factory(self.config, self.store.count("indexed") + self.store.count("pending"))
            work = self.process_pending(batch_size, progress, distributed)
            self._timed_features(work, progress)
            self.rebuild_index()
            return self.write_report(work, scanned, t0)

    def add(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int | None = None,
        progress: bool = False,
        retry_failed: bool = False,
        parquet=None,
        restore: bool = False,
    ) -> dict:
        """Embed only new or changed files (removed ones only with ``restore``) and update the index
        in place where FAISS allows."""
        with self.writing():
            return self._add(paths, batch_size, progress, retry_failed, parquet, restore)

    def _add(self, paths, batch_size: int, progress: bool, retry_failed: bool, parquet, restore: bool) -> dict:
        t0 = time.perf_counter()
        was_in_sync = self.in_sync
        before = self.store.pending_shards()
        scanned = self.scan(paths, retry_failed, parquet, restore)
        new_shards = self.store.pending_shards()
        changed = [i for s in new_shards for i, _ in self.store.shard_items(s)]
        work = self.process_pending(batch_size, progress)
        self._timed_features(work, progress)
        if before or not was_in_sync:  # an interrupted write left work behind: rebuild from the shards
            self.rebuild_index()
        else:
            self._set_index(maintain.update(self, np.array(changed, np.int64), new_shards))
        return self.write_report(work, scanned, t0)

    def _timed_features(self, work: dict, progress: bool) -> None:
        t0 = time.perf_counter()
        warnings = work.setdefault("warnings", [])
        if self.extract_features(
            progress, on_problem=lambda p, r: warnings.append({"path": p, "stage": "local features", "error": r})
        ):
            work["timings"]["local_features"] = round(time.perf_counter() - t0, 4)

    def extract_features(
        self, progress: bool = False, enable: bool = False, on_problem: Callable[[str, str], None] | None = None
    ) -> int:
        """Local features for every done shard lacking them (resumable per shard); ``enable`` turns
        them on for an index built without, and writes again those of an older version that lack
        the frame size (``cbir index features``). Returns shards written.
        ``on_problem(path, reason)``: an image that gave no features because of an error (it stays
        indexed and verifies nothing)."""
        with self.writing():
            if enable and not self.config.get("local_features"):
                if self.config["model"]["arch"] == "vectors-only":
                    raise CbirError(
                        f"--index {self.root}: built from vectors, it has no images to take local features from"
                    )
                self.config["local_features"] = _features.KIND
                self.save_config()
            if not self.config.get("local_features"):
                return 0
            return _features.ensure(self.store, self.root, progress, on_problem, upgrade=enable)

    def remove(self, paths: Sequence[str | os.PathLike]) -> dict:
        """Remove files (or everything under folders) from the index by path; files need not exist."""
        with self.writing():
            ids = sorted({i for p in paths for i in self.store.ids_under(item_key(p))})
            if not ids:
                raise CbirError(f"{', '.join(map(str, paths))}: not in the index")
            in_sync = self.in_sync
            with self.store.transaction():
                self.store.mark_removed(ids)
            crashpoints.hit("removed-committed")
            if in_sync:
                self._set_index(maintain.update(self, np.array(ids, np.int64)))
            else:  # index.faiss was already behind (an earlier crash): rebuild, do not patch
                self._set_index(maintain.rebuild(self))
            return {"removed": len(ids), "count": self.store.count("indexed")}

    def write_report(self, work: dict, scanned: _build.Scan, t0: float) -> dict:
        """report.json (and the return value) of a build or add: counts, failures, timings."""
        timings = dict(work["timings"])
        timings["total"] = round(time.perf_counter() - t0, 3)
        report = {
            "indexed": work["indexed"],
            "failed": self.store.failed(),
            "skipped": scanned.unchanged,
            "still_failed": scanned.still_failed,
            "still_removed": scanned.still_removed,
            "queued": scanned.queued,
            "warnings": work.get("warnings", []),
            "count": self.store.count("indexed"),
            "timings": timings,
        }
        fsio.write_json(self.root / "report.json", report)
        return report

    # -- reading -------------------------------------------------------------------------------
    def info(self) -> dict:
        c = self.config
        return {
            "count": self.store.count("indexed"),
            "dim": c["dim"],
            "model": c["model"],
            "model_path": c["model_path"],
            "preprocess": c.get("preprocess"),
            "factory": c["factory"],
            "index_factory": c.get("index_factory", c["factory"]),
            "search": c.get("search", {}),
            "tuning": c.get("tuning"),
            "index_bytes": c.get("index_bytes"),
            "trained_on": c.get("trained_on", 0),
            "whitening": c.get("whitening"),
            "dba": c.get("dba", 0),
            "failed": self.store.count("failed"),
            "removed": self.store.count("removed"),
            "pending_shards": len(self.store.pending_shards()),
            "shards": len(self.store.done_shards()),
            "path": str(self.root),
        }

    @property
    def index(self):
        if self._index is None:
            self.reconcile()
        with self._lock:
            if self._index is None:
                path = self.root / "index.faiss"
                if not path.is_file():
                    raise CbirError(
                        f"--index {self.root}: no index.faiss yet (the build did not finish: run `cbir index build --resume`)"
                    )
                index = faiss_index.load(path)
                tuning.set_search_params(index, self.config.get("search"))
                self._index, self._index_generation = index, self.config.get("faiss_generation")
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
                if self.search_device:
                    from cbir.index.ann.torch_flat import TorchFlat

                    searched = TorchFlat(index, self.search_device)
                else:
                    searched = faiss_index.to_gpu(index) if faiss_index.gpu_available() else index
                self._snap = Snapshot(index, searched, self._index_generation if current else None)
            return self._snap

    def vectors_for(self, ids: np.ndarray, snap: Snapshot | None = None) -> np.ndarray:
        """Stored (post-processed) vectors for ids [q, n] -> [q, n, D], from the snapshot's FAISS index
        (default: the current one; a search passes its own); zeros for -1 and for ids it does not hold."""
        snap = snap or self.snapshot()
        flat = np.asarray(ids, np.int64).reshape(-1)
        out = np.zeros((len(flat), self.config["dim"]), np.float32)
        valid = (flat >= 0) & snap.holds(flat)
        if valid.any():
            index = snap.cpu
            with self._lock:
                if self._reconstructable is not index:
                    faiss_index.enable_reconstruct(index)
                    self._reconstructable = index
            out[valid] = index.reconstruct_batch(flat[valid])
        return out.reshape(*np.shape(ids), -1)

    def rerank_config(self, rerank: "Rerank | str | dict | None" = None, budget: Budget = DEFAULT_BUDGET) -> Rerank:
        """The re-ranking of a search: the index's stored settings (index.json ``rerank``; none for an
        index made before it existed), or a preset name, a dict of overrides, or a ``Rerank``;
        refused when it would cost more than ``budget`` (``rerank.check_budget``)."""
        if isinstance(rerank, Rerank):
            cfg = rerank
        elif isinstance(rerank, str):
            cfg = _rerank.resolve(preset=rerank)
        else:
            cfg = _rerank.resolve(self.config.get("rerank"), **(rerank or {}))
        if cfg.verify and not self.config.get("local_features"):
            raise CbirError(
                f"--index {self.root}: built without local features, so nothing can be verified; "
                f"add them with `cbir index features {self.root}`, or search without verification "
                f"(--rerank class, or --verify 0)"
            )
        if cfg.regional and not self.num_regions:
            raise CbirError(
                f"--index {self.root}: its model has no regional descriptors, so nothing can be re-ranked "
                f"by regions; export the model with `cbir export ... --regions` and build an index with "
                f"it, or search with --regional 0"
            )
        _rerank.check_budget(cfg, self.config["dim"], self.num_regions, budget)
        return cfg

    @property
    def num_regions(self) -> int:
        """Regional descriptors per item stored by this index (its model's ``--regions``; 0: none)."""
        return int(self.config["model"].get("extra", {}).get("regions", 0))

    def regions_of(self, ids: np.ndarray):
        """(regional descriptors [n, R, D] post-processed like the vectors, present [n]) or None."""
        if self._regions is None:
            self._regions = RegionStore(self.store, self.root)
        got = self._regions.get(ids)
        if got is None or self.whitening is None:
            return got
        g, has = got
        n, r, d = g.shape
        return self.whitening.apply(g.reshape(n * r, d)).reshape(n, r, -1) * has[:, None, None], has

    @property
    def features(self) -> FeatureStore:
        if self._features is None:
            self._features = FeatureStore(self.store, self.root)
        return self._features

    def verifier(
        self,
        query_features: Sequence,
        min_inliers: int,
        deadline: Deadline = NEVER,
        notes: Sequence[Notes] | None = None,
    ) -> Callable[[int, np.ndarray], np.ndarray]:
        """verify(query row, candidate ids) -> RANSAC inliers, from the stored local features
        (``local_features.verify``: guided re-matching when none reaches ``min_inliers``, none past the
        first when its inliers reach ``rerank.SURE`` of the query's keypoints); -1 (not checked) past
        ``deadline`` or when it fails on that query (``cascade.guarded``)."""

        def verify(row: int, ids: np.ndarray) -> np.ndarray:
            qf = query_features[row]
            unchecked = np.full(len(ids), -1, np.int64)
            if qf is None:
                return unchecked
            return guarded(
                "verify",
                notes[row] if notes else None,
                deadline,
                lambda: local_features.verify(
                    [(qf, r) for r in self.features.get(ids)],
                    min_inliers,
                    _verify_pool().map,
                    _rerank.sure_inliers(qf, min_inliers),
                ),
                unchecked,
            )

        return verify

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
        return self._search(
            self.postprocess_queries(np.asarray(queries, np.float32)),
            k,
            rerank,
            nprobe,
            ef_search,
            query_features,
            snap,
            deadline,
            notes,
        )

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
        verify = None
        if cfg.verify and query_features is not None:
            verify = self.verifier(query_features, cfg.min_inliers, deadline, notes)
        sims, ids, inl = _search.search(
            index, q, k, cfg, lambda i: self.vectors_for(i, snap), verify, params, self.regions_of, stale
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
        """Embed query images and search them through the cascade (``cascade``); bad query images
        get an ``error`` entry instead of results. With verification on, the queries' local features
        are extracted too. An answer whose stages failed or were skipped past ``deadline`` says so
        (``failed``, ``partial``)."""
        cfg = self.rerank_config(rerank)
        emb = self.embedder()
        res = emb.embed_files(list(images))
        feats = None
        if cfg.verify and len(res.indices):
            feats = list(_verify_pool().map(lambda i: _query_features(images[i]), res.indices))
        snap = self.snapshot()
        notes = [Notes() for _ in res.indices]
        hits = (
            self.search_vectors(res.vectors, k, cfg, nprobe, ef_search, feats, snap, deadline, notes)
            if len(res.vectors)
            else []
        )
        out: list[dict] = [{} for _ in images]
        for j, pos in enumerate(res.indices):
            h = second_look(
                self,
                images[pos],
                res.vectors[j],
                hits[j],
                k,
                cfg,
                feats[j] if feats else None,
                snap,
                deadline,
                notes[j],
            )
            out[pos] = {"query": str(images[pos]), "results": [h_.__dict__ for h_ in h]}
            if notes[j].partial or notes[j].failed:
                out[pos].update(partial=notes[j].partial, skipped=notes[j].skipped, failed=notes[j].failed)
        for pos, src, reason in res.errors:
            out[pos] = {"query": str(images[pos]), "error": reason, "results": []}
        return out

    def search_scrambled(
        self, source, vector: np.ndarray, hits: list[Hit], k: int, snap: Snapshot | None = None
    ) -> list[Hit]:
        """``hits``, or — when nothing in them verified and the query image ``source`` has no spatial
        structure left (``colour.scrambled``: its pixels were shuffled) — ``search_colour``. Only such
        queries pay for decoding ``source`` again (~1 ms for the structure, beside the windows' five
        embeddings that an unverified query pays anyway)."""
        if any(h.verified for h in hits):
            return hits
        try:
            stats = colour.row_stats(self.embedder().preprocess(source))
        except ImageError:  # it was embedded, so it decodes; if not, the hits stand
            return hits
        if not colour.scrambled(stats):
            return hits
        return self.search_colour(stats[:3], vector, k, snap) or hits

    def search_colour(
        self, mean: np.ndarray, vector: np.ndarray, k: int, snap: Snapshot | None = None
    ) -> list[Hit] | None:
        """A query whose pixels were shuffled (``engine.colour.scrambled``): its k nearest items by
        mean colour (RGB distance), the only thing a shuffle keeps; scores are the usual cosines,
        nothing is verified. None when no indexed item has a stored colour (older builds)."""
        if self._colours is None:
            self._colours = ColourStore(self.store, self.root)
        snap = snap or self.snapshot()
        ids, cols = self._colours.all()
        live = snap.live(self.store, ids)
        ids, cols = ids[live], cols[live]
        if not len(ids):
            return None
        order = np.argsort(np.linalg.norm(cols - np.asarray(mean, np.float32), axis=1), kind="stable")[:k]
        top = ids[order]
        scores = self.vectors_for(top, snap) @ self.postprocess_queries(np.asarray(vector, np.float32)[None])[0]
        paths = self.store.paths_of(top)
        return [
            Hit(int(i), paths[int(i)], float(s), False, None, "colour") for i, s in zip(top, scores) if int(i) in paths
        ]

    def vote_index(self):
        """The descriptor-vote state (``votes.VoteState``) of the indexed items' stored ORB features,
        kept in step with the indexed set by ``votes`` (a ``VoteCache``); None when none exists yet."""
        return self.votes.current()

    def _voted(self, source, name: str, features, snap: Snapshot) -> list[tuple]:
        """(query variants, item id) pairs to verify by descriptor votes: the ``VOTES`` items with the
        most matches to the query's ``features``, and — when the query's shape is more than
        ``STRETCH`` away from one of the gallery's common shapes — to the query stretched to it.
        Only items ``snap`` holds and SQLite still calls indexed."""
        state = self.vote_index()
        aspects = state.common if state is not None else []
        variants = [features]
        qa = local_features.aspect(local_features.primary(features))
        targets = [a for a in aspects if qa is not None and max(qa / a, a / qa) > local_features.STRETCH]
        if targets:
            try:
                img = local_features.gray(source, name)
            except (ImageError, OSError):
                img = None
            variants += [local_features.restretched(img, a) for a in targets] if img is not None else []
        pairs = [(v, i) for v in variants for i in _votes.vote(state, v, _rerank.VOTES)]
        live = snap.live(self.store, [i for _, i in pairs]) if pairs else []
        return [p for p, ok in zip(pairs, live) if ok]

    def search_windows(
        self,
        source,
        hits: list[Hit],
        k: int,
        cfg: Rerank,
        features=None,
        snap: Snapshot | None = None,
        deadline: Deadline = NEVER,
    ) -> list[Hit]:
        """``rerank.partial`` for one query image whose ``hits`` hold nothing verified: its windows
        searched and verified on their own (see ``cbir.index.query.rerank``), and the query's own
        ``features`` (``extract_query`` variants, when given) verified against the items sharing the
        most ORB matches with it (``_voted``: as it is and stretched back to the gallery's common
        shapes); verified ones first, then ``hits`` without them. ``hits`` as they are when the
        pass is off or finds nothing."""
        if not (cfg.verify and cfg.partial) or any(h.verified for h in hits):
            return hits
        name = str(source) if isinstance(source, (str, os.PathLike)) else "<query>"
        try:
            win = local_features.windows(source, name, content=True)
        except (ImageError, OSError):  # the query was embedded; windows it cannot give just find nothing more
            return hits
        res = self.embedder().embed_files(win.crops)
        if not len(res.indices) or deadline.expired:
            return hits
        snap = snap or self.snapshot()
        wvec = self.postprocess_queries(res.vectors)
        sims, ids = _search.knn(snap.cpu, wvec, min(cfg.partial, snap.cpu.ntotal), None, snap.stale(self.store))
        best: dict[int, float] = {}
        pairs = []  # (query features, candidate)
        for w, srow, irow in zip(res.indices, sims, ids):
            top = 1 if w >= len(local_features.WINDOWS) else len(irow)  # the layout box: its nearest only
            for s_, i in zip(srow[:top], irow[:top]):
                if i >= 0:
                    pairs.append((win.features[w], int(i)))
                    best[int(i)] = max(best.get(int(i), -np.inf), float(s_))
        voted = self._voted(source, name, features, snap) if features is not None else []
        if voted:  # their score: the best window's cosine, like the windows' own candidates
            ids_ = np.array([i for _, i in voted], np.int64)
            for i, c in zip(ids_.tolist(), (self.vectors_for(ids_, snap) @ wvec.T).max(1)):
                best[i] = max(best.get(i, -np.inf), float(c))
        recs = dict(zip(best, self.features.get(np.array(list(best), np.int64))))
        inl = list(local_features.verify([(q, recs[i]) for q, i in pairs], cfg.min_inliers, _verify_pool().map))
        # the voted items on the first fit only: guided re-matching rests on the CNN calling a
        # candidate near, and re-matched chance votes verified AugLy negatives (BENCHMARKS.md)
        inl += list(
            _verify_pool().map(
                lambda p: local_features.inliers(p[0], recs[p[1]]) if recs[p[1]] is not None else 0, voted
            )
        )
        pairs += voted
        found: dict[int, int] = {}
        for (_, i), n in zip(pairs, inl):
            if n >= cfg.min_inliers:
                found[i] = max(found.get(i, 0), int(n))
        if not found:
            return hits
        paths = self.store.paths_of(list(found))
        first = [
            Hit(i, paths[i], best[i], True, n) for i, n in sorted(found.items(), key=lambda t: -t[1]) if i in paths
        ]
        return (first + [h for h in hits if h.id not in found])[:k]

    def close(self) -> None:
        self.store.close()
