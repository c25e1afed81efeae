"""The descriptor-vote index of a gallery (``votes``), kept in step with the indexed set.

``VoteCache.current()`` returns the ``votes.VoteState`` searches use now. When SQLite's generation
has moved since it was made, the next one is made from it: the removed items' descriptors taken
out and the added ones' read and put in (``votes.updated``, on a copy), not rebuilt — a full build
(``votes.build``) happens only for the first one, when the per-item keep moved 2× either way (the
gallery grew past the memory cap, or the cap changed) or once the items changed since the last
build pass ``REBUILD_SHARE`` of it (cells drawn from what the gallery no longer holds). An item
still indexed whose shard changed (its file changed and was embedded again, or a repair moved it)
counts as removed and added; so does one whose features were not there when it was read (written
after its shard was committed), until they are.

Saved (``path``, the index's ``votes.npz``; ``votes.save``): the writers (``cbir index build / add /
remove / features``) end with ``make``, which brings the state up to date within the call and saves
it, so a search in any later process loads it (about a second at 100k items) and only catches up
with what changed since, instead of building it again (85 s at 100k items) or, beyond
``votes.SYNC_ITEMS``, going without votes. Outside ``serve`` every change made is saved; ``serve``
saves its full builds only. A file that cannot be read is rebuilt (noted in ``error``); one that
cannot be written is noted and the search goes on.

Where the work happens: ``background=False`` (the CLI and the library) makes it within the call,
except a first build of more than ``votes.SYNC_ITEMS`` items, which goes aside; ``background=True``
(``cbir serve``) makes every later one aside, in one thread at a time, and the searches meanwhile
use the last complete state: an item added since is not voted for yet, and one removed since is
still voted for but never shown (callers keep only ids their snapshot holds and SQLite calls
indexed). A failed update is kept in ``error`` and tried again on the next call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from cbir.copies import votes

REBUILD_SHARE = 0.5  # items added or removed since the last full build, as a share of its items


# read(ids, keep) -> (descriptors [n, 32], their items [n], the items read [m], each one's aspect [m]);
# ``keep(count)`` picks which of an item's descriptors go in (``index.storage.features.descriptors``)
Reader = Callable[[np.ndarray, Callable[[int], np.ndarray]], tuple]


class VoteCache:
    """The vote state of the items ``store`` calls indexed, their descriptors read with ``read``."""

    def __init__(
        self,
        store,
        read: Reader,
        background: bool = False,
        vector_bytes: Callable[[], int] = lambda: 0,
        path: Path | None = None,
    ):
        self.store, self.read, self.background, self.path = store, read, background, path
        self.vector_bytes = vector_bytes  # an item's vector's size: ``votes.per_item``'s floor
        self._state: votes.VoteState | None = None
        self._tried_file = False
        self._lock, self._save_lock = threading.Lock(), threading.Lock()
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
            if self._state is None and not self._tried_file:
                self._state = self._load()
                if self._state is not None and self._state.generation == generation:
                    return self._state
            aside = self.background and self._state is not None
            if aside or (self._state is None and self.store.count("indexed") > votes.SYNC_ITEMS):
                self._worker = threading.Thread(target=self._advance, name="cbir-votes", daemon=True)
                self._worker.start()
                return self._state
        self._advance()
        return self._state

    def make(self, rebuild: bool = False) -> votes.VoteState | None:
        """Bring the vote index up to date within the call, whatever the gallery's size, and save it
        when it changed (the index writers call it last, so that a search in any later process finds
        it made). Unlike ``current``, it also looks again at an unchanged generation: features
        written since the last look (after their shard was committed) are read in. ``rebuild``:
        from scratch (features of items already in it were written again)."""
        if rebuild:
            self.wait()
            with self._lock:
                self._state, self._tried_file = None, True
        self.current()
        self.wait()
        self._advance(save=True)
        return self._state

    def _load(self) -> votes.VoteState | None:
        """The saved state, or None (none saved, or unreadable: it is rebuilt and saved again)."""
        self._tried_file = True
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = votes.load(self.path)
        except Exception as e:  # a damaged or foreign file costs a rebuild, never a search
            self.error = f"{self.path}: saved vote index unreadable ({type(e).__name__}: {e}); rebuilt"
            return None
        if not _near(state.keep, votes.per_item(len(state.ids), vector_bytes=self.vector_bytes())):
            return None  # saved under a budget 2× away: built again, as if there were none
        return state

    def _save(self, state: votes.VoteState) -> None:
        if self.path is None:
            return
        try:
            with self._save_lock:  # two threads of one process would share the temporary file's name
                votes.save(state, self.path)
        except OSError as e:  # a read-only index still searches; it builds again next time
            self.error = f"{self.path}: vote index not saved ({e})"

    def wait(self, timeout: float | None = None) -> None:
        """Wait for an update made aside (tests, benchmarks)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _advance(self, save: bool = False) -> None:
        before, builds = self._state, self.builds
        try:
            state = self._next(before)
        except Exception as e:  # keep voting with what there is; try again on the next call
            self.error = f"vote index update failed ({type(e).__name__}: {e})"
            return
        self.error = None
        with self._lock:
            if self._state is None or (state.generation or 0) >= (self._state.generation or 0):
                self._state = state
        if state is not before and (save or self.builds > builds or not self.background):
            self._save(state)  # ``serve`` saves only its full builds

    def _next(self, state: votes.VoteState | None) -> votes.VoteState:
        generation = self.store.generation  # first: the ids read next are at least this new
        where = self.store.indexed_shards()
        indexed = np.fromiter(where, np.int64, len(where))
        order = np.argsort(indexed)
        indexed, shards = indexed[order], np.fromiter(where.values(), np.int64, len(where))[order]
        keep = votes.per_item(len(indexed), vector_bytes=self.vector_bytes())
        if state is None or state.index is None or not _near(keep, state.keep):
            return self._build(generation, indexed, shards, keep)
        redone = _moved(state, indexed, shards)  # re-embedded, moved by a repair, or unread before
        gone = np.union1d(np.setdiff1d(state.ids, indexed, assume_unique=True), redone)
        added = np.union1d(np.setdiff1d(indexed, state.ids, assume_unique=True), redone)
        if not len(gone) and not len(added) and state.generation == generation:
            return state
        if state.churn + len(gone) + len(added) > REBUILD_SHARE * max(len(state.ids), 1):
            return self._build(generation, indexed, shards, keep)
        descs, owners, aspects, read = self._read(added, shards[np.searchsorted(indexed, added)], state.keep)
        self.updates += 1
        return votes.updated(state, generation, gone, descs, owners, added, aspects, read)

    def _build(self, generation: int, indexed: np.ndarray, shards: np.ndarray, keep: int) -> votes.VoteState:
        descs, owners, aspects, read = self._read(indexed, shards, keep)
        self.builds += 1
        return votes.VoteState(
            generation, votes.build(descs, owners), indexed, keep, aspects, 0, votes.common_aspects(aspects), read
        )

    def _read(self, ids: np.ndarray, shards: np.ndarray, keep: int) -> tuple[np.ndarray, ...]:
        """(descriptors, owners, aspect of each of ``ids`` — NaN for one without features, the shard
        each was read from — -1 for one whose features were not there: it is read again next time)."""
        descs, owners, items, got = self.read(ids, lambda n: votes.kept(n, keep))
        aspects, read = np.full(len(ids), np.nan), np.full(len(ids), -1, np.int64)
        if len(items):
            at = np.searchsorted(ids, items)
            aspects[at], read[at] = got, shards[at]
        return descs, owners, aspects, read


def _near(keep: int, other: int) -> bool:
    """Whether two per-item keeps are within 2× of each other (else the vote index is rebuilt)."""
    return other / 2 < keep < other * 2


def _moved(state: votes.VoteState, indexed: np.ndarray, shards: np.ndarray) -> np.ndarray:
    """Items ``state`` holds that are still indexed but now in another shard than the one their
    descriptors were read from (their descriptors are read again)."""
    if state.shards is None:
        return np.zeros(0, np.int64)
    both, at_state, at_now = np.intersect1d(state.ids, indexed, assume_unique=True, return_indices=True)
    return both[state.shards[at_state] != shards[at_now]]
