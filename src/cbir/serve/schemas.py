"""The HTTP service's schemas: answers (pydantic models) and the OpenAPI description of the query
parameters and bodies, built from the same limits the code enforces (``rerank.LIMITS``)."""

from __future__ import annotations

from pydantic import BaseModel

from cbir.index.query.rerank import LIMITS, PRESETS

MAX_ID = 2**63 - 1  # SQLite's integer range: the largest item id
MAX_DEADLINE_MS = 600_000  # a request's ``deadline_ms`` at most (the server's --timeout caps it too)


class Error(BaseModel):
    error: str


class HitOut(BaseModel):
    id: int
    path: str
    score: float
    verified: bool
    inliers: int | None
    by: str = "vector"  # "colour": a pixel-shuffled query answered by mean colour; "hash": verified by perceptual hash


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


def errors(*codes: int) -> dict:
    return {c: {"model": Error} for c in codes}


def query_schema() -> list[dict]:
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


IMAGE_BODY = {
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
