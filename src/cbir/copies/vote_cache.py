"""The descriptor-vote index of a gallery (``votes``), kept in step with the indexed set.

``VoteCache.current()`` returns the ``votes.VoteState`` searches use now. When SQLite's generation
has moved since it was made, the next one is made from it: the removed items' descriptors taken
out and the added ones' read and put in (``votes.updated``, on a copy), not rebuilt — a full build
(``votes.build``) happens only for the first one, when the per-item keep
would halve (the gallery grew past the memory cap) or once the items changed since the last build
pass ``REBUILD_SHARE`` of it (cells drawn from what the gallery no longer holds).

Where the work happens: ``background=False`` (the CLI and the library) makes it within the call,
except a first build of more than ``votes.SYNC_ITEMS`` items, which goes aside; ``background=True``
(``cbir serve``) makes every later one aside, in one thread at a time, and the searches meanwhile
use the last complete state: an item added since is not voted for yet, and one removed since is
still voted for but never shown (callers keep only ids their snapshot holds and SQLite calls
indexed). A failed update is kept in ``error`` and tried again on the next call.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from cbir.copies import votes

REBUILD_SHARE = 0.5  # items added or removed since the last full build, as a share of its items


# read(ids, keep) -> (descriptors [n, 32], their items [n], the items read [m], each one's aspect [m]);
# ``keep(count)`` picks which of an item's descriptors go in (``index.storage.features.descriptors``)
Reader = Callable[[np.ndarray, Callable[[int], np.ndarray]], tuple]


class VoteCache:
    """The vote state of the items ``store`` calls indexed, their descriptors read with ``read``."""

    def __init__(self, store, read: Reader, background: bool = False, vector_bytes: Callable[[], int] = lambda: 0):
        self.store, self.read, self.background = store, read, background
        self.vector_bytes = vector_bytes  # an item's vector's size: ``votes.per_item``'s floor
        self._state: votes.VoteState | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.error: str | None = None
        self.builds = self.updates = 0  # full builds and incremental updates made (``/metrics``)

    def current(self) -> votes.VoteState | None:
        """The state to vote with now (None until a first one exists)."""
        generation = self.store.generation
        state = self._state
        if state is not None and state.generation == generation:
            return state
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return self._state
            aside = self.background and self._state is not None
            if aside or (self._state is None and self.store.count("indexed") > votes.SYNC_ITEMS):
                self._worker = threading.Thread(target=self._advance, name="cbir-votes", daemon=True)
                self._worker.start()
                return self._state
        self._advance()
        return self._state

    def wait(self, timeout: float | None = None) -> None:
        """Wait for an update made aside (tests, benchmarks)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _advance(self) -> None:
        try:
            state = self._next(self._state)
        except Exception as e:  # keep voting with what there is; try again on the next call
            self.error = f"vote index update failed ({type(e).__name__}: {e})"
            return
        self.error = None
        with self._lock:
            if self._state is None or state.generation != self._state.generation:
                self._state = state

    def _next(self, state: votes.VoteState | None) -> votes.VoteState:
        generation = self.store.generation  # first: the ids read next are at least this new
        indexed = np.sort(self.store.indexed_ids())
        keep = votes.per_item(len(indexed), vector_bytes=self.vector_bytes())
        if state is None or state.index is None or keep * 2 <= state.keep:
            return self._build(generation, indexed, keep)
        gone = np.setdiff1d(state.ids, indexed, assume_unique=True)
        added = np.setdiff1d(indexed, state.ids, assume_unique=True)
        if state.churn + len(gone) + len(added) > REBUILD_SHARE * max(len(state.ids), 1):
            return self._build(generation, indexed, keep)
        descs, owners, aspects = self._read(added, state.keep)
        self.updates += 1
        return votes.updated(state, generation, gone, descs, owners, added, aspects)

    def _build(self, generation: int, indexed: np.ndarray, keep: int) -> votes.VoteState:
        descs, owners, aspects = self._read(indexed, keep)
        self.builds += 1
        return votes.VoteState(
            generation, votes.build(descs, owners), indexed, keep, aspects, 0, votes.common_aspects(aspects)
        )

    def _read(self, ids: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(descriptors, owners, aspect of each of ``ids`` — NaN for one without features)."""
        descs, owners, items, got = self.read(ids, lambda n: votes.kept(n, keep))
        aspects = np.full(len(ids), np.nan)
        if len(items):
            aspects[np.searchsorted(ids, items)] = got
        return descs, owners, aspects
