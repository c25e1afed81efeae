"""The index never drifts from its metadata: kill -9 at random points of add/remove, one writer at a
time across processes, readers never blocked, and a running service sees new generations."""

from __future__ import annotations

import json
import os
import shutil
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
    assert (
        main(
            [
                "index",
                "build",
                "--from-vectors",
                str(d / "v.npy"),
                "--paths",
                str(d / "p.txt"),
                "--model",
                str(lite0_onnx),
                "--index",
                str(d / "idx"),
                "--factory",
                "IVF64,Flat",
                "--shard-size",
                "1000",
            ]
        )
        == 0
    )
    return d


def check_consistent(idx, label: str) -> int:
    g = Gallery(idx)
    c = g.consistency()  # opening the index reconciles it first
    assert c["missing_from_faiss"] == [] and c["not_indexed_in_faiss"] == [], (
        label,
        {k: len(v) if isinstance(v, list) else v for k, v in c.items()},
    )
    assert c["generation"] == c["faiss_generation"], (label, c)
    removed = {r[0] for r in g.store.conn.execute("SELECT id FROM items WHERE state != 'indexed'")}
    q = np.random.default_rng(1).normal(size=(20, 320)).astype(np.float32)
    assert not {h.id for row in g.search_vectors(q, k=50) for h in row} & removed, label
    ids, vecs = g.load_vectors()  # each stored vector finds its own id (ids still point at their vectors)
    pick = np.random.default_rng(2).choice(len(ids), min(200, len(ids)), replace=False)
    got = [row[0].id for row in g.search_vectors(vecs[pick], k=1, rerank="none")]
    assert got == ids[pick].tolist(), (label, sum(a != b for a, b in zip(got, ids[pick].tolist())))
    n = g.index.ntotal
    g.close()
    return n


def cli(*args, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CBIR_CRASH_AT"}
    if crash:
        env["CBIR_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "cbir", *args], capture_output=True, text=True, timeout=300, env=env)


# (operation, crash point): the process kills itself with SIGKILL there (cbir.crashpoints) — the same
# places on every machine, whatever its speed
KILLS = [
    ("add", "shard-written:1"),
    ("add", "shard-written:2"),
    ("add", "shard-committed:1"),
    ("add", "shard-committed:3"),
    ("add", "faiss-written:1"),
    ("add", "config-written:1"),
    ("add", "config-written:2"),
    ("remove", "removed-committed:1"),
    ("remove", "faiss-written:1"),
    ("remove", "config-written:1"),
    ("tune", "config-written:1"),
    ("rebuild", "faiss-written:1"),
]


def test_kill_9_at_named_points_then_a_takedown_never_resurrects(built, lite0_onnx, tmp_path):
    """Each operation is killed at a named point, a takedown (``index remove``) runs on what it left,
    then the operation runs again to the end: the copy opens consistent and no removed item is back."""
    ops = {
        "add": [
            "index",
            "build",
            "--from-vectors",
            str(built / "v_more.npy"),
            "--paths",
            str(built / "p_more.txt"),
            "--model",
            str(lite0_onnx),
            "--index",
            "{work}",
        ],
        "remove": ["index", "remove", "{work}", "/data/part1"],
        "tune": ["index", "tune", "{work}", "--target-recall", "0.9"],
        "rebuild": [
            "index",
            "build",
            "--from-vectors",
            str(built / "v.npy"),
            "--paths",
            str(built / "p.txt"),
            "--model",
            str(lite0_onnx),
            "--index",
            "{work}",
        ],
    }
    takedown = {
        "add": ["/data/part6", "/data/part0/img000007.jpg"],
        "remove": ["/data/part2"],
        "tune": ["/data/part3"],
        "rebuild": ["/data/part4"],
    }
    resurrected = killed = 0
    for i, (op, point) in enumerate(KILLS):
        work = tmp_path / f"{op}-{i}"
        shutil.copytree(built / "idx", work)
        if op == "rebuild":  # leave index.faiss behind SQLite first (as a writer that died), so the build rebuilds it
            g = Gallery(work)
            with g.store.transaction():
                g.store.mark_removed([1])
            g.close()
        args = [a.format(work=work) for a in ops[op]]
        r = cli(*args, crash=point)
        assert r.returncode == -9, (op, point, r.returncode, r.stderr[-500:])  # it really died there
        killed += 1
        gone = cli("index", "remove", str(work), *takedown[op])
        assert gone.returncode in (0, 2), gone.stderr  # 2: nothing of it registered yet (then nothing to take down)
        removed_now = {
            row[0] for row in Gallery(work).store.conn.execute("SELECT path FROM items WHERE state = 'removed'")
        }
        again = cli(*args)
        assert again.returncode in (0, 2), again.stderr  # remove: part1 may be gone already
        check_consistent(work, f"{op} killed at {point}")
        g = Gallery(work)
        back = [
            p
            for p in removed_now
            if g.store.conn.execute("SELECT state FROM items WHERE path = ?", (p,)).fetchone()[0] != "removed"
        ]
        resurrected += len(back)
        g.close()
    assert killed == len(KILLS) >= 10 and resurrected == 0


HOLDER = """
import sys, time
from cbir.index.storage.lock import WriterLock
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
        r = subprocess.run(
            [sys.executable, "-m", "cbir", "index", "remove", str(idx), "/data/part0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
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
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "cbir",
                "index",
                "build",
                "--from-vectors",
                str(built / "v_more.npy"),
                "--paths",
                str(built / "p_more.txt"),
                "--model",
                str(lite0_onnx),
                "--index",
                str(idx),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert top(N + 10) == "/data/part6/img012010.jpg"  # the new index.faiss, no restart
        assert c.get("/healthz").json()["count"] == N + 3000
        assert json.loads((idx / "index.json").read_text())["faiss_generation"] == Gallery(idx).store.generation


def test_a_reader_rebuilds_what_a_dead_writer_left_behind(built, tmp_path):
    """`cbir serve`'s gallery: a remove killed between its SQLite commit and index.faiss leaves the
    index behind; the next refresh rebuilds it in the background (no writer holds the lock)."""
    idx = tmp_path / "idx"
    shutil.copytree(built / "idx", idx)
    reader = Gallery(idx)
    assert reader.index.ntotal == N
    r = cli("index", "remove", str(idx), "/data/part0", crash="removed-committed:1")
    assert r.returncode == -9
    assert reader.store.generation != reader.config["faiss_generation"]
    hits = reader.search_vectors(np.load(built / "v.npy")[:5], k=3)  # meanwhile: removed items are never shown
    assert all(not h.path.startswith("/data/part0/") for row in hits for h in row)
    reader.refresh()
    reader._reconciler.join(120)
    assert reader.in_sync and reader.index.ntotal == N - PART and reader.load_error is None
    assert check_consistent(idx, "after the reader's rebuild") == N - PART
