"""``cbir bench live``: a soak of ``cbir serve`` while its index is being written.

The index is built afresh from ``base`` folders (never touched again), or copied from an existing
index (``from_index``: a gallery of 100k items without the build); then a real ``cbir serve``
process answers ``readers`` closed-loop clients (POST /search of images drawn from ``queries``)
through three phases: ``idle`` (no writer), ``writing`` (images arrive and are taken down: a writer
loop of real ``cbir index add`` / ``cbir index remove`` processes on fresh copies of the ``churn``
folders, every ``kill_every``-th add killed with SIGKILL after 1–8 s — the next add of that copy
finishes it; see ``writer``) and ``after`` (writer stopped). The server's RSS is sampled every ``rss_every_s``; finally a fresh
server on the same final index answers the same clients for ``after_s``, for its RSS.

Reported per phase: requests, latency p50/p95/p99/max (client side), statuses, answers that were not
JSON, short answers (fewer than k results: the base holds at least k items at every moment),
resurrected answers (a result from a copy whose remove had returned before the request was sent), partial answers,
and requests answered later
than the deadline plus ``slack_s``; the writer's operations (duration, killed) and throughput; the
RSS curve, the RSS after the writes and the fresh server's. ``plot`` draws latency over time and
the RSS curve (matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.errors import CbirError


@dataclass
class LiveConfig:
    """What ``run`` soaks: folders, model, phase lengths (s), clients and the writer's habits."""

    model: Path
    base: list[Path]
    churn: list[Path]
    queries: list[Path]
    work: Path
    idle_s: float = 60.0
    writing_s: float = 600.0
    after_s: float = 60.0
    readers: int = 3
    k: int = 10
    kill_every: int = 3
    kill_after: tuple[float, float] = (1.0, 8.0)
    timeout_s: float = 5.0  # the server's --timeout: every request's deadline
    slack_s: float = 0.5  # an answer later than the deadline by more than this counts as past it
    rss_every_s: float = 2.0
    seed: int = 0
    from_index: Path | None = None  # an existing index copied as the base (e.g. 100k items) instead of a build


@dataclass
class Sample:
    t: float  # sent, seconds since the start
    ms: float
    status: int  # 0: no answer (connection error or client timeout)
    json_ok: bool
    results: int = 0
    paths: list[str] = field(default_factory=list)
    partial: bool = False


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cbir", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``cbir serve`` process on a free loopback port."""

    def __init__(self, index: Path, timeout_s: float, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(
            cli("serve", "--index", str(index), "--port", str(self.port), "--timeout", str(timeout_s)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, limit_s: float = 300.0) -> None:
        import httpx

        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CbirError(
                    f"cbir serve exited with {self.proc.returncode} before it was ready (log: {self.log.name})"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise CbirError(f"cbir serve was not ready within {limit_s:.0f} s (log: {self.log.name})")

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def reader(
    url: str, queries: list[bytes], k: int, t0: float, stop: threading.Event, out: list, seed: int, timeout_s: float
) -> None:
    """One closed-loop client: POST /search of a random query image, again and again, until ``stop``."""
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=timeout_s + 30) as client:
        while not stop.is_set():
            data = rng.choice(queries)
            t = time.monotonic()
            try:
                r = client.post("/search", params={"k": k}, content=data, headers={"content-type": "image/jpeg"})
            except httpx.HTTPError:
                out.append(Sample(t - t0, (time.monotonic() - t) * 1e3, 0, False))
                continue
            ms = (time.monotonic() - t) * 1e3
            try:
                body = r.json()
            except ValueError:
                out.append(Sample(t - t0, ms, r.status_code, False))
                continue
            res = body.get("results", []) if r.status_code == 200 else []
            out.append(
                Sample(
                    t - t0,
                    ms,
                    r.status_code,
                    True,
                    len(res),
                    [h["path"] for h in res],
                    bool(body.get("partial", False)),
                )
            )


@dataclass
class Writes:
    """The writer's log: operations and, per churn folder, when it was known removed."""

    ops: list[dict] = field(default_factory=list)
    removed: dict[str, list[list[float]]] = field(default_factory=dict)  # folder -> [[from, until], ...]


def writer(cfg: LiveConfig, index: Path, t0: float, stop: threading.Event, log: Writes, logf) -> None:
    """Images arrive and are taken down until ``stop``: each churn folder in turn is copied to a new
    folder under ``work/arrivals`` and added (so it is embedded), and the next time its turn comes
    that copy is removed and its files deleted. Every ``kill_every``-th add is killed with SIGKILL
    after ``kill_after`` seconds; the next turn of that folder adds the same copy again (the add
    resumes), so nothing a killed add left behind is forgotten."""
    rng = random.Random(cfg.seed + 1)
    current: dict[Path, tuple[Path, str]] = {}  # churn folder -> (its copy, "present" | "partial")
    adds = step = 0
    while not stop.is_set():
        src = cfg.churn[step % len(cfg.churn)]
        step += 1
        copy, state = current.get(src, (None, "absent"))
        if state == "absent":
            copy = cfg.work / "arrivals" / f"{src.name}-{step:05d}"
            shutil.copytree(src, copy)
        op = "remove" if state == "present" else "add"
        adds += op == "add"
        kill = op == "add" and cfg.kill_every > 0 and adds % cfg.kill_every == 0
        rc, killed, start, end = _run_op(cfg, index, op, copy, kill, rng, logf)
        log.ops.append(
            {"op": op, "folder": str(copy), "start": start - t0, "end": end - t0, "rc": rc, "killed": killed}
        )
        if op == "remove" and rc == 0:
            log.removed[str(copy)] = [[end - t0, float("inf")]]  # a copy never comes back
            shutil.rmtree(copy, ignore_errors=True)
            current.pop(src)
        elif op == "add":
            current[src] = (copy, "present" if rc == 0 else "partial")


def _run_op(cfg: LiveConfig, index: Path, op: str, folder: Path, kill: bool, rng: random.Random, logf):
    """Run ``cbir index add|remove`` on ``folder``; (exit status, killed, start, end)."""
    args = ["index", op, str(index), str(folder), "--wait"]
    start = time.monotonic()
    proc = subprocess.Popen(cli(*args), stdout=logf, stderr=subprocess.STDOUT)
    killed = False
    if kill:
        try:
            proc.wait(rng.uniform(*cfg.kill_after))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            killed = True
    rc = proc.wait()
    return rc, killed, start, time.monotonic()


def sample_rss(server: Server, t0: float, stop: threading.Event, out: list, every_s: float) -> None:
    while not stop.wait(every_s):
        mb = server.rss_mb()
        if mb is not None:
            out.append((time.monotonic() - t0, mb))


def soak(url: str, cfg: LiveConfig, queries: list[bytes], t0: float, seconds: float, out: list, seed: int) -> None:
    """``cfg.readers`` clients against ``url`` for ``seconds``."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=reader, args=(url, queries, cfg.k, t0, stop, out, seed + i, cfg.timeout_s), daemon=True)
        for i in range(cfg.readers)
    ]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(cfg.timeout_s + 60)


def build_index(cfg: LiveConfig, logf) -> Path:
    """The soak's index in ``work/idx``: built from ``base``, or a copy of ``from_index`` (left untouched)."""
    index = cfg.work / "idx"
    if index.exists():
        raise CbirError(f"--work {cfg.work}: holds an index from an earlier run (idx/); give a new folder")
    if cfg.from_index is not None:
        if not (Path(cfg.from_index) / "index.json").is_file():
            raise CbirError(f"--index {cfg.from_index}: not an index directory (no index.json)")
        shutil.copytree(cfg.from_index, index, symlinks=True)
        return index
    folders = [str(f) for f in cfg.base]
    steps = [("index", "build", folders[0], "--model", str(cfg.model), "--index", str(index))]
    steps += [("index", "add", str(index), f) for f in folders[1:]]
    for step in steps:
        r = subprocess.run(cli(*step), stdout=logf, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise CbirError(
                f"building the soak's index failed ({' '.join(step[:2])}: exit {r.returncode}); "
                f"see {cfg.work / 'live.log'}"
            )
    return index


def run(cfg: LiveConfig) -> dict:
    """Build, soak through the three phases, compare with a fresh server; the report (see the module doc)."""
    cfg.work = Path(cfg.work).resolve()
    cfg.work.mkdir(parents=True, exist_ok=True)
    queries = [Path(q).read_bytes() for q in cfg.queries]
    with open(cfg.work / "live.log", "ab") as logf:
        index = build_index(cfg, logf)
        server = Server(index, cfg.timeout_s, cfg.work / "serve.log")
        samples: list[Sample] = []
        rss: list[tuple[float, float]] = []
        writes = Writes()
        t0 = time.monotonic()
        stop_rss, stop_writer = threading.Event(), threading.Event()
        threading.Thread(target=sample_rss, args=(server, t0, stop_rss, rss, cfg.rss_every_s), daemon=True).start()
        try:
            rss_start = server.rss_mb()
            soak(server.url, cfg, queries, t0, cfg.idle_s, samples, cfg.seed)
            w = threading.Thread(target=writer, args=(cfg, index, t0, stop_writer, writes, logf), daemon=True)
            w.start()
            soak(server.url, cfg, queries, t0, cfg.writing_s, samples, cfg.seed + 100)
            stop_writer.set()
            w.join()
            writes_end = time.monotonic() - t0
            soak(server.url, cfg, queries, t0, cfg.after_s, samples, cfg.seed + 200)
            rss_after = server.rss_mb()
        finally:
            stop_rss.set()
            stop_writer.set()
            server.stop()
        fresh = Server(index, cfg.timeout_s, cfg.work / "serve-fresh.log")
        fresh_samples: list[Sample] = []
        try:
            soak(fresh.url, cfg, queries, time.monotonic(), cfg.after_s, fresh_samples, cfg.seed + 300)
            rss_fresh = fresh.rss_mb()
        finally:
            fresh.stop()
    phases = {"idle": (0.0, cfg.idle_s), "writing": (cfg.idle_s, writes_end), "after": (writes_end, float("inf"))}
    report = summarize(samples, phases, writes, cfg)
    report.update(
        rss_mb={
            "start": rss_start,
            "peak": max((m for _, m in rss), default=None),
            "after_writes": rss_after,
            "fresh_same_index": rss_fresh,
            "after_vs_fresh": rss_after / rss_fresh if rss_after and rss_fresh else None,
        },
        rss_curve=[[round(t, 1), round(m, 1)] for t, m in rss],
        fresh=phase_stats(fresh_samples, cfg),
        writer=writer_stats(writes, writes_end - cfg.idle_s),
        config=config_dict(cfg),
    )
    (cfg.work / "samples.json").write_text(json.dumps([s.__dict__ for s in samples]))
    return report


def config_dict(cfg: LiveConfig) -> dict:
    return {
        k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
        for k, v in cfg.__dict__.items()
        if k != "queries"
    } | {"queries": len(cfg.queries)}


def phase_stats(samples: list[Sample], cfg: LiveConfig) -> dict:
    if not samples:
        return {"requests": 0}
    ms = np.array([s.ms for s in samples])
    status: dict[str, int] = {}
    for s in samples:
        status[str(s.status)] = status.get(str(s.status), 0) + 1
    return {
        "requests": len(samples),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "status": status,
        "5xx": sum(1 for s in samples if s.status >= 500),
        "non_json": sum(1 for s in samples if not s.json_ok),
        "short": sum(1 for s in samples if s.status == 200 and s.results < cfg.k),
        "partial": sum(1 for s in samples if s.partial),
        "past_deadline": int((ms > (cfg.timeout_s + cfg.slack_s) * 1e3).sum()),
    }


def resurrected(samples: list[Sample], writes: Writes) -> list[dict]:
    """Answers showing an item of a folder whose remove had returned before the request was sent."""
    out = []
    for s in samples:
        for p in s.paths:
            for folder, spans in writes.removed.items():
                if p.startswith(folder.rstrip("/") + "/") and any(a <= s.t < b for a, b in spans):
                    out.append({"t": round(s.t, 3), "path": p})
    return out


def summarize(samples: list[Sample], phases: dict, writes: Writes, cfg: LiveConfig) -> dict:
    by_phase = {name: phase_stats([s for s in samples if a <= s.t < b], cfg) for name, (a, b) in phases.items()}
    back = resurrected(samples, writes)
    idle99, write99 = by_phase["idle"].get("p99_ms"), by_phase["writing"].get("p99_ms")
    return {
        "phases": by_phase,
        "resurrected": len(back),
        "resurrected_examples": back[:10],
        "writing_p99_vs_idle": write99 / idle99 if idle99 and write99 else None,
    }


def writer_stats(writes: Writes, seconds: float) -> dict:
    ops = writes.ops
    done = [o for o in ops if o["rc"] == 0]
    return {
        "ops": len(ops),
        "adds": sum(o["op"] == "add" for o in ops),
        "removes": sum(o["op"] == "remove" for o in ops),
        "killed": sum(o["killed"] for o in ops),
        "failed": sum(o["rc"] != 0 and not o["killed"] for o in ops),
        "ops_per_min": len(done) / seconds * 60 if seconds > 0 else None,
        "median_op_s": float(np.median([o["end"] - o["start"] for o in done])) if done else None,
        "log": ops,
    }


def plot(report: dict, samples_json: Path, out: Path) -> Path:
    """Latency of every request over time (by status) over the server's RSS curve; phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = json.loads(Path(samples_json).read_text())
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[2, 1])
    for status, colour in (("200", "tab:blue"), ("other", "tab:red")):
        pts = [(s["t"], s["ms"]) for s in samples if (str(s["status"]) == "200") == (status == "200")]
        if pts:
            ax.scatter(*zip(*pts), s=3, c=colour, label=f"status {status}")
    for o in report["writer"]["log"]:
        ax.axvspan(
            o["start"],
            o["end"],
            color="tab:red" if o["killed"] else "tab:green" if o["op"] == "add" else "tab:orange",
            alpha=0.08,
            lw=0,
        )
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, client)")
    ax.legend(loc="upper right")
    ax.set_title("cbir serve under writes (green: add, orange: remove, red: killed add)")
    if report["rss_curve"]:
        ax2.plot(*zip(*report["rss_curve"]), c="tab:purple")
    if report["rss_mb"].get("fresh_same_index"):
        ax2.axhline(report["rss_mb"]["fresh_same_index"], ls="--", c="grey", label="fresh server, same index")
        ax2.legend(loc="lower right")
    ax2.set_ylabel("server RSS (MB)")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main_live(cfg: LiveConfig, out_json: Path | None, png: Path | None) -> dict:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = run(cfg)
    if out_json is not None:
        Path(out_json).write_text(json.dumps(report, indent=1))
    if png is not None:
        plot(report, cfg.work / "samples.json", png)
    return report
