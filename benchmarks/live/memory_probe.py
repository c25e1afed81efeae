"""Server RSS after writes vs a fresh server on the same index (issue 37): 30 s of 3 readers, then
150 s (WRITE_S) of reads beside `cbir bench live`'s writer (adds, removes, every 3rd add killed), 30 s
more reads; then a fresh server on the final index, 30 s of reads. Prints /proc/PID/smaps_rollup figures.
The index is copied from INDEX_DIR first (build one of the six Corel classes with `cbir bench live` or
`cbir index build`/`add`); extra NAME=VALUE arguments are set in the environment (e.g. MALLOC_ARENA_MAX=2).

usage: .venv/bin/python benchmarks/live/memory_probe.py LABEL INDEX_DIR MODEL [NAME=VALUE...]
"""

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from cbir.bench import live

CLASSES = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "corel1k"  # ../shared beside the checkout
KEYS = ("Rss", "Anonymous", "Shared_Clean", "Private_Clean", "Private_Dirty")


def smaps_mb(pid: int) -> dict:
    """/proc/PID/smaps_rollup's totals in MB."""
    got = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            got[parts[0].rstrip(":")] = int(parts[1]) // 1024
    return {k: got[k] for k in KEYS if k in got}


def config(work: Path, model: Path) -> live.LiveConfig:
    c = CLASSES
    queries = (
        [c / "africans/0.jpg"]
        + sorted((c / "beaches").glob("1*.jpg"))[:20]
        + sorted((c / "dinosaurs").glob("4*.jpg"))[:20]
        + sorted((c / "flowers").glob("6*.jpg"))[:20]
    )
    return live.LiveConfig(
        model,
        [c / n for n in ("africans", "beaches", "buildings", "buses")],
        [c / "dinosaurs", c / "elephants"],
        queries,
        work,
        readers=3,
        k=10,
    )


def probe(label: str, index: Path, model: Path) -> dict:
    work = Path(f"/tmp/mem/{label}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(index, work / "idx")
    cfg = config(work, model)
    queries = [p.read_bytes() for p in cfg.queries]
    out, samples, writes = {}, [], live.Writes()
    with open(work / "log", "ab") as logf:
        server = live.Server(work / "idx", 5.0, work / "serve.log")
        t0 = time.monotonic()
        live.soak(server.url, cfg, queries, t0, 30, samples, 1)
        out["after_idle"] = smaps_mb(server.proc.pid)
        stop = threading.Event()
        writer = threading.Thread(target=live.writer, args=(cfg, work / "idx", t0, stop, writes, logf))
        writer.start()
        live.soak(server.url, cfg, queries, t0, float(os.environ.get("WRITE_S", 150)), samples, 2)
        stop.set()
        writer.join()
        live.soak(server.url, cfg, queries, t0, 30, samples, 3)
        out["after_writes"] = smaps_mb(server.proc.pid)
        server.stop()
        fresh = live.Server(work / "idx", 5.0, work / "fresh.log")
        live.soak(fresh.url, cfg, queries, time.monotonic(), 30, [], 4)
        out["fresh"] = smaps_mb(fresh.proc.pid)
        fresh.stop()
    return out | {"ops": len(writes.ops), "requests": len(samples)}


if __name__ == "__main__":
    os.environ.update(dict(a.split("=", 1) for a in sys.argv[4:]))
    print(sys.argv[1], json.dumps(probe(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
