"""build_engine and TrtRunner against a recording stand-in for ``tensorrt`` + ``cuda.bindings.runtime``.

No GPU here, so the two libraries are replaced by small Python modules that keep the calls they get
and act like the real ones where the runner depends on it: "device" memory is host memory handed out
by address, an async copy on a stream happens only when that stream is synchronised, and the
"engine" computes the doctor's tiny model (NumPy reference) from the input address to the output
address. A runner that forgot to synchronise after the D2H copy, set no shape, or bound the wrong
address returns wrong numbers here. What it cannot show: that the real TensorRT accepts the graph.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import types

import numpy as np
import pytest

from cbir.backend_checks import TINY_INPUT, tiny_model, tiny_reference
from cbir.errors import CbirError


class Calls(list):
    def names(self) -> list[str]:
        return [c[0] for c in self]


def make_fakes(calls: Calls, out_dtype: str = "FLOAT", accept_shapes: bool = True):
    memory: dict[int, ctypes.Array] = {}
    streams: dict[int, list] = {}

    def alloc(n: int) -> int:
        buf = (ctypes.c_uint8 * n)()
        memory[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    # -- cuda.bindings.runtime ------------------------------------------------------------------
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = "cudaSuccess"
    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
    rt.cudaGetErrorString = lambda err: (ok, str(err).encode())

    class Stream:
        def __init__(self, i: int):
            self.i = i

        def __int__(self) -> int:
            return self.i

    def record(name, *args):
        calls.append((name, threading.get_ident(), args))

    def set_device(dev):
        record("cudaSetDevice", dev)
        return (ok,)

    def stream_create():
        s = Stream(1000 + len(streams))
        streams[s.i] = []
        record("cudaStreamCreate")
        return ok, s

    def malloc(n):
        record("cudaMalloc", n)
        return ok, alloc(n)

    def malloc_host(n):
        record("cudaMallocHost", n)
        return ok, alloc(n)

    def memcpy_async(dst, src, n, kind, stream):
        record("cudaMemcpyAsync", kind, n)
        with device:
            streams[int(stream)].append(lambda: ctypes.memmove(dst, src, n))  # happens when the stream is flushed
        return (ok,)

    device = threading.RLock()  # the "GPU" runs one op at a time, whichever thread waits on it

    def flush(stream: int, until=None) -> None:
        """Run a stream's queued work in order, up to the op ``until`` (all of it when None)."""
        q = streams[stream]
        with device:
            while q and (until is None or until in q):
                q.pop(0)()

    class Event:
        def __init__(self):
            self.stream = self.marker = None

    def event_create(flags):
        record("cudaEventCreateWithFlags", flags)
        return ok, Event()

    def event_record(ev, stream):
        record("cudaEventRecord", int(stream))
        with device:
            ev.stream, ev.marker = int(stream), (lambda: None)
            streams[int(stream)].append(ev.marker)
        return (ok,)

    def wait_event(stream, ev, flags):
        record("cudaStreamWaitEvent", int(stream))
        with device:
            src, marker = ev.stream, ev.marker  # the event's state when the wait was enqueued
            streams[int(stream)].append(lambda: flush(src, marker))
        return (ok,)

    def event_synchronize(ev):
        record("cudaEventSynchronize")
        flush(ev.stream, ev.marker)
        return (ok,)

    def synchronize(stream):
        record("cudaStreamSynchronize")
        flush(int(stream))
        return (ok,)

    def free(ptr):
        record("free", ptr)
        memory.pop(ptr)
        return (ok,)

    def props(dev):
        return ok, types.SimpleNamespace(name=b"Fake GPU", major=9, minor=0)

    rt.cudaSetDevice, rt.cudaStreamCreate, rt.cudaMalloc, rt.cudaMallocHost = (
        set_device,
        stream_create,
        malloc,
        malloc_host,
    )
    rt.cudaMemcpyAsync, rt.cudaStreamSynchronize, rt.cudaGetDeviceProperties = memcpy_async, synchronize, props
    rt.cudaFree = rt.cudaFreeHost = free
    rt.cudaEventCreateWithFlags, rt.cudaEventRecord, rt.cudaStreamWaitEvent = event_create, event_record, wait_event
    rt.cudaEventSynchronize, rt.cudaEventDestroy = event_synchronize, lambda ev: record("cudaEventDestroy") or (ok,)
    rt.cudaStreamDestroy = lambda s: record("cudaStreamDestroy") or (ok,)

    # -- tensorrt --------------------------------------------------------------------------------
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"
    trt.DataType = types.SimpleNamespace(UINT8="UINT8", FLOAT="FLOAT", HALF="HALF")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self):
            self.shape, self.addr = None, {}

        def set_input_shape(self, name, shape):
            record("set_input_shape", name, tuple(shape))
            self.shape = tuple(shape)
            return accept_shapes

        def set_tensor_address(self, name, ptr):
            record("set_tensor_address", name, ptr)
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream):
            record("execute_async_v3", stream)
            n, h, w, c = self.shape
            src, dst = self.addr["images"], self.addr["embeddings"]

            def compute():
                x = np.ctypeslib.as_array((ctypes.c_uint8 * (n * h * w * c)).from_address(src)).reshape(n, h, w, c)
                y = tiny_reference(x.copy()).astype(np.float32)
                ctypes.memmove(dst, y.ctypes.data, y.nbytes)

            streams[stream].append(compute)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("images", "embeddings")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.UINT8 if name == "images" else getattr(trt.DataType, out_dtype)

        def get_tensor_shape(self, name):
            return (-1, 8, 8, 3) if name == "images" else (-1, 4)

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            record("deserialize_cuda_engine", len(data))
            return Engine() if data.startswith(b"PLAN") else None

    class Config:
        def set_memory_pool_limit(self, pool, n):
            record("set_memory_pool_limit", pool, n)

        def add_optimization_profile(self, p):
            record("add_optimization_profile", p.shapes)

        def create_timing_cache(self, data):
            return types.SimpleNamespace(serialize=lambda: b"TIMING" + bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            record("set_timing_cache", ignore_mismatch)
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            record("create_network", flags)
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record("build_serialized_network")
            return b"PLAN-fake-engine"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, data, path):
            record("parse", path)
            return True

    trt.Logger, trt.Runtime, trt.Builder, trt.OnnxParser = Logger, Runtime, Builder, OnnxParser
    return trt, rt, memory


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(**kw):
        calls = Calls()
        trt, rt, memory = make_fakes(calls, **kw)
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, rt
        for name, mod in (
            ("tensorrt", trt),
            ("cuda", cuda),
            ("cuda.bindings", bindings),
            ("cuda.bindings.runtime", rt),
        ):
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.delitem(sys.modules, "cuda.bindings.utils", raising=False)
        return calls, memory

    return install


def build(tmp_path):
    from cbir.engine.backends.tensorrt_plan import Profile
    from cbir.export.tensorrt import build_engine

    model = tiny_model(tmp_path / "tiny.onnx")
    return build_engine(
        model, tmp_path / "tiny.plan", Profile(1, 2, 4), workspace_gb=0.25, timing_cache=tmp_path / "tc.bin"
    )


def test_build_engine_calls_and_cache(fake_gpu, tmp_path):
    calls, _ = fake_gpu()
    m = build(tmp_path)
    names = calls.names()
    assert names.index("create_network") < names.index("parse") < names.index("build_serialized_network")
    assert dict((c[0], c[2]) for c in calls)["create_network"] == (1 << 1,)  # STRONGLY_TYPED, nothing else
    assert ("add_optimization_profile", (("images", (1, 8, 8, 3), (2, 8, 8, 3), (4, 8, 8, 3)),)) in [
        (c[0], c[2]) for c in calls
    ]
    assert (tmp_path / "tiny.plan").read_bytes() == b"PLAN-fake-engine"
    assert (tmp_path / "tc.bin").read_bytes() == b"TIMING"
    assert m["gpu"] == {"name": "Fake GPU", "compute_capability": "9.0"} and not m["cached"]
    calls.clear()
    assert build(tmp_path)["cached"] and "build_serialized_network" not in calls.names()


def test_runner_call_sequence_and_numbers(fake_gpu, tmp_path):
    from cbir.engine.backends.tensorrt import TrtRunner

    calls, memory = fake_gpu()
    build(tmp_path)
    runner = TrtRunner(tmp_path / "tiny.plan")
    assert runner.slots == 2 and runner.batch_candidates == (1, 4)
    allocated = len(memory)
    batch = np.concatenate([TINY_INPUT] * 5)  # 10 rows > max batch 4: split into 4 + 4 + 2
    calls.clear()
    got = runner.run(batch)
    np.testing.assert_allclose(got, tiny_reference(batch), atol=1e-5)
    names = calls.names()
    # the shape is set when the batch size changes, not per batch
    assert [c[2][1] for c in calls if c[0] == "set_input_shape"] == [(4, 8, 8, 3), (2, 8, 8, 3)]
    first = names[: names.index("cudaEventSynchronize")]
    assert first[:5] == [
        "cudaSetDevice",
        "cudaMemcpyAsync",
        "cudaEventRecord",
        "cudaStreamWaitEvent",
        "set_input_shape",
    ]
    # overlap: batch 2 is copied in and enqueued before batch 1's answer is waited for
    h2d = [i for i, c in enumerate(calls) if c[0] == "cudaMemcpyAsync" and c[2][0] == "H2D"]
    execs = [i for i, c in enumerate(calls) if c[0] == "execute_async_v3"]
    waits = [i for i, c in enumerate(calls) if c[0] == "cudaEventSynchronize"]
    assert len(h2d) == len(execs) == len(waits) == 3
    assert h2d[1] < execs[1] < waits[0]
    # copies run on the slots' streams, execution on the one compute stream
    exec_streams = {c[2][0] for c in calls if c[0] == "execute_async_v3"}
    copy_streams = {c[2][0] for c in calls if c[0] == "cudaEventRecord"} - exec_streams
    assert len(exec_streams) == 1 and len(copy_streams) == 2
    calls.clear()
    np.testing.assert_allclose(runner.run(batch[:2]), tiny_reference(batch[:2]), atol=1e-5)
    assert "set_input_shape" not in calls.names()  # still 2 rows since the last batch

    # another thread (the batcher's worker) makes the device current in that thread before running
    from cbir.engine.batcher import DynamicBatcher
    from cbir.engine.preprocess import Preprocess

    calls.clear()
    with DynamicBatcher(runner.run, Preprocess((8, 8)), max_batch=2) as b:
        vec = b.embed(TINY_INPUT[0])
    np.testing.assert_allclose(vec, tiny_reference(TINY_INPUT[:1])[0], atol=1e-5)
    worker = next(c[1] for c in calls if c[0] == "execute_async_v3")
    assert worker != threading.get_ident()
    assert ("cudaSetDevice", worker) in [(c[0], c[1]) for c in calls]

    runner.close()
    assert len(memory) == allocated - 8 and calls.names().count("cudaStreamDestroy") == 3
    runner.close()  # idempotent
    with pytest.raises(CbirError, match="closed"):
        runner.run(TINY_INPUT)


def test_bulk_pipeline_keeps_two_batches_in_flight(fake_gpu, tmp_path):
    """iter_batches submits batch i + 1 before it collects batch i; answers stay in input order,
    and four threads sharing the runner's two slots get their own answers."""
    from concurrent.futures import ThreadPoolExecutor

    from cbir.engine.backends.tensorrt import TrtRunner
    from cbir.engine.bulk import iter_batches
    from cbir.engine.preprocess import Preprocess

    calls, _ = fake_gpu()
    build(tmp_path)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(11)]
    with TrtRunner(tmp_path / "tiny.plan") as runner:
        calls.clear()
        batches = list(
            iter_batches(
                images,
                runner.run,
                Preprocess((8, 8)),
                batch_size=3,
                workers=2,
                submit=runner.submit,
                in_flight=runner.slots,
            )
        )
        got = np.concatenate([b.vectors for b in batches])
        assert [i for b in batches for i in b.indices] == list(range(11))
        np.testing.assert_allclose(got, tiny_reference(np.stack(images)), atol=1e-5)
        names = calls.names()
        assert names.count("execute_async_v3") == 4
        second_exec = [i for i, n in enumerate(names) if n == "execute_async_v3"][1]
        assert second_exec < names.index("cudaEventSynchronize")

        def job(seed):
            x = np.random.default_rng(seed).integers(0, 256, (9, 8, 8, 3), dtype=np.uint8)
            return np.allclose(runner.run(x), tiny_reference(x), atol=1e-5)

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(job, range(12)))


def test_runner_refuses_rejected_shapes_and_wrong_dtypes(fake_gpu, tmp_path):
    from cbir.engine.backends.tensorrt import TrtRunner

    fake_gpu(accept_shapes=False)
    build(tmp_path)
    with TrtRunner(tmp_path / "tiny.plan") as runner:
        with pytest.raises(CbirError, match="rejected input shape"):
            runner.run(TINY_INPUT)
    fake_gpu(out_dtype="HALF")
    with pytest.raises(CbirError, match="tensor 'embeddings' is HALF"):
        TrtRunner(tmp_path / "tiny.plan")


def test_ort_host_binding_matches_plain_run(tmp_path):
    """The IO-binding path ORT-GPU runners use, exercised on a real CPU session: bound host buffers,
    answers written in place, capacity grown for a bigger batch, answers not aliased to the buffer."""
    import onnxruntime as ort

    from cbir.engine.backends.onnxruntime import HostBinding

    sess = ort.InferenceSession(str(tiny_model(tmp_path / "tiny.onnx")), providers=["CPUExecutionProvider"])
    allocs = []

    def alloc(shape, dtype):
        allocs.append(shape)
        return np.empty(shape, dtype), lambda: allocs.append("free")

    b = HostBinding(sess, sess.get_inputs()[0].name, sess.get_outputs()[0].name, (8, 8, 3), 4, capacity=2, alloc=alloc)
    x = np.random.default_rng(5).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    first = b.run(x[:2])
    np.testing.assert_allclose(first, tiny_reference(x[:2]), atol=1e-5)
    got = b.run(x)  # 5 rows > capacity 2: the buffers grow
    np.testing.assert_allclose(got, tiny_reference(x), atol=1e-5)
    np.testing.assert_allclose(first, tiny_reference(x[:2]), atol=1e-5)  # an earlier answer is a copy
    assert allocs == [(2, 8, 8, 3), (2, 4), "free", "free", (5, 8, 8, 3), (5, 4)] and b.capacity == 5
    b.close()
    assert allocs[-2:] == ["free", "free"]


def test_ort_runner_slots_keep_two_batches_in_flight(tmp_path):
    """The ORT-GPU runner's slots, on a real CPU session: two submitted batches hold both bindings
    until collected, answers match plain runs in order, threads sharing the slots get their own."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from cbir.engine.backends.onnxruntime import OrtRunner
    from cbir.engine.bulk import iter_batches
    from cbir.engine.preprocess import Preprocess

    sess = ort.InferenceSession(str(tiny_model(tmp_path / "tiny.onnx")), providers=["CPUExecutionProvider"])
    runner = OrtRunner(sess, "tiny", slots=2)
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    want = tiny_reference(x.copy())
    a, b = runner.submit(x[:2]), runner.submit(x[2:6])
    assert runner._free.empty()  # both bindings in flight
    x[:] = 0  # the rows were copied at submit: the caller may reuse its buffer at once
    np.testing.assert_allclose(b(), want[2:6], atol=1e-5)
    np.testing.assert_allclose(a(), want[:2], atol=1e-5)
    a()  # a second call neither fails nor frees the binding twice
    assert runner._free.qsize() == 2
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(7)]
    got = list(
        iter_batches(
            images,
            runner.run,
            Preprocess((8, 8)),
            batch_size=3,
            workers=2,
            submit=runner.submit,
            in_flight=runner.slots,
        )
    )
    assert [i for bt in got for i in bt.indices] == list(range(7))
    np.testing.assert_allclose(np.concatenate([bt.vectors for bt in got]), tiny_reference(np.stack(images)), atol=1e-5)

    def job(seed):
        y = np.random.default_rng(seed).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
        return np.allclose(runner.run(y), tiny_reference(y), atol=1e-5)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(12)))
    runner.close()
    assert runner._executor is None
