"""The query service: ``create_app(index_dir)`` → a FastAPI (ASGI) app over the index and a dynamic batcher.

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
send — ``rerank.GET_BUDGET`` (64 MiB, 2 GFLOP); beyond it → 422 naming the settings. At most
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
import json
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import fields
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest

from cbir.copies import cascade, local_features
from cbir.copies.cascade import ERRORS, STAGES, Notes
from cbir.cores import faiss_single_threaded
from cbir.deadline import Deadline
from cbir.engine.batcher import BatcherClosed, QueueFull
from cbir.engine.preprocess import ImageError
from cbir.errors import CbirError
from cbir.index.query import rerank
from cbir.index.query.rerank import DEFAULT_BUDGET, GET_BUDGET, LIMITS, PRESETS, Budget, Rerank
from cbir.serve.audit import DEFAULT_RATE, Auditor
from cbir.serve.metrics import CONTENT_TYPE, Metrics
from cbir.serve.thumbs import Thumbnails

# a search costing more than this takes one of the ``max_heavy`` slots; the default search (1.44 GFLOP
# with the descriptor votes, ``rerank.cost``) stays light
HEAVY = Budget(mib=32.0, gflop=1.5)
MAX_ID = 2**63 - 1  # SQLite's integer range
TIMEOUT_S = 5.0  # a request's deadline unless --timeout says otherwise
MAX_DEADLINE_MS = 600_000
TRIM_EVERY_S, TRIM_FOR_S = 10.0, 60.0  # give freed memory back every 10 s for a minute after each write
_ID = re.compile(r"[0-9]{1,19}")


class Error(BaseModel):
    error: str


class HitOut(BaseModel):
    id: int
    path: str
    score: float
    verified: bool
    inliers: int | None
    by: str = "vector"  # "colour": a pixel-shuffled query answered by mean colour


class SearchAnswer(BaseModel):
    results: list[HitOut]
    k: int
    rerank: dict
    timings_ms: dict
    partial: bool = False  # a stage was not started: the request's deadline had passed (named in ``skipped``)
    skipped: list[str] = []
    failed: list[str] = []  # stages that failed on this query (its answer is what the stage before gave)


class EmbedAnswer(BaseModel):
    dim: int
    vector: list[float]
    model: str
    timings_ms: dict


class Item(BaseModel):
    id: int
    path: str
    size: int | None
    mtime: float | None
    sha1: str | None
    state: str
    shard: int
    error: str | None


class Health(BaseModel):
    status: str
    count: int | None = None
    model: str
    fingerprint: str
    queued: int
    recall_at_10: float | None = None  # rolling recall@10 of audited live queries (None: none audited yet)
    audited: int = 0
    error: str | None = None


def _errors(*codes: int) -> dict:
    return {c: {"model": Error} for c in codes}


def _query_schema() -> list[dict]:
    """The query parameters of the search endpoints, from the same limits the code enforces."""
    out = [
        {
            "name": "k",
            "in": "query",
            "required": False,
            "description": "results to return (default 10)",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
        {
            "name": "rerank",
            "in": "query",
            "required": False,
            "description": "a re-ranking preset (default: the index's)",
            "schema": {"type": "string", "enum": list(PRESETS)},
        },
        {
            "name": "deadline_ms",
            "in": "query",
            "required": False,
            "description": "answer within this many ms (default and most: the server's --timeout)",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DEADLINE_MS},
        },
    ]
    for name, (lo, hi) in LIMITS.items():
        kind = "number" if isinstance(lo, float) else "integer"
        out.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"re-ranking: {name}",
                "schema": {"type": kind, "minimum": lo, "maximum": hi},
            }
        )
    return out


_IMAGE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["embedding"],
                "properties": {
                    "embedding": {"type": "array", "items": {"type": "number"}},
                    "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    },
}

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# The page's files, by name: a fixed table, so that no name from a request becomes a path.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


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
    from cbir.index.gallery import Gallery
    from cbir.version import __version__

    memory.limit_arenas()  # before the model's and the search's threads start

    gallery = Gallery(index_dir, search_device=search_device, live=True)
    emb = gallery.embedder(
        backend=backend,
        threads=threads,
        precision=precision,
        device=device,
        **({"max_pixels": max_pixels} if max_pixels else {}),
    )
    thumbnails = Thumbnails(gallery.root, gallery.store, **({"max_pixels": max_pixels} if max_pixels else {}))
    ui = {name: (resources.files("cbir.serve") / "ui" / name).read_bytes() for name in UI_FILES}
    metrics = Metrics()
    state: dict = {}
    from cbir.cores import all_cores

    auditor = Auditor(gallery, DEFAULT_RATE if audit_rate is None else audit_rate)  # refuses an unwritable audit folder
    heavy_slots = threading.BoundedSemaphore(max_heavy or max(1, all_cores() // 2))

    async def trim_after_writes():
        """Every ``TRIM_EVERY_S`` while the indexed set changed within ``TRIM_FOR_S``: freed
        generations' memory back to the system (``cbir.memory.trim``)."""
        seen, changed_at = None, -float("inf")
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            generation = await run_in_threadpool(lambda: gallery.store.generation)
            if generation != seen:
                seen, changed_at = generation, time.monotonic()
            if time.monotonic() - changed_at <= TRIM_FOR_S:
                await run_in_threadpool(memory.trim)

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = app.state.batcher = emb.batcher(
            max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_s=timeout_s
        )
        _ = gallery.index  # load the FAISS index before the first request
        if gallery.config.get("local_features"):
            await run_in_threadpool(gallery.vote_index)  # the first vote index (aside beyond votes.SYNC_ITEMS)
        trimmer = asyncio.ensure_future(trim_after_writes())
        yield
        trimmer.cancel()
        await run_in_threadpool(state["batcher"].close, True)  # drain what is queued
        await run_in_threadpool(auditor.close)
        gallery.close()

    app = FastAPI(
        title="cbir",
        version=__version__,
        lifespan=lifespan,
        description="Content-based image retrieval: search an index with an image or an embedding.",
    )

    class HTTPError(Exception):
        def __init__(self, status: int, message: str, headers: dict | None = None):
            self.status, self.message, self.headers = status, message, headers or {}

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

    @app.middleware("http")
    async def count(request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        endpoint = request.scope.get("route").path if request.scope.get("route") else "unmatched"
        metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - t0)
        return response

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPError(413, f"upload of {declared} bytes exceeds the limit of {max_upload_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise HTTPError(413, f"upload exceeds the limit of {max_upload_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def image_bytes(request: Request, body: bytes) -> bytes:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):

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

    async def embed_image(data: bytes, deadline: Deadline | None = None) -> tuple[np.ndarray, dict]:
        try:
            fut = await run_in_threadpool(state["batcher"].submit, data)
        except ImageError as e:
            status = 413 if "decompression bomb" in e.reason else 400
            raise HTTPError(status, f"uploaded image: {e.reason}") from None
        except QueueFull as e:
            raise HTTPError(503, str(e), {"Retry-After": "1"}) from None
        except BatcherClosed:
            raise HTTPError(503, "shutting down", {"Retry-After": "5"}) from None
        deadline = deadline or Deadline(timeout_s)
        try:
            vec = await asyncio.wait_for(asyncio.wrap_future(fut), deadline.left())
        except (asyncio.TimeoutError, TimeoutError):
            metrics.deadline_exceeded.inc()
            raise HTTPError(504, f"no answer within {deadline.seconds} s", {"Retry-After": "1"}) from None
        t = getattr(fut, "timing", None)
        timing = {}
        if t is not None:
            metrics.queue_seconds.observe(t.queue_ms / 1e3)
            metrics.inference_seconds.observe(t.compute_ms / 1e3)
            timing = {"queue_ms": round(t.queue_ms, 3), "inference_ms": round(t.compute_ms, 3), "batch": t.batch}
        return vec, timing

    def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
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

    rerank_fields = [f.name for f in fields(Rerank)]

    def search_params(request: Request, budget: Budget) -> tuple[int, Rerank, Deadline]:
        """k (400 when bad), the re-ranking: the index's, a ``rerank`` preset, per-stage overrides
        (422 when unknown, out of range or over ``budget``), and the deadline (``deadline_ms``, at
        most the server's ``timeout_s``)."""
        k = int_param(request, "k", 10, 1, 1000)
        ms = int_param(request, "deadline_ms", MAX_DEADLINE_MS, 1, MAX_DEADLINE_MS)
        deadline = Deadline(min(timeout_s, ms / 1e3))
        qp = request.query_params
        try:
            base = gallery.config.get("rerank")
            cfg = rerank.resolve(base, qp.get("rerank"), **{n: qp[n] for n in rerank_fields if n in qp})
            return k, gallery.rerank_config(cfg, budget), deadline
        except CbirError as e:
            raise HTTPError(422, str(e).replace("\n", " ")) from None

    def heavy(cfg: Rerank) -> bool:
        mib, gflop = rerank.cost(cfg, gallery.config["dim"], gallery.num_regions)
        return mib > HEAVY.mib or gflop > HEAVY.gflop

    async def run_search(fn, cfg: Rerank, deadline: Deadline, *args):
        """Run a search in a worker thread, answered by ``deadline`` (else 504); a heavy one only in
        a free slot (else 503). The thread's stages check the deadline too, so it ends soon after."""
        slot = heavy(cfg)
        if slot and not heavy_slots.acquire(blocking=False):
            raise HTTPError(
                503,
                "too many heavy searches at once (large shortlist or re-ranking stages): try again "
                "shortly or use smaller settings",
                {"Retry-After": "1"},
            )
        task = asyncio.ensure_future(run_in_threadpool(fn, *args))
        if slot:
            task.add_done_callback(lambda _: heavy_slots.release())
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline.left())
        except (asyncio.TimeoutError, TimeoutError):
            metrics.deadline_exceeded.inc()
            raise HTTPError(504, f"no answer within {deadline.seconds} s", {"Retry-After": "1"}) from None

    def search_image(vec: np.ndarray, data: bytes | None, feats, k: int, cfg: Rerank, deadline: Deadline) -> tuple:
        """The whole cascade for one query on one snapshot: a newer index.faiss from a writer is
        swapped in first (a stat of index.json), then every stage reads that snapshot. FAISS runs
        single-threaded here: concurrent requests are the parallelism."""
        faiss_single_threaded()
        gallery.refresh()
        query = cascade.Query(data, vec, feats)
        return cascade.search(gallery, [query], k, cfg, gallery.snapshot(), deadline)[0], query.notes

    def search_item(item_id: int, k: int, cfg: Rerank) -> tuple:
        faiss_single_threaded()
        gallery.refresh()
        return gallery.search_items([item_id], k, cfg)[0], Notes()

    def answer(found: tuple, k: int, cfg: Rerank, search_s: float, timing: dict) -> dict:
        hits, notes = found
        metrics.search_seconds.observe(search_s)
        if notes.partial:
            metrics.partial_answers.inc()
        return {
            "results": [h.__dict__ for h in hits],
            "k": k,
            "rerank": cfg.to_dict(),
            "timings_ms": {**timing, "search_ms": round(search_s * 1e3, 3)},
            "partial": notes.partial,
            "skipped": notes.skipped,
            "failed": notes.failed,
        }

    def query_features(data: bytes, cfg: Rerank):
        if not cfg.verify:
            return None
        try:
            return local_features.extract_query(data, "uploaded image", thumbnails.max_pixels)
        except Exception:  # the upload is embedded (or refused) on its own path; here it just verifies nothing
            return None

    @app.post(
        "/search",
        summary="Search the index with an image or an embedding",
        response_model=SearchAnswer,
        responses=_errors(400, 413, 422, 503, 504),
        openapi_extra={"parameters": _query_schema(), "requestBody": _IMAGE_BODY},
    )
    async def search(request: Request):
        k, cfg, deadline = search_params(request, DEFAULT_BUDGET)
        body = await read_body(request)
        timing: dict = {}
        feats = data = None
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                payload = json.loads(body)
                with np.errstate(over="ignore"):  # 1e300 becomes inf, refused below
                    vec = np.asarray(payload["embedding"], np.float32)
            except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError):
                raise HTTPError(400, "JSON body needs 'embedding': a list of numbers") from None
            if "k" in payload:
                if type(payload["k"]) is not int or not 1 <= payload["k"] <= 1000:
                    raise HTTPError(400, "k must be an integer between 1 and 1000")
                k = payload["k"]
            if vec.shape != (emb.dim,) or not np.isfinite(vec).all():
                raise HTTPError(400, f"embedding must be {emb.dim} finite numbers, got shape {list(vec.shape)}")
        else:
            data = await image_bytes(request, body)
            (vec, timing), feats = await asyncio.gather(
                embed_image(data, deadline), run_in_threadpool(query_features, data, cfg)
            )
        t0 = time.perf_counter()
        found = await run_search(search_image, cfg, deadline, vec, data, feats, k, cfg, deadline)
        auditor.offer(vec)  # a sample of real queries is re-searched exactly, in the background
        return answer(found, k, cfg, time.perf_counter() - t0, timing)

    get_params = [
        {
            "name": "id",
            "in": "query",
            "required": True,
            "description": "the indexed item to search with",
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
        }
    ] + _query_schema()

    @app.get(
        "/search",
        summary="Search the index with an indexed item (by id) as the query",
        response_model=SearchAnswer,
        responses=_errors(400, 404, 422, 503, 504),
        openapi_extra={"parameters": get_params},
    )
    async def search_by_id(request: Request):
        k, cfg, deadline = search_params(request, GET_BUDGET)
        raw = request.query_params.get("id")
        if raw is None:
            raise HTTPError(400, "GET /search needs ?id=ITEM_ID (to search with an image, POST it)")
        if not _ID.fullmatch(raw) or int(raw) > MAX_ID:
            raise HTTPError(400, f"id={raw[:40]!r}: not an item id (an integer from 0 to {MAX_ID})")
        t0 = time.perf_counter()
        try:
            found = await run_search(search_item, cfg, deadline, int(raw), k, cfg)
        except CbirError as e:
            raise HTTPError(404, str(e)) from None
        return answer(found, k, cfg, time.perf_counter() - t0, {})

    def known_id(item_id: int) -> int:
        if not 0 <= item_id <= MAX_ID:
            raise HTTPError(404, f"no item {item_id}")
        return item_id

    @app.get(
        "/thumbs/{item_id}",
        summary="JPEG thumbnail of an indexed item",
        response_class=Response,
        responses={
            200: {
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                "description": "the thumbnail",
            },
            304: {"description": "not modified"},
            **_errors(404, 413, 422),
        },
    )
    async def thumb(item_id: int, request: Request):
        known_id(item_id)
        try:
            got = await run_in_threadpool(thumbnails.get, item_id)
        except ImageError as e:
            status = 413 if "decompression bomb" in e.reason else 404
            raise HTTPError(status, f"item {item_id}: no thumbnail: {e.reason}") from None
        except Exception as e:  # a source that breaks the thumbnailer: this item has no thumbnail
            raise HTTPError(404, f"item {item_id}: no thumbnail: {type(e).__name__}: {e}".replace("\n", " ")) from None
        if got is None:
            raise HTTPError(404, f"no item {item_id}")
        data, tag = got
        headers = {"ETag": f'"{tag}"', "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(ui["index.html"], media_type=UI_FILES["index.html"], headers=UI_HEADERS)

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str):
        if name not in UI_FILES:
            raise HTTPError(404, "not found")
        return Response(ui[name], media_type=UI_FILES[name], headers=UI_HEADERS)

    @app.post(
        "/embed",
        summary="Embed one image",
        response_model=EmbedAnswer,
        responses=_errors(400, 413, 503, 504),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {k: v for k, v in _IMAGE_BODY["content"].items() if k != "application/json"},
            }
        },
    )
    async def embed(request: Request):
        body = await read_body(request)
        vec, timing = await embed_image(await image_bytes(request, body))
        return {"dim": int(vec.shape[0]), "vector": vec.tolist(), "model": emb.fingerprint, "timings_ms": timing}

    @app.get(
        "/items/{item_id}", summary="Metadata of an indexed item", response_model=Item, responses=_errors(404, 422)
    )
    async def item(item_id: int):
        row = await run_in_threadpool(gallery.store.item, known_id(item_id))
        if row is None or row["state"] == "removed":
            raise HTTPError(404, f"no item {item_id}")
        return row

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz():
        """ok; ``degraded`` (200) while a newer index.faiss fails to load (the old one answers, the load
        is retried) or a rebuild after a dead writer runs; ``error`` (503) when nothing can answer."""
        b = state.get("batcher")
        count = await run_in_threadpool(gallery.store.count, "indexed")  # SQLite off the event loop
        body = {
            "status": "ok",
            "count": count,
            "model": emb.info.arch,
            "fingerprint": emb.fingerprint,
            "queued": b.queued if b else 0,
        }
        if b is None or not b.alive:  # a dead batcher answers nothing: say so, so that it gets restarted
            reason = (b.error if b else None) or "not running"
            return JSONResponse({**body, "status": "error", "error": f"batcher worker: {reason}"}, status_code=503)
        audit = auditor.state()
        body.update(recall_at_10=audit["recall_at_10"], audited=audit["count"])
        problem = gallery.load_error or gallery.votes.error or auditor.below_target()
        if problem:
            return {**body, "status": "degraded", "error": problem}
        return body

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prom():
        b = state.get("batcher")
        metrics.queue_depth.set(b.queued if b else 0)
        audit = auditor.state()
        metrics.recall.set(audit["recall_at_10"] if audit["count"] else float("nan"))
        metrics.audited.set(audit["count"])
        for stage in STAGES:
            metrics.stage_errors.labels(stage=stage).set(ERRORS[stage])
        metrics.vote_updates.labels(kind="build").set(gallery.votes.builds)
        metrics.vote_updates.labels(kind="update").set(gallery.votes.updates)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
