"""Static check that an ONNX graph is inside what TensorRT's ONNX parser accepts (no GPU needed).

Sources: onnx-tensorrt ``docs/operators.md`` (8.4 matrix, plus operators the 10.x matrix adds) and
the TensorRT opset guide: TensorRT 10.x parses opsets 9–20, TensorRT 11.x opsets 9–25
(GPU_NOTES.md §Q1 "Checking op support without a GPU"). Checked: every op type is supported; the
default-domain opset is in range for each major version; Reduce*/Squeeze/Unsqueeze axes (input 1),
Slice axes (input 3; starts/ends may be dynamic) and Conv weights are constants; UINT8 appears only at graph
inputs/outputs ("UINT8 is only supported
as network input or output tensor types").
"""

from __future__ import annotations

import onnx

OPSETS = {"tensorrt10": (9, 20), "tensorrt11": (9, 25)}

SUPPORTED = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform
RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample
Where Xor LayerNormalization GroupNormalization HardSwish Trilu
""".split()
)
AXES_INPUT = {
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Squeeze",
    "Unsqueeze",
}


def lint(model: onnx.ModelProto | str) -> dict:
    """{"ok": bool, "problems": [...], "ops": sorted op types, "opset": n, "tensorrt10": bool, "tensorrt11": bool}."""
    if isinstance(model, str):
        model = onnx.load(model)
    g = model.graph
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    problems = []
    for n in g.node:
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name or n.op_type}: custom domain {n.domain!r} needs a plugin")
        elif n.op_type not in SUPPORTED:
            problems.append(f"{n.name or n.op_type}: op {n.op_type} is not supported by TensorRT's ONNX parser")
        axes = 1 if n.op_type in AXES_INPUT else 3 if n.op_type == "Slice" else None
        if axes is not None and len(n.input) > axes and n.input[axes] and n.input[axes] not in constants:
            problems.append(f"{n.name}: {n.op_type} axes must be a constant")
        if n.op_type == "Conv" and n.input[1] not in constants:
            problems.append(f"{n.name}: Conv weights must be an initializer")
    io = {v.name for v in list(g.input) + list(g.output)}
    for vi in g.value_info:
        if vi.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and vi.name not in io:
            problems.append(f"{vi.name}: UINT8 tensor inside the graph (TensorRT allows UINT8 only at I/O)")
    out = {"opset": opset, "ops": sorted({n.op_type for n in g.node}), "problems": problems}
    for name, (lo, hi) in OPSETS.items():
        out[name] = not problems and lo <= opset <= hi
    out["ok"] = out["tensorrt10"] or out["tensorrt11"]
    return out
