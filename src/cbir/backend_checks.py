"""``cbir doctor``: which backends work on this machine, each with a short self-check.

Each check returns ``{"name", "available", "reason", "check"}``. Available backends run a tiny cbir
model (uint8 [N, 8, 8, 3] → Conv → mean → L2, built with ``onnx.helper``, no torch) or a tiny
FAISS search and compare with a NumPy or CPU result. Exit status 0 when the CPU path (ONNX Runtime
CPU and FAISS CPU) works, 1 otherwise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from cbir.errors import CbirError

_RNG = np.random.default_rng(0)
_W = _RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
TINY_INPUT = _RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)


def tiny_model(path: str | Path) -> Path:
    """Write the tiny self-check model (opset 18, with cbir metadata) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cbir.modelinfo import METADATA_KEY, ModelInfo

    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c", "axes"], ["m"], keepdims=0),
        helper.make_node("ReduceL2", ["m", "last"], ["n"], keepdims=1),
        helper.make_node("Div", ["m", "n"], ["embeddings"]),
    ]
    inits = [
        numpy_helper.from_array(_W, "w"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "last"),
    ]
    graph = helper.make_graph(
        nodes,
        "cbir_doctor",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    info = ModelInfo(
        arch="doctor",
        block=0,
        pooling="gap",
        dim=4,
        input_size=(8, 8),
        mean=(0, 0, 0),
        std=(1, 1, 1),
        fingerprint="doctor",
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.save(model, str(path))
    return Path(path)


def tiny_reference(batch: np.ndarray = TINY_INPUT) -> np.ndarray:
    """The tiny model in NumPy: 3×3 conv (zero padding), mean over H×W, L2."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, _, h, w = x.shape
    out = np.zeros((n, 4, h, w), np.float32)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + h, j : j + w], _W[:, :, i, j])
    m = out.mean(axis=(2, 3))
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _agree(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> str:
    err = float(np.abs(a - b).max())
    if not err <= tol:
        raise CbirError(f"self-check mismatch: max abs error {err:.2e} > {tol}")
    return f"tiny model matches the reference (max abs error {err:.1e})"


def check_onnxruntime(provider: str, model: Path) -> str:
    import onnxruntime as ort

    from cbir.engine.backends.onnxruntime import OrtRunner, load_session

    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[
        provider
    ]
    if wanted not in ort.get_available_providers():
        raise CbirError(f"{wanted} is not in this onnxruntime build (install onnxruntime-gpu instead of onnxruntime)")
    runner = OrtRunner(
        load_session(model, provider=provider, **({"trt_options": {}} if provider == "tensorrt" else {}))
    )
    cuda = getattr(getattr(ort.capi, "build_and_package_info", None), "cuda_version", None)
    built = f"; onnxruntime {ort.__version__}" + (f" built for CUDA {cuda}" if cuda and provider != "cpu" else "")
    return _agree(runner.run(TINY_INPUT), tiny_reference()) + built


def check_tensorrt(model: Path) -> str:
    from cbir.engine.backends.tensorrt import TrtRunner
    from cbir.engine.backends.tensorrt_plan import Profile, import_tensorrt
    from cbir.export.tensorrt import build_engine

    import_tensorrt()
    plan = model.with_suffix(".plan")
    m = build_engine(model, plan, Profile(1, 2, 4), workspace_gb=0.25)
    with TrtRunner(plan) as runner:
        got = runner.run(TINY_INPUT)
    return _agree(got, tiny_reference(), 2e-2) + f"; built in {m['build_seconds']} s"


def check_openvino(model: Path) -> str:
    from cbir.engine.backends.openvino import OvRunner, cpu_capabilities

    caps = cpu_capabilities()
    with OvRunner(model) as runner:
        got = runner.run(TINY_INPUT)
    return (
        _agree(got, tiny_reference())
        + f"; CPU precisions: {', '.join(c for c in caps if c in ('FP32', 'BF16', 'FP16', 'INT8'))}"
    )


def check_faiss_cpu() -> str:
    import faiss

    x = _RNG.normal(size=(200, 16)).astype(np.float32)
    index = faiss.IndexFlatIP(16)
    index.add(x)
    _, ids = index.search(x[:5], 3)
    want = np.argsort(-(x[:5] @ x.T), axis=1)[:, :3]
    if not np.array_equal(ids, want):
        raise CbirError("faiss Flat search differs from NumPy")
    return f"faiss {faiss.__version__}: Flat inner-product search matches NumPy"


def check_faiss_gpu() -> str:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        raise CbirError("faiss-cpu is installed (no GPU support); install faiss-gpu instead of faiss-cpu")
    if faiss.get_num_gpus() == 0:
        raise CbirError("faiss-gpu sees no GPU (faiss.get_num_gpus() == 0)")
    from cbir.index.ann.faiss_index import to_gpu

    x = _RNG.normal(size=(200, 16)).astype(np.float32)
    cpu = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    cpu.add_with_ids(x, np.arange(200, dtype=np.int64))
    _, a = cpu.search(x[:5], 3)
    _, b = to_gpu(cpu).search(x[:5], 3)
    if not np.array_equal(a, b):
        raise CbirError("GPU search differs from CPU")
    return f"{faiss.get_num_gpus()} GPU(s); GPU search matches CPU"


def check_torch_cuda() -> str:
    try:
        import torch
    except ImportError:
        raise CbirError("torch is not installed (pip install 'cbir[export]')") from None
    if not torch.cuda.is_available():
        raise CbirError(f"torch {torch.__version__} sees no CUDA device")
    a = torch.randn(64, 64)
    err = float((a @ a - (a.cuda() @ a.cuda()).cpu()).abs().max())
    return f"{torch.cuda.get_device_name(0)}: matmul matches CPU (max abs error {err:.1e})"


def run_checks() -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        model = tiny_model(Path(d) / "tiny.onnx")
        checks: list[tuple[str, Callable[[], str]]] = [
            ("onnxruntime-cpu", lambda: check_onnxruntime("cpu", model)),
            ("onnxruntime-cuda", lambda: check_onnxruntime("cuda", model)),
            ("onnxruntime-tensorrt", lambda: check_onnxruntime("tensorrt", model)),
            ("tensorrt", lambda: check_tensorrt(model)),
            ("openvino", lambda: check_openvino(model)),
            ("faiss-cpu", check_faiss_cpu),
            ("faiss-gpu", check_faiss_gpu),
            ("torch-cuda", check_torch_cuda),
        ]
        out = []
        for name, fn in checks:
            try:
                out.append({"name": name, "available": True, "reason": None, "check": fn()})
            except CbirError as e:
                out.append({"name": name, "available": False, "reason": str(e), "check": None})
            except Exception as e:  # a broken GPU stack must not stop the report
                out.append({"name": name, "available": False, "reason": f"{type(e).__name__}: {e}", "check": None})
        return out


def cpu_path_ok(results: list[dict]) -> bool:
    ok = {r["name"] for r in results if r["available"]}
    return {"onnxruntime-cpu", "faiss-cpu"} <= ok
