"""``POST /search`` (an image, or JSON ``{"embedding": [...]}``) and ``GET /search?id=ITEM`` (an
indexed item as the query). An image goes through the whole cascade (``cbir.copies.cascade``) on
one snapshot, its ORB features extracted while the batcher embeds it; a vector or an item goes
through the k-NN stage only. POST gets ``rerank.DEFAULT_BUDGET``, GET — which any web page can make
a browser send — ``rerank.GET_BUDGET``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from cbir.copies import cascade, verify
from cbir.copies.guard import Notes
from cbir.cores import faiss_single_threaded
from cbir.errors import CbirError
from cbir.index.query.rerank import DEFAULT_BUDGET, GET_BUDGET, Rerank
from cbir.serve.schemas import IMAGE_BODY, MAX_ID, SearchAnswer, errors, query_schema
from cbir.serve.service import HTTPError, Service, image_bytes

_ID = re.compile(r"[0-9]{1,19}")
GET_PARAMS = [
    {
        "name": "id",
        "in": "query",
        "required": True,
        "description": "the indexed item to search with",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }
]


def search_image(svc: Service, vec: np.ndarray, data: bytes | None, feats, k: int, cfg: Rerank, deadline) -> tuple:
    """The whole cascade for one query on one snapshot: a newer index.faiss from a writer is
    swapped in first (a stat of index.json), then every stage reads that snapshot. FAISS runs
    single-threaded here: concurrent requests are the parallelism."""
    faiss_single_threaded()
    svc.gallery.refresh()
    query = cascade.Query(data, vec, feats)
    return cascade.search(svc.gallery, [query], k, cfg, svc.gallery.snapshot(), deadline)[0], query.notes


def search_item(svc: Service, item_id: int, k: int, cfg: Rerank) -> tuple:
    faiss_single_threaded()
    svc.gallery.refresh()
    return svc.gallery.search_items([item_id], k, cfg)[0], Notes()


def answer(svc: Service, found: tuple, k: int, cfg: Rerank, search_s: float, timing: dict) -> dict:
    hits, notes = found
    svc.metrics.search_seconds.observe(search_s)
    if notes.partial:
        svc.metrics.partial_answers.inc()
    return {
        "results": [h.__dict__ for h in hits],
        "k": k,
        "rerank": cfg.to_dict(),
        "timings_ms": {**timing, "search_ms": round(search_s * 1e3, 3)},
        "partial": notes.partial,
        "skipped": notes.skipped,
        "failed": notes.failed,
    }


def query_features(svc: Service, data: bytes, cfg: Rerank):
    """The upload's ORB variants when the search verifies (else None: nothing to verify with)."""
    return verify.query_features(data, "uploaded image", svc.thumbnails.max_pixels) if cfg.verify else None


def embedding(svc: Service, body: bytes, k: int) -> tuple[np.ndarray, int]:
    """(vector, k) from a JSON body ``{"embedding": [...], "k": ...}`` (400 when malformed)."""
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
    dim = svc.emb.dim
    if vec.shape != (dim,) or not np.isfinite(vec).all():
        raise HTTPError(400, f"embedding must be {dim} finite numbers, got shape {list(vec.shape)}")
    return vec, k


def router(svc: Service) -> APIRouter:
    r = APIRouter()

    @r.post(
        "/search",
        summary="Search the index with an image or an embedding",
        response_model=SearchAnswer,
        responses=errors(400, 413, 422, 503, 504),
        openapi_extra={"parameters": query_schema(), "requestBody": IMAGE_BODY},
    )
    async def search(request: Request):
        k, cfg, deadline = svc.search_params(request, DEFAULT_BUDGET)
        body = await svc.read_body(request)
        timing: dict = {}
        feats = data = None
        if request.headers.get("content-type", "").startswith("application/json"):
            vec, k = embedding(svc, body, k)
        else:
            data = await image_bytes(request, body)
            (vec, timing), feats = await asyncio.gather(
                svc.embed_image(data, deadline), run_in_threadpool(query_features, svc, data, cfg)
            )
        t0 = time.perf_counter()
        found = await svc.run_search(search_image, cfg, deadline, svc, vec, data, feats, k, cfg, deadline)
        svc.auditor.offer(vec)  # a sample of real queries is re-searched exactly, in the background
        return answer(svc, found, k, cfg, time.perf_counter() - t0, timing)

    @r.get(
        "/search",
        summary="Search the index with an indexed item (by id) as the query",
        response_model=SearchAnswer,
        responses=errors(400, 404, 422, 503, 504),
        openapi_extra={"parameters": GET_PARAMS + query_schema()},
    )
    async def search_by_id(request: Request):
        k, cfg, deadline = svc.search_params(request, GET_BUDGET)
        raw = request.query_params.get("id")
        if raw is None:
            raise HTTPError(400, "GET /search needs ?id=ITEM_ID (to search with an image, POST it)")
        if not _ID.fullmatch(raw) or int(raw) > MAX_ID:
            raise HTTPError(400, f"id={raw[:40]!r}: not an item id (an integer from 0 to {MAX_ID})")
        t0 = time.perf_counter()
        try:
            found = await svc.run_search(search_item, cfg, deadline, svc, int(raw), k, cfg)
        except CbirError as e:
            raise HTTPError(404, str(e)) from None
        return answer(svc, found, k, cfg, time.perf_counter() - t0, {})

    return r
