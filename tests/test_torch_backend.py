"""`--backend torch` (issue 27): the exported model rebuilt in PyTorch from its checkpoint, the same
contract as ONNX Runtime; on the CPU here (CI checks its plumbing and parity), CUDA in tests/gpu."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cbir.engine.embedder import Embedder
from cbir.errors import CbirError


def test_torch_backend_matches_onnxruntime_on_cpu(lite0_onnx, embedder, photos):
    t = Embedder(lite0_onnx, backend="torch", device="cpu")
    assert t.runner.providers == ["torch-cpu-fp32"] and t.info.fingerprint == embedder.info.fingerprint
    srcs = [str(p) for p in photos]
    a, b = embedder.embed(srcs), t.embed(srcs)
    assert b.shape == a.shape and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(np.sum(a * b, axis=1).min()) >= 0.9999
    with t.batcher(max_batch=4) as bt:  # the batcher's worker thread runs it too
        np.testing.assert_allclose(bt.embed(srcs[1]), b[1], atol=1e-5)


def test_torch_backend_refusals(lite0_onnx, tmp_path):
    with pytest.raises(CbirError, match="fp16 on --device cuda"):
        Embedder(lite0_onnx, backend="torch", device="cpu", precision="fp16")
    with pytest.raises(CbirError, match="--device applies to --backend tensorrt or torch"):
        Embedder(lite0_onnx, device="cpu")
    alone = tmp_path / "m.onnx"
    shutil.copy(lite0_onnx, alone)
    with pytest.raises(CbirError, match="--torch-checkpoint"):
        Embedder(alone, backend="torch", device="cpu")
    import torch

    ck = torch.load(lite0_onnx.with_suffix(".torch.pt"), weights_only=True)
    ck["fingerprint"] = "0" * 64
    torch.save(ck, alone.with_suffix(".torch.pt"))
    with pytest.raises(CbirError, match="written for another export"):
        Embedder(alone, backend="torch", device="cpu")


def test_validate_gates_the_torch_backend(lite0_onnx, capsys):
    from cbir.cli import main

    assert main(["validate", str(lite0_onnx), "--backend", "torch", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["passed"] and r["min_cosine"] >= 0.9999


def test_graph_buckets_and_spec_options(lite0_onnx):
    """CUDA-graph buckets (the graphs themselves run in tests/gpu) and the bench's spec options."""
    from cbir.bench.latency import parse_spec
    from cbir.engine.backends.torch import BUCKETS, bucket

    assert [bucket(n) for n in (1, 2, 3, 5, 33, 200, 256)] == [1, 2, 4, 8, 64, 256, 256] and BUCKETS[-1] == 256
    assert parse_spec("torch:fp16+eager", "m.onnx") == ("torch", "fp16", "m.onnx", {"cuda_graphs": False})
    assert parse_spec("openvino@x.xml", "m.onnx") == ("openvino", None, "x.xml", {})
    with pytest.raises(CbirError, match="unknown option 'fast'"):
        parse_spec("torch+fast", "m.onnx")
    with pytest.raises(CbirError, match="cuda_graphs: options of --backend torch, not onnxruntime"):
        Embedder(lite0_onnx, cuda_graphs=False)
    with pytest.raises(CbirError, match="CUDA graphs need --device cuda"):
        Embedder(lite0_onnx, backend="torch", device="cpu", cuda_graphs=True)
    t = Embedder(lite0_onnx, backend="torch", device="cpu")
    assert not t.runner.cuda_graphs and t.runner.captured == [] and t.runner.batch_candidates == (1, 4, 8, 16, 32)


def test_compare_backends_reports_agreement(lite0_onnx, photos, tmp_path):
    from cbir.bench.latency import compare_backends
    from conftest import make_gallery

    make_gallery(tmp_path / "g", photos, 4)
    # torch:fp16+cpu cannot start (FP16 needs CUDA): listed as unavailable, the others still measured
    r = compare_backends(
        str(lite0_onnx),
        ["onnxruntime", "torch:fp16+cpu", "torch:fp32+cpu"],
        batch_sizes=(1, 2),
        data=str(tmp_path / "g"),
        repeats=1,
        e2e_batch=2,
    )
    assert list(r["backends"]) == ["onnxruntime", "torch:fp32+cpu"] and "fp16" in r["unavailable"]["torch:fp16+cpu"]
    ort, tor = r["backends"]["onnxruntime"], r["backends"]["torch:fp32+cpu"]
    assert ort["agreement_with_first"]["min_cos"] >= 0.99999 and ort["agreement_with_first"]["images"] == 4
    assert tor["agreement_with_first"]["min_cos"] >= 0.9999 and tor["providers"] == ["torch-cpu-fp32"]
    assert tor["end_to_end_images_per_s"]["median"] > 0
    with pytest.raises(CbirError, match="fp16"):  # the baseline must start
        compare_backends(str(lite0_onnx), ["torch:fp16+cpu", "onnxruntime"], batch_sizes=(1,), repeats=1)


class _RecordingCuda:
    """A recording stand-in for what the slots use of ``torch.cuda`` (streams, events, the current
    stream) over real CPU tensors: ``calls`` keeps (what, which object) in order."""

    def __init__(self, calls: list):
        import contextlib

        self.calls = calls
        outer = self

        class Stream:
            def wait_stream(self, other):
                outer.calls.append(("wait", self, other))

        class Event:
            def record(self, stream):
                outer.calls.append(("record", self, stream))

            def synchronize(self):
                outer.calls.append(("sync", self))

        @contextlib.contextmanager
        def stream(s):
            outer.calls.append(("on", s))
            yield

        self.Stream, self.Event, self.stream = Stream, Event, stream
        self.compute = Stream()
        self.current_stream = lambda: self.compute


def _with_recording_slots(runner, calls: list, n: int = 2):
    """``runner`` (on the CPU) with ``n`` slots whose CUDA calls are recorded (pinned = plain CPU memory)."""
    import torch

    class Torch:
        cuda = _RecordingCuda(calls)

        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*shape, pin_memory=False, device=None, **kw):
            return torch.empty(*shape, **kw)

    runner._torch = Torch()
    runner._open_slots(n)
    return runner


def test_slots_keep_two_batches_in_flight_and_wait_for_their_copies(lite0_onnx):
    """Each submit copies on its slot's stream, the compute stream waits for that copy, the answer's
    event is recorded behind the model; a second batch is submitted before the first is collected,
    a slot is free again only once its handle was called, and the answers are the plain runner's."""
    plain = Embedder(lite0_onnx, backend="torch", device="cpu")
    calls: list = []
    runner = _with_recording_slots(Embedder(lite0_onnx, backend="torch", device="cpu").runner, calls)
    h, w = runner.info.input_size
    x = np.random.default_rng(0).integers(0, 256, (7, h, w, 3), dtype=np.uint8)
    first, second = runner.submit(x[:3]), runner.submit(x[3:])
    assert runner.slots == 2 and runner._slots.qsize() == 0  # both in flight
    kinds = [c[0] for c in calls]
    assert kinds == ["on", "wait", "record"] * 2
    on, wait, rec = calls[:3]
    assert wait[1] is runner._torch.cuda.compute and wait[2] is on[1]  # the model waits for this slot's copy
    assert rec[2] is runner._torch.cuda.compute and calls[3][1] is not on[1]  # the second slot's own stream
    a = first()
    assert calls[-1] == ("sync", rec[1]) and runner._slots.qsize() == 1 and first() is a
    np.testing.assert_allclose(np.concatenate([a, second()]), plain.run(x), atol=1e-5)
    assert runner._slots.qsize() == 2
    np.testing.assert_allclose(runner.run(x[:2]), plain.run(x[:2]), atol=1e-5)  # run = submit + collect


def test_bulk_pipeline_submits_the_next_batch_before_collecting_this_one(lite0_onnx, photos):
    """iter_batches with a two-slot runner: batch i + 1 is submitted (its copy started) before batch
    i's answer is waited for; every input comes back in order with the plain runner's vector."""
    emb = Embedder(lite0_onnx, backend="torch", device="cpu", batch_size=2)
    plain = Embedder(lite0_onnx, backend="torch", device="cpu").embed([str(p) for p in photos])
    calls: list = []
    _with_recording_slots(emb.runner, calls)
    res = emb.embed_files([str(p) for p in photos], batch_size=2)
    assert list(res.indices) == list(range(len(photos)))
    np.testing.assert_allclose(res.vectors, plain, atol=1e-5)
    kinds = [c[0] for c in calls]
    assert kinds.index("sync") > [i for i, k in enumerate(kinds) if k == "on"][1]  # two copies before a wait
    assert kinds.count("on") == kinds.count("sync") == -(-len(photos) // 2)
