"""Rows of per-shard side files (local features, regional descriptors) by item id: each shard's file
is memory-mapped once, with its id → row map, under a lock (``cbir serve`` looks up from many
threads). A shard without its file is not remembered as such: the file may appear later. Used by
``features.FeatureStore`` and ``regions.RegionStore``."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

# open_shard(shard) -> (memory-mapped array, item id of each row) or None when the shard has no file
OpenShard = Callable[[int], "tuple[np.ndarray, np.ndarray] | None"]


class ShardRows:
    def __init__(self, store, open_shard: OpenShard):
        self.store, self.open_shard = store, open_shard
        self._shards: dict[int, tuple[np.ndarray, dict[int, int]] | None] = {}
        self._lock = threading.Lock()
        self._generation: int | None = None

    def _prune(self) -> None:
        """Forget (unmap) shards that no longer hold an indexed item, once per SQLite generation: a
        server living through adds and removes would otherwise keep every shard it ever read mapped."""
        generation = self.store.generation
        if generation == self._generation:
            return
        live = self.store.live_shards()
        with self._lock:
            for shard in [s for s in self._shards if s not in live]:
                del self._shards[shard]
            self._generation = generation

    def _shard(self, shard: int):
        with self._lock:
            if shard not in self._shards:
                got = self.open_shard(shard)
                if got is None:  # not written yet (``cbir index features`` may add it later): ask again next time
                    return None
                self._shards[shard] = (got[0], {int(i): r for r, i in enumerate(got[1])})
            return self._shards[shard]

    def locate(self, ids: Sequence[int]) -> list[tuple[np.ndarray, int] | None]:
        """(array, row) of each id's row; None where its shard has no file or the file lacks it."""
        self._prune()
        shards = self.store.shards_for_ids(ids)
        out: list[tuple[np.ndarray, int] | None] = []
        for i in ids:
            s = shards.get(int(i))
            got = self._shard(s) if s is not None else None
            row = got[1].get(int(i)) if got is not None else None
            out.append(None if row is None else (got[0], row))
        return out
