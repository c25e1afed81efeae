"""SQLite metadata store of an index directory (``meta.sqlite``).

items(id, path, size, mtime, sha1, state, shard, error): ``id`` is the FAISS id, stable for the
life of the index (a changed file keeps its id and is re-embedded into a new shard);
state ∈ pending | indexed | failed | removed; ``shard`` is the shard that holds the item's
current vector. shards.state ∈ pending | done | retired (repair moved its items to a new shard).
``removed`` is final for every job: a shard in flight commits only its ``pending``
items, and a scan brings a removed item back only when asked to (``--restore``). shards(id, state, n): a shard is
``done`` once its vector file is written and its
items are updated, in one transaction — the done-marker that makes resume skip finished work.
settings('generation'): bumped in the same transaction as every change to the set of indexed items
(a shard committed, items removed or re-queued); index.json records the generation index.faiss was
built from, so a difference means index.faiss is behind SQLite (a crash between the two).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER,
    mtime REAL,
    sha1 TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    shard INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS items_shard ON items(shard);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'pending',
    n INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO settings (key, value) VALUES ('generation', '0');
"""


class Store:
    """Thin typed access to ``meta.sqlite``; every write is one transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0)
        for attempt in range(50):  # switching a new file to WAL does not wait on the busy timeout: retry
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.1)
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def transaction(self):
        """``with store.transaction(): ...`` — BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        return _Tx(self.conn)

    # -- queries -------------------------------------------------------------------------------
    def items_by_paths(self) -> dict[str, tuple]:
        """path -> (id, size, mtime, state) for every item."""
        return {r[0]: r[1:] for r in self.conn.execute("SELECT path, id, size, mtime, state FROM items")}

    def _indexed_column(self, ids: Iterable[int], column: str) -> dict:
        ids = [int(i) for i in ids if i >= 0]
        out: dict = {}
        for i in range(0, len(ids), 900):  # SQLite's limit on bound parameters
            chunk = ids[i : i + 900]
            q = f"SELECT id, {column} FROM items WHERE state = 'indexed' AND id IN ({','.join('?' * len(chunk))})"
            out.update(self.conn.execute(q, chunk).fetchall())
        return out

    def paths_for_ids(self, ids: Iterable[int]) -> dict[int, str]:
        """id -> path of the given ids that are ``indexed`` (removed, failed and pending ones are left out)."""
        return self._indexed_column(ids, "path")

    def paths_of(self, ids: Iterable[int]) -> dict[int, str]:
        """id -> path of the given ids whatever their state (a search's snapshot decides what it shows)."""
        ids = [int(i) for i in ids if i >= 0]
        out: dict = {}
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            out.update(
                self.conn.execute(
                    f"SELECT id, path FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
            )
        return out

    def shards_for_ids(self, ids: Iterable[int]) -> dict[int, int]:
        """id -> shard of the given ids that are ``indexed``."""
        return self._indexed_column(ids, "shard")

    def shard_items(self, shard: int, state: str | None = None) -> list[tuple[int, str]]:
        """(id, path) of a shard's items, in id order; only those in ``state`` when given."""
        if state is None:
            return self.conn.execute("SELECT id, path FROM items WHERE shard = ? ORDER BY id", (shard,)).fetchall()
        return self.conn.execute(
            "SELECT id, path FROM items WHERE shard = ? AND state = ? ORDER BY id", (shard, state)
        ).fetchall()

    def pending_shards(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM shards WHERE state = 'pending' ORDER BY id")]

    def done_shards(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM shards WHERE state = 'done' ORDER BY id")]

    def live_shards(self) -> set[int]:
        """Shards that hold the current vector of at least one indexed item."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT shard FROM items WHERE state = 'indexed'")}

    def indexed_shards(self) -> dict[int, int]:
        """id -> shard of every ``indexed`` item."""
        return dict(self.conn.execute("SELECT id, shard FROM items WHERE state = 'indexed'").fetchall())

    def indexed_ids_of_shard(self, shard: int) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT id FROM items WHERE shard = ? AND state = 'indexed'", (shard,))}

    @property
    def generation(self) -> int:
        return int(self.conn.execute("SELECT value FROM settings WHERE key = 'generation'").fetchone()[0])

    def indexed_ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self.conn.execute("SELECT id FROM items WHERE state = 'indexed'")), np.int64)

    def count(self, state: str | None = None) -> int:
        if state is None:
            return self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM items WHERE state = ?", (state,)).fetchone()[0]

    def failed(self) -> list[dict]:
        return [
            {"path": p, "error": e}
            for p, e in self.conn.execute("SELECT path, error FROM items WHERE state = 'failed' ORDER BY id")
        ]

    def item(self, item_id: int) -> dict | None:
        r = self.conn.execute(
            "SELECT id, path, size, mtime, sha1, state, shard, error FROM items WHERE id = ?", (item_id,)
        ).fetchone()
        return None if r is None else dict(zip(("id", "path", "size", "mtime", "sha1", "state", "shard", "error"), r))

    def ids_under(self, path: str) -> list[int]:
        """Ids of live items at ``path`` or below it (a folder)."""
        prefix = path.rstrip("/") + "/"
        q = "SELECT id FROM items WHERE state != 'removed' AND (path = ? OR substr(path, 1, ?) = ?)"
        return [r[0] for r in self.conn.execute(q, (path, len(prefix), prefix))]

    # -- writes (call inside a transaction) ------------------------------------------------------
    def new_shard(self) -> int:
        return self.conn.execute("INSERT INTO shards (state) VALUES ('pending')").lastrowid

    def next_item_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM items").fetchone()[0]

    def add_items(self, items: list[tuple[int, str, int]]) -> None:
        """Many new items at once: (id, path, shard), no file facts (existing vectors)."""
        self.conn.executemany(
            "INSERT INTO items (id, path, size, mtime, state, shard) VALUES (?, ?, -1, -1, 'pending', ?)", items
        )

    def add_item(self, path: str, size: int, mtime: float, shard: int) -> int:
        return self.conn.execute(
            "INSERT INTO items (path, size, mtime, state, shard) VALUES (?, ?, ?, 'pending', ?)",
            (path, size, mtime, shard),
        ).lastrowid

    def _bump(self) -> None:
        self.conn.execute("UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def requeue_item(self, item_id: int, size: int, mtime: float, shard: int) -> None:
        self._bump()
        self.conn.execute(
            "UPDATE items SET size = ?, mtime = ?, state = 'pending', shard = ?, error = NULL WHERE id = ?",
            (size, mtime, shard, item_id),
        )

    def finish_shard(self, shard: int, indexed: list[tuple[int, str, int]], failed: list[tuple[int, str]]) -> None:
        """indexed: (id, sha1, size); failed: (id, reason). Only items still ``pending`` in this shard
        change: one removed while the shard was in flight stays removed."""
        self.conn.executemany(
            "UPDATE items SET state = 'indexed', sha1 = ?, size = ?, error = NULL "
            "WHERE id = ? AND shard = ? AND state = 'pending'",
            [(h, s, i, shard) for i, h, s in indexed],
        )
        self.conn.executemany(
            "UPDATE items SET state = 'failed', error = ? WHERE id = ? AND shard = ? AND state = 'pending'",
            [(e, i, shard) for i, e in failed],
        )
        n = self.conn.execute("SELECT COUNT(*) FROM items WHERE shard = ? AND state = 'indexed'", (shard,)).fetchone()[
            0
        ]
        self.conn.execute("UPDATE shards SET state = 'done', n = ? WHERE id = ?", (n, shard))
        self._bump()

    def mark_failed(self, ids: list[int], reason: str) -> None:
        self._bump()
        self.conn.executemany("UPDATE items SET state = 'failed', error = ? WHERE id = ?", [(reason, i) for i in ids])

    def retire_shard(self, shard: int) -> None:
        """A shard whose items moved elsewhere (``cbir index repair``): no longer read."""
        self._bump()
        self.conn.execute("UPDATE shards SET state = 'retired' WHERE id = ?", (shard,))

    def mark_removed(self, ids: list[int]) -> None:
        self._bump()
        self.conn.executemany("UPDATE items SET state = 'removed' WHERE id = ?", [(i,) for i in ids])


class _Tx:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *rest):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
