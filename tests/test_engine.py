"""Embedder, bulk mode over broken galleries, backends, the dynamic batcher — real ORT sessions."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cbir.engine.batcher import BatcherClosed, QueueFull
from cbir.engine.embedder import Embedder
from cbir.engine.preprocess import ImageError
from cbir.errors import CbirError
from conftest import make_broken_files, make_gallery


def test_embed_accepts_paths_bytes_pil_and_arrays(embedder, photos):
    p = photos[0]
    ref = embedder.embed(str(p))[0]
    img = Image.open(p)
    np.testing.assert_allclose(embedder.embed(p.read_bytes())[0], ref, atol=1e-6)  # same decoder as the path
    for src in (img, np.asarray(img.convert("RGB"))):  # in-memory images are resized by Pillow
        assert float(embedder.embed(src)[0] @ ref) > 0.99
    many = embedder.embed([str(x) for x in photos[:5]])
    assert many.shape == (5, 320)
    np.testing.assert_allclose(many[0], ref, atol=1e-5)
    assert embedder.dim == 320 and len(embedder.fingerprint) == 16


def test_embed_raises_on_bad_image(embedder, photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"junk")
    with pytest.raises(ImageError, match="bad.jpg"):
        embedder.embed([str(photos[0]), str(bad)])


def test_broken_gallery_processed_to_the_end(embedder, photos, tmp_path):
    good = make_gallery(tmp_path / "g", photos, 9)
    bad = make_broken_files(tmp_path / "g" / "bad", good[1])
    sources = [str(p) for p in good[:4]] + [str(p) for p in bad.values()] + [str(p) for p in good[4:]]
    res = embedder.embed_files(sources, batch_size=4)
    ok_sources = [sources[i] for i in res.indices]
    assert sorted(ok_sources) == sorted(map(str, good)) and len(set(ok_sources)) == len(good)
    assert sorted(src for _, src, _ in res.errors) == sorted(map(str, bad.values()))
    reasons = {src: r for _, src, r in res.errors}
    assert "decompression bomb" in reasons[str(bad["bomb"])]
    assert "dangling symlink" in reasons[str(bad["dangling"])]
    assert "empty" in reasons[str(bad["empty"])]
    assert res.timings.images == len(good) and res.timings.failed == len(bad)
    singles = np.stack([embedder.embed_one(s) for s in ok_sources])
    np.testing.assert_allclose(res.vectors, singles, atol=1e-5)
    assert list(res.indices) == sorted(res.indices)  # stable input order


def test_bulk_order_and_batch_sizes(embedder, photos):
    sources = [str(p) for p in photos] * 3
    a = embedder.embed_files(sources, batch_size=5)
    b = embedder.embed_files(sources, batch_size=32)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    np.testing.assert_array_equal(a.indices, np.arange(len(sources)))


def test_gpu_provider_fallback_is_an_error(lite0_onnx):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: no fallback to provoke (tests/gpu covers it)")
    with pytest.raises(CbirError, match="fell back"):
        Embedder(lite0_onnx, backend="onnxruntime-cuda")
    with pytest.raises(CbirError, match="unknown backend"):
        Embedder(lite0_onnx, backend="tvm")


def test_non_cbir_model_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g), str(path))
    with pytest.raises(CbirError, match="not a cbir model"):
        Embedder(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(CbirError, match="cannot load"):
        Embedder(tmp_path / "junk.onnx")


def test_batcher_many_concurrent_callers(embedder, photos):
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)) for p in photos]
    want = embedder.run(np.stack(arrays))
    with embedder.batcher(max_batch=8, max_delay_ms=20) as b:
        with ThreadPoolExecutor(48) as pool:
            futs = [pool.submit(b.embed, arrays[i % len(arrays)]) for i in range(96)]
            got = [f.result(timeout=120) for f in futs]
        timings = list(b.timings)
    for i, v in enumerate(got):
        np.testing.assert_allclose(v, want[i % len(arrays)], atol=1e-5)
    assert len(timings) == 96 and max(t.batch for t in timings) > 1
    assert all(t.batch <= 8 and t.queue_ms >= 0 and t.compute_ms > 0 for t in timings)


def test_batcher_queue_full_close_and_timeout(photos):
    from cbir.engine.batcher import DynamicBatcher
    from cbir.engine.preprocess import Preprocess

    gate = threading.Event()

    def slow_run(x):
        gate.wait(10)
        return np.ones((len(x), 4), np.float32)

    pp = Preprocess((32, 32))
    img = np.zeros((32, 32, 3), np.uint8)
    b = DynamicBatcher(slow_run, pp, max_batch=2, max_delay_ms=0, max_queue=3)
    first = [b.submit(img) for _ in range(2)]  # taken by the worker, blocked in run
    deadline = time.time() + 10
    while b.queued and time.time() < deadline:
        time.sleep(0.01)
    queued = [b.submit(img) for _ in range(3)]
    with pytest.raises(QueueFull, match="queue full"):
        b.submit(img)
    gate.set()
    b.close(drain=False)
    assert all(f.result(5).shape == (4,) for f in first)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(BatcherClosed):
        b.submit(img)

    t = DynamicBatcher(
        lambda x: (time.sleep(0.3), np.ones((len(x), 4), np.float32))[1], pp, max_batch=1, max_delay_ms=0, timeout_s=0.1
    )
    futs = [t.submit(img) for _ in range(3)]
    t.close(drain=True)
    assert futs[0].result(5).shape == (4,)
    with pytest.raises(TimeoutError):
        futs[2].result(5)


def test_cli_embed(lite0_onnx, photos, tmp_path, capsys):
    from cbir.cli import main

    g = tmp_path / "g"
    make_gallery(g, photos, 6)
    (g / "broken.jpg").write_bytes(b"nope")
    out, paths = tmp_path / "v.npy", tmp_path / "p.txt"
    assert main(["embed", str(g), "--model", str(lite0_onnx), "-o", str(out), "--paths-out", str(paths), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    v = np.load(out)
    assert v.shape == (6, 320) and s["embedded"] == 6 and len(paths.read_text().splitlines()) == 6
    assert s["failed"][0]["path"].endswith("broken.jpg") and s["timings"]["images"] == 6


def test_batcher_survives_a_bad_backend_answer(embedder, photos):
    """A runner returning too few rows fails that batch's futures; the worker lives on."""
    answers = {"short": True}

    def run(batch):
        out = embedder.run(batch)
        return out[:-1] if answers["short"] else out

    from cbir.engine.batcher import DynamicBatcher

    with DynamicBatcher(run, embedder.preprocess, max_batch=4, max_delay_ms=50) as b:
        futs = [b.submit(str(p)) for p in photos[:3]]
        for f in futs:
            with pytest.raises(CbirError, match=r"returned \(\d+, 320\) for a batch of \d+"):
                f.result(30)
        answers["short"] = False
        assert b.alive
        np.testing.assert_allclose(b.embed(str(photos[0]), timeout=30), embedder.embed(str(photos[0]))[0], atol=1e-5)


def test_batcher_worker_death_fails_waiters_and_refuses(embedder, photos):
    """If the worker thread ends anyway (a BaseException), nobody waits forever."""
    from cbir.engine.batcher import DynamicBatcher

    started = threading.Event()

    def run(batch):
        started.wait(10)
        raise SystemExit("worker killed")

    b = DynamicBatcher(run, embedder.preprocess, max_batch=1, max_delay_ms=0)
    first = b.submit(str(photos[0]))
    second = b.submit(str(photos[1]))
    started.set()
    with pytest.raises(SystemExit):
        first.result(10)
    with pytest.raises(BatcherClosed, match="worker died: SystemExit: worker killed"):
        second.result(10)
    b._thread.join(10)
    assert not b.alive and "worker killed" in b.error
    with pytest.raises(BatcherClosed, match="worker died"):
        b.submit(str(photos[0]))


def test_bench_latency_uses_only_the_runner_protocol(lite0_onnx, monkeypatch):
    """Any backend works in `cbir bench latency`: a runner exposing just the protocol (no ORT session)."""
    from cbir.bench.latency import bench_latency
    from cbir.engine import backends
    from cbir.engine.backends.base import RunnerBase

    class ProtocolOnly(RunnerBase):
        name = "protocol-only"

        def __init__(self, model, **options):
            inner = backends.load_backend(model, "onnxruntime", **options)
            self.info, self.providers = inner.info, ["test"]
            self.input_name = inner.input_name
            self.run = lambda batch: self.check_output(inner.run(batch), len(batch))

        def run_torch(self, images):
            raise CbirError("no torch path")

    monkeypatch.setitem(backends.BACKENDS, "protocol-only", ProtocolOnly)
    r = bench_latency(str(lite0_onnx), "protocol-only", batch_sizes=(1, 2), concurrencies=(1,), repeats=1, warmup=1)
    assert r["backend"] == "protocol-only" and r["batch1_latency_ms"]["bare_runner"]["p50"] > 0
    with ProtocolOnly(str(lite0_onnx)) as runner:
        assert runner.input_shape == (None, 224, 224, 3) and runner.input_dtype == "uint8"


def test_onnx_runtime_threads_spin_inside_a_run_only_unless_asked(lite0_onnx):
    """CPU sessions spin inside a run and stop when it returns (the cores go to FAISS / ORB / decoders
    between runs); ``always`` / ``never`` (``bench latency --compare onnxruntime+spin,+nospin``)."""
    from cbir.engine.embedder import Embedder

    def spins(emb) -> tuple[str, str]:
        opts = emb.runner.sess.get_session_options()
        return tuple(
            opts.get_session_config_entry(k) for k in ("session.intra_op.allow_spinning", "session.force_spinning_stop")
        )

    assert spins(Embedder(lite0_onnx)) == ("1", "1")
    assert spins(Embedder(lite0_onnx, spinning="always")) == ("1", "0")
    assert spins(Embedder(lite0_onnx, spinning="never")) == ("0", "0")
    with pytest.raises(CbirError, match="spinning='sometimes': choose one of run, always, never"):
        Embedder(lite0_onnx, spinning="sometimes")
