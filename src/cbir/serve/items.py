"""``GET /items/{id}`` (an indexed item's metadata), ``GET /thumbs/{id}`` (its JPEG thumbnail,
cached in INDEX_DIR/thumbs, with ``ETag``; 404 once the item is removed) and ``POST /embed`` (an
image → its vector)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from cbir.engine.preprocess import ImageError
from cbir.serve.schemas import IMAGE_BODY, MAX_ID, EmbedAnswer, Item, errors
from cbir.serve.service import HTTPError, Service, image_bytes

THUMB_RESPONSES = {
    200: {
        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the thumbnail",
    },
    304: {"description": "not modified"},
    **errors(404, 413, 422),
}
EMBED_BODY = {
    "required": True,
    "content": {k: v for k, v in IMAGE_BODY["content"].items() if k != "application/json"},
}


def known_id(item_id: int) -> int:
    """``item_id`` when it can be an item's id (else 404)."""
    if not 0 <= item_id <= MAX_ID:
        raise HTTPError(404, f"no item {item_id}")
    return item_id


async def thumbnail(svc: Service, item_id: int, request: Request) -> Response:
    known_id(item_id)
    try:
        got = await run_in_threadpool(svc.thumbnails.get, item_id)
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


def router(svc: Service) -> APIRouter:
    r = APIRouter()

    @r.get(
        "/thumbs/{item_id}",
        summary="JPEG thumbnail of an indexed item",
        response_class=Response,
        responses=THUMB_RESPONSES,
    )
    async def thumb(item_id: int, request: Request):
        return await thumbnail(svc, item_id, request)

    @r.post(
        "/embed",
        summary="Embed one image",
        response_model=EmbedAnswer,
        responses=errors(400, 413, 503, 504),
        openapi_extra={"requestBody": EMBED_BODY},
    )
    async def embed(request: Request):
        body = await svc.read_body(request)
        vec, timing = await svc.embed_image(await image_bytes(request, body))
        return {"dim": int(vec.shape[0]), "vector": vec.tolist(), "model": svc.emb.fingerprint, "timings_ms": timing}

    @r.get("/items/{item_id}", summary="Metadata of an indexed item", response_model=Item, responses=errors(404, 422))
    async def item(item_id: int):
        row = await run_in_threadpool(svc.gallery.store.item, known_id(item_id))
        if row is None or row["state"] == "removed":
            raise HTTPError(404, f"no item {item_id}")
        return row

    return r
