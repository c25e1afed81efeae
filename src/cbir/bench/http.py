"""``cbir bench http``: a closed-loop load generator for ``POST /search`` of a running ``cbir serve``.

For each concurrency c, c client threads (httpx, one keep-alive connection each) send the query
images in turn, back to back, until ``requests`` have been answered — for each ``rerank`` setting
(``--rerank none,default``: interleaved, ``--rounds`` times); reported: requests/s, latency
p50/p95/p99 (client side), status counts, and the server's own queue/inference/search split (p50 of
``timings_ms``). Only loopback addresses are accepted: this is a benchmark, not a load-testing tool
for other hosts.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np

from cbir.errors import CbirError


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise CbirError(f"--url {url}: only loopback addresses (127.0.0.0/8, ::1, localhost) are benchmarked")


def bench_http(
    url: str, images, concurrencies=(1, 8, 32), requests: int = 200, k: int = 10, reranks=(None,), rounds: int = 1
) -> list[dict]:
    """One row per (round, re-ranking, concurrency), re-rankings interleaved within each round (the
    fair comparison on a shared machine). ``images``: one path or several, sent in turn."""
    import httpx

    check_loopback(url)
    paths = [images] if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__") else list(images)
    data = [open(p, "rb").read() for p in paths]
    out = []
    for rnd in range(rounds):
        for rr in reranks:
            params = {"k": k} | ({"rerank": rr} if rr else {})
            with httpx.Client(base_url=url, timeout=120) as warm:
                for d in data[:3]:
                    warm.post("/search", params=params, content=d)
            for c in concurrencies:
                out.append(
                    {"round": rnd, "rerank": rr or "index default", **_closed_loop(url, data, params, c, requests)}
                )
    return out


def _closed_loop(url: str, data: list[bytes], params: dict, c: int, requests: int) -> dict:
    """``c`` clients (one keep-alive connection each) until ``requests`` are answered."""
    import httpx

    lat, codes, server = [], {}, []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                t0 = time.perf_counter()
                r = client.post(
                    "/search", params=params, content=data[n % len(data)], headers={"content-type": "image/jpeg"}
                )
                dt = (time.perf_counter() - t0) * 1e3
                with lock:
                    lat.append(dt)
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        server.append(r.json()["timings_ms"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(c) as pool:
        for f in [pool.submit(worker) for _ in range(c)]:
            f.result()
    wall = time.perf_counter() - t0
    a = np.asarray(lat)
    return {
        "concurrency": c,
        "requests": requests,
        "requests_per_s": requests / wall,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "status": {str(k_): v for k_, v in codes.items()},
        "server_p50_ms": {
            key: float(np.median([s[key] for s in server if key in s]))
            for key in ("queue_ms", "inference_ms", "search_ms")
            if server
        },
        "mean_batch": float(np.mean([s.get("batch", 1) for s in server])) if server else 0.0,
    }
