"""ONNX Runtime loader + runner. CPU by default; CUDA and TensorRT execution providers on request.

A GPU provider that silently fell back to CPU (ORT does this when CUDA/cuDNN/TensorRT libraries
are missing, GPU_NOTES.md §Q3) is an error: the session's actual providers are checked.

On a GPU provider, batches go through IO binding (``HostBinding``) to host buffers that stay
bound between calls: page-locked (``cudaMallocHost``, cuda-python from the ``gpu`` extra) so the
CUDA EP's copies are DMA without a staging copy, and the output written in place instead of a new
array per call. Without cuda-python the buffers are ordinary memory (said once in the log). There
are ``slots`` such bindings (default 2 on a GPU provider): ``submit`` copies a batch into a free
one and runs it on a worker thread, so the bulk pipeline hands over batch i + 1 while ORT copies
and executes batch i (ORT's ``Run`` is thread-safe). GPU sessions use one intra-op thread: their
CPU threads only feed the device.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from cbir.cores import all_cores
from cbir.engine.backends.base import RunnerBase
from cbir.errors import CbirError
from cbir.modelinfo import METADATA_KEY, ModelInfo, read_onnx

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


SPINNING = ("run", "always", "never")  # ``load_session``'s spinning modes


def load_session(
    model: str | os.PathLike,
    provider: str = "cpu",
    threads: int | None = None,
    spinning: str = "run",
    trt_options: dict | None = None,
):
    """Create an ``InferenceSession``; ``threads`` defaults to all cores, ORT_ENABLE_ALL, sequential.
    ``spinning``: when intra-op threads busy-wait for work — ``run`` (default): inside a run only (its
    operators hand work to them fast) and they stop when it returns, so the cores go to what runs
    next (decoders, FAISS, ORB matching); ``always``: between runs too (ORT's default); ``never``
    (BENCHMARKS.md compares the three)."""
    if spinning not in SPINNING:
        raise CbirError(f"spinning={spinning!r}: choose one of {', '.join(SPINNING)}")
    import onnxruntime as ort

    path = Path(model)
    if not path.is_file():
        raise CbirError(f"--model {path}: no such file")
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA/cuDNN libraries of onnxruntime-gpu[cuda,cudnn]'s wheels (ORT ≥ 1.21)
    opts = ort.SessionOptions()
    # a GPU session's CPU threads only feed the device: one is enough, more just spin beside the decoders
    opts.intra_op_num_threads = threads or (all_cores() if provider == "cpu" else 1)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "never" else "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1" if spinning == "run" else "0")
    opts.log_severity_level = 3
    providers: list = list(_PROVIDERS[provider])
    if provider == "tensorrt":
        providers[0] = ("TensorrtExecutionProvider", {**trt_ep_options(path), **(trt_options or {})})
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types (InvalidGraph, Fail, ...)
        raise CbirError(f"--model {path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
    wanted = _PROVIDERS[provider][0]
    if wanted not in sess.get_providers():
        raise CbirError(
            f"--backend onnxruntime-{provider}: ONNX Runtime fell back to {sess.get_providers()} "
            f"({wanted} is not usable here: install onnxruntime-gpu with matching "
            f"CUDA/cuDNN{'/TensorRT' if provider == 'tensorrt' else ''})"
        )
    return sess


def trt_ep_options(model: Path, min_batch: int = 1, opt_batch: int = 32, max_batch: int = 128) -> dict:
    """TensorRT EP defaults: engine + timing cache beside the model, a batch profile (all three of
    min/opt/max are required with the engine cache, ORT PR #15546). FP16 comes from the graph
    (``cbir export --precision fp16``), not ``trt_fp16_enable`` (no FP16 flag on TensorRT 11)."""
    info, name, _ = read_onnx(model)
    h, w = info.input_size
    cache = str(model.parent / (model.stem + ".trt_cache"))
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": f"{name}:{min_batch}x{h}x{w}x3",
        "trt_profile_opt_shapes": f"{name}:{opt_batch}x{h}x{w}x3",
        "trt_profile_max_shapes": f"{name}:{max_batch}x{h}x{w}x3",
    }


def read_info(sess, source: str = "model") -> ModelInfo:
    """The cbir facts from the session's model metadata."""
    meta = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise CbirError(f"{source}: not a cbir model (no '{METADATA_KEY}' metadata; export it with `cbir export`)")
    return ModelInfo.from_json(meta[METADATA_KEY], source)


def _pinned_or_plain(shape: tuple[int, ...], dtype) -> tuple[np.ndarray, Callable[[], None]]:
    """Page-locked host memory when cuda-python is there, else ordinary memory (logged once)."""
    try:
        from cbir.engine.backends.cudart import pinned_empty

        arr, _, free = pinned_empty(shape, dtype)
        return arr, free
    except CbirError as e:
        if not getattr(_pinned_or_plain, "said", False):
            log.warning("ORT GPU IO binding uses pageable host buffers: %s", e)
            _pinned_or_plain.said = True
        return np.empty(shape, dtype), lambda: None


class HostBinding:
    """An IO binding of ``sess`` to host buffers of ``capacity`` rows that stay bound: ``run``
    copies the batch in, lets ORT copy to and from the device, and copies the answer out.
    ``alloc(shape, dtype) -> (array, free)`` makes the buffers (default: pinned when possible);
    capacity grows to the largest batch seen. One run at a time (a lock)."""

    def __init__(
        self,
        sess,
        input_name: str,
        output_name: str,
        row_shape: tuple[int, ...],
        dim: int,
        capacity: int = 32,
        alloc: Callable = _pinned_or_plain,
    ):
        self.sess, self.input_name, self.output_name = sess, input_name, output_name
        self.row_shape, self.dim, self.alloc = tuple(row_shape), dim, alloc
        self._lock = threading.Lock()
        self._frees: list[Callable[[], None]] = []
        self.capacity = 0
        self._grow(capacity)

    def _grow(self, rows: int) -> None:
        self.close()
        self.h_in, free_in = self.alloc((rows, *self.row_shape), np.uint8)
        self.h_out, free_out = self.alloc((rows, self.dim), np.float32)
        self._frees, self.capacity = [free_in, free_out], rows

    def load(self, batch: np.ndarray) -> int:
        """Copy ``batch`` into the bound input buffer (grown if needed); returns its rows."""
        n = len(batch)
        with self._lock:
            if n > self.capacity:
                self._grow(n)
            self.h_in[:n] = batch
        return n

    def execute(self, n: int) -> np.ndarray:
        """Run the session on the first ``n`` loaded rows; the answer is a copy."""
        with self._lock:
            b = self.sess.io_binding()
            b.bind_input(self.input_name, "cpu", 0, np.uint8, (n, *self.row_shape), self.h_in.ctypes.data)
            b.bind_output(self.output_name, "cpu", 0, np.float32, (n, self.dim), self.h_out.ctypes.data)
            self.sess.run_with_iobinding(b)
            return self.h_out[:n].copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.execute(self.load(batch))

    def close(self) -> None:
        for free in self._frees:
            free()
        self._frees = []


class OrtRunner(RunnerBase):
    """Runs uint8 NHWC batches through an ORT session (GPU providers: ``slots`` ``HostBinding``s)."""

    def __init__(self, sess, source: str = "model", slots: int | None = None):
        self.sess = sess
        self.info = read_info(sess, source)
        self.providers = sess.get_providers()
        self.name = (
            "onnxruntime" if self.providers[0] == "CPUExecutionProvider" else f"onnxruntime[{self.providers[0]}]"
        )
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = sess.get_outputs()[0].name
        self.regions_name = next((o.name for o in sess.get_outputs()[1:] if o.name == "regions"), None)
        h, w = self.info.input_size
        if inp.type != "tensor(uint8)" or list(inp.shape[1:]) != [h, w, 3]:
            raise CbirError(f"{source}: input is {inp.type} {inp.shape}, expected uint8 [batch, {h}, {w}, 3]")
        gpu = self.on_gpu = self.providers[0] != "CPUExecutionProvider"
        slots = slots if slots is not None else (2 if gpu else 1)
        if slots < 1:
            raise CbirError(f"slots {slots}: need at least 1")
        self._executor = None
        self._bindings: list[HostBinding] = []
        if gpu or slots > 1:
            self._bindings = [
                HostBinding(sess, self.input_name, self.output_name, (h, w, 3), self.info.dim) for _ in range(slots)
            ]
            self._free: queue.SimpleQueue[HostBinding] = queue.SimpleQueue()
            for b in self._bindings:
                self._free.put(b)
            self._executor = ThreadPoolExecutor(slots, thread_name_prefix="cbir-ort")
            self.slots = slots
        if gpu:
            self.batch_candidates = (1, 4, 8, 16, 32, 64, 128)  # the TensorRT EP's profile maximum

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._executor is not None:
            return self.submit(batch)()
        return self.sess.run([self.output_name], {self.input_name: batch})[0]

    def submit(self, batch: np.ndarray):
        """Copy ``batch`` into a free binding (waiting for one) and run it on a worker thread; the
        handle's call waits for the answer and frees the binding."""
        if self._executor is None:
            return super().submit(batch)
        binding = self._free.get()
        try:
            fut = self._executor.submit(binding.execute, binding.load(batch))
        except BaseException:
            self._free.put(binding)
            raise
        done = []

        def handle() -> np.ndarray:
            try:
                return fut.result()
            finally:
                if not done:
                    done.append(True)
                    self._free.put(binding)

        return handle

    def run_regions(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [N, D], regional descriptors [N, R, D]) of a model exported with ``--regions``."""
        if self.regions_name is None:
            raise CbirError(f"{self.info.arch}: this model has no 'regions' output (export it with --regions)")
        vectors, regions = self.sess.run([self.output_name, self.regions_name], {self.input_name: batch})
        return vectors, regions

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for b in self._bindings:
            b.close()
        self._bindings = []
        self.sess = None  # ORT frees the session (and its device memory) with the last reference

    def run_torch(self, images) -> np.ndarray:
        """Device-resident input through IO binding: a contiguous uint8 CUDA tensor [N, H, W, 3]."""
        if self.providers[0] == "CPUExecutionProvider":
            raise CbirError("run_torch needs the CUDA or TensorRT execution provider")
        import torch

        images = images.contiguous()
        torch.cuda.current_stream(images.device).synchronize()  # torch's writes must be finished
        b = self.sess.io_binding()
        b.bind_input(
            self.input_name,
            device_type="cuda",
            device_id=images.device.index or 0,
            element_type=np.uint8,
            shape=tuple(images.shape),
            buffer_ptr=images.data_ptr(),
        )
        b.bind_output(self.output_name, "cuda")
        self.sess.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]
