"""Per-item columns of an index's shard files that a search scans whole (``ShardColumn``): the mean
colours (``colours``: the shard files' ``colours`` arrays, written by the build from the decoded
rows — the cascade's colour stage) and the perceptual hashes (``hashes``: the ``phash`` field of the
local-feature files — the hash stage). Shards of older builds, items ingested from vectors or
decoded on the GPU, and feature files written before the hash have none: their items are simply
not candidates. ``all()`` returns every indexed item's value, each file read once (cached by path
and mtime; a feature file is memory-mapped and only its hash field copied) and the whole column
kept until a file or the SQLite generation changes, so a scan costs one pass over n small rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cbir.copies import phash
from cbir.index.storage.features import KIND

# read(path) -> (ids [n], values [n, width]) of the file's rows that have a value
Read = Callable[[Path], "tuple[np.ndarray, np.ndarray]"]


class ShardColumn:
    """One value per indexed item, read from the files ``pattern`` matches under ``root/shards``."""

    def __init__(self, store, root: Path, pattern: str, read: Read, width: int, dtype):
        self.store, self.root, self.pattern, self.read = store, Path(root), pattern, read
        self.width, self.dtype = width, np.dtype(dtype)
        self._cache: dict[Path, tuple[float, np.ndarray, np.ndarray]] = {}

        self._all: tuple[tuple, np.ndarray, np.ndarray] | None = None  # (files and generation, ids, values)

    def _file(self, path: Path, mtime: float) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(path)
        if hit is None or hit[0] != mtime:
            hit = (mtime, *self.read(path))
            self._cache[path] = hit
        return hit[1], hit[2]

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n], values [n, width]) of the indexed items that have a value; computed again only
        when a file or SQLite's generation changed (a search at 1M items pays one stat per file)."""
        files = []
        for path in sorted((self.root / "shards").glob(self.pattern)):
            try:
                files.append((path, path.stat().st_mtime))
            except OSError:  # removed meanwhile
                continue
        key = (self.store.generation, tuple(files))
        done = self._all
        if done is not None and done[0] == key:
            return done[1], done[2]
        parts = []
        for path, mtime in files:
            try:
                parts.append(self._file(path, mtime))
            except (OSError, ValueError, KeyError, EOFError):  # damaged: `cbir index check` reports it
                continue
        ids = np.concatenate([p[0] for p in parts] or [np.empty(0, np.int64)])
        values = np.concatenate([p[1] for p in parts] or [np.empty((0, self.width), self.dtype)])
        keep = np.isin(ids, self.store.indexed_ids())
        ids, values = ids[keep][::-1], values[keep][::-1]  # an item re-embedded later: its newest shard wins
        _, first = np.unique(ids, return_index=True)
        self._all = (key, ids[first], values[first])
        return self._all[1], self._all[2]


def _colours(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        if "colours" not in z.files:
            return np.empty(0, np.int64), np.empty((0, 3), np.float32)
        ids, cols = z["ids"], z["colours"].astype(np.float32)
    ok = np.isfinite(cols).all(axis=1)
    return ids[ok], cols[ok]


def _hashes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arr = np.load(path, mmap_mode="r")
    if "phash" not in (arr.dtype.names or ()):
        return np.empty(0, np.int64), np.empty((0, phash.BYTES), np.uint8)
    ids, hashes = np.array(arr["id"]), np.array(arr["phash"])
    ok = hashes.any(axis=1)  # an image with no hash (flat, unreadable)
    return ids[ok], hashes[ok]


def colours(store, root: Path) -> ShardColumn:
    """Mean R, G, B of indexed items (float32 [n, 3])."""
    return ShardColumn(store, root, "shard-*.npz", _colours, 3, np.float32)


def hashes(store, root: Path) -> ShardColumn:
    """Perceptual hashes of indexed items (uint8 [n, ``phash.BYTES``])."""
    return ShardColumn(store, root, f"shard-*.{KIND}.npy", _hashes, phash.BYTES, np.uint8)
