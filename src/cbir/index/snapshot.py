"""One published generation of an index, as a search sees it from its first step to its last.

A ``Snapshot`` holds the FAISS index a writer published (index.json's ``faiss_generation``), the
index searches run on (its GPU copy, or itself) and — computed once, on first use — the ids it
holds. Everything a search reads by id (stored vectors, local features, votes, colours) is asked
only for ids the snapshot holds (``holds``), so a vote or a colour candidate that a newer SQLite
state knows and this FAISS index does not is never looked up in it.

SQLite may move ahead of the snapshot: a writer commits there first and publishes index.faiss after
(or dies in between). ``stale(store)`` is the set of ids the snapshot holds that SQLite no longer
calls indexed (removed, failed, or queued again); searches leave them out *inside* the k-NN
(``cbir.index.query.search.knn`` fetches that many more), so an answer is never shorter than
min(k, what the snapshot holds that is still indexed) and never shows an item whose remove was
committed before the request began. The set is read once per SQLite generation (the generation is
read first, so a cached set is never older than the generation it is filed under).
"""

from __future__ import annotations

import threading

import numpy as np

from cbir.index.ann import faiss_index

EMPTY = np.empty(0, np.int64)


class Snapshot:
    """(CPU index, index to search, the faiss_generation it holds — None when unknown: its stale set is
    then always read from SQLite) taken together, immutable."""

    def __init__(self, cpu, index, generation: int | None):
        self.cpu, self.index, self.generation = cpu, index, generation
        self._ids: np.ndarray | None = None
        self._stale: tuple[int | None, np.ndarray] = (None, EMPTY)
        self._lock = threading.Lock()

    @property
    def ids(self) -> np.ndarray:
        """Every id this snapshot's index holds, sorted."""
        if self._ids is None:
            with self._lock:
                if self._ids is None:
                    self._ids = np.sort(faiss_index.stored_ids(self.cpu).astype(np.int64))
        return self._ids

    def holds(self, ids) -> np.ndarray:
        """Boolean mask: which of ``ids`` this snapshot's index holds."""
        ids = np.asarray(ids, np.int64)
        held = self.ids
        if not len(held):
            return np.zeros(ids.shape, bool)
        pos = np.clip(np.searchsorted(held, ids), 0, len(held) - 1)
        return held[pos] == ids

    def stale(self, store) -> np.ndarray:
        """Ids held here that SQLite no longer calls indexed (sorted; empty while in sync)."""
        generation = store.generation  # first: the ids read below are at least this new
        if generation == self.generation:
            return EMPTY
        cached_at, ids = self._stale
        if cached_at == generation:
            return ids
        ids = np.setdiff1d(self.ids, store.indexed_ids(), assume_unique=True)
        self._stale = (generation, ids)
        return ids

    def live(self, store, ids) -> np.ndarray:
        """Boolean mask: which of ``ids`` are held here and still indexed."""
        ids = np.asarray(ids, np.int64)
        return self.holds(ids) & ~np.isin(ids, self.stale(store))
