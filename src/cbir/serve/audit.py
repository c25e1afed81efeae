"""Recall of live traffic: ``cbir serve --audit-rate F`` re-searches a sample of real queries exactly.

A query answered by ``POST /search`` is sampled with probability F (default ``DEFAULT_RATE``) and put
on a bounded queue (``MAX_QUEUE``); when the queue is full the sample is dropped, never waited for,
so an answer is never delayed. A background thread takes the queued queries in batches (up to
``BATCH``, waiting at most ``BATCH_WAIT_S`` for them: one scan of the shards serves them all), searches them
with the index as served (its tuned nprobe / efSearch, plain k-NN) and exactly (a streaming scan of
the shard vectors, ``maintain.exact_topk``), and keeps the per-query recall@10 of the last ``WINDOW``
audits: ``state()`` is their mean with a 95 % interval, exported as ``cbir_recall_at_10`` and the count
behind it; ``below_target()`` says when the interval lies wholly under the index's target recall
(``/healthz`` then reports ``degraded``). The audited query vectors (post-processed, as searched) are
kept in ``INDEX_DIR/audit/queries.npy`` (the last ``KEEP``), so ``cbir index tune INDEX --from-audit``
tunes on real traffic; serve picks the new parameters up on its next request.
"""

from __future__ import annotations

import atexit
import queue
import random
import threading
import time
import weakref
from collections import deque
from pathlib import Path

import numpy as np

from cbir import fsio
from cbir.errors import CbirError
from cbir.index.ann import faiss_index, maintain, tuning

DEFAULT_RATE = 0.02
BATCH, BATCH_WAIT_S = 32, 5.0  # audited queries gathered per exact scan, and how long to wait for them
MAX_QUEUE = 256
WINDOW = 500
KEEP = 10_000
AUDIT_DIR = "audit"
K = 10


_LIVE: "weakref.WeakSet[Auditor]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Let every audit in flight finish before the interpreter goes: a daemon thread still inside
    FAISS's OpenMP code at shutdown aborts the process."""
    for a in list(_LIVE):
        a.close()


def audit_file(root) -> Path:
    return Path(root) / AUDIT_DIR / "queries.npy"


def audited_queries(gallery) -> np.ndarray:
    """The audited query vectors of an index (``--from-audit``); one line when there are none."""
    path = audit_file(gallery.root)
    try:
        q = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        q = np.empty((0, 0), np.float32)
    if len(q) == 0:
        raise CbirError(
            f"--from-audit: {path}: no audited queries yet (run `cbir serve --index {gallery.root}` with "
            f"--audit-rate > 0 and let it answer some queries)"
        )
    if q.shape[1] != gallery.settings.dim:
        raise CbirError(
            f"--from-audit: {path}: {q.shape[1]}-d queries, the index holds {gallery.config['dim']}-d vectors"
        )
    return q


class Auditor:
    def __init__(
        self,
        gallery,
        rate: float = DEFAULT_RATE,
        window: int = WINDOW,
        keep: int = KEEP,
        max_queue: int = MAX_QUEUE,
        seed: int | None = None,
    ):
        if not 0 <= rate <= 1:
            raise CbirError(f"--audit-rate {rate}: must be between 0 and 1")
        self.gallery, self.rate, self.keep = gallery, rate, keep
        self.recalls: deque = deque(maxlen=window)
        self.dropped = self.audited = self.sampled = 0
        self.error: str | None = None
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._kept = np.empty((0, gallery.settings.dim), np.float32)
        self._thread = None
        self._stop = threading.Event()
        if rate > 0:
            self._check_writable()
            try:
                old = np.load(audit_file(gallery.root), allow_pickle=False)
                if old.ndim == 2 and old.shape[1] == self._kept.shape[1]:
                    self._kept = old[-keep:].astype(np.float32)
            except (OSError, ValueError):
                pass
            self._thread = threading.Thread(target=self._run, name="cbir-audit", daemon=True)
            self._thread.start()
            _LIVE.add(self)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the audit thread after the batch in flight (queued samples are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _check_writable(self) -> None:
        folder = Path(self.gallery.root) / AUDIT_DIR
        try:
            folder.mkdir(exist_ok=True)
            fsio.write_bytes(folder / ".probe", b"")
            (folder / ".probe").unlink()
        except OSError as e:
            raise CbirError(
                f"--audit-rate {self.rate}: {folder} cannot be written ({e.strerror or e}); "
                f"use --audit-rate 0 or fix its permissions"
            ) from None

    def offer(self, q: np.ndarray) -> None:
        """Maybe audit this query (a raw model vector [D], post-processed in the background); never blocks."""
        if self._thread is None or self._rng.random() >= self.rate:
            return
        try:
            self._queue.put_nowait(np.asarray(q, np.float32).reshape(-1))
            with self._lock:
                self.sampled += 1
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            until = time.monotonic() + BATCH_WAIT_S  # one scan of the shards serves up to BATCH queries
            while len(batch) < BATCH and not self._stop.is_set() and (left := until - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=min(left, 0.2)))
                except queue.Empty:
                    continue  # (woken to look at the stop flag)
            try:
                self.audit(self.gallery.postprocess_queries(np.stack(batch)))
            except Exception as e:  # an audit that fails must not take the service with it
                self.error = f"{type(e).__name__}: {e}"

    def audit(self, q: np.ndarray) -> np.ndarray:
        """Recall@10 of ``q`` [n, D] as served vs exact; recorded and returned."""
        g = self.gallery
        index = g.index
        k = min(K, max(1, index.ntotal))
        _, got = faiss_index.search(index, np.ascontiguousarray(q, np.float32), k)
        _, truth = maintain.exact_topk(g, q, k)
        per = tuning.recall_per_query(truth, got)
        with self._lock:
            self.recalls.extend(per.tolist())
            self.audited += len(per)
            self._kept = np.concatenate([self._kept, q.astype(np.float32)])[-self.keep :]
            kept = self._kept
        with fsio.atomic_path(audit_file(g.root), suffix=".npy") as tmp:
            np.save(tmp, kept)
        return per

    def state(self) -> dict:
        with self._lock:
            per = np.array(self.recalls, np.float64)
            dropped, sampled, audited = self.dropped, self.sampled, self.audited
        tuning_rec = self.gallery.settings.tuning or {}
        return {
            "rate": self.rate,
            "count": int(len(per)),
            "recall_at_10": float(per.mean()) if len(per) else None,
            "ci95": tuning.interval95(per) if len(per) else None,
            "dropped": dropped,
            "sampled": sampled,
            "pending": sampled - audited,
            "target": tuning_rec.get("target_recall", self.gallery.settings.target_recall),
            "error": self.error,
        }

    def below_target(self) -> str | None:
        """A one-line reason when the rolling recall is under the target beyond its interval, else None."""
        s = self.state()
        if s["count"] < 50 or s["target"] is None or s["ci95"][1] >= s["target"]:
            return None
        return (
            f"recall@10 of live queries {s['recall_at_10']:.3f} (95 % {s['ci95'][0]}–{s['ci95'][1]}, "
            f"{s['count']} audited) is under the target {s['target']}: run `cbir index tune "
            f"{self.gallery.root} --from-audit --target-recall {s['target']}`"
        )
