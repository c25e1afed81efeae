"""FLOPs per image of an ONNX model (Conv, MatMul, Gemm multiply-adds × 2) and the machine's sgemm rate.

Used to report model-only throughput as a fraction of what the CPU's matrix unit can do:
``efficiency = FLOPs/image × img/s ÷ sgemm FLOP/s``. Torch-free.
"""

from __future__ import annotations

import time

import numpy as np


def onnx_flops(path: str) -> float:
    """FLOPs for one image: shape inference at batch 1, then 2·MACs of Conv / MatMul / Gemm nodes."""
    import onnx

    model = onnx.load(path)
    inp = model.graph.input[0].type.tensor_type.shape.dim[0]
    inp.ClearField("dim_param")
    inp.dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if w and out and all(out):
                # w: [Cout, Cin/groups, kH, kW]; out: [N, Cout, H, W]
                total += 2.0 * np.prod(out[1:]) * np.prod(w[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out and all(out) and all(a):
                total += (
                    2.0 * np.prod(out) * a[-1]
                    if node.op_type == "MatMul" or not _trans_a(node)
                    else 2.0 * np.prod(out) * a[0]
                )
    return float(total)


def _trans_a(node) -> bool:
    return any(att.name == "transA" and att.i == 1 for att in node.attribute)


def sgemm_gflops(n: int = 1024, repeats: int = 7) -> dict:
    """Median/max GFLOP/s of float32 n×n matmul with NumPy's BLAS (all its threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"median": float(np.median(rates)), "max": float(np.max(rates)), "n": n}
