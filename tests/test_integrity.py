"""The index never drifts from its metadata: kill -9 at random points of add/remove, one writer at a
time across processes, readers never blocked, and a running service sees new generations."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.index.gallery import Gallery

N, PART = 12_000, 2_000


def paths_for(n: int, start: int = 0) -> str:
    return "".join(f"/data/part{i // PART}/img{i:06d}.jpg\n" for i in range(start, start + n))


@pytest.fixture(scope="module")
def built(lite0_onnx, tmp_path_factory):
    """An IVF index of N vectors from existing embeddings, and a 3,000-row extension for `add`."""
    from cbir.cli import main

    d = tmp_path_factory.mktemp("integrity")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + 3000, 320)).astype(np.float32)
    np.save(d / "v.npy", x[:N])
    np.save(d / "v_more.npy", x)
    (d / "p.txt").write_text(paths_for(N))
    (d / "p_more.txt").write_text(paths_for(N + 3000))
    assert main(["index", "build", "--from-vectors", str(d / "v.npy"), "--paths", str(d / "p.txt"),
                 "--model", str(lite0_onnx), "--index", str(d / "idx"), "--factory", "IVF64,Flat",
                 "--shard-size", "1000"]) == 0
    return d


def check_consistent(idx, label: str) -> int:
    g = Gallery(idx)
    c = g.consistency()  # opening the index reconciles it first
    assert c["missing_from_faiss"] == [] and c["not_indexed_in_faiss"] == [], (label, {k: len(v) if isinstance(v, list) else v for k, v in c.items()})
    assert c["generation"] == c["faiss_generation"], (label, c)
    removed = {r[0] for r in g.store.conn.execute("SELECT id FROM items WHERE state != 'indexed'")}
    q = np.random.default_rng(1).normal(size=(20, 320)).astype(np.float32)
    assert not {h.id for row in g.search_vectors(q, k=50) for h in row} & removed, label
    n = g.index.ntotal
    g.close()
    return n


def test_kill_9_at_random_points_of_add_and_remove(built, lite0_onnx, tmp_path):
    """Each operation is timed once uncut (T); then it is killed at points spread over the part of T
    after interpreter start-up (0.3·T … T, jittered), and the copy it left must open consistent."""
    rng = random.Random(0)
    commands = {
        "remove": lambda work, i: ["index", "remove", str(work), f"/data/part{i % 5}", f"/data/part5/img0{10000 + i}.jpg"],
        "add": lambda work, i: ["index", "build", "--from-vectors", str(built / "v_more.npy"), "--paths",
                                str(built / "p_more.txt"), "--model", str(lite0_onnx), "--index", str(work)],
    }
    killed = 0
    for name, make in commands.items():
        work = tmp_path / f"{name}-uncut"
        shutil.copytree(built / "idx", work)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cbir", *make(work, 0)], check=True, capture_output=True, timeout=300)
        full = time.perf_counter() - t0
        check_consistent(work, f"{name} uncut")
        for i in range(5):
            work = tmp_path / f"{name}{i}"
            shutil.copytree(built / "idx", work)
            delay = full * (0.3 + 0.7 * (i + rng.random()) / 5)
            proc = subprocess.Popen([sys.executable, "-m", "cbir", *make(work, i)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc.wait(delay)
                outcome = f"finished before {delay:.2f} s"
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                outcome = f"killed at {delay:.2f} s of {full:.2f} s"
                killed += 1
            n = check_consistent(work, f"{name} {outcome}")
            assert N - 2 * PART - 1 <= n <= N + 3000
    assert killed >= 5, killed  # most runs really were interrupted


HOLDER = """
import sys, time
from cbir.index.lock import WriterLock
lock = WriterLock(sys.argv[1]); lock.acquire()
print("locked", flush=True); time.sleep(float(sys.argv[2]))
"""


def test_one_writer_at_a_time_and_readers_are_never_blocked(built, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built / "idx", idx)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(idx), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CbirError, match=rf"another cbir process \(pid {holder.pid}\) is writing to it; .* --wait"):
            Gallery(idx).remove(["/data/part0"])
        r = subprocess.run([sys.executable, "-m", "cbir", "index", "remove", str(idx), "/data/part0"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--wait" in r.stderr
        reader = Gallery(idx)  # search works while the writer holds the lock
        assert len(reader.search_vectors(np.ones((1, 320), np.float32), k=5)[0]) == 5
    finally:
        holder.kill()
        holder.wait()
    short = subprocess.Popen([sys.executable, "-c", HOLDER, str(idx), "1.5"], stdout=subprocess.PIPE, text=True)
    assert short.stdout.readline().strip() == "locked"
    t0 = time.perf_counter()
    assert Gallery(idx, wait=True).remove(["/data/part0"])["removed"] == PART  # waited for the holder
    assert time.perf_counter() - t0 > 0.5
    short.wait()
    assert check_consistent(idx, "after wait") == N - PART


def test_service_picks_up_a_new_generation(built, lite0_onnx, tmp_path):
    import httpx

    from cbir.serve.app import create_app
    from test_serve import Server

    idx = tmp_path / "idx"
    shutil.copytree(built / "idx", idx)
    x = np.load(built / "v_more.npy")
    with Server(create_app(str(idx))) as url, httpx.Client(base_url=url, timeout=60) as c:
        def top(i: int) -> str:
            r = c.post("/search", json={"embedding": x[i].tolist(), "k": 1})
            assert r.status_code == 200, r.text
            return r.json()["results"][0]["path"]

        assert top(5) == "/data/part0/img000005.jpg"
        assert top(N + 10) != "/data/part6/img012010.jpg"  # not indexed yet
        r = subprocess.run([sys.executable, "-m", "cbir", "index", "build", "--from-vectors", str(built / "v_more.npy"),
                            "--paths", str(built / "p_more.txt"), "--model", str(lite0_onnx), "--index", str(idx)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert top(N + 10) == "/data/part6/img012010.jpg"  # the new index.faiss, no restart
        assert c.get("/healthz").json()["count"] == N + 3000
        assert json.loads((idx / "index.json").read_text())["faiss_generation"] == Gallery(idx).store.generation
