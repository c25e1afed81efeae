"""`cbir serve`: the HTTP query service."""

from __future__ import annotations

import argparse

from cbir.cli.common import backend_args
from cbir.errors import CbirError


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise CbirError("cbir serve needs FastAPI and uvicorn: pip install 'cbir[serve]'") from None
    from cbir.serve.app import create_app

    app = create_app(
        a.index,
        max_batch=a.max_batch,
        max_delay_ms=a.max_delay_ms,
        max_queue=a.max_queue,
        timeout_s=a.timeout_s,
        max_upload_bytes=int(a.max_upload_mb * 1024 * 1024),
        backend=a.backend,
        threads=a.threads,
        precision=a.precision,
        max_heavy=a.max_heavy,
        audit_rate=a.audit_rate,
        device=a.device,
        search_device=a.search_device,
    )
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=a.timeout_s)
    return 0


def register(sub) -> None:
    sv = sub.add_parser("serve", help="HTTP query service over an index (FastAPI + uvicorn)")
    sv.add_argument("--index", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, help="dynamic batcher's largest batch (default: auto, measured at load)")
    sv.add_argument("--max-delay-ms", type=float, default=5.0)
    sv.add_argument("--max-queue", type=int, default=256, help="batcher queue bound; beyond it: 503 + Retry-After")
    sv.add_argument(
        "--timeout",
        "--timeout-s",
        dest="timeout_s",
        type=float,
        default=5.0,
        help="each request's deadline in seconds, queue to answer (default 5): a search stage not started "
        "by then is skipped (the answer says partial), an answer not ready by then is a 504",
    )
    sv.add_argument("--max-upload-mb", type=float, default=20.0)
    sv.add_argument(
        "--search-device",
        choices=["cuda", "cpu"],
        help="exact search of a Flat index in PyTorch on this device (FP16 on cuda), where faiss-gpu is absent",
    )
    sv.add_argument(
        "--max-heavy",
        type=int,
        help="heavy re-ranking searches at once (default: half the cores); beyond it: 503 + Retry-After",
    )
    sv.add_argument(
        "--audit-rate",
        type=float,
        help="share of POST /search queries re-searched exactly in the background "
        "to measure live recall@10 (default 0.02; 0 = off); kept in INDEX_DIR/audit for `index tune --from-audit`",
    )
    backend_args(sv)
    sv.add_argument("--threads", type=int)
    sv.set_defaults(fn=cmd_serve)
