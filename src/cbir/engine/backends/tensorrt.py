"""Native TensorRT runner (GPU; imported lazily). Written from GPU_NOTES.md §Q1–Q2; not run here.

Device memory and streams come from cuda-python (``cuda.bindings.runtime``), as TensorRT's own
samples do since 10.14 ("Replace all pycuda usages with cuda-python APIs"); pycuda is not used.
Inputs: uint8 [N, H, W, 3] NumPy batches (copied through a pinned host buffer on a non-default
stream: "Using default stream may lead to performance issues", ``execute_async_v3`` docstring), or
CUDA torch tensors via ``run_torch`` (device-resident, no copy). Batches above the engine's profile
maximum are split, on both paths. A plan whose manifest does not match this TensorRT/GPU is refused
(rebuild it with ``cbir compile``); so is an engine whose I/O is not uint8 [-1, H, W, 3] ->
float32 [-1, D]. The CUDA device is made current in the thread that runs (the batcher's worker is
not the thread that loaded the plan). ``close()`` (or ``with TrtRunner(...)``) frees the device and
pinned memory; ``__del__`` only backs it up.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from cbir.engine.backends.base import RunnerBase
from cbir.engine.backends.tensorrt_plan import Profile, cache_key, gpu_facts, import_tensorrt, read_manifest, sha256_file
from cbir.errors import CbirError
from cbir.modelinfo import ModelInfo


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise CbirError("cuda-python is not installed (pip install 'cbir[gpu]')") from None
    return cudart


def _check(result):
    """cuda-python calls return (err, *values); raise on error, return the values."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise CbirError(f"CUDA error: {cudart.cudaGetErrorString(err)[1]}")
    return values[0] if len(values) == 1 else values


def _handle(obj) -> int:
    """Native handle of a cuda-python object (int(obj) is deprecated in cuda-bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle

        return int(get_cuda_native_handle(obj))
    except (ImportError, TypeError):
        return int(obj)


class TrtRunner(RunnerBase):
    """Runs a cbir TensorRT plan; same interface as the ONNX Runtime runner."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, device: int = 0):
        plan = Path(plan)
        manifest = read_manifest(plan)
        if manifest is None:
            raise CbirError(f"--model {plan}: no manifest {plan}.json beside the plan (build it with `cbir compile`)")
        trt = import_tensorrt()
        gpu = gpu_facts(device)
        key = cache_key(manifest["onnx_sha256"], trt.__version__, gpu["name"], gpu["compute_capability"],
                        Profile(**manifest["profile"]), manifest["workspace_gb"])
        if key != manifest["key"] or sha256_file(plan) != manifest["plan_sha256"]:
            raise CbirError(f"--model {plan}: stale engine (built for TensorRT {manifest['tensorrt']} on "
                            f"{manifest['gpu']['name']}); rebuild it with `cbir compile`")
        self.info = ModelInfo(**{**manifest["model"], "input_size": tuple(manifest["model"]["input_size"]),
                                 "mean": tuple(manifest["model"]["mean"]), "std": tuple(manifest["model"]["std"])})
        self.providers = [f"TensorRT {trt.__version__}"]
        self.max_batch = manifest["profile"]["max_batch"]
        self.device = device
        self._cudart = cudart = _cudart()
        self._lock = threading.Lock()  # one execution context: one batch at a time
        self._closed = False
        self._set_device()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise CbirError(f"--model {plan}: TensorRT could not deserialize the engine")
        self.input_name, self.output_name = self._check_io(trt, plan)
        self.context = self.engine.create_execution_context()
        h, w = self.info.input_size
        self.in_bytes = self.max_batch * h * w * 3
        self.out_bytes = self.max_batch * self.info.dim * 4
        self.stream = _check(cudart.cudaStreamCreate())
        self.d_in = _check(cudart.cudaMalloc(self.in_bytes))
        self.d_out = _check(cudart.cudaMalloc(self.out_bytes))
        self.h_in_ptr = _check(cudart.cudaMallocHost(self.in_bytes))
        self.h_out_ptr = _check(cudart.cudaMallocHost(self.out_bytes))
        self.h_in = np.ctypeslib.as_array((ctypes.c_uint8 * self.in_bytes).from_address(self.h_in_ptr)).reshape(self.max_batch, h, w, 3)
        self.h_out = np.ctypeslib.as_array((ctypes.c_float * (self.out_bytes // 4)).from_address(self.h_out_ptr)).reshape(self.max_batch, self.info.dim)

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

    def _bind(self, n: int, d_in: int, d_out: int) -> None:
        h, w = self.info.input_size
        if not self.context.set_input_shape(self.input_name, (n, h, w, 3)):
            raise CbirError(f"TensorRT rejected input shape ({n}, {h}, {w}, 3) (profile max batch {self.max_batch})")
        if not (self.context.set_tensor_address(self.input_name, d_in)
                and self.context.set_tensor_address(self.output_name, d_out)):
            raise CbirError("TensorRT rejected a tensor address")

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise CbirError("TensorRT runner is closed")
        if len(batch) > self.max_batch:
            return np.concatenate([self.run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])
        cudart, n = self._cudart, len(batch)
        h, w = self.info.input_size
        with self._lock:
            self._set_device()
            self.h_in[:n] = batch
            _check(cudart.cudaMemcpyAsync(self.d_in, self.h_in_ptr, n * h * w * 3,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
            self._bind(n, self.d_in, self.d_out)
            if not self.context.execute_async_v3(_handle(self.stream)):
                raise CbirError("TensorRT execute_async_v3 failed")
            _check(cudart.cudaMemcpyAsync(self.h_out_ptr, self.d_out, n * self.info.dim * 4,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))  # the D2H copy has landed in h_out
            return self.h_out[:n].copy()

    def run_torch(self, images):
        """Device-resident input: a contiguous uint8 CUDA tensor [N, H, W, 3] -> float32 CUDA tensor [N, D]."""
        import torch

        if self._closed:
            raise CbirError("TensorRT runner is closed")
        if images.dtype != torch.uint8 or not images.is_cuda:
            raise CbirError("run_torch needs a uint8 CUDA tensor")
        if images.shape[0] > self.max_batch:
            return torch.cat([self.run_torch(images[i : i + self.max_batch]) for i in range(0, images.shape[0], self.max_batch)])
        images = images.contiguous()
        out = torch.empty((images.shape[0], self.info.dim), dtype=torch.float32, device=images.device)
        with self._lock:
            self._set_device()
            stream = torch.cuda.Stream(device=images.device)
            stream.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(stream):
                self._bind(images.shape[0], images.data_ptr(), out.data_ptr())
                if not self.context.execute_async_v3(stream.cuda_stream):
                    raise CbirError("TensorRT execute_async_v3 failed")
            stream.synchronize()
        return out

    def close(self) -> None:
        """Free device and pinned host memory and the stream; idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        cudart = self._cudart
        for attr, free in (("d_in", cudart.cudaFree), ("d_out", cudart.cudaFree),
                           ("h_in_ptr", cudart.cudaFreeHost), ("h_out_ptr", cudart.cudaFreeHost),
                           ("stream", cudart.cudaStreamDestroy)):
            if hasattr(self, attr):
                free(getattr(self, attr))
                delattr(self, attr)
        self.h_in = self.h_out = None
        self.context = self.engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA runtime may already be gone
            pass
