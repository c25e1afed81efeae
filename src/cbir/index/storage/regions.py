"""Regional descriptors of an index's items, for regional re-ranking: one
``shards/shard-NNNNNN.regions.npy`` per shard, float16 [n, R, D] (the model's ``regions`` output,
``cbir export --regions``), rows in the order of the shard file's ``ids``.

Written by ``build.pipeline.embed_shard`` in the same pass as the vectors and *before* the shard file, so a
shard whose file exists has its regions (a killed build redoes the shard, both files). float16
halves the storage (13 × 320 × 2 B ≈ 8.3 KB per image for Lite0 Block 7); cosines move by < 1e-3.
Items ingested from vectors (``--from-vectors``) have none and are simply not re-scored. Files are
memory-mapped: a query reads only the rows it re-ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from cbir import fsio
from cbir.index.storage.shard_rows import ShardRows
from cbir.index.storage.shards import shard_path


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
        self.root = Path(root)
        self._rows = ShardRows(store, self._open)

    def _open(self, shard: int):
        path, vectors = regions_path(self.root, shard), shard_path(self.root, shard)
        if not (path.is_file() and vectors.is_file()):
            return None
        with np.load(vectors, allow_pickle=False) as z:  # the rows follow the shard file's ids
            ids = z["ids"]
        return np.load(path, mmap_mode="r"), ids

    def get(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """(regions float32 [n, R, D], has [n] bool) for ``ids``; rows of items without regions are
        zero and ``has`` False. None when no item has any."""
        locs = self._rows.locate(ids)
        first = next((loc for loc in locs if loc is not None), None)
        if first is None:
            return None
        out = np.zeros((len(ids), *first[0].shape[1:]), np.float32)
        has = np.zeros(len(ids), bool)
        for pos, loc in enumerate(locs):
            if loc is not None:
                out[pos] = loc[0][loc[1]]
                has[pos] = True
        return out, has
