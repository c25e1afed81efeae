"""Local features of an index's items, for spatial verification: one ``shards/shard-NNNNNN.orb.npy``
per shard (``cbir.engine.local_features.DTYPE`` records plus an ``id`` field, row order = the
shard's items), written atomically after the shard's vectors were committed.

Resume: a done shard without its feature file gets one on the next ``ensure`` (build, add, or
``cbir index features``), so a killed job redoes only the unfinished shards. An image that cannot be
read, or has no keypoints, gets an empty record (it verifies nothing). Removed items keep their rows
until their shard is rewritten, but are never looked up (only ``indexed`` items are searched).
Files are memory-mapped: a query reads only the rows it verifies.
"""
from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from cbir import fsio
from cbir.cores import all_cores
from cbir.engine import local_features
from cbir.engine.preprocess import ImageError

KIND = "orb"
DTYPE = np.dtype([("id", "<i8")] + [(n, local_features.DTYPE.fields[n][0]) for n in local_features.DTYPE.names])


def feature_path(root: Path, shard: int) -> Path:
    return Path(root) / "shards" / f"shard-{shard:06d}.{KIND}.npy"


def _one(path: str) -> np.void:
    try:
        return local_features.extract(path, path)
    except (ImageError, OSError, ValueError):
        return local_features.empty()


def extract_shard(root: Path, shard: int, items: Sequence[tuple[int, str]], workers: int | None = None,
                  on_item=None) -> Path:
    """Extract and write one shard's feature file; returns its path."""
    out = np.zeros(len(items), DTYPE)
    out["id"] = [i for i, _ in items]
    with ThreadPoolExecutor(workers or all_cores()) as pool:  # OpenCV and Pillow release the GIL
        for row, rec in enumerate(pool.map(_one, [p for _, p in items])):
            for name in local_features.DTYPE.names:
                out[row][name] = rec[name]
            if on_item is not None:
                on_item(1)
    path = feature_path(root, shard)
    with fsio.atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, out)
    return path


def ensure(store, root: Path, progress: bool = False) -> int:
    """Write the feature file of every done shard that lacks one; returns how many were written."""
    todo = [s for s in store.done_shards() if not feature_path(root, s).is_file()]
    work = [(s, [(i, p) for i, p in store.shard_items(s)]) for s in todo]
    bar = None
    if progress and work:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(w) for _, w in work), unit="img", desc="local features", file=sys.stderr)
    for shard, items in work:
        extract_shard(root, shard, items, on_item=bar.update if bar else None)
    if bar is not None:
        bar.close()
    return len(work)


class FeatureStore:
    """Look up the feature records of indexed items by id (memory-mapped shard files, cached)."""

    def __init__(self, store, root: Path):
        self.store, self.root = store, Path(root)
        self._shards: dict[int, tuple[np.ndarray, dict[int, int]]] = {}
        self._lock = threading.Lock()

    def _shard(self, shard: int):
        with self._lock:
            got = self._shards.get(shard)
            if got is None:
                path = feature_path(self.root, shard)
                if not path.is_file():
                    return None
                arr = np.load(path, mmap_mode="r")
                got = self._shards[shard] = (arr, {int(i): r for r, i in enumerate(arr["id"])})
            return got

    def get(self, ids: Sequence[int]) -> list[np.void | None]:
        """Records for ``ids`` (None where an item has no feature file, e.g. a shard not yet done)."""
        shards = self.store.shards_for_ids(ids)
        out: list[np.void | None] = []
        for i in ids:
            s = shards.get(int(i))
            got = self._shard(s) if s is not None else None
            row = got[1].get(int(i)) if got is not None else None
            out.append(None if row is None else np.array(got[0][row]))
        return out
