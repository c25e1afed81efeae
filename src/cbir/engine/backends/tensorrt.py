"""Native TensorRT runner (GPU; imported lazily). Written from GPU_NOTES.md §Q1–Q2; not run here.

Device memory and streams come from cuda-python (``cuda.bindings.runtime``), as TensorRT's own
samples do since 10.14 ("Replace all pycuda usages with cuda-python APIs"); pycuda is not used.
Inputs: uint8 [N, H, W, 3] NumPy batches (copied through a pinned host buffer on a non-default
stream: "Using default stream may lead to performance issues", ``execute_async_v3`` docstring), or
CUDA torch tensors via ``run_torch`` (device-resident, no copy). Batches above the engine's profile
maximum are split. A plan whose manifest does not match this TensorRT/GPU is refused (rebuild it
with ``cbir compile``).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.export.tensorrt import cache_key, gpu_facts, import_tensorrt, read_manifest, sha256_file, Profile
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


class TrtRunner:
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
        self.info = ModelInfo.from_json(__import__("json").dumps(manifest["model"]), str(plan))
        self.providers = [f"TensorRT {trt.__version__}"]
        self.max_batch = manifest["profile"]["max_batch"]
        cudart = _cudart()
        self._cudart = cudart
        _check(cudart.cudaSetDevice(device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise CbirError(f"--model {plan}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
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

    def run(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.max_batch:
            return np.concatenate([self.run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])
        cudart, n = self._cudart, len(batch)
        h, w = self.info.input_size
        self.h_in[:n] = batch
        nbytes = n * h * w * 3
        _check(cudart.cudaMemcpyAsync(self.d_in, self.h_in_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_input_shape(self.input_name, (n, h, w, 3))
        self.context.set_tensor_address(self.input_name, self.d_in)
        self.context.set_tensor_address(self.output_name, self.d_out)
        if not self.context.execute_async_v3(_handle(self.stream)):
            raise CbirError("TensorRT execute_async_v3 failed")
        _check(cudart.cudaMemcpyAsync(self.h_out_ptr, self.d_out, n * self.info.dim * 4,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return self.h_out[:n].copy()

    def run_torch(self, images):
        """Device-resident input: a contiguous uint8 CUDA tensor [N, H, W, 3] -> float32 CUDA tensor [N, D]."""
        import torch

        if images.dtype != torch.uint8 or not images.is_cuda:
            raise CbirError("run_torch needs a uint8 CUDA tensor")
        images = images.contiguous()
        out = torch.empty((images.shape[0], self.info.dim), dtype=torch.float32, device=images.device)
        stream = torch.cuda.Stream(device=images.device)
        stream.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(stream):
            self.context.set_input_shape(self.input_name, tuple(images.shape))
            self.context.set_tensor_address(self.input_name, images.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise CbirError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return out

    def __del__(self):
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr in ("d_in", "d_out"):
            if hasattr(self, ptr):
                cudart.cudaFree(getattr(self, ptr))
        for ptr in ("h_in_ptr", "h_out_ptr"):
            if hasattr(self, ptr):
                cudart.cudaFreeHost(getattr(self, ptr))
        if hasattr(self, "stream"):
            cudart.cudaStreamDestroy(self.stream)
