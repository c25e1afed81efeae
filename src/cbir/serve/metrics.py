"""Prometheus metrics of ``cbir serve`` through ``prometheus_client``: one registry per app with the
request counter and latency histograms, the batcher's queue depth, the live-traffic recall audit
(``cbir_recall_at_10`` and the count behind it) and the process metrics dashboards expect (resident
memory, CPU seconds, open file descriptors, start time: ``ProcessCollector``; Python version:
``PlatformCollector``)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "cbir_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "cbir_request_seconds", "request latency", ["endpoint"], buckets=BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "cbir_queue_seconds", "time waiting in the batcher queue", buckets=BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "cbir_inference_seconds", "batched model inference time", buckets=BUCKETS, registry=r
        )
        self.search_seconds = Histogram(
            "cbir_search_seconds", "FAISS search time (incl. re-ranking)", buckets=BUCKETS, registry=r
        )
        self.queue_depth = Gauge("cbir_queue_depth", "requests waiting in the batcher", registry=r)
        self.recall = Gauge(
            "cbir_recall_at_10", "rolling recall@10 of audited live queries against an exact search", registry=r
        )
        self.audited = Gauge("cbir_recall_audited_queries", "audited queries behind cbir_recall_at_10", registry=r)
        self.audit_dropped = Counter(
            "cbir_audit_dropped", "sampled queries dropped because the audit was busy", registry=r
        )

        self.deadline_exceeded = Counter(
            "cbir_deadline_exceeded", "searches answered 504: their deadline passed", registry=r
        )
        self.partial_answers = Counter(
            "cbir_partial_answers", "searches answered with a stage skipped past the deadline", registry=r
        )
        self.stage_errors = Gauge(
            "cbir_search_stage_errors", "queries a search stage failed on (answered without it)", ["stage"], registry=r
        )
        self.vote_updates = Gauge(
            "cbir_vote_index_changes", "vote index full builds and incremental updates", ["kind"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
