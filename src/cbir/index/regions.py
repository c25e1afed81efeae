"""Regional descriptors of an index's items, for regional re-ranking: one
``shards/shard-NNNNNN.regions.npy`` per shard, float16 [n, R, D] (the model's ``regions`` output,
``cbir export --regions``), rows in the order of the shard file's ``ids``.

Written by ``shards.embed_shard`` in the same pass as the vectors and *before* the shard file, so a
shard whose file exists has its regions (a killed build redoes the shard, both files). float16
halves the storage (13 × 320 × 2 B ≈ 8.3 KB per image for Lite0 Block 7); cosines move by < 1e-3.
Items ingested from vectors (``--from-vectors``) have none and are simply not re-scored. Files are
memory-mapped: a query reads only the rows it re-ranks.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from cbir import fsio


def regions_path(root: Path, shard: int) -> Path:
    return Path(root) / "shards" / f"shard-{shard:06d}.regions.npy"


def write(root: Path, shard: int, regions: np.ndarray) -> Path:
    path = regions_path(root, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsio.atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(regions, np.float16))
    return path


class RegionStore:
    """Regional descriptors of indexed items by id (memory-mapped shard files, cached)."""

    def __init__(self, store, root: Path):
        self.store, self.root = store, Path(root)
        self._shards: dict[int, tuple[np.ndarray, dict[int, int]] | None] = {}
        self._lock = threading.Lock()

    def _shard(self, shard: int):
        from cbir.index.shards import shard_path

        with self._lock:
            if shard not in self._shards:
                path = regions_path(self.root, shard)
                got = None
                if path.is_file() and shard_path(self.root, shard).is_file():
                    with np.load(shard_path(self.root, shard), allow_pickle=False) as z:
                        ids = z["ids"]
                    got = (np.load(path, mmap_mode="r"), {int(i): r for r, i in enumerate(ids)})
                self._shards[shard] = got
            return self._shards[shard]

    def get(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """(regions float32 [n, R, D], has [n] bool) for ``ids``; rows of items without regions are
        zero and ``has`` False. None when no item has any."""
        shards = self.store.shards_for_ids(ids)
        rows: list[tuple[int, np.ndarray, int]] = []
        for pos, i in enumerate(ids):
            s = shards.get(int(i))
            got = self._shard(s) if s is not None else None
            row = got[1].get(int(i)) if got is not None else None
            if row is not None:
                rows.append((pos, got[0], row))
        if not rows:
            return None
        r, d = rows[0][1].shape[1:]
        out = np.zeros((len(ids), r, d), np.float32)
        has = np.zeros(len(ids), bool)
        for pos, arr, row in rows:
            out[pos] = arr[row]
            has[pos] = True
        return out, has
