"""The index directory: build (resumable), add, remove, info and search.

Layout of INDEX_DIR:
- ``index.json``  model facts + fingerprint, model path, factory, post-processing (whitening, DBA)
- ``meta.sqlite`` items and shards (``store``)
- ``shards/``     raw vectors per shard (``shards``), the source of truth
- ``index.faiss`` the FAISS index, derived from the shards (rebuilt when needed)
- ``report.json`` what the last build/add did

Resume: files are assigned to shards (``shard_size``, default 1,024) before any work; a shard is
embedded whole and committed (vector file, then one SQLite transaction marking it done). A job
killed at any point redoes only the unfinished shards, so every image ends up exactly once.
Building again over an existing index directory resumes it (``--resume`` says so explicitly).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cbir.errors import CbirError
from cbir.index import faiss_index, qe
from cbir.index.shards import ShardOutput, embed_shard, read_shard, shard_path
from cbir.index.store import Store
from cbir.index.walk import find_images

SHARD_SIZE = 1024
INDEX_JSON = "index.json"


@dataclass
class Hit:
    id: int
    path: str
    score: float


def _progress_bar(total: int, enabled: bool):
    if not (enabled and total):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class Gallery:
    """An index directory. Open an existing one with ``Gallery(dir)``; create with ``Gallery.create``."""

    def __init__(self, root: str | os.PathLike, embedder=None):
        self.root = Path(root)
        cfg = self.root / INDEX_JSON
        if not cfg.is_file():
            raise CbirError(f"--index {self.root}: not a cbir index directory (no {INDEX_JSON})")
        try:
            self.config = json.loads(cfg.read_text())
        except ValueError as e:
            raise CbirError(f"{cfg}: unreadable ({e})") from None
        self.store = Store(self.root / "meta.sqlite")
        self._embedder = embedder
        self._index = None
        self._gpu_index = self._gpu_source = None
        self._whitening = None
        if embedder is not None:
            self.check_model(embedder)

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, embedder, factory: str = "Flat", shard_size: int = SHARD_SIZE,
               whitening: str | None = None, dba: int = 0, dba_alpha: float = 0.0) -> "Gallery":
        """Create INDEX_DIR for ``embedder``'s model, or open it if it exists (same model only)."""
        root = Path(root)
        if (root / INDEX_JSON).is_file():
            return cls(root, embedder)
        if root.exists() and not root.is_dir():
            raise CbirError(f"--index {root}: exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        dim = embedder.dim
        wt = None
        if whitening:
            from cbir.models.whitening import Whitening

            wt = Whitening.load(whitening)
            if wt.in_dim != dim:
                raise CbirError(f"--whitening {whitening}: fitted on {wt.in_dim}-d vectors, the model gives {dim}-d")
            wt.save(root / "whitening.npz")
            dim = wt.out_dim
        faiss_index.create(dim, factory)  # validate the factory string now, not after embedding
        if shard_size < 1:
            raise CbirError(f"--shard-size {shard_size}: must be ≥ 1")
        from cbir import __version__

        _atomic_json(root / INDEX_JSON, {
            "model": embedder.info.public(), "model_path": os.path.abspath(embedder.model_path),
            "factory": factory, "dim": dim, "shard_size": shard_size,
            "whitening": wt.fingerprint if wt else None, "dba": dba, "dba_alpha": dba_alpha,
            "trained_on": 0, "cbir_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return cls(root, embedder)

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
                f"fingerprint {embedder.fingerprint}); use that model or build a new index")

    def embedder(self, model: str | None = None, **kwargs):
        """The index's embedder: the one given at open, else ``model``, else the model recorded in
        index.json; always checked against the index's fingerprint."""
        if self._embedder is None:
            from cbir.engine.embedder import Embedder

            path = model or self.config["model_path"]
            if not Path(path).is_file():
                raise CbirError(f"--model {path}: no such file" if model else f"--index {self.root}: its model {path} is gone; pass --model")
            self._embedder = Embedder(path, **kwargs)
            self.check_model(self._embedder)
        return self._embedder

    @property
    def whitening(self):
        if self.config.get("whitening") and self._whitening is None:
            from cbir.models.whitening import Whitening

            self._whitening = Whitening.load(self.root / "whitening.npz")
        return self._whitening

    def postprocess_queries(self, v: np.ndarray) -> np.ndarray:
        return self.whitening.apply(v) if self.whitening is not None else v

    # -- building ------------------------------------------------------------------------------
    def scan(self, paths: Sequence[str | os.PathLike]) -> tuple[int, list[str]]:
        """Register new or changed image files as pending in new shards; returns (queued, unchanged)."""
        files = find_images(paths)
        known = self.store.items_by_paths()
        shard_size = self.config["shard_size"]
        queued, skipped = 0, []
        with self.store.transaction():
            shard, in_shard = None, 0
            for p in files:
                key = os.path.abspath(p)
                try:
                    st = os.stat(p)
                    size, mtime = st.st_size, st.st_mtime
                except OSError:
                    size, mtime = -1, -1.0  # dangling link or unreadable: it will fail and be reported
                old = known.get(key)
                if old is not None:
                    item_id, osize, omtime, state = old
                    if state != "removed" and osize == size and omtime == mtime:
                        skipped.append(key)
                        continue
                if shard is None or in_shard >= shard_size:
                    shard, in_shard = self.store.new_shard(), 0
                if old is None:
                    self.store.add_item(key, size, mtime, shard)
                else:
                    self.store.requeue_item(old[0], size, mtime, shard)
                in_shard += 1
                queued += 1
        return queued, skipped

    def commit_shard(self, shard: int, out: ShardOutput) -> tuple[int, int]:
        """Mark a shard done from its output file's rows, in one transaction; returns (indexed, failed)."""
        with self.store.transaction():
            self.store.finish_shard(
                shard, [(int(i), str(h), int(s)) for i, h, s in zip(out.ids, out.sha1, out.size)],
                [(int(i), str(r)) for i, r in zip(out.failed_ids, out.failed_reasons)])
        return len(out.ids), len(out.failed_ids)

    def adopt_outputs(self) -> int:
        """Commit pending shards whose output file is complete (a worker finished it, the
        coordinator died before committing); returns how many were adopted."""
        adopted = 0
        for shard in self.store.pending_shards():
            if not shard_path(self.root, shard).is_file():
                continue
            out = read_shard(self.root, shard)
            if out.item_ids() == {i for i, _ in self.store.shard_items(shard)}:
                self.commit_shard(shard, out)
                adopted += 1
        return adopted

    def pending_work(self) -> list[tuple[int, list[tuple[int, str]]]]:
        return [(s, self.store.shard_items(s)) for s in self.store.pending_shards()]

    def process_pending(self, batch_size: int = 32, progress: bool = False, distributed: dict | None = None) -> dict:
        """Embed every pending shard (here, or on Ray with ``distributed``) and commit each as it
        finishes; returns counts and stage timings."""
        self.adopt_outputs()
        if distributed is not None:
            from cbir.index.distributed import process_with_ray

            return process_with_ray(self, batch_size=batch_size, progress=progress, **distributed)
        from cbir.engine.bulk import Timings

        emb = self.embedder()
        timings = Timings()
        work = self.pending_work()
        bar = _progress_bar(sum(len(items) for _, items in work), progress)
        indexed = failed = 0
        for shard, items in work:
            out = embed_shard(emb, self.root, shard, items, batch_size, timings, bar.update if bar else None)
            n_ok, n_bad = self.commit_shard(shard, out)
            indexed += n_ok
            failed += n_bad
        if bar is not None:
            bar.close()
        return {"indexed": indexed, "failed_now": failed, "timings": timings.as_dict()}

    def load_vectors(self, shards: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, raw vectors) of the indexed items whose current vectors are in ``shards`` (default all)."""
        ids_parts, vec_parts = [], []
        for shard in self.store.done_shards() if shards is None else shards:
            live = self.store.indexed_ids_of_shard(shard)
            if not live:
                continue
            out = read_shard(self.root, shard)
            ids, vecs = out.ids, out.vectors
            keep = np.fromiter((i in live for i in ids), bool, len(ids))
            ids_parts.append(ids[keep])
            vec_parts.append(vecs[keep])
        dim = self.config["model"]["dim"]
        if not ids_parts:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        return np.concatenate(ids_parts), np.concatenate(vec_parts)

    def rebuild_index(self) -> None:
        """(Re)build index.faiss from the shards: [whitening] → [DBA] → FAISS."""
        ids, vecs = self.load_vectors()
        vecs = self.postprocess_queries(vecs) if len(vecs) else np.empty((0, self.config["dim"]), np.float32)
        if self.config.get("dba") and len(vecs):
            vecs = qe.dba(vecs, int(self.config["dba"]), float(self.config.get("dba_alpha", 0.0)))
        index, trained = faiss_index.build(vecs, ids, self.config["factory"])
        faiss_index.save(index, self.root / "index.faiss")
        self.config["trained_on"] = trained
        _atomic_json(self.root / INDEX_JSON, self.config)
        self._index = index

    def update_index(self, changed_ids: np.ndarray, new_shards: Sequence[int] = ()) -> None:
        """Update index.faiss in place: drop ``changed_ids``, add the vectors of ``new_shards``.
        Falls back to a full rebuild for DBA and for index types that cannot remove ids."""
        path = self.root / "index.faiss"
        if self.config.get("dba") or not path.is_file():
            return self.rebuild_index()
        index = faiss_index.load(path)
        if not faiss_index.remove(index, changed_ids):
            return self.rebuild_index()
        ids, vecs = self.load_vectors(new_shards)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(self.postprocess_queries(vecs), np.float32), ids)
        faiss_index.save(index, path)
        self._index = index

    def build(self, images: Sequence[str | os.PathLike], batch_size: int = 32, progress: bool = False,
              distributed: dict | None = None) -> dict:
        """Scan, embed pending shards, build the FAISS index, write report.json."""
        t0 = time.perf_counter()
        queued, skipped = self.scan(images)
        work = self.process_pending(batch_size, progress, distributed)
        self.rebuild_index()
        return self._report(work, skipped, queued, t0)

    def add(self, paths: Sequence[str | os.PathLike], batch_size: int = 32, progress: bool = False) -> dict:
        """Embed only new or changed files and update the index in place where FAISS allows."""
        t0 = time.perf_counter()
        before = self.store.pending_shards()
        queued, skipped = self.scan(paths)
        new_shards = self.store.pending_shards()
        changed = [i for s in new_shards for i, _ in self.store.shard_items(s)]
        work = self.process_pending(batch_size, progress)
        if before:  # an interrupted build/add left shards behind: they are done now, rebuild
            self.rebuild_index()
        else:
            self.update_index(np.array(changed, np.int64), new_shards)
        return self._report(work, skipped, queued, t0)

    def remove(self, paths: Sequence[str | os.PathLike]) -> dict:
        """Remove files (or everything under folders) from the index by path; files need not exist."""
        ids = sorted({i for p in paths for i in self.store.ids_under(os.path.abspath(p))})
        if not ids:
            raise CbirError(f"{', '.join(map(str, paths))}: not in the index")
        with self.store.transaction():
            self.store.mark_removed(ids)
        self.update_index(np.array(ids, np.int64))
        return {"removed": len(ids), "count": self.store.count("indexed")}

    def _report(self, work: dict, skipped: list[str], queued: int, t0: float) -> dict:
        timings = dict(work["timings"])
        timings["total"] = round(time.perf_counter() - t0, 3)
        report = {"indexed": work["indexed"], "failed": self.store.failed(), "skipped": skipped,
                  "queued": queued, "count": self.store.count("indexed"), "timings": timings}
        _atomic_json(self.root / "report.json", report)
        return report

    # -- reading -------------------------------------------------------------------------------
    def info(self) -> dict:
        c = self.config
        return {"count": self.store.count("indexed"), "dim": c["dim"], "model": c["model"], "model_path": c["model_path"],
                "factory": c["factory"], "trained_on": c.get("trained_on", 0), "whitening": c.get("whitening"),
                "dba": c.get("dba", 0), "failed": self.store.count("failed"), "removed": self.store.count("removed"),
                "pending_shards": len(self.store.pending_shards()), "shards": len(self.store.done_shards()),
                "path": str(self.root)}

    @property
    def index(self):
        if self._index is None:
            path = self.root / "index.faiss"
            if not path.is_file():
                raise CbirError(f"--index {self.root}: no index.faiss yet (the build did not finish: run `cbir index build --resume`)")
            self._index = faiss_index.load(path)
        return self._index

    @property
    def search_index(self):
        """The index searches run on: a GPU copy when faiss-gpu sees a GPU (k ≤ 2048), else the CPU index."""
        if self._gpu_index is None or self._gpu_source is not self.index:
            self._gpu_source = self.index
            self._gpu_index = faiss_index.to_gpu(self.index) if faiss_index.gpu_available() else self.index
        return self._gpu_index

    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        """Stored (post-processed) vectors for ids [q, n] -> [q, n, D], from the FAISS index."""
        flat = ids.reshape(-1)
        out = np.zeros((len(flat), self.config["dim"]), np.float32)
        valid = flat >= 0
        if valid.any():
            faiss_index.enable_reconstruct(self.index)
            out[valid] = self.index.reconstruct_batch(flat[valid])
        return out.reshape(*ids.shape, -1)

    def search_vectors(self, queries: np.ndarray, k: int = 10, qe_n: int = 0, qe_alpha: float = 0.0) -> list[list[Hit]]:
        """Search with already-embedded query vectors (raw model output)."""
        if k < 1:
            raise CbirError(f"-k {k}: must be ≥ 1")
        q = self.postprocess_queries(np.asarray(queries, np.float32))
        index = self.search_index
        if index is not self.index and max(k, qe_n) > faiss_index.GPU_MAX_K:
            index = self.index  # GPU k-selection is limited to 2048
        if qe_n > 0:
            sims, ids = faiss_index.search(index, q, qe_n)
            q = qe.expand(q, self.vectors_for(ids), np.where(ids >= 0, sims, 0.0), qe_alpha)
        sims, ids = faiss_index.search(index, q, k)
        paths = self.store.paths_for_ids(np.unique(ids))
        return [[Hit(int(i), paths[int(i)], float(s)) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(sims, ids)]

    def search(self, images: Sequence, k: int = 10, qe_n: int = 0, qe_alpha: float = 0.0) -> list[dict]:
        """Embed query images and search; bad query images get an ``error`` entry instead of results."""
        emb = self.embedder()
        res = emb.embed_files(list(images))
        hits = self.search_vectors(res.vectors, k, qe_n, qe_alpha) if len(res.vectors) else []
        out: list[dict] = [{} for _ in images]
        for pos, h in zip(res.indices, hits):
            out[pos] = {"query": str(images[pos]), "results": [h_.__dict__ for h_ in h]}
        for pos, src, reason in res.errors:
            out[pos] = {"query": str(images[pos]), "error": reason, "results": []}
        return out

    def close(self) -> None:
        self.store.close()
