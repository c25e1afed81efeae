"""``GET /healthz`` (ok; degraded; 503 when the batcher's worker is not running) and ``GET /metrics``
(Prometheus text: requests, latencies, queue, audit recall, stage errors, vote index changes)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from cbir.copies.cascade import ERRORS, STAGES
from cbir.serve.metrics import CONTENT_TYPE
from cbir.serve.schemas import Health
from cbir.serve.service import Service


async def health(svc: Service):
    """The health answer: ``degraded`` also while the vote index cannot be updated or audited recall
    is below target."""
    b = svc.state.get("batcher")
    count = await run_in_threadpool(svc.gallery.store.count, "indexed")  # SQLite off the event loop
    body = {
        "status": "ok",
        "count": count,
        "model": svc.emb.info.arch,
        "fingerprint": svc.emb.fingerprint,
        "queued": b.queued if b else 0,
    }
    if b is None or not b.alive:  # a dead batcher answers nothing: say so, so that it gets restarted
        reason = (b.error if b else None) or "not running"
        return JSONResponse({**body, "status": "error", "error": f"batcher worker: {reason}"}, status_code=503)
    audit = svc.auditor.state()
    body.update(recall_at_10=audit["recall_at_10"], audited=audit["count"])
    problem = svc.gallery.load_error or svc.gallery.votes.error or svc.auditor.below_target()
    if problem:
        return {**body, "status": "degraded", "error": problem}
    return body


def prometheus(svc: Service) -> Response:
    m, b = svc.metrics, svc.state.get("batcher")
    m.queue_depth.set(b.queued if b else 0)
    audit = svc.auditor.state()
    m.recall.set(audit["recall_at_10"] if audit["count"] else float("nan"))
    m.audited.set(audit["count"])
    for stage in STAGES:
        m.stage_errors.labels(stage=stage).set(ERRORS[stage])
    m.vote_updates.labels(kind="build").set(svc.gallery.votes.builds)
    m.vote_updates.labels(kind="update").set(svc.gallery.votes.updates)
    return Response(m.render(), media_type=CONTENT_TYPE)


def router(svc: Service) -> APIRouter:
    r = APIRouter()

    @r.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz():
        """ok; ``degraded`` (200) while a newer index.faiss fails to load (the old one answers, the load
        is retried) or a rebuild after a dead writer runs; ``error`` (503) when nothing can answer."""
        return await health(svc)

    @r.get("/metrics", response_class=PlainTextResponse)
    async def prom():
        return prometheus(svc)

    return r
