"""``cbir quantize``: INT8 post-training quantization with NNCF for the OpenVINO CPU backend.

The exported FP32 ONNX file is read by OpenVINO and quantized by ``nncf.quantize`` (MIXED preset:
symmetric weights, asymmetric activations) on ``calib`` real images (default 300, spread evenly over
``--images``). Kept out of INT8 (``nncf.IgnoredScope``): the first convolution (it sees raw pixels)
and the retrieval head — pooling (ReduceMean/ReduceMax/ReduceSum), whitening and region MatMuls,
L2 (ReduceL2/NormalizeL2/Divide/Power/Sqrt): quantizing those is what broke fidelity in a whole-graph
attempt (top-10 agreement 0.75, outputs no longer unit-norm). The result must pass
``validate.reduced.gate`` against ONNX Runtime FP32 or nothing is written and the command says by
how much it missed. Written as OpenVINO IR (``.xml`` + ``.bin``) with the cbir facts and the gate's
figures in the model's ``rt_info["cbir"]``; the fingerprint stays the FP32 model's (the gate vouches
that its vectors are interchangeable within the tolerance), ``precision`` says ``int8``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

from cbir.errors import CbirError

HEAD_TYPES = ["ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2", "NormalizeL2", "MatMul", "Divide", "Power", "Sqrt"]


def quantize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    images: list,
    calib: int = 300,
    fidelity_data: str | None = None,
    gate_images: int = 64,
) -> dict:
    """Quantize, gate, write; returns the summary (figures of the gate included)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF logs and draws progress on stdout: keep it for --json
            import nncf
    except ImportError:
        raise CbirError("cbir quantize needs NNCF and OpenVINO: pip install 'cbir[cpu-fast]'") from None
    from cbir.engine.backends.openvino import import_openvino
    from cbir.engine.embedder import Embedder
    from cbir.engine.preprocess import Preprocess
    from cbir.modelinfo import read_onnx
    from cbir.validate.fidelity import calibration_images
    from cbir.validate.reduced import gate

    ov = import_openvino()
    model, output = Path(model), Path(output)
    if output.suffix != ".xml":
        raise CbirError(f"-o {output}: INT8 models are written as OpenVINO IR; name it *.xml")
    info, _, _ = read_onnx(model)
    paths = calibration_images(images, calib)
    pp = Preprocess.for_model(info)
    rows = []
    for p in paths:
        try:
            rows.append(pp(p)[None])
        except CbirError as e:
            print(f"cbir quantize: skipped {e}", file=sys.stderr)
    if len(rows) < 10:
        raise CbirError(f"--images: {len(rows)} usable calibration images; at least 10 are needed")
    core = ov.Core()
    fp32 = core.read_model(str(model))
    convs = [
        op.get_friendly_name()
        for op in fp32.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
    ]
    ignored = nncf.IgnoredScope(names=convs[:1], types=HEAD_TYPES, validate=False)
    with contextlib.redirect_stdout(sys.stderr):
        q = nncf.quantize(
            fp32, nncf.Dataset(rows), preset=nncf.QuantizationPreset.MIXED, subset_size=len(rows), ignored_scope=ignored
        )
    tmp = output.with_name(output.stem + ".tmp.xml")
    int8 = replace(info, precision="int8", extra={**info.extra, "quantized_from": str(model)})
    q.set_rt_info(int8.to_json(), ["cbir"])
    ov.save_model(q, str(tmp))
    try:
        reference = Embedder(model)
        test = Embedder(tmp, backend="openvino")
        report = gate(reference, test, [str(p) for p in paths[:: max(1, len(paths) // gate_images)]], fidelity_data)
        if not report["passed"]:
            raise CbirError(
                f"INT8 fidelity gate failed for {info.arch} Block {info.block} {info.pooling}: "
                f"{'; '.join(report['failures'])}"
            )
        int8.extra["fidelity_int8"] = report
        q.set_rt_info(int8.to_json(), ["cbir"])
        ov.save_model(q, str(output))
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
    return {
        "output": str(output),
        "calibration_images": len(rows),
        "ignored": {"first_conv": convs[:1], "types": HEAD_TYPES},
        "gate": report,
        "size_bytes": output.with_suffix(".bin").stat().st_size,
    }
