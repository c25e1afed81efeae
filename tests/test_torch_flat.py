"""Exact search in PyTorch (issue 27): the same answers as FAISS's Flat index, through the gallery too
(on the CPU here; FP16 on CUDA in tests/gpu)."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import CbirError
from cbir.index.ann import faiss_index, torch_flat
from cbir.vectors import l2_normalize
from conftest import queued_while_busy


def test_torch_flat_answers_like_faiss_flat(monkeypatch):
    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(5000, 64)).astype(np.float32))
    ids = rng.permutation(100_000)[:5000].astype(np.int64)  # ids that are not row numbers
    index, _ = faiss_index.build(x, ids, "Flat")
    q = l2_normalize(rng.normal(size=(37, 64)).astype(np.float32))
    want_s, want_i = faiss_index.search(index, q, 10)
    monkeypatch.setattr(torch_flat, "CHUNK_ROWS", 1024)  # five chunks merged by top-k
    t = torch_flat.TorchFlat(index, "cpu")
    assert (t.ntotal, t.d) == (5000, 64)
    got_s, got_i = faiss_index.search(t, q, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert faiss_index.search(t, q[:1], 50_000)[1].shape == (1, 5000)  # k capped at the gallery size
    with pytest.raises(CbirError, match="no search parameters"):
        t.search(q, 5, params=object())
    ivf, _ = faiss_index.build(x, ids, "IVF16,Flat")
    with pytest.raises(CbirError, match="needs a Flat index, not IndexIVFFlat"):
        torch_flat.TorchFlat(ivf, "cpu")


def test_concurrent_searches_are_combined_into_one_matmul():
    """Requests queued while the device is busy are answered by one combined search, each caller
    getting its own rows and its own k; a failure reaches every caller of that batch."""
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.normal(size=(3000, 32)).astype(np.float32))
    index, _ = faiss_index.build(x, np.arange(3000, dtype=np.int64) * 7, "Flat")
    t = torch_flat.TorchFlat(index, "cpu")
    qs = [l2_normalize(rng.normal(size=(1 + i % 3, 32)).astype(np.float32)) for i in range(8)]
    ks = [1 + i for i in range(8)]
    got: dict[int, tuple] = {}

    def ask(i):
        got[i] = t.search(qs[i], ks[i])

    queued_while_busy(t, [lambda i=i: ask(i) for i in range(8)])
    assert (t.batches, t.requests) == (1, 8)
    for i in range(8):
        want_s, want_i = faiss_index.search(index, qs[i], ks[i])
        np.testing.assert_array_equal(got[i][1], want_i)
        np.testing.assert_allclose(got[i][0], want_s, atol=1e-5)

    def boom(q, k, params=None):
        raise RuntimeError("device lost")

    t._search = boom
    errors = []

    def ask_fail():
        try:
            t.search(qs[0], 3)
        except RuntimeError as e:
            errors.append(str(e))

    queued_while_busy(t, [ask_fail] * 3)
    assert errors == ["device lost"] * 3 and not t._queue


def test_gallery_searches_through_torch_exactly(tmp_path, embedder, photos):
    from cbir.index.gallery import Gallery
    from conftest import make_gallery

    make_gallery(tmp_path / "g", photos, 10)
    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([tmp_path / "g"])
    q = [str(p) for p in sorted((tmp_path / "g").rglob("*.jpg"))[:3]]
    want = g.search(q, k=5, rerank="none")
    t = Gallery(tmp_path / "idx", search_device="cpu")
    assert isinstance(t.search_index, torch_flat.TorchFlat)
    got = t.search(q, k=5, rerank="none")
    assert [[h["id"] for h in r["results"]] for r in got] == [[h["id"] for h in r["results"]] for r in want]
    assert [h["verified"] for h in t.search(q[:1], k=3)[0]["results"]][0]  # the default search on top of it
    with pytest.raises(CbirError, match="--search-device 'tpu'"):
        Gallery(tmp_path / "idx", search_device="tpu")


def test_bench_exact_reports_both_and_the_combined_singles():
    from cbir.bench.exact import bench_exact

    r = bench_exact(n=3000, dim=16, device="cpu", queries=40, batch=10, repeats=1, clients=4)
    assert r["recall_at_k_vs_faiss"] == 1.0  # FP32 on the CPU: the same neighbours as FAISS
    assert set(r["queries_per_s"]) == set(r["single_query_per_s"]) == {"faiss_cpu", "torch"}
    assert r["mean_combined"] >= 1.0
