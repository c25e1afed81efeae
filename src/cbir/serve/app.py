"""The query service: ``create_app(index_dir)`` → a FastAPI (ASGI) app over the index and a dynamic batcher.
The endpoints live in routers: ``search`` (POST and GET /search), ``items`` (items, thumbnails,
/embed), ``health`` (/healthz, /metrics), ``ui_page`` (the page); what they share in ``service``.

Endpoints: ``POST /search`` (an image as multipart field ``image`` or as the raw body, or JSON
``{"embedding": [...]}``; query ``k``, and the re-ranking: ``rerank`` (a preset) and any
``cbir.index.query.rerank.Rerank`` field — ``qe``, ``qe_alpha``, ``shortlist``, ``shortlist_dba``,
``diffusion``, ``regional``, ``verify``, ``min_inliers`` …; unknown or out of range → 422; default: the index's),
``GET /search?id=ITEM`` (an indexed
item as the query: its stored vector, nothing re-embedded), ``POST /embed`` (an image → vector),
``GET /items/{id}``, ``GET /thumbs/{id}`` (a JPEG thumbnail of an indexed item, cached in
INDEX_DIR/thumbs, with ``ETag``; 404 once the item is removed), ``GET /`` (the search page: plain
HTML, CSS and JavaScript from ``cbir/serve/ui``, nothing from elsewhere, under a strict
Content-Security-Policy; every path is inserted as text), ``GET /healthz`` (503 when the batcher's worker is not
running), ``GET /metrics`` (Prometheus text), and FastAPI's
``/openapi.json`` and ``/docs``.

Limits and errors: every bad request gets a 4xx with a one-line ``{"error": ...}`` (never a 500):
bodies over ``max_upload_bytes`` (default 20 MB) → 413 (read in chunks, never whole); images over
``max_pixels`` (64 Mpx) → 413 before decoding; undecodable input → 400; a full batcher queue → 503
with ``Retry-After``; a request not answered within ``timeout_s`` → 504. Work per search is bounded
by the products of the re-ranking settings (``rerank.cost``): POST searches get
``rerank.DEFAULT_BUDGET`` (256 MiB, 10 GFLOP), GET searches — which any web page can make a browser
send — ``rerank.GET_BUDGET`` (64 MiB, 3 GFLOP); beyond it → 422 naming the settings. At most
``max_heavy`` (default: half the cores, at least 1 — the rest stay for light traffic) searches
costing more than ``HEAVY`` run at once; another → 503
with ``Retry-After``. The OpenAPI schema (``/openapi.json``) declares every parameter, body and
answer, and a Schemathesis run against it is part of the tests. The
service never takes a path from a request, so it cannot be made to read files; it answers with the
paths stored in the index. Preprocessing and search run in worker threads, so the event loop only
waits. Shutdown (SIGINT/SIGTERM under uvicorn) stops accepting, lets in-flight requests finish and
drains the batcher.

A writer in another process (``cbir index add/remove/build``) never needs a restart: every search
first checks index.json and, when a newer index.faiss was committed, loads it and swaps it in
(searches already running finish on the old one); removed items disappear at once (SQLite).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cbir.serve import health, items, search, ui_page
from cbir.serve.audit import DEFAULT_RATE, Auditor
from cbir.serve.metrics import Metrics
from cbir.serve.service import MAX_UPLOAD_BYTES, TIMEOUT_S, HTTPError, Service
from cbir.serve.thumbs import Thumbnails

__all__ = ["MAX_UPLOAD_BYTES", "TIMEOUT_S", "create_app"]
TRIM_EVERY_S, TRIM_FOR_S = 10.0, 60.0  # give freed memory back every 10 s for a minute after each write


def create_app(
    index_dir: str,
    max_batch: int | None = None,
    max_delay_ms: float = 5.0,
    max_queue: int = 256,
    timeout_s: float = TIMEOUT_S,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int | None = None,
    backend: str = "onnxruntime",
    threads: int | None = None,
    precision: str | None = None,
    max_heavy: int | None = None,
    audit_rate: float | None = None,
    device: str | None = None,
    search_device: str | None = None,
):
    from cbir import memory

    memory.limit_arenas()  # before the model's and the search's threads start
    svc = open_service(
        index_dir,
        timeout_s,
        max_upload_bytes,
        max_pixels,
        max_heavy,
        audit_rate,
        search_device,
        dict(backend=backend, threads=threads, precision=precision, device=device),
    )
    batcher = dict(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_s=timeout_s)
    app = make_app(svc, batcher)
    app.include_router(search.router(svc))
    app.include_router(items.router(svc))
    app.include_router(ui_page.router())
    app.include_router(health.router(svc))
    return app


def open_service(
    index_dir, timeout_s, max_upload_bytes, max_pixels, max_heavy, audit_rate, search_device, engine: dict
) -> Service:
    """The gallery (live: writers in other processes are picked up), its embedder and what the
    routers share; an unwritable audit folder is refused here."""
    from cbir.cores import all_cores
    from cbir.index.gallery import Gallery

    pixels = {"max_pixels": max_pixels} if max_pixels else {}
    gallery = Gallery(index_dir, search_device=search_device, live=True)
    emb = gallery.embedder(**engine, **pixels)
    return Service(
        gallery,
        emb,
        Thumbnails(gallery.root, gallery.store, **pixels),
        Metrics(),
        Auditor(gallery, DEFAULT_RATE if audit_rate is None else audit_rate),
        threading.BoundedSemaphore(max_heavy or max(1, all_cores() // 2)),
        timeout_s,
        max_upload_bytes,
    )


async def trim_after_writes(svc: Service):
    """Every ``TRIM_EVERY_S`` while the indexed set changed within ``TRIM_FOR_S``: freed
    generations' memory back to the system (``cbir.memory.trim``)."""
    from cbir import memory

    seen, changed_at = None, -float("inf")
    while True:
        await asyncio.sleep(TRIM_EVERY_S)
        generation = await run_in_threadpool(lambda: svc.gallery.store.generation)
        if generation != seen:
            seen, changed_at = generation, time.monotonic()
        if time.monotonic() - changed_at <= TRIM_FOR_S:
            await run_in_threadpool(memory.trim)


def make_app(svc: Service, batcher: dict) -> FastAPI:
    """The app with its lifespan (the batcher, the FAISS index and the first vote index made before
    the first request; the batcher drained at shutdown), error handlers and request metrics."""
    from cbir.version import __version__

    gallery = svc.gallery

    @asynccontextmanager
    async def lifespan(app):
        svc.state["batcher"] = app.state.batcher = svc.emb.batcher(**batcher)
        _ = gallery.index  # load the FAISS index before the first request
        if gallery.settings.local_features:
            await run_in_threadpool(gallery.vote_index)  # the first vote index (aside beyond votes.SYNC_ITEMS)
        trimmer = asyncio.ensure_future(trim_after_writes(svc))
        yield
        trimmer.cancel()
        await run_in_threadpool(svc.state["batcher"].close, True)  # drain what is queued
        await run_in_threadpool(svc.auditor.close)
        gallery.close()

    app = FastAPI(
        title="cbir",
        version=__version__,
        lifespan=lifespan,
        description="Content-based image retrieval: search an index with an image or an embedding.",
    )
    add_error_handlers(app)

    @app.middleware("http")
    async def count(request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        endpoint = request.scope.get("route").path if request.scope.get("route") else "unmatched"
        svc.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        svc.metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
        return response

    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error a one-line ``{"error": ...}``: ours, Starlette's (404, bad multipart), validation (422)."""

    @app.exception_handler(HTTPError)
    async def _http_error(request, exc: HTTPError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request, exc: StarletteHTTPException):  # e.g. 404 for an unknown path, bad multipart
        return JSONResponse(
            {"error": str(exc.detail).replace("\n", " ")},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "path") or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}".replace("\n", " ")}, status_code=422)
