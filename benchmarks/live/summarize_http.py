"""Requests/s of the default search vs --rerank none per concurrency, from `cbir bench http --json`
files: per-round ratios and the ratio of the medians (benchmarks/live/throughput.sh).

usage: .venv/bin/python benchmarks/live/summarize_http.py OUT.json...
"""

import json
import statistics
import sys


def summarize(path: str) -> None:
    rows = json.load(open(path))
    for c in sorted({r["concurrency"] for r in rows}):
        got = {rr: [r for r in rows if r["rerank"] == rr and r["concurrency"] == c] for rr in ("none", "default")}
        rps = {rr: [r["requests_per_s"] for r in got[rr]] for rr in got}
        p50 = {rr: statistics.median(r["p50_ms"] for r in got[rr]) for rr in got}
        ratio = statistics.median(rps["default"]) / statistics.median(rps["none"])
        print(
            f"{path}: c={c} none {[round(x, 1) for x in rps['none']]} req/s, default "
            f"{[round(x, 1) for x in rps['default']]} req/s, ratio of medians {ratio:.2f}, per round "
            f"{[round(a / b, 2) for a, b in zip(rps['default'], rps['none'])]}, p50 {p50['none']:.0f} / "
            f"{p50['default']:.0f} ms, statuses {[r['status'] for rr in got for r in got[rr]]}"
        )


if __name__ == "__main__":
    for p in sys.argv[1:]:
        summarize(p)
