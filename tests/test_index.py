"""Gallery index round trips on real images with real FAISS and SQLite; kill -9 resume; refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.index.gallery import Gallery
from cbir.index.storage.store import Store
from conftest import make_broken_files, make_gallery


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cbir", *map(str, args)], capture_output=True, text=True, timeout=600)


def ids_to_paths(index_dir: Path) -> dict[int, str]:
    con = sqlite3.connect(index_dir / "meta.sqlite")
    try:
        return dict(con.execute("SELECT id, path FROM items WHERE state = 'indexed'").fetchall())
    finally:
        con.close()


def test_build_search_add_remove_round_trip(embedder, photos, tmp_path):
    g_dir = tmp_path / "g"
    files = make_gallery(g_dir, photos, 10)
    bad = make_broken_files(g_dir / "bad", files[1])
    (g_dir / "looks_like.jpg").mkdir()  # a directory named like an image: not taken
    (g_dir / "looks_like.jpg" / "inner.png").write_bytes(files[0].read_bytes())  # ...but its images are
    (g_dir / "readme.txt").write_text("not an image")
    g = Gallery.create(tmp_path / "idx", embedder, shard_size=4)
    report = g.build([g_dir])
    assert report["indexed"] == 11 and len(report["failed"]) == len(bad)
    assert {f["path"] for f in report["failed"]} == {os.path.abspath(p) for p in bad.values()}
    assert json.loads((tmp_path / "idx" / "report.json").read_text())["indexed"] == 11
    assert g.info()["count"] == 11 and g.info()["dim"] == 320

    hits = g.search([str(files[3])], k=3)[0]["results"]
    assert hits[0]["path"] == os.path.abspath(files[3]) and hits[0]["score"] > 0.999

    # Flat results equal brute-force NumPy top-k
    ids, raw = g.load_vectors()
    q = embedder.embed([str(f) for f in files[:4]])
    got = g.search_vectors(q, k=5, rerank="none")  # plain k-NN (re-ranking moves the scores)
    for qi, hs in enumerate(got):
        order = np.argsort(-(raw @ q[qi]), kind="stable")[:5]
        np.testing.assert_allclose([h.score for h in hs], (raw @ q[qi])[order], atol=1e-5)
        assert {h.id for h in hs[:3]} == set(ids[order[:3]].tolist())

    # add: nothing new -> nothing embedded; a new file and a changed file -> only those
    assert g.add([g_dir])["indexed"] == 0
    new = g_dir / "new.png"
    shutil.copy(photos[11], new)
    changed = files[2]
    before_id = {v: k for k, v in ids_to_paths(tmp_path / "idx").items()}[os.path.abspath(changed)]
    from PIL import Image

    Image.open(photos[12]).convert("RGB").save(changed)
    r = g.add([g_dir])
    assert r["indexed"] == 2 and r["count"] == 12
    after = {v: k for k, v in ids_to_paths(tmp_path / "idx").items()}
    assert after[os.path.abspath(changed)] == before_id  # a changed file keeps its id
    top = g.search([str(changed)], k=1)[0]["results"][0]
    assert top["id"] == before_id and top["score"] > 0.999
    assert g.index.ntotal == 12

    # remove a file and a folder
    r = g.remove([new, g_dir / "a"])
    assert r["count"] == 12 - 1 - sum(1 for f in files if f.parent.name == "a")
    assert g.index.ntotal == r["count"]
    paths = {h["path"] for h in g.search([str(files[1])], k=20)[0]["results"]}
    assert not any("/a/" in p for p in paths) and os.path.abspath(new) not in paths
    with pytest.raises(CbirError, match="not in the index"):
        g.remove([tmp_path / "nothing.jpg"])


def test_other_model_is_refused(embedder, lite0_b6_onnx, gallery_dir, tmp_path):
    from cbir.engine.embedder import Embedder

    Gallery.create(tmp_path / "idx", embedder).build([gallery_dir])
    other = Embedder(lite0_b6_onnx)
    with pytest.raises(CbirError, match="built with another model"):
        Gallery(tmp_path / "idx", other)
    with pytest.raises(CbirError, match="built with another model"):
        Gallery.create(tmp_path / "idx", other)
    r = cli("search", "--index", tmp_path / "idx", "--model", lite0_b6_onnx, next(gallery_dir.rglob("*.jpg")))
    assert r.returncode == 2 and "another model" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat"])
def test_ann_factories_and_qe(embedder, photos, tmp_path, factory):
    g_dir = tmp_path / "g"
    files = make_gallery(g_dir, photos, 16)
    g = Gallery.create(tmp_path / "idx", embedder, factory=factory)
    g.build([g_dir])
    assert g.info()["factory"] == factory and g.index.ntotal == 16
    if factory.startswith("IVF"):
        assert g.info()["trained_on"] == 16
    res = g.search([str(files[5])], k=4, rerank={"qe": 3, "qe_alpha": 0.0})[0]["results"]
    assert res[0]["path"] == os.path.abspath(files[5])
    g.remove([files[0]])  # HNSW cannot remove ids: rebuilt from shards instead
    assert g.index.ntotal == 15


def test_bad_factory_and_untrainable(embedder, gallery_dir, tmp_path):
    with pytest.raises(CbirError, match="--factory 'Bogus12'"):
        Gallery.create(tmp_path / "a", embedder, factory="Bogus12")
    g = Gallery.create(tmp_path / "b", embedder, factory="IVF1024,PQ32")
    with pytest.raises(CbirError, match="cannot train on 10 vectors"):
        g.build([gallery_dir])


def test_query_expansion_and_dba_change_results_sensibly(embedder, photos, tmp_path):
    from cbir import vectors as qe

    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 8))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    top3 = np.argsort(-(u @ u.T), axis=1)[:, :3]  # itself and its two nearest, by brute force
    want = u[top3].sum(axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(qe.dba(v, 3, chunk=7), want, atol=1e-5)
    q = np.eye(4, dtype=np.float32)[:1]
    nb = np.eye(4, dtype=np.float32)[None, 1:3]
    e = qe.expand(q, nb, np.array([[0.9, 0.1]]), alpha=0)
    np.testing.assert_allclose(e, [[1, 1, 1, 0]] / np.sqrt(3), atol=1e-5)
    a = qe.expand(q, nb, np.array([[0.9, 0.1]]), alpha=3)
    assert a[0, 1] > 10 * a[0, 2]


def test_kill_9_mid_shard_resumes_to_the_exact_set(lite0_onnx, photos, tmp_path):
    g_dir = tmp_path / "g"
    files = make_gallery(g_dir, photos, 16)
    for i in range(3):  # 48 copies + 16 + 1 bad = 65 files, shards of 4
        for f in files:
            dst = g_dir / f"copy{i}" / f.name
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(f, dst)
    (g_dir / "broken.jpg").write_bytes(b"broken")
    idx = tmp_path / "idx"
    cmd = [
        sys.executable,
        "-m",
        "cbir",
        "index",
        "build",
        str(g_dir),
        "--model",
        str(lite0_onnx),
        "--index",
        str(idx),
        "--shard-size",
        "4",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until at least one shard is done and the next is under way
        if (idx / "shards").is_dir() and len(list((idx / "shards").glob("*.npz"))) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(idx / "meta.sqlite")
    done_before = len(store.done_shards())
    pending_before = len(store.pending_shards())
    store.close()
    assert done_before >= 1 and pending_before >= 1, (done_before, pending_before)

    r = cli("index", "build", g_dir, "--model", lite0_onnx, "--index", idx, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["count"] == 64 and len(report["failed"]) == 1
    assert 1 <= report["indexed"] <= 64 - 3 * done_before  # finished shards were not redone
    paths = ids_to_paths(idx)
    assert len(paths) == 64 and len(set(paths.values())) == 64
    index = faiss.read_index(str(idx / "index.faiss"))
    assert index.ntotal == 64
    stored = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal).copy() if hasattr(index, "id_map") else None
    assert sorted(stored.tolist()) == sorted(paths)  # every indexed id exactly once in FAISS


def test_cli_round_trip_json(lite0_onnx, gallery_dir, tmp_path):
    idx = tmp_path / "idx"
    r = cli("index", "build", gallery_dir, "--model", lite0_onnx, "--index", idx, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) >= {"indexed", "failed", "skipped", "timings"} and rep["indexed"] == 10
    info = json.loads(cli("index", "info", idx, "--json").stdout)
    assert info["count"] == 10 and info["dim"] == 320 and info["factory"] == "Flat"
    assert info["model"]["fingerprint"] and info["model"]["arch"] == "tf_efficientnet_lite0"
    q = sorted(gallery_dir.rglob("*.jpg"))[0]
    out = json.loads(cli("search", "--index", idx, "-k", "3", "--json", q).stdout)
    assert out[0]["query"] == str(q) and len(out[0]["results"]) == 3
    assert set(out[0]["results"][0]) == {"path", "score", "id", "verified", "inliers", "by"} and out[0]["results"][0][
        "path"
    ] == os.path.abspath(q)
    out_qe = json.loads(cli("search", "--index", idx, "-k", "3", "--qe", "2", "--json", q).stdout)
    assert out_qe[0]["results"][0]["path"] == os.path.abspath(q)
    r = cli("search", "--index", tmp_path / "nope", q)
    assert r.returncode == 2 and "not a cbir index directory" in r.stderr


def test_whitening_fit_guards_and_applies(tmp_path):
    from cbir.vectors import Whitening, fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 64)) * np.linspace(5, 0.1, 64)
    with pytest.raises(CbirError, match="per dim"):
        fit(x[:200], dim=64)
    w = fit(x, dim=32)
    y = w.apply(x.astype(np.float32))
    assert y.shape == (1000, 32)
    want = (x - x.mean(axis=0)) @ w.proj.T.astype(np.float64)  # P(x − m) with m the data mean, then L2
    np.testing.assert_allclose(y, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-4)
    z = (x - w.mean) @ w.proj.T
    cov = np.cov(z.T)
    assert np.allclose(np.diag(cov), np.diag(cov).mean(), rtol=0.25)  # whitened: near-equal variances
    w.save(tmp_path / "w.npz")
    assert Whitening.load(tmp_path / "w.npz").fingerprint == w.fingerprint


def test_existing_index_refuses_other_build_options(embedder, gallery_dir, tmp_path):
    root = tmp_path / "idx"
    Gallery.create(root, embedder, factory="Flat", shard_size=4).build([gallery_dir])
    Gallery.create(root, embedder)  # options left out: as recorded
    Gallery.create(root, embedder, factory="Flat", shard_size=4)  # the same: fine
    with pytest.raises(CbirError, match=r"--factory HNSW32: index .* was created with --factory Flat"):
        Gallery.create(root, embedder, factory="HNSW32")
    with pytest.raises(CbirError, match=r"--shard-size 8: .* --shard-size 4"):
        Gallery.create(root, embedder, shard_size=8)
    with pytest.raises(CbirError, match=r"--dba 5: .* --dba 0"):
        Gallery.create(root, embedder, dba=5)
    assert json.loads((root / "index.json").read_text())["factory"] == "Flat"


def test_failed_files_are_reported_as_failed_and_retried_on_request(lite0_onnx, photos, tmp_path):
    from cbir.engine.embedder import Embedder

    make_gallery(tmp_path / "g", photos, 4)
    big = tmp_path / "g" / "big.png"
    from PIL import Image

    Image.open(photos[0]).convert("RGB").resize((600, 600)).save(big)
    root = tmp_path / "idx"
    strict = Embedder(lite0_onnx, max_pixels=400 * 400)  # refuses big.png (600 × 600) only
    g = Gallery.create(root, strict)
    first = g.build([tmp_path / "g"])
    assert [f["path"] for f in first["failed"]] == [str(big)] and first["count"] == 4
    g = Gallery(root, Embedder(lite0_onnx))  # the limit is lifted; the file did not change
    again = g.build([tmp_path / "g"])
    assert again["still_failed"] == [str(big)] and str(big) not in again["skipped"] and again["queued"] == 0
    assert [f["path"] for f in again["failed"]] == [str(big)]
    retried = g.build([tmp_path / "g"], retry_failed=True)
    assert retried["queued"] == 1 and retried["failed"] == [] and retried["count"] == 5
    assert g.search([str(big)], k=1)[0]["results"][0]["path"] == str(big)


def test_hnsw_stays_on_cpu_and_says_so_once(capsys):
    from cbir.index.ann import faiss_index

    x = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    hnsw, _ = faiss_index.build(x, np.arange(200), "HNSW16")
    ivf, _ = faiss_index.build(x, np.arange(200), "IVF4,Flat")
    opq = faiss_index.create(16, "OPQ4,IVF4,PQ4x4")  # untrained: the type is what matters
    assert not faiss_index.gpu_capable(hnsw) and faiss_index.gpu_capable(ivf) and faiss_index.gpu_capable(opq)
    assert faiss_index.gpu_capable(faiss_index.create(16, "Flat"))
    faiss_index._said_cpu.discard("IndexHNSWFlat")
    assert faiss_index.to_gpu(hnsw) is hnsw and faiss_index.to_gpu(hnsw) is hnsw
    assert capsys.readouterr().err.count("IndexHNSWFlat index stays on the CPU") == 1


def test_removed_items_are_never_returned_even_if_faiss_still_has_them(embedder, gallery_dir, tmp_path):
    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([gallery_dir])
    q = sorted(gallery_dir.rglob("*.jpg"))[0]
    hit = g.search([str(q)], k=1)[0]["results"][0]
    with g.store.transaction():  # a crash between SQLite and index.faiss: SQLite says removed
        g.store.mark_removed([hit["id"]])
    assert hit["id"] in faiss_index_ids(g.index)
    assert all(h["id"] != hit["id"] for h in g.search([str(q)], k=20)[0]["results"])


def faiss_index_ids(index) -> set[int]:
    return set(faiss.vector_to_array(index.id_map).tolist())


def test_concurrent_first_searches_with_qe(embedder, photos, tmp_path):
    """Many threads hit a freshly opened IVF index at once: the lazily built direct map (QE) and
    index load happen once, and every thread gets the sequential answer."""
    from concurrent.futures import ThreadPoolExecutor

    make_gallery(tmp_path / "g", photos, 16)
    root = tmp_path / "idx"
    Gallery.create(root, embedder, factory="IVF2,Flat").build([tmp_path / "g"])
    q = embedder.embed([str(p) for p in photos[:8]])
    want = Gallery(root).search_vectors(q, k=5, rerank={"qe": 3, "qe_alpha": 0.0})
    for _ in range(3):
        g = Gallery(root)
        with ThreadPoolExecutor(8) as pool:
            got = list(
                pool.map(lambda i: g.search_vectors(q[i : i + 1], k=5, rerank={"qe": 3, "qe_alpha": 0.0})[0], range(8))
            )
        assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want]


def test_a_one_query_search_runs_faiss_on_one_thread_and_restores_the_threads_setting():
    from cbir.cores import faiss_threads
    from cbir.index.ann import faiss_index

    x = np.random.default_rng(0).standard_normal((30_000, 32)).astype(np.float32)
    index = faiss_index.create(32, "Flat")
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64) + 100)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        with faiss_threads(1):
            assert faiss.omp_get_max_threads() == 1
        with faiss_threads(8):
            assert faiss.omp_get_max_threads() == 2  # a cap: never more threads than set
        sims, ids = faiss_index.search(index, x[:1], 50)
        assert faiss.omp_get_max_threads() == 2
        own_s, own_i = index.search(x[:1], 50)  # FAISS's own scan on 2 threads (split over the database)
        assert ids[0, 0] == 100 and (ids == own_i).all() and np.allclose(sims, own_s)
    finally:
        faiss.omp_set_num_threads(before)


def test_features_taken_in_the_decode_workers_equal_the_separate_pass(embedder, photos, tmp_path):
    """A GPU build extracts local features in its decode workers (the file read once); forced here on
    the CPU, every shard's feature file equals the separate pass's record for record, is there right
    after the shard's commit, and a broken image or a strip too thin for ORB loses nothing."""
    from PIL import Image

    from cbir.index.ingest import pipeline
    from cbir.index.storage import features

    g_dir = tmp_path / "g"
    files = make_gallery(g_dir, photos, 9)
    make_broken_files(g_dir / "bad", files[1])
    Image.new("RGB", (900, 40), (200, 30, 30)).save(g_dir / "strip.png")  # decodes; ORB finds nothing
    separate = Gallery.create(tmp_path / "separate", embedder, shard_size=4)
    report = separate.build([g_dir])
    assert "local_features" in report["timings"] and "local_features_in_decode" not in report["timings"]  # CPU: apart
    fused = Gallery.create(tmp_path / "fused", embedder, shard_size=4)
    with fused.writing():
        fused.scan([g_dir])
        work = pipeline.process_pending(fused, fused=True)
        shards = fused.store.done_shards()
        assert len(shards) > 1 and all(features.feature_path(fused.root, s).is_file() for s in shards)
        assert fused.extract_features() == 0  # nothing left for the separate pass
        fused.rebuild_index()
    assert work["indexed"] == 10 and work["timings"]["local_features_in_decode"] > 0 and not work["warnings"]
    for s in shards:
        a = np.load(features.feature_path(separate.root, s))
        b = np.load(features.feature_path(fused.root, s))
        assert a.tobytes() == b.tobytes()
    strip = fused.store.items_by_paths()[os.path.abspath(g_dir / "strip.png")]
    assert features.FeatureStore(fused.store, fused.root).get([strip[0]])[0]["n"] == 0
    copy = tmp_path / "copy.jpg"
    Image.open(files[4]).convert("RGB").resize((200, 150)).save(copy, quality=60)
    assert fused.search([str(copy)], k=3)[0] == separate.search([str(copy)], k=3)[0]


@pytest.mark.parametrize("point", ["shard-committed:2", "features-written:1", "shard-written:3"])
def test_a_fused_build_killed_resumes_with_every_feature_file(embedder, lite0_onnx, photos, tmp_path, point):
    """A build taking local features in its decode workers, killed with SIGKILL between a shard's
    commit and its feature file (or mid-way), resumes with the next build: every shard has the
    feature file the separate pass writes, byte for byte."""
    from cbir.index.storage import features

    g_dir = tmp_path / "g"
    make_gallery(g_dir, photos, 12)
    Gallery.create(tmp_path / "idx", embedder, shard_size=4)
    code = (
        "import sys; from cbir.index.gallery import Gallery; from cbir.index.ingest import pipeline\n"
        f"g = Gallery({str(tmp_path / 'idx')!r})\n"
        f"with g.writing():\n    g.scan([{str(g_dir)!r}])\n    pipeline.process_pending(g, fused=True)\n"
    )
    env = {**os.environ, "CBIR_CRASH_AT": point}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    g = Gallery(tmp_path / "idx")
    g.build([g_dir])  # the resume: the rest embedded (fused or not), missing feature files extracted
    ref = Gallery.create(tmp_path / "ref", embedder, shard_size=4)
    ref.build([g_dir])
    assert g.store.count("indexed") == ref.store.count("indexed") == 12
    for s in ref.store.done_shards():
        a = np.load(features.feature_path(ref.root, s))
        b = np.load(features.feature_path(g.root, s))
        assert np.array_equal(np.sort(a["id"]), np.sort(b["id"]))
        assert sorted(x.tobytes() for x in a[[n for n in a.dtype.names if n != "id"]]) == sorted(
            x.tobytes() for x in b[[n for n in b.dtype.names if n != "id"]]
        )
