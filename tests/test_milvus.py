"""``--store``: a Milvus collection (Milvus Lite, the real server in process or as ``milvus-lite server``)
holds an index's vectors; the index directory stays the ledger. Same answers as index.faiss, nothing
written twice, removed items never come back after kill -9, two serving processes agree."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus extra is not installed (pip install 'cbir[milvus]')")
pytest.importorskip("milvus_lite", reason="Milvus Lite is not installed (pip install 'cbir[milvus]')")

from cbir.errors import CbirError  # noqa: E402
from cbir.index.ann import milvus_store  # noqa: E402
from cbir.index.gallery import Gallery  # noqa: E402
from conftest import make_gallery  # noqa: E402
from test_integrity import check_consistent, cli  # noqa: E402
from test_serve import free_port  # noqa: E402


def vectors_index(d, store: str | None, factory: str = "Flat", n: int = 3000, part: int = 500, rc: int = 0) -> Gallery:
    """An index of ``n`` seeded vectors (paths /d/p<i // part>/i<i>.jpg) from ``cbir index build --from-vectors``."""
    from cbir.cli import main

    d.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).normal(size=(n, 320)).astype(np.float32)
    np.save(d / "v.npy", x)
    (d / "p.txt").write_text("".join(f"/d/p{i // part}/i{i:05d}.jpg\n" for i in range(n)))
    args = [
        "index",
        "build",
        "--from-vectors",
        str(d / "v.npy"),
        "--paths",
        str(d / "p.txt"),
        "--index",
        str(d / "idx"),
    ]
    args += ["--factory", factory, "--shard-size", str(part)] + (["--store", store] if store else [])
    assert main(args) == rc
    return Gallery(d / "idx")


def test_parse_names_what_is_wrong():
    t = milvus_store.parse("milvus://10.0.0.5:19530/gallery")
    assert (t.uri, t.collection) == ("http://10.0.0.5:19530", "gallery")
    lite = milvus_store.parse("milvus-lite:./x/g.db")
    assert lite.uri.endswith("/x/g.db") and lite.collection == "cbir" and lite.text.startswith("milvus-lite:/")
    assert milvus_store.parse("milvus-lite:g.db/photos").collection == "photos"
    for bad in ("milvus://host/", "milvus-lite:g", "s3://b/c", "milvus-lite:g.db/no-dash"):
        with pytest.raises(CbirError, match=r"^--store .*: give milvus://HOST:PORT/COLLECTION"):
            milvus_store.parse(bad)
    assert milvus_store.index_type("IVF256,Flat") == ("IVF_FLAT", {"nlist": 256}, "nprobe")
    assert milvus_store.index_type("OPQ32,IVF1024,PQ32")[0] == "IVF_SQ8"
    with pytest.raises(CbirError, match="--factory LSH: no Milvus index type"):
        milvus_store.index_type("LSH")


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_vector_search_through_milvus_equals_index_faiss(tmp_path, factory):
    local = vectors_index(tmp_path / "local", None, factory)
    milvus = vectors_index(tmp_path / "m", f"milvus-lite:{tmp_path}/m.db/g", factory)
    assert milvus.config["store"] == f"milvus-lite:{tmp_path}/m.db/g" and not (milvus.root / "index.faiss").exists()
    q = np.random.default_rng(5).normal(size=(20, 320)).astype(np.float32)
    nprobe = 16 if factory != "Flat" else None  # every list: both exact
    for rerank in ("none", "class"):
        a = local.search_vectors(q, k=10, rerank=rerank, nprobe=nprobe)
        b = milvus.search_vectors(q, k=10, rerank=rerank, nprobe=nprobe)
        assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b], rerank
        assert np.allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-5)
    ids = np.array([3, 700, 2999])
    assert np.allclose(milvus.vectors_for(ids[None])[0], local.vectors_for(ids[None])[0], atol=1e-6)
    assert milvus.consistency()["missing_from_faiss"] == [] and milvus.consistency()["not_indexed_in_faiss"] == []
    if factory != "Flat":  # `cbir index tune --queries`: nprobe tuned through the collection on real queries
        t = milvus.tune(0.9, queries=q / np.linalg.norm(q, axis=1, keepdims=True))
        assert (
            t["basis"] == "queries" and t["recall_at_10"] >= 0.9 and Gallery(milvus.root).settings.search["nprobe"] >= 1
        )


def test_image_search_through_milvus_equals_index_faiss(tmp_path, embedder, photos):
    """The default cascade (re-ranking, verification by stored local features) on real photos."""
    make_gallery(tmp_path / "g", photos, 12)
    local = Gallery.create(tmp_path / "local", embedder)
    local.build([tmp_path / "g"])
    milvus = Gallery.create(tmp_path / "m", embedder, store=f"milvus-lite:{tmp_path}/m.db")
    milvus.build([tmp_path / "g"])
    queries = sorted((tmp_path / "g").rglob("*.*"))[:6]
    a, b = local.search(queries, k=5), milvus.search(queries, k=5)
    key = lambda res: [[(h["path"], h["verified"], round(h["score"], 4)) for h in r["results"]] for r in res]  # noqa: E731
    assert key(a) == key(b)
    assert all(r["results"][0]["verified"] and r["results"][0]["path"] == str(q) for r, q in zip(b, queries))
    from cbir.bench.class_search import class_search

    classes = [class_search(g, str(tmp_path / "g")) for g in (local, milvus)]
    assert classes[0]["mAP"] > 0 and classes[1]["store"].startswith("milvus-lite:")
    scores = [{k: v for k, v in c.items() if k.startswith(("mAP", "P@", "R@"))} for c in classes]
    assert scores[0] == scores[1] and len(scores[0]) == 10


def test_a_rerun_writes_nothing_twice_and_a_remove_deletes_there(tmp_path, capsys):
    store = f"milvus-lite:{tmp_path}/m.db/g"
    g = vectors_index(tmp_path, store)
    target = milvus_store.parse(store)
    c = milvus_store.client(target)
    c.upsert(target.collection, [{"id": 7, "vector": np.load(tmp_path / "v.npy")[6], "path": "marked", "shard": 1}])
    again = vectors_index(tmp_path, store)  # the same build once more: nothing new, nothing written
    assert again.store.count("indexed") == 3000
    assert c.get(target.collection, ids=[7], output_fields=["path"])[0]["path"] == "marked"
    gone = again.remove(["/d/p2"])["removed"]
    ids = milvus_store.held_shards(c, target.collection)
    assert gone == 500 and len(ids) == 2500 and not any(1001 <= i <= 1500 for i in ids)
    with pytest.raises(CbirError, match=r"--store .*: index .* was created with --store"):
        Gallery.create(g.root, None, dim=320, store=f"milvus-lite:{tmp_path}/other.db")
    vectors_index(tmp_path / "other", store, rc=2)  # another index into the same collection: refused
    assert "holds the vectors of another index" in capsys.readouterr().err
    assert len(milvus_store.held_shards(c, target.collection)) == 2500


def test_check_and_repair_compare_the_collection_with_the_ledger(tmp_path):
    store = f"milvus-lite:{tmp_path}/m.db/g"
    g = vectors_index(tmp_path, store)
    target = milvus_store.parse(store)
    c = milvus_store.client(target)
    c.delete(target.collection, ids=[10, 11, 12])
    c.upsert(target.collection, [{"id": 40, "vector": np.zeros(320, np.float32), "path": "", "shard": 99}])
    c.flush(target.collection)
    from cbir.index import check

    found = check.check(g)
    assert not found["ok"]
    assert [p["problem"] for p in found["problems"] if p["part"] == "store"] == [
        "holds 0 ids not indexed and lacks 3 indexed ids, holds an older vector of 1"
    ]
    fixed = check.repair(g)
    assert fixed["ok"], fixed["problems_left"]
    assert c.get(target.collection, ids=[40], output_fields=["shard"])[0]["shard"] == g.store.shards_for_ids([40])[40]
    assert check_consistent(g.root, "after repair") == 3000


# (operation, crash point) with a Milvus Lite store: test_integrity's points, its faiss-written ones as
# store-written, and store-batch (between two upsert / delete calls) — cbir.crashpoints
KILLS = [
    ("add", "shard-written:1"),
    ("add", "shard-written:2"),
    ("add", "shard-committed:1"),
    ("add", "shard-committed:2"),
    ("add", "store-batch:1"),
    ("add", "store-written:1"),
    ("add", "config-written:1"),
    ("add", "config-written:2"),
    ("remove", "removed-committed:1"),
    ("remove", "store-batch:1"),
    ("remove", "store-written:1"),
    ("remove", "config-written:1"),
    ("tune", "config-written:1"),
    ("rebuild", "store-written:1"),
]


def test_kill_9_at_store_points_then_a_takedown_never_resurrects(tmp_path):
    """As ``test_integrity``'s kill test, against Milvus Lite: each write is killed at a point, a
    takedown runs on what it left, the write runs again; nothing removed is searchable or back."""
    base = tmp_path / "base"
    vectors_index(base, None, n=2000)
    x = np.random.default_rng(1).normal(size=(1000, 320)).astype(np.float32)
    np.save(base / "v_more.npy", np.concatenate([np.load(base / "v.npy"), x]))
    (base / "p_more.txt").write_text("".join(f"/d/p{i // 500}/i{i:05d}.jpg\n" for i in range(3000)))
    resurrected = 0
    for i, (op, point) in enumerate(KILLS):
        work = tmp_path / f"{op}-{i}"
        store = f"milvus-lite:{work}.db/g"
        build = ["index", "build", "--from-vectors", str(base / "v.npy"), "--paths", str(base / "p.txt")]
        first = cli(*build, "--index", str(work), "--store", store, "--shard-size", "500")
        assert first.returncode == 0, first.stderr[-800:]
        if op == "rebuild":  # SQLite ahead of the collection (as a writer that died), so the build syncs it
            g = Gallery(work)
            with g.store.transaction():
                g.store.mark_removed([1])
            g.close()
        args = {
            "add": ["index", "build", "--from-vectors", str(base / "v_more.npy"), "--paths", str(base / "p_more.txt")]
            + ["--index", str(work)],
            "remove": ["index", "remove", str(work), "/d/p1"],
            "tune": ["index", "tune", str(work), "--target-recall", "0.9"],
            "rebuild": build + ["--index", str(work)],
        }[op]
        r = cli(*args, crash=point)
        assert r.returncode == -9, (op, point, r.returncode, r.stderr[-800:])
        gone = cli("index", "remove", str(work), "/d/p5" if op == "add" else "/d/p3", "/d/p0/i00007.jpg")
        assert gone.returncode in (0, 2), gone.stderr[-800:]
        again = cli(*args)
        assert again.returncode in (0, 2), again.stderr[-800:]
        check_consistent(work, f"{op} killed at {point}")
        g = Gallery(work)
        removed = {row[0] for row in g.store.conn.execute("SELECT id FROM items WHERE state = 'removed'")}
        held = set(milvus_store.held_shards(g.index.client, g.index.target.collection))
        resurrected += len(removed & held)
        assert removed and not removed & held, (op, point)
        g.close()
    assert resurrected == 0


def test_a_milvus_lite_file_torn_by_a_killed_write_is_remade_by_the_next_write(tmp_path):
    """Milvus Lite writes its files itself: a write killed while it flushed left one short ("file
    seems not fully written") and the collection no longer loaded, so every later write failed. The
    next write now drops it and refills it from the index's shards; nothing removed comes back."""
    base = tmp_path / "base"
    vectors_index(base, None, n=2000)
    work, store = tmp_path / "idx", f"milvus-lite:{tmp_path}/m.db/g"
    build = ["index", "build", "--from-vectors", str(base / "v.npy"), "--paths", str(base / "p.txt")]
    assert cli(*build, "--index", str(work), "--store", store, "--shard-size", "500").returncode == 0
    torn = max((tmp_path / "m.db").rglob("*.idx"), key=lambda f: f.stat().st_size)  # the vectors, raw
    with open(torn, "r+b") as f:
        f.truncate(torn.stat().st_size // 2)
    gone = cli("index", "remove", str(work), "/d/p3")
    assert gone.returncode == 0, gone.stderr[-800:]
    check_consistent(work, "a torn Milvus Lite file, then a takedown")
    g = Gallery(work)
    held = set(milvus_store.held_shards(g.index.client, g.index.target.collection))
    assert held == set(g.store.indexed_ids().tolist()) and len(held) == 1500
    g.close()


def serve(index, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cbir", "serve", "--index", str(index), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not come up")


def test_two_serving_processes_on_one_collection_agree_and_see_a_remove(tmp_path, lite0_onnx):
    """``milvus-lite server`` as the shared Milvus; two ``cbir serve`` processes on copies of one index
    directory's ledger (a shared folder); a remove through the CLI is seen by both at once."""
    import httpx

    mport = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus"), "--port", str(mport)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs = []
    try:
        for _ in range(100):
            try:
                milvus_store.client(milvus_store.parse(f"milvus://127.0.0.1:{mport}/g")).list_collections()
                break
            except CbirError:
                milvus_store._clients.clear()
                time.sleep(0.3)
        from cbir.cli import main

        np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(3000, 320)).astype(np.float32))
        (tmp_path / "p.txt").write_text("".join(f"/d/p{i // 500}/i{i:05d}.jpg\n" for i in range(3000)))
        args = ["index", "build", "--from-vectors", str(tmp_path / "v.npy"), "--paths", str(tmp_path / "p.txt")]
        args += ["--model", str(lite0_onnx), "--index", str(tmp_path / "idx")]
        assert main(args + ["--store", f"milvus://127.0.0.1:{mport}/g"]) == 0
        ports = [free_port(), free_port()]
        procs = [serve(tmp_path / "idx", p) for p in ports]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, proc in zip(urls, procs):
            wait_up(url, proc)
        q = np.random.default_rng(9).normal(size=(12, 320)).astype(np.float32)

        def answers(url: str) -> list[list[str]]:
            out = []
            for v in q:
                r = httpx.post(url + "/search", json={"embedding": v.tolist(), "k": 10}, timeout=60)
                assert r.status_code == 200, r.text
                out.append([h["path"] for h in r.json()["results"]])
            return out

        first = answers(urls[0])
        assert first == answers(urls[1]) and all(len(r) == 10 for r in first)
        victims = sorted({p for r in first for p in r})[:3]
        assert main(["index", "remove", str(tmp_path / "idx"), *victims]) == 0
        after = [answers(u) for u in urls]
        assert after[0] == after[1] and not {p for r in after[0] for p in r} & set(victims)
        assert all(len(r) == 10 for r in after[0])
        more = np.random.default_rng(3).normal(size=(200, 320)).astype(np.float32)
        np.save(tmp_path / "v.npy", np.concatenate([np.load(tmp_path / "v.npy"), more]))
        (tmp_path / "p.txt").write_text("".join(f"/d/p{i // 500}/i{i:05d}.jpg\n" for i in range(3200)))
        assert main(args) == 0  # an add, by a third process (the writer)
        added_at = time.monotonic()
        for url in urls:  # each replica finds a new item at its next refresh (index.json read ≥ once a second)
            while True:
                r = httpx.post(url + "/search", json={"embedding": more[7].tolist(), "k": 1}, timeout=60).json()
                if r["results"][0]["path"] == "/d/p6/i03007.jpg":
                    break
                assert time.monotonic() - added_at < 10, r
                time.sleep(0.2)
        assert answers(urls[0]) == answers(urls[1])
        meta = json.loads((tmp_path / "idx" / "index.json").read_text())
        assert meta["store"] == f"milvus://127.0.0.1:{mport}/g"
    finally:
        for p in procs + [server]:
            p.terminate()
            p.wait(30)
        milvus_store._clients.clear()


def test_a_store_refuses_dba_on_disk_and_search_device(tmp_path):
    with pytest.raises(CbirError, match=r"--store .*: not with --dba"):
        Gallery.create(tmp_path / "a", None, dim=8, dba=5, store=f"milvus-lite:{tmp_path}/a.db")
    g = vectors_index(tmp_path / "b", f"milvus-lite:{tmp_path}/b.db", n=20, part=10)
    with pytest.raises(CbirError, match=r"--search-device cpu: index .* keeps its vectors in milvus-lite:"):
        Gallery(g.root, search_device="cpu")


def test_bench_search_puts_milvus_lite_beside_index_faiss_with_auto_tuned_through_it(tmp_path, capsys):
    """``cbir bench search --store faiss,milvus-lite``: the same vectors, ``--factory auto`` chosen and
    nprobe tuned through each store (Milvus: IVF_FLAT with the same nlist) to the same target."""
    from cbir.cli import main

    args = ["bench", "search", "--sizes", "25000", "--queries", "50", "--target-recall", "0.9"]
    args += ["--shard-size", "10000", "--workdir", str(tmp_path), "--store", "faiss,milvus-lite", "--json"]
    assert main(args) == 0
    local, milvus = json.loads(capsys.readouterr().out)
    assert (local["store"], milvus["store"]) == ("faiss", "milvus-lite")
    assert local["auto_choice"] == milvus["auto_choice"] == "IVF512,Flat"
    assert milvus["search"]["nprobe"] >= 1 and milvus["tuning"]["recall_at_10"] >= 0.9
    assert milvus["recall_at_k"] >= 0.8 and milvus["bytes"]["index.faiss"] > 25_000 * 320 * 4  # the Milvus Lite files
