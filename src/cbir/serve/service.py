"""What every router of the HTTP service shares (``Service``): the gallery and its embedder, the
batcher, thumbnails, metrics, the auditor, the heavy-search slots and the request limits, with the
helpers requests go through (reading a bounded body, embedding an upload by the deadline, running a
search in a worker thread by the deadline). ``HTTPError`` becomes a one-line ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, fields

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request as StarletteRequest

from cbir.deadline import Deadline
from cbir.engine.batcher import BatcherClosed, QueueFull
from cbir.engine.preprocess import ImageError
from cbir.errors import CbirError
from cbir.index.query import rerank
from cbir.index.query.rerank import Budget, Rerank
from cbir.serve.schemas import MAX_DEADLINE_MS

# a search costing more than this takes one of the ``max_heavy`` slots; the default search stays light
HEAVY = Budget(mib=32.0, gflop=2.5)
TIMEOUT_S = 5.0  # a request's deadline unless --timeout says otherwise
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
RERANK_FIELDS = [f.name for f in fields(Rerank)]


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Service:
    gallery: object
    emb: object
    thumbnails: object
    metrics: object
    auditor: object
    heavy_slots: threading.BoundedSemaphore
    timeout_s: float = TIMEOUT_S
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    state: dict = field(default_factory=dict)  # "batcher": made when the app starts

    async def read_body(self, request: Request) -> bytes:
        """The body, read in chunks and refused (413) past ``max_upload_bytes``, never read whole."""
        limit = self.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"upload of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"upload exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def embed_image(self, data: bytes, deadline: Deadline | None = None) -> tuple[np.ndarray, dict]:
        """The upload's vector from the batcher by ``deadline`` (else 504), and its queue/inference timing."""
        try:
            fut = await run_in_threadpool(self.state["batcher"].submit, data)
        except ImageError as e:
            status = 413 if "decompression bomb" in e.reason else 400
            raise HTTPError(status, f"uploaded image: {e.reason}") from None
        except QueueFull as e:
            raise HTTPError(503, str(e), {"Retry-After": "1"}) from None
        except BatcherClosed:
            raise HTTPError(503, "shutting down", {"Retry-After": "5"}) from None
        deadline = deadline or Deadline(self.timeout_s)
        try:
            vec = await asyncio.wait_for(asyncio.wrap_future(fut), deadline.left())
        except (asyncio.TimeoutError, TimeoutError):
            self.metrics.deadline_exceeded.inc()
            raise HTTPError(504, f"no answer within {deadline.seconds} s", {"Retry-After": "1"}) from None
        t = getattr(fut, "timing", None)
        if t is None:
            return vec, {}
        self.metrics.queue_seconds.observe(t.queue_ms / 1e3)
        self.metrics.inference_seconds.observe(t.compute_ms / 1e3)
        return vec, {"queue_ms": round(t.queue_ms, 3), "inference_ms": round(t.compute_ms, 3), "batch": t.batch}

    def search_params(self, request: Request, budget: Budget) -> tuple[int, Rerank, Deadline]:
        """k (400 when bad), the re-ranking: the index's, a ``rerank`` preset, per-stage overrides
        (422 when unknown, out of range or over ``budget``), and the deadline (``deadline_ms``, at
        most the server's ``timeout_s``)."""
        k = int_param(request, "k", 10, 1, 1000)
        ms = int_param(request, "deadline_ms", MAX_DEADLINE_MS, 1, MAX_DEADLINE_MS)
        deadline = Deadline(min(self.timeout_s, ms / 1e3))
        qp = request.query_params
        try:
            base = self.gallery.settings.rerank
            cfg = rerank.resolve(base, qp.get("rerank"), **{n: qp[n] for n in RERANK_FIELDS if n in qp})
            return k, self.gallery.rerank_config(cfg, budget), deadline
        except CbirError as e:
            raise HTTPError(422, str(e).replace("\n", " ")) from None

    def heavy(self, cfg: Rerank) -> bool:
        mib, gflop = rerank.cost(cfg, self.gallery.settings.dim, self.gallery.num_regions)
        return mib > HEAVY.mib or gflop > HEAVY.gflop

    async def run_search(self, fn, cfg: Rerank, deadline: Deadline, *args):
        """Run a search in a worker thread, answered by ``deadline`` (else 504); a heavy one only in
        a free slot (else 503). The thread's stages check the deadline too, so it ends soon after."""
        slot = self.heavy(cfg)
        if slot and not self.heavy_slots.acquire(blocking=False):
            raise HTTPError(
                503,
                "too many heavy searches at once (large shortlist or re-ranking stages): try again "
                "shortly or use smaller settings",
                {"Retry-After": "1"},
            )
        task = asyncio.ensure_future(run_in_threadpool(fn, *args))
        if slot:
            task.add_done_callback(lambda _: self.heavy_slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline.left())
        except (asyncio.TimeoutError, TimeoutError):
            self.metrics.deadline_exceeded.inc()
            raise HTTPError(504, f"no answer within {deadline.seconds} s", {"Retry-After": "1"}) from None


async def image_bytes(request: Request, body: bytes) -> bytes:
    """The uploaded image: the multipart field ``image``, or the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        form = await StarletteRequest(request.scope, replay).form()
        part = form.get("image")
        if part is None or not hasattr(part, "read"):
            raise HTTPError(400, "multipart upload needs a file field named 'image'")
        return await part.read()
    if not body:
        raise HTTPError(
            400, "empty body: send an image (raw bytes or multipart field 'image') or JSON with 'embedding'"
        )
    return body


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter in [lo, hi] (400 otherwise), ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise HTTPError(400, f"{name}={raw!r}: not an integer") from None
    if not lo <= v <= hi:
        raise HTTPError(400, f"{name}={v}: must be between {lo} and {hi}")
    return v
