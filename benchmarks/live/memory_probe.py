"""Server RSS after writes vs a fresh server on the same index (issue 37): 30 s of 3 readers, then
150 s (WRITE_S) of reads beside `cbir bench live`'s writer (adds, removes, every 3rd add killed), 30 s
more reads; then a fresh server on the final index, 30 s of reads. Prints /proc/PID/smaps_rollup figures.
The index is copied from INDEX_DIR first (build one of the six Corel classes with `cbir bench live` or
`cbir index build`/`add`); extra NAME=VALUE arguments are set in the environment (e.g. MALLOC_ARENA_MAX=2).

usage: .venv/bin/python benchmarks/live/memory_probe.py LABEL INDEX_DIR MODEL [NAME=VALUE...]
"""
import os, sys, shutil, threading, time, json
from pathlib import Path
from cbir.bench import live
C = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "corel1k"  # ../shared beside the checkout
variant = sys.argv[1]; env = dict(a.split("=", 1) for a in sys.argv[4:])
os.environ.update(env)
work = Path(f"/tmp/mem/{variant}"); shutil.rmtree(work, ignore_errors=True); work.mkdir(parents=True)
shutil.copytree(sys.argv[2], work / "idx")
cfg = live.LiveConfig(Path(sys.argv[3]), [C/"africans", C/"beaches", C/"buildings", C/"buses"], [C/"dinosaurs", C/"elephants"],
    [C/"africans/0.jpg"] + sorted((C/"beaches").glob("1*.jpg"))[:20] + sorted((C/"dinosaurs").glob("4*.jpg"))[:20] + sorted((C/"flowers").glob("6*.jpg"))[:20],
    work, readers=3, k=10)
qs = [p.read_bytes() for p in cfg.queries]
def smaps(pid):
    d = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB": d[parts[0].rstrip(":")] = int(parts[1]) // 1024
    return {k: d[k] for k in ("Rss", "Anonymous", "Shared_Clean", "Private_Clean", "Private_Dirty") if k in d}
out = {}
with open(work / "log", "ab") as logf:
    s = live.Server(work / "idx", 5.0, work / "serve.log")
    t0 = time.monotonic(); samples = []
    live.soak(s.url, cfg, qs, t0, 30, samples, 1); out["after_idle"] = smaps(s.proc.pid)
    stop = threading.Event(); w = live.Writes()
    th = threading.Thread(target=live.writer, args=(cfg, work / "idx", t0, stop, w, logf)); th.start()
    live.soak(s.url, cfg, qs, t0, float(os.environ.get("WRITE_S", 150)), samples, 2); stop.set(); th.join()
    live.soak(s.url, cfg, qs, t0, 30, samples, 3); out["after_writes"] = smaps(s.proc.pid); s.stop()
    f = live.Server(work / "idx", 5.0, work / "fresh.log"); fs = []
    live.soak(f.url, cfg, qs, time.monotonic(), 30, fs, 4); out["fresh"] = smaps(f.proc.pid); f.stop()
out["ops"] = len(w.ops); out["requests"] = len(samples)
print(variant, json.dumps(out))
