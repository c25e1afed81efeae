"""``cbir bench requests``: the memory and time of the heaviest searches the work budget allows.

A gallery of ``n`` synthetic vectors (the clustered generator of ``bench search``) is indexed (Flat,
vectors-only); then each re-ranking setting runs in a fresh child process: it opens the index, runs a
plain search (baseline), then ``threads`` searches with the setting at once (as ``cbir serve`` allows
``max_heavy`` of them), and reports its peak resident set (VmHWM) before and after, the
estimate ``rerank.cost`` gave, and the wall time. Settings over ``rerank.DEFAULT_BUDGET`` are refused
by the index before they run, so the worst rows here are the worst any request can cost. Regional
re-ranking needs a model with regions and is not among them (its cost is re-scored items × windows ×
d, bounded the same way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# name -> re-ranking overrides (plain k-NN = no stage); the last ones sit at the edge of the budgets
SETTINGS = {
    "plain k-NN": {},
    "class preset": {"shortlist_dba": 20, "qe": 30},
    "GET edge: shortlist 1000, DBA 300": {"shortlist": 1000, "shortlist_dba": 300, "qe": 1000},
    "shortlist 10000, QE 1000": {"shortlist": 10000, "qe": 1000},
    "shortlist 3500, DBA 900": {"shortlist": 3500, "shortlist_dba": 900},
    "shortlist 2900, diffusion 1000": {"shortlist": 2900, "diffusion": 1000},
    "shortlist 2500, DBA 500, QE 1000, diffusion 1000": {
        "shortlist": 2500,
        "shortlist_dba": 500,
        "qe": 1000,
        "diffusion": 1000,
    },
}


def child(root: str, overrides: dict, threads: int, queries: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from cbir.bench.scale import peak_rss_mb
    from cbir.index.gallery import Gallery
    from cbir.index.query import rerank

    g = Gallery(Path(root) / "idx")
    q = np.load(Path(root) / "queries.npy")
    g.search_vectors(q[:1], k=10, rerank="none")  # index loaded, first search done
    base = peak_rss_mb()
    cfg = g.rerank_config(rerank.resolve(None, None, **overrides))  # refused here if over the budget
    mib, gflop = rerank.cost(cfg, g.settings.dim)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: g.search_vectors(q[i : i + 1], k=100, rerank=cfg), range(queries)))
    wall = time.perf_counter() - t0
    return {
        "baseline_rss_mb": round(base),
        "peak_rss_mb": round(peak_rss_mb()),
        "estimate_mib": round(mib, 1),
        "estimate_gflop": round(gflop, 2),
        "ms_per_query": round(wall / queries * 1e3 * threads, 1),
    }


def bench_requests(
    n: int = 100_000,
    dim: int = 320,
    threads: int | None = None,
    queries: int = 4,
    workdir: str | None = None,
    seed: int = 0,
) -> dict:
    from cbir.bench.scale import Synthetic, write_synthetic
    from cbir.cores import all_cores
    from cbir.index.gallery import Gallery
    from cbir.index.ingest.from_vectors import VectorSource, ingest, read_paths

    threads = threads or max(1, all_cores() // 2)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cbir-bench-requests-"))
    try:
        write_synthetic(root, n, dim, seed)
        np.save(
            root / "queries.npy", Synthetic(n, dim, seed).draw(max(queries, threads), np.random.default_rng(seed + 7))
        )
        source = VectorSource(root / "vectors")
        g = Gallery.create(root / "idx", None, dim=dim, shard_size=65_536)
        ingest(g, source, read_paths(root / "paths.txt", len(source)))
        g.close()
        rows = []
        for name, overrides in SETTINGS.items():
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cbir.bench.requests",
                    str(root),
                    json.dumps(overrides),
                    str(threads),
                    str(max(queries, threads)),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            if r.returncode != 0:
                raise RuntimeError(f"bench requests {name}: {r.stderr.strip().splitlines()[-1]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(
                {"setting": name, **overrides, **row, "request_mb": row["peak_rss_mb"] - row["baseline_rss_mb"]}
            )
        return {"n": n, "dim": dim, "threads": threads, "rows": rows}
    finally:
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
