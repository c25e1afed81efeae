"""Vectors in: index embeddings that already exist (``cbir index build --from-vectors``).

Sources: one ``.npy`` file [N, D] (float32/float16/float64) or a folder of them (sorted by name,
rows concatenated), read memory-mapped one shard at a time; ``--paths`` a text file with one path or
URI per line, the same count and order as the rows. The vectors must come from the index's model
(same dimension; the user vouches for the model, since the fingerprint cannot be checked) and are
L2-normalised on the way in (inner product = cosine). A row with a non-finite value is reported as
failed, like a broken image. The work is the same shard unit as an image build: rows are assigned to
shards first, each shard's output file is written and committed, so a killed ingest resumes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.index.ingest.pipeline import Scan, commit_shard, progress_bar
from cbir.index.storage.shards import ShardOutput, write_shard
from cbir.vectors import l2_normalize


class VectorSource:
    """Rows of one or more .npy files as one [N, D] sequence, memory-mapped."""

    def __init__(self, src: str | os.PathLike):
        src = Path(src)
        files = sorted(src.glob("*.npy")) if src.is_dir() else [src]
        if not files or not all(f.is_file() for f in files):
            raise CbirError(f"--from-vectors {src}: no .npy file there")
        self.files, shapes = files, []
        for f in files:
            a = self._open(f)
            if a.ndim != 2 or a.dtype.kind != "f":
                raise CbirError(f"--from-vectors {f}: need a 2-d float array [N, D], got {a.dtype} {a.shape}")
            shapes.append(a.shape)
        dims = {s[1] for s in shapes}
        if len(dims) != 1:
            raise CbirError(f"--from-vectors {src}: files differ in dimension {sorted(dims)}")
        self.dim = dims.pop()
        self.offsets = np.cumsum([0] + [s[0] for s in shapes])
        self.source = str(src)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @staticmethod
    def _open(f: Path) -> np.ndarray:
        try:
            return np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CbirError(f"--from-vectors {f}: not a readable .npy array ({e})") from None

    def rows(self, index: np.ndarray) -> np.ndarray:
        """float32 rows at global positions ``index`` (any order). Each call maps the files afresh and
        unmaps them on return, so the pages read do not pile up in this process's resident set."""
        out = np.empty((len(index), self.dim), np.float32)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        for f in np.unique(which):
            sel = which == f
            out[sel] = self._open(self.files[f])[index[sel] - self.offsets[f]]
        return out


def read_paths(path: str | os.PathLike, expected: int) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CbirError(f"--paths {path}: cannot read ({e})") from None
    paths = [line.strip() for line in lines if line.strip()]
    if len(paths) != expected:
        raise CbirError(f"--paths {path}: {len(paths)} paths for {expected} vectors; one path per row is needed")
    seen: set[str] = set()
    for p in paths:
        if p in seen:
            raise CbirError(f"--paths {path}: {p!r} appears twice; every row needs its own path")
        seen.add(p)
    return paths


def check_dim(source: VectorSource, dim: int) -> None:
    if source.dim != dim:
        raise CbirError(f"--from-vectors {source.source}: {source.dim}-d vectors, the model gives {dim}-d")


def ingest(gallery, source: VectorSource, paths: list[str], progress: bool = False, restore: bool = False) -> dict:
    """Register rows as items in shards, write and commit each shard; returns the build report.
    Rows of items removed earlier stay out unless ``restore``."""
    with gallery.writing():
        return _ingest(gallery, source, paths, progress, restore)


def _ingest(gallery, source: VectorSource, paths: list[str], progress: bool, restore: bool) -> dict:
    t0 = time.perf_counter()
    check_dim(source, gallery.settings.model_dim)
    store, shard_size = gallery.store, gallery.settings.shard_size
    scan, work = _plan(store, paths, shard_size, restore)
    indexed, failed = _write(gallery, source, work, progress)
    wall = time.perf_counter() - t0
    gallery.rebuild_index()
    timings = {
        "wall": round(wall, 3),
        "images": indexed,
        "failed": failed,
        "images_per_s": round(indexed / wall, 2) if wall > 0 else 0.0,
    }
    return gallery.write_report({"indexed": indexed, "timings": timings}, scan, t0)


def _plan(store, paths: list[str], shard_size: int, restore: bool) -> tuple[Scan, list[tuple]]:
    """(what the scan found, the work: (shard, item ids, source rows) per shard — the shards an
    interrupted ingest left pending first), new items and shards committed to SQLite."""
    known = store.items_by_paths() if store.count() else {}
    earlier = store.pending_shards()  # an interrupted ingest: its items find their rows by path
    scan = Scan()
    work: list[tuple[int, np.ndarray, np.ndarray]] = []  # (shard, item ids, source rows)
    with store.transaction():
        next_id = store.next_item_id()
        ids: list[int] = []
        rows: list[int] = []
        new: list[tuple] = []

        def close_shard() -> None:
            shard = store.new_shard()
            store.add_items([(i, p, shard) for i, p in new])
            fresh = {i for i, _ in new}
            for item_id in ids:
                if item_id not in fresh:  # a removed item coming back keeps its id
                    store.requeue_item(item_id, -1, -1.0, shard)
            work.append((shard, np.array(ids, np.int64), np.array(rows, np.int64)))
            ids.clear(), rows.clear(), new.clear()

        for row, p in enumerate(paths):
            old = known.get(p)
            if old is not None and old[3] != "removed":
                scan.unchanged.append(p)
                continue
            if old is not None and not restore:
                scan.still_removed.append(p)
                continue
            if old is None:
                ids.append(next_id)
                new.append((next_id, p))
                next_id += 1
            else:
                ids.append(old[0])
            rows.append(row)
            scan.queued += 1
            if len(ids) >= shard_size:
                close_shard()
        if ids:
            close_shard()
    if earlier:
        row_of = {p: i for i, p in enumerate(paths)}
        for shard in earlier:
            items = store.shard_items(shard, "pending")
            work.insert(
                0,
                (
                    shard,
                    np.array([i for i, _ in items], np.int64),
                    np.array([row_of.get(p, -1) for _, p in items], np.int64),
                ),
            )
    return scan, work


def _write(gallery, source: VectorSource, work: list[tuple], progress: bool) -> tuple[int, int]:
    """Write and commit each shard's vectors (a non-finite or zero row fails its item); (indexed, failed)."""
    store = gallery.store
    bar = progress_bar(sum(len(i) for _, i, _ in work), progress)
    indexed = failed = 0
    for shard, ids_, rows_ in work:
        ok = rows_ >= 0
        vecs = np.zeros((len(ids_), source.dim), np.float32)
        vecs[ok] = source.rows(rows_[ok])
        ok &= np.isfinite(vecs).all(axis=1) & (np.abs(vecs).sum(axis=1) > 0)
        reasons = np.array(["non-finite or zero vector" if r >= 0 else "path not in --paths" for r in rows_[~ok]], str)
        out = ShardOutput(
            ids_[ok],
            l2_normalize(vecs[ok]),
            np.array([""] * int(ok.sum()), str),
            np.full(int(ok.sum()), -1, np.int64),
            ids_[~ok],
            reasons,
        )
        write_shard(gallery.root, shard, out)
        n_ok, n_bad = commit_shard(store, shard, out)
        indexed, failed = indexed + n_ok, failed + n_bad
        if bar is not None:
            bar.update(len(ids_))
    if bar is not None:
        bar.close()
    return indexed, failed
