"""Dynamic batcher for online requests, in the spirit of Triton's dynamic batching.

``submit(image)`` preprocesses in the caller's thread (so decoding scales with callers), enqueues
the uint8 row and returns a ``Future`` of the vector. One worker thread takes requests in arrival
order and runs a batch as soon as ``max_batch`` are waiting or the oldest has waited
``max_delay_ms``. Defaults: max_batch 32, max_delay_ms 5, max_queue 1024 (a full queue raises
``QueueFull`` at once: no unbounded growth), timeout_s None (requests that waited longer than it
in the queue fail with ``TimeoutError`` and are not computed). ``close(drain=True)`` finishes what
is queued; ``close(drain=False)`` cancels it.

The worker never dies of a bad batch: anything a batch raises (the backend, or a backend answer
with the wrong number of rows) fails that batch's futures and the worker goes on. Should the
thread still end (``alive`` False, ``error`` says why), every waiting future fails and ``submit``
refuses, so no caller hangs; ``cbir serve`` reports it on ``/healthz``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cbir.engine.preprocess import ImageSource, Preprocess
from cbir.errors import CbirError


class QueueFull(CbirError):
    """The batcher's queue is at ``max_queue``: retry later."""


class BatcherClosed(CbirError):
    """``submit`` after ``close``, or after the worker thread died."""


@dataclass
class _Request:
    row: np.ndarray
    future: Future
    t_enqueue: float


@dataclass
class RequestTiming:
    queue_ms: float
    compute_ms: float
    batch: int


class DynamicBatcher:
    """Groups single-image requests into batches for ``run`` (uint8 [N,H,W,3] -> float32 [N,D])."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        pp: Preprocess,
        max_batch: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 1024,
        timeout_s: float | None = None,
        keep_timings: int = 100_000,
    ):
        if max_batch < 1 or max_queue < 1 or max_delay_ms < 0:
            raise CbirError("batcher: max_batch and max_queue must be ≥ 1 and max_delay_ms ≥ 0")
        self.run, self.pp = run, pp
        self.max_batch, self.max_delay = max_batch, max_delay_ms / 1000.0
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.timings: deque[RequestTiming] = deque(maxlen=keep_timings)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._drain = True
        self.error: str | None = None  # why the worker thread ended, if it ended on its own
        h, w = pp.size
        self._buf = np.empty((max_batch, h, w, 3), np.uint8)
        self._thread = threading.Thread(target=self._run_worker, name="cbir-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: ImageSource) -> Future:
        """Preprocess ``image`` here and queue it; the future resolves to its float32 [D] vector."""
        row = self.pp(image)  # raises ImageError for a bad image, before taking a queue slot
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"batcher worker died: {self.error}" if self.error else "batcher is closed")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"batcher queue full ({self.max_queue} requests waiting)")
            self._queue.append(_Request(row, fut, time.perf_counter()))
            self._cond.notify()
        return fut

    def embed(self, image: ImageSource, timeout: float | None = None) -> np.ndarray:
        """Submit and wait."""
        return self.submit(image).result(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        """True while the worker thread runs (False after ``close`` or if it died)."""
        return self._thread.is_alive()

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; finish (drain) or cancel what is queued; join the worker."""
        with self._cond:
            self._closed, self._drain = True, drain
            if not drain:
                while self._queue:
                    self._queue.popleft().future.cancel()
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> "DynamicBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].t_enqueue + self.max_delay
            while len(self._queue) < self.max_batch and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run_worker(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # last resort: nobody may wait forever on a dead worker
            self.error = f"{type(e).__name__}: {e}"
            with self._cond:
                self._closed = True
                while self._queue:
                    fut = self._queue.popleft().future
                    if fut.set_running_or_notify_cancel():
                        fut.set_exception(BatcherClosed(f"batcher worker died: {self.error}"))

    def _loop(self) -> None:
        while (reqs := self._take()) is not None:
            self._process(reqs)

    def _process(self, reqs: list[_Request]) -> None:
        """Run one batch; whatever goes wrong fails this batch's futures, not the worker."""
        try:
            now = time.perf_counter()
            live: list[_Request] = []
            for r in reqs:
                if not r.future.set_running_or_notify_cancel():
                    continue
                if self.timeout_s is not None and now - r.t_enqueue > self.timeout_s:
                    r.future.set_exception(
                        TimeoutError(
                            f"request waited {now - r.t_enqueue:.3f} s in the queue (timeout {self.timeout_s} s)"
                        )
                    )
                    continue
                live.append(r)
            if not live:
                return
            for i, r in enumerate(live):
                self._buf[i] = r.row
            t0 = time.perf_counter()
            out = np.asarray(self.run(self._buf[: len(live)]))
            if out.ndim != 2 or len(out) != len(live):
                raise CbirError(f"backend returned {out.shape} for a batch of {len(live)} images")
            t1 = time.perf_counter()
            for i, r in enumerate(live):
                timing = RequestTiming((t0 - r.t_enqueue) * 1e3, (t1 - t0) * 1e3, len(live))
                self.timings.append(timing)
                r.future.timing = timing  # per-request queue/compute split for callers (e.g. /metrics)
                r.future.set_result(out[i].copy())
        except BaseException as e:  # every request of this batch not yet answered gets the error
            for r in reqs:
                if not r.future.done():
                    r.future.set_exception(e)
            if not isinstance(e, Exception):
                raise  # SystemExit, KeyboardInterrupt, ...: the worker ends (``_run_worker``)
