"""Native TensorRT runner (GPU; imported lazily). Written from GPU_NOTES.md §Q1–Q2; not run on a GPU yet.

Device memory, streams and events come from cuda-python (``cuda.bindings.runtime``), as TensorRT's
own samples do since 10.14 ("Replace all pycuda usages with cuda-python APIs"); pycuda is not used.

**In-flight slots** (default ``SLOTS`` = 2): each slot owns pinned host + device buffers for one
batch of up to the profile's maximum, a copy stream and three events (copied, ran, landed). A
batch is copied host→device on its slot's stream, executed on the one compute stream once its
copy has landed (``cudaStreamWaitEvent``), and copied back on its slot's stream once executed, so
the copies of neighbouring batches overlap the execution of this one. ``submit(batch)`` enqueues
and returns a handle whose call waits for that batch's answer; ``run`` splits a batch above the
profile maximum and keeps every slot busy; the bulk pipeline (``iter_batches``) submits the next
batch before it collects this one. A slot is reused only after its answer was collected. The one
execution context runs one batch at a time (TensorRT contexts are not thread-safe, and with a
single optimization profile several contexts may not share it); its input shape is set only when
the batch size changes and its tensor addresses only when the slot changes.

Inputs: uint8 [N, H, W, 3] NumPy batches, or CUDA torch tensors via ``run_torch`` (device-resident,
no copy). A plan whose manifest does not match this TensorRT/GPU is refused (rebuild it with
``cbir compile``); so is an engine whose I/O is not uint8 [-1, H, W, 3] -> float32 [-1, D]. The
CUDA device is made current in every thread that enqueues (the batcher's worker is not the thread
that loaded the plan). ``close()`` (or ``with TrtRunner(...)``) frees the device and pinned memory;
``__del__`` only backs it up.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cbir.engine.backends.base import RunnerBase
from cbir.engine.backends.cudart import check as _check
from cbir.engine.backends.cudart import handle as _handle
from cbir.engine.backends.cudart import pinned_empty
from cbir.engine.backends.cudart import runtime as _cudart
from cbir.engine.backends.tensorrt_plan import (
    Profile,
    cache_key,
    gpu_facts,
    import_tensorrt,
    read_manifest,
    sha256_file,
)
from cbir.errors import CbirError
from cbir.modelinfo import ModelInfo

SLOTS = 2
EVENT_DISABLE_TIMING = 0x02  # cudaEventDisableTiming: events that only order work are cheaper without timing


@dataclass
class _Slot:
    """One batch in flight: pinned host and device buffers, its copy stream and ordering events."""

    index: int
    stream: object
    copied: object  # H2D done: execution may start
    ran: object  # execution done: the D2H copy may start
    landed: object  # D2H done: the answer is in h_out
    d_in: int
    d_out: int
    h_in: np.ndarray  # pinned
    h_out: np.ndarray  # pinned
    h_in_ptr: int
    h_out_ptr: int
    free_host: list


class TrtRunner(RunnerBase):
    """Runs a cbir TensorRT plan; same interface as the ONNX Runtime runner, plus ``submit``."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, device: int = 0, slots: int = SLOTS):
        plan = Path(plan)
        if slots < 1:
            raise CbirError(f"slots {slots}: need at least 1")
        manifest = read_manifest(plan)
        if manifest is None:
            raise CbirError(f"--model {plan}: no manifest {plan}.json beside the plan (build it with `cbir compile`)")
        trt = import_tensorrt()
        gpu = gpu_facts(device)
        key = cache_key(
            manifest["onnx_sha256"],
            trt.__version__,
            gpu["name"],
            gpu["compute_capability"],
            Profile(**manifest["profile"]),
            manifest["workspace_gb"],
        )
        if key != manifest["key"] or sha256_file(plan) != manifest["plan_sha256"]:
            raise CbirError(
                f"--model {plan}: stale engine (built for TensorRT {manifest['tensorrt']} on "
                f"{manifest['gpu']['name']}); rebuild it with `cbir compile`"
            )
        self.info = ModelInfo(
            **{
                **manifest["model"],
                "input_size": tuple(manifest["model"]["input_size"]),
                "mean": tuple(manifest["model"]["mean"]),
                "std": tuple(manifest["model"]["std"]),
            }
        )
        self.providers = [f"TensorRT {trt.__version__}"]
        self.max_batch = manifest["profile"]["max_batch"]
        self.device = self.gpu_index = device
        self.on_gpu = True
        self._cudart = _cudart()
        self._lock = threading.Lock()  # one execution context: one enqueue at a time
        self._closed = False
        self._slots: list[_Slot] = []
        self._set_device()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise CbirError(f"--model {plan}: TensorRT could not deserialize the engine")
        self.input_name, self.output_name = self._check_io(trt, plan)
        self.context = self.engine.create_execution_context()
        self.stream = _check(self._cudart.cudaStreamCreate())  # the compute stream
        self._shape_n: int | None = None  # batch size the context's input shape is set to
        self._bound: int | None = None  # slot whose addresses the context holds (-1: run_torch's)
        self._slots = [self._new_slot(i) for i in range(slots)]
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for s in self._slots:
            self._free.put(s)

    @property
    def slots(self) -> int:
        return len(self._slots)

    @property
    def batch_candidates(self) -> tuple[int, ...]:
        """Auto batch candidates: powers of two up to the engine profile's maximum."""
        return tuple(b for b in (1, 4, 8, 16, 32, 64, 128, 256, 512) if b <= self.max_batch)

    def _new_slot(self, index: int) -> _Slot:
        cudart = self._cudart
        h, w = self.info.input_size
        h_in, h_in_ptr, free_in = pinned_empty((self.max_batch, h, w, 3), np.uint8)
        h_out, h_out_ptr, free_out = pinned_empty((self.max_batch, self.info.dim), np.float32)
        events = [_check(cudart.cudaEventCreateWithFlags(EVENT_DISABLE_TIMING)) for _ in range(3)]
        return _Slot(
            index,
            _check(cudart.cudaStreamCreate()),
            *events,
            _check(cudart.cudaMalloc(h_in.nbytes)),
            _check(cudart.cudaMalloc(h_out.nbytes)),
            h_in,
            h_out,
            h_in_ptr,
            h_out_ptr,
            [free_in, free_out],
        )

    def _check_io(self, trt, plan: Path) -> tuple[str, str]:
        """The engine's one uint8 [-1, H, W, 3] input and one float32 [-1, D] output, or a refusal."""
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise CbirError(f"--model {plan}: engine has inputs {inputs} and outputs {outputs}; expected one of each")
        h, w = self.info.input_size
        want = ((inputs[0], trt.DataType.UINT8, (-1, h, w, 3)), (outputs[0], trt.DataType.FLOAT, (-1, self.info.dim)))
        for name, dtype, shape in want:
            got_dtype, got_shape = self.engine.get_tensor_dtype(name), tuple(self.engine.get_tensor_shape(name))
            if got_dtype != dtype or got_shape != shape:
                raise CbirError(f"--model {plan}: tensor {name!r} is {got_dtype} {got_shape}, expected {dtype} {shape}")
        return inputs[0], outputs[0]

    def _set_device(self) -> None:
        _check(self._cudart.cudaSetDevice(self.device))  # per thread: the caller's thread may be new

    def _bind(self, n: int, d_in: int, d_out: int, bound: int) -> None:
        """Set the input shape if ``n`` changed and the addresses if the buffers (``bound``) did."""
        h, w = self.info.input_size
        if n != self._shape_n:
            self._shape_n = None
            if not self.context.set_input_shape(self.input_name, (n, h, w, 3)):
                raise CbirError(
                    f"TensorRT rejected input shape ({n}, {h}, {w}, 3) (profile max batch {self.max_batch})"
                )
            self._shape_n = n
        if bound != self._bound or bound < 0:
            self._bound = None
            if not (
                self.context.set_tensor_address(self.input_name, d_in)
                and self.context.set_tensor_address(self.output_name, d_out)
            ):
                raise CbirError("TensorRT rejected a tensor address")
            self._bound = bound

    def _take_slot(self, mine: deque) -> _Slot:
        """A free slot; when none is, collect this caller's oldest batch first (never wait on a slot
        that only this caller could free)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if mine:
                mine[0].collect()
            return self._free.get()

    def submit(self, batch: np.ndarray, _mine: deque | None = None) -> Callable[[], np.ndarray]:
        """Enqueue one batch (≤ ``max_batch`` rows); the returned handle's call waits for its answer."""
        if self._closed:
            raise CbirError("TensorRT runner is closed")
        n = len(batch)
        if not 1 <= n <= self.max_batch:
            raise CbirError(f"submit: {n} rows; the engine takes 1 to {self.max_batch} per batch (run() splits)")
        cudart, (h, w) = self._cudart, self.info.input_size
        slot = self._take_slot(_mine if _mine is not None else deque())
        try:
            self._set_device()
            slot.h_in[:n] = batch  # the slot is free: its last H2D copy has landed
            _check(
                cudart.cudaMemcpyAsync(
                    slot.d_in, slot.h_in_ptr, n * h * w * 3, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, slot.stream
                )
            )
            _check(cudart.cudaEventRecord(slot.copied, slot.stream))
            with self._lock:
                _check(cudart.cudaStreamWaitEvent(self.stream, slot.copied, 0))
                self._bind(n, slot.d_in, slot.d_out, slot.index)
                if not self.context.execute_async_v3(_handle(self.stream)):
                    raise CbirError("TensorRT execute_async_v3 failed")
                _check(cudart.cudaEventRecord(slot.ran, self.stream))
            _check(cudart.cudaStreamWaitEvent(slot.stream, slot.ran, 0))
            _check(
                cudart.cudaMemcpyAsync(
                    slot.h_out_ptr,
                    slot.d_out,
                    n * self.info.dim * 4,
                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    slot.stream,
                )
            )
            _check(cudart.cudaEventRecord(slot.landed, slot.stream))
        except BaseException:
            self._release(slot, wait=True)
            raise
        return _Pending(self, slot, n)

    def _release(self, slot: _Slot, wait: bool) -> None:
        try:
            if wait:
                _check(self._cudart.cudaStreamSynchronize(slot.stream))
        finally:
            self._free.put(slot)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> float32 [N, D]; batches above the profile maximum are split and
        their parts kept in flight together."""
        if self._closed:
            raise CbirError("TensorRT runner is closed")
        if len(batch) == 0:
            return np.empty((0, self.info.dim), np.float32)
        mine: deque[_Pending] = deque()
        outs = []
        for i in range(0, len(batch), self.max_batch):
            if len(mine) >= self.slots:
                outs.append(mine.popleft()())
            mine.append(self.submit(batch[i : i + self.max_batch], mine))
        while mine:
            outs.append(mine.popleft()())
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def run_torch(self, images):
        """Device-resident input: a contiguous uint8 CUDA tensor [N, H, W, 3] -> float32 CUDA tensor [N, D]."""
        import torch

        if self._closed:
            raise CbirError("TensorRT runner is closed")
        if images.dtype != torch.uint8 or not images.is_cuda:
            raise CbirError("run_torch needs a uint8 CUDA tensor")
        if images.shape[0] > self.max_batch:
            return torch.cat(
                [self.run_torch(images[i : i + self.max_batch]) for i in range(0, images.shape[0], self.max_batch)]
            )
        images = images.contiguous()
        out = torch.empty((images.shape[0], self.info.dim), dtype=torch.float32, device=images.device)
        with self._lock:
            self._set_device()
            stream = torch.cuda.Stream(device=images.device)
            stream.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(stream):
                self._bind(images.shape[0], images.data_ptr(), out.data_ptr(), -1)
                if not self.context.execute_async_v3(stream.cuda_stream):
                    raise CbirError("TensorRT execute_async_v3 failed")
            stream.synchronize()
        return out

    def close(self) -> None:
        """Wait for what is in flight, then free device and pinned memory, events and streams; idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        cudart = self._cudart
        for slot in self._slots:
            cudart.cudaStreamSynchronize(slot.stream)
            for ptr in (slot.d_in, slot.d_out):
                cudart.cudaFree(ptr)
            for free in slot.free_host:
                free()
            for ev in (slot.copied, slot.ran, slot.landed):
                cudart.cudaEventDestroy(ev)
            cudart.cudaStreamDestroy(slot.stream)
            slot.h_in = slot.h_out = None
        self._slots = []
        if hasattr(self, "stream"):
            cudart.cudaStreamDestroy(self.stream)
            del self.stream
        self.context = self.engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA runtime may already be gone
            pass


class _Pending:
    """A submitted batch; calling it (once) waits for the D2H copy and frees the slot."""

    def __init__(self, runner: TrtRunner, slot: _Slot, n: int):
        self._runner, self._slot, self._n = runner, slot, n
        self._out: np.ndarray | None = None

    def collect(self) -> None:
        if self._slot is None:
            return
        slot, self._slot = self._slot, None
        try:
            _check(self._runner._cudart.cudaEventSynchronize(slot.landed))
            self._out = slot.h_out[: self._n].copy()
        finally:
            self._runner._release(slot, wait=False)

    def __call__(self) -> np.ndarray:
        self.collect()
        if self._out is None:
            raise CbirError("TensorRT: this batch's answer was lost (its copy back failed)")
        return self._out
