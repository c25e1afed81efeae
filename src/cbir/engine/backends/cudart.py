"""cuda-python runtime helpers shared by the GPU runners (imported lazily; ``gpu`` extra).

``runtime()`` is ``cuda.bindings.runtime`` or a one-line error; ``check`` unwraps its
``(err, *values)`` results; ``handle`` gives a native handle; ``pinned_empty`` allocates page-locked
host memory (``cudaMallocHost``) as a NumPy array, which the CUDA driver copies by DMA without a
staging buffer (used by TensorRT's slots and ORT-GPU's IO binding).
"""

from __future__ import annotations

import ctypes
import math
from typing import Callable

import numpy as np

from cbir.errors import CbirError


def runtime():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise CbirError("cuda-python is not installed (pip install 'cbir[gpu]')") from None
    return cudart


def check(result):
    """cuda-python calls return (err, *values); raise on error, return the values (None if none)."""
    cudart = runtime()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise CbirError(f"CUDA error: {cudart.cudaGetErrorString(err)[1]}")
    return values[0] if len(values) == 1 else (values or None)


def handle(obj) -> int:
    """Native handle of a cuda-python object (int(obj) is deprecated in cuda-bindings 13)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle

        return int(get_cuda_native_handle(obj))
    except (ImportError, TypeError):
        return int(obj)


def pinned_empty(shape: tuple[int, ...], dtype) -> tuple[np.ndarray, int, Callable[[], None]]:
    """(array, pointer, free): an uninitialised page-locked host array and the call that frees it."""
    cudart, dtype = runtime(), np.dtype(dtype)
    nbytes = max(1, math.prod(shape) * dtype.itemsize)
    ptr = check(cudart.cudaMallocHost(nbytes))
    arr = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype, math.prod(shape)).reshape(shape)
    return arr, ptr, lambda: cudart.cudaFreeHost(ptr)
