"""Backends as loader + runner pairs, chosen by name; optional dependencies are imported lazily.

| name             | runner                                              | needs                      |
|------------------|-----------------------------------------------------|----------------------------|
| onnxruntime      | ORT CPU EP, intra-op threads = all cores by default  | onnxruntime                |
| onnxruntime-cuda | ORT CUDA EP (refused if the session fell back to CPU)| onnxruntime-gpu, CUDA      |
| onnxruntime-trt  | ORT TensorRT EP, then CUDA (same check)              | onnxruntime-gpu, TensorRT  |
| tensorrt         | native TensorRT plan from `cbir compile`             | tensorrt, cuda-python      |
| openvino         | OpenVINO CPU, ``precision`` fp32 or bf16, all cores  | openvino (extra cpu-fast)  |
| torch            | the model rebuilt in PyTorch, ``device`` cuda / cpu, | torch, timm (extra export) |
|                  | CUDA graphs per batch bucket (``cuda_graphs``)       |                            |

Every runner implements ``base.Runner``: ``info``, ``input_name``/``input_shape``/``input_dtype``,
``run`` (uint8 [N, H, W, 3] NumPy -> float32 [N, D] L2-normalised), ``run_torch`` (CUDA tensors, GPU
backends), ``close`` and the context-manager protocol. Callers (bench, batcher) use only that.
"""

from __future__ import annotations

from typing import Callable

from cbir.engine.backends.base import Runner
from cbir.errors import CbirError


def _onnxruntime(provider: str) -> Callable[..., Runner]:
    def load(model: str, **options) -> Runner:
        from cbir.engine.backends.onnxruntime import OrtRunner, load_session

        return OrtRunner(load_session(model, provider=provider, **options), source=str(model))

    return load


def _openvino(model: str, precision: str | None = None, threads: int | None = None, **options) -> Runner:
    from cbir.engine.backends.openvino import OvRunner

    return OvRunner(model, precision or "fp32", threads)


def _tensorrt(model: str, **options) -> Runner:
    from cbir.engine.backends.tensorrt import TrtRunner

    return TrtRunner(model, **{k: v for k, v in options.items() if k == "device"})


def _torch(
    model: str,
    device: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    cuda_graphs: bool | None = None,
    compile: bool = False,
    slots: int | None = None,
    tf32: bool | None = None,
    **options,
) -> Runner:
    from cbir.engine.backends.torch import TorchRunner

    return TorchRunner(
        model,
        device=device,
        precision=precision,
        threads=threads,
        compile=compile,
        cuda_graphs=cuda_graphs,
        slots=slots,
        tf32=tf32,
    )


BACKENDS: dict[str, Callable[..., Runner]] = {
    "onnxruntime": _onnxruntime("cpu"),
    "onnxruntime-cuda": _onnxruntime("cuda"),
    "onnxruntime-trt": _onnxruntime("tensorrt"),
    "tensorrt": _tensorrt,
    "openvino": _openvino,
    "torch": _torch,
}
RUN_PRECISION = {"openvino", "torch"}  # backends that choose a precision at load (others: the file's precision)
DEVICE = {"torch", "tensorrt"}  # backends that take ``device``


def load_backend(model: str, backend: str = "onnxruntime", **options) -> Runner:
    """Load ``model`` with the backend registered under ``backend`` (default: ONNX Runtime CPU)."""
    if backend not in BACKENDS:
        raise CbirError(f"--backend {backend!r}: unknown backend; choose one of {', '.join(BACKENDS)}")
    if options.get("device") is not None and backend not in DEVICE:
        raise CbirError(f"--device applies to --backend {' or '.join(sorted(DEVICE))}, not {backend}")
    if options.get("device") is None:
        options.pop("device", None)
    torch_only = sorted(k for k in ("cuda_graphs", "compile", "tf32") if k in options)
    if torch_only and backend != "torch":
        raise CbirError(f"{', '.join(torch_only)}: options of --backend torch, not {backend}")
    precision = options.pop("precision", None)
    if backend in RUN_PRECISION:
        options["precision"] = precision
    elif precision not in (None, "fp32"):
        raise CbirError(
            f"--precision {precision}: only --backend openvino or torch runs a reduced precision at load "
            f"(for TensorRT, export with --precision fp16)"
        )
    return BACKENDS[backend](model, **options)
