"""IVF search in PyTorch (issue 38): IVF-Flat and IVF-SQ8 lists scanned on the device give FAISS's
answers for the same nprobe (on the CPU here, in FP32; FP16 / uint8 codes on CUDA in tests/gpu)."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.bench.scale import Synthetic
from cbir.errors import CbirError
from cbir.index.ann import faiss_index, torch_ivf
from conftest import queued_while_busy


def _data(n=6000, d=48, seed=0):
    rng = np.random.default_rng(seed)
    syn = Synthetic(n, d, seed)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # ids that are not row numbers
    return syn.draw(n, rng), ids, syn.draw(41, rng)


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,SQ8", "IVF32,SQ8-noresidual"])
def test_torch_ivf_answers_like_faiss_at_every_nprobe(factory, monkeypatch):
    import faiss

    x, ids, q = _data()
    if factory.endswith("-noresidual"):  # SQ8 codes of the vectors themselves, not of their residuals
        coarse = faiss.IndexFlatIP(48)  # kept alive here: the IVF index does not own it
        index = faiss.IndexIVFScalarQuantizer(
            coarse, 48, 32, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
        )
        index.train(x)
        index.add_with_ids(x, ids)
    else:
        index, _ = faiss_index.build(x, ids, factory)
    index.nprobe = 3
    t = torch_ivf.TorchIVF(index, "cpu", block=16)  # many blocks per list, padded last blocks
    assert (t.kind == "flat") == factory.endswith("Flat") and t.by_residual == (factory == "IVF32,SQ8")
    for nprobe in (None, 1, 7, 32):
        params = None if nprobe is None else faiss.SearchParametersIVF(nprobe=nprobe)
        want_s, want_i = index.search(q, 10, params=params)
        got_s, got_i = t.search(q, 10, params)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    monkeypatch.setattr(torch_ivf, "GATHER_BYTES", 1)  # one query per chunk: the same answers
    np.testing.assert_array_equal(t.search(q, 10)[1], index.search(q, 10)[1])
    assert t.memory_bytes() > 0


def test_fewer_candidates_than_k_and_removed_ids():
    """A probe that reaches fewer than k vectors pads with -1 as FAISS does; ids removed before the
    copy are never answered."""
    import faiss

    x, ids, q = _data(n=400, d=16)
    index, _ = faiss_index.build(x, ids, "IVF64,Flat")
    assert faiss_index.remove(index, ids[:100])
    t = torch_ivf.TorchIVF(index, "cpu")
    want_s, want_i = index.search(q, 50, params=faiss.SearchParametersIVF(nprobe=1))
    got_s, got_i = t.search(q, 50, faiss.SearchParametersIVF(nprobe=1))
    assert (want_i == -1).any()
    np.testing.assert_array_equal(got_i, want_i)
    assert not np.isin(got_i, ids[:100]).any()


def test_other_indexes_are_refused_or_searched_exactly():
    x, ids, _ = _data(n=2000, d=32)
    for factory, name in (("IVF16,PQ8", "IndexIVFPQ"), ("OPQ8,IVF16,Flat", "IndexPreTransform")):
        index, _ = faiss_index.build(x, ids, factory)
        with pytest.raises(CbirError, match=f"not {name}"):
            torch_ivf.on_device(index, "cpu")
    flat, _ = faiss_index.build(x, ids, "Flat")
    assert type(torch_ivf.on_device(flat, "cpu")).__name__ == "TorchFlat"


def test_different_nprobe_requests_are_not_combined():
    import faiss

    x, ids, q = _data(n=3000, d=32)
    index, _ = faiss_index.build(x, ids, "IVF16,Flat")
    t = torch_ivf.TorchIVF(index, "cpu")
    got = {}
    asks = [(i, 1 + (i % 2) * 15) for i in range(6)]

    def ask(i, nprobe):
        got[i] = t.search(q[i : i + 2], 5, faiss.SearchParametersIVF(nprobe=nprobe))

    queued_while_busy(t, [lambda a=a: ask(*a) for a in asks])
    assert t.requests == 6 and t.batches >= 2
    for i, nprobe in asks:
        want = index.search(q[i : i + 2], 5, params=faiss.SearchParametersIVF(nprobe=nprobe))[1]
        np.testing.assert_array_equal(got[i][1], want)


def test_gallery_with_an_ivf_index_searches_through_torch(tmp_path, embedder, photos):
    from cbir.index.gallery import Gallery
    from conftest import make_gallery

    make_gallery(tmp_path / "g", photos, 12)
    g = Gallery.create(tmp_path / "idx", embedder, factory="IVF2,SQ8")
    g.build([tmp_path / "g"])
    q = [str(p) for p in sorted((tmp_path / "g").rglob("*.jpg"))[:3]]
    t = Gallery(tmp_path / "idx", search_device="cpu")
    assert isinstance(t.search_index, torch_ivf.TorchIVF)
    for rerank in ("none", None):
        want = g.search(q, k=5, rerank=rerank)
        got = t.search(q, k=5, rerank=rerank)
        assert [[h["id"] for h in r["results"]] for r in got] == [[h["id"] for h in r["results"]] for r in want]


def test_bench_ivf_tunes_nprobe_and_puts_torch_beside_faiss(capsys):
    from cbir.cli import main

    args = ["bench", "ivf", "--n", "20000", "--dim", "32", "--device", "cpu", "--queries", "100", "--tune", "50"]
    assert main([*args, "--repeats", "1", "--clients", "2", "--json"]) == 0
    import json

    r = json.loads(capsys.readouterr().out)
    assert r["nlist"] == 1024 and set(r["kinds"]) == {"flat", "sq8"}
    for row in r["kinds"].values():
        assert row["same_ids_as_faiss"] == 1.0  # FP32 on the CPU: FAISS's answers exactly
        assert row["recall_at_k"]["torch"] == row["recall_at_k"]["faiss_cpu"]
        assert 1 <= row["nprobe"] <= 1024 and row["device_bytes"] > 0 and row["mean_combined"] >= 1
    assert main([*args, "--kinds", "flat,pq", "--repeats", "1"]) != 0
    assert "--kinds" in capsys.readouterr().err
