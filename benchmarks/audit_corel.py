"""Issue 25: does the live-traffic audit tell the truth, and what does it cost?

1. Gauge vs truth: the 600 real edited-photo queries of `query_shift_corel.py` (same WORKDIR) are
   offered to an ``Auditor`` at rate 1/3 (≈ 200 audited); its rolling recall@10 is set against the
   true recall@10 of all 600 at the index's current parameters.
2. Cost: `cbir serve` on that 301k index with --audit-rate 0, the default 0.02, and 0.2, each behind a
   real uvicorn server on loopback, POST /search with a Corel JPEG at concurrency 8 (`cbir bench http`'s
   client), 5 rounds interleaved; requests/s medians and their ratio to --audit-rate 0.

    python benchmarks/audit_corel.py WORKDIR QUERY_JPEG
"""

import sys
import time
from pathlib import Path

import numpy as np

from cbir.bench.http import bench_http
from cbir.index.ann import maintain, tuning
from cbir.index.gallery import Gallery
from cbir.serve.app import create_app
from cbir.serve.audit import Auditor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_serve import Server  # noqa: E402  (a uvicorn server in a thread)

work, jpeg = Path(sys.argv[1]), sys.argv[2]
g = Gallery(work / "idx")
rng = np.random.default_rng(0)
q = np.load(work / "copies.npy")
order = rng.permutation(len(q))
q_eval = q[order[100:]]
pq = g.postprocess_queries(q_eval)
_, truth = maintain.exact_topk(g, pq, 10)
for params in (g.config["search"], {"nprobe": 8}):
    tuning.set_search_params(g.index, params)
    true = tuning.recall_at_k(truth, g.index.search(pq, 10)[1])
    a = Auditor(g, rate=1 / 3, seed=1, window=10_000)
    for v in q_eval:
        a.offer(v)
    while a.state()["pending"]:
        time.sleep(0.2)
    s = a.state()
    print(
        f"{params}: audit {s['recall_at_10']:.3f} (95 % {s['ci95'][0]}–{s['ci95'][1]}) on {s['count']} audited; "
        f"truth on all 600: {true:.3f}; difference {s['recall_at_10'] - true:+.3f}"
    )
rates, rows = (0.0, 0.02, 0.2), {r: [] for r in (0.0, 0.02, 0.2)}
for rnd in range(5):
    for rate in rates:
        with Server(create_app(str(work / "idx"), audit_rate=rate, max_batch=8)) as url:
            rows[rate].append(bench_http(url, jpeg, [8], requests=300, k=10)[0]["requests_per_s"])
base = float(np.median(rows[0.0]))
for rate in rates:
    m = float(np.median(rows[rate]))
    print(
        f"--audit-rate {rate}: {m:.1f} req/s (rounds {', '.join(f'{x:.1f}' for x in rows[rate])}), {m / base:.3f}× of no audit"
    )
