"""Mean colours of an index's items, for queries whose pixels were shuffled (``engine.colour``):
read from the shard files' ``colours`` arrays (written by the build from the decoded rows; shards
of older builds, and items ingested from vectors or decoded on the GPU, have none and are simply
not candidates). ``all()`` returns every indexed item's colour, cached per shard file (path and
mtime), so a scrambled query costs one pass over n × 3 floats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ColourStore:
    """Mean R, G, B of indexed items, by id."""

    def __init__(self, store, root: Path):
        self.store, self.root = store, Path(root)
        self._cache: dict[Path, tuple[float, np.ndarray, np.ndarray]] = {}

    def _shard(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        mtime = path.stat().st_mtime
        hit = self._cache.get(path)
        if hit is None or hit[0] != mtime:
            with np.load(path, allow_pickle=False) as z:
                if "colours" in z.files:
                    hit = (mtime, z["ids"], z["colours"].astype(np.float32))
                else:
                    hit = (mtime, np.empty(0, np.int64), np.empty((0, 3), np.float32))
            self._cache[path] = hit
        return hit[1], hit[2]

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n], colours [n, 3]) of the indexed items that have a colour."""
        parts = []
        for path in sorted((self.root / "shards").glob("shard-*.npz")):
            try:
                parts.append(self._shard(path))
            except (OSError, ValueError, KeyError, EOFError):  # damaged: `cbir index check` reports it
                continue
        if not parts:
            return np.empty(0, np.int64), np.empty((0, 3), np.float32)
        ids = np.concatenate([p[0] for p in parts])
        cols = np.concatenate([p[1] for p in parts])
        keep = np.isin(ids, self.store.indexed_ids()) & np.isfinite(cols).all(axis=1)
        ids, cols = ids[keep][::-1], cols[keep][::-1]  # an item re-embedded later: its newest shard wins
        _, first = np.unique(ids, return_index=True)
        return ids[first], cols[first]
