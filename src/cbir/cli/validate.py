"""`cbir quantize` (INT8 for OpenVINO, gated) and `cbir validate` (the reduced-precision gate for any backend)."""

from __future__ import annotations

import argparse

from cbir.cli.common import backend_args, print_json
from cbir.errors import CbirError


def cmd_quantize(a: argparse.Namespace) -> int:
    from cbir.export.quantize import quantize

    r = quantize(a.model, a.output, a.images or None, a.calib, a.fidelity_data)
    if a.json:
        print_json(r)
    else:
        g = r["gate"]
        print(
            f"wrote {r['output']}: INT8 from {r['calibration_images']} calibration images; gate vs ONNX Runtime FP32: "
            f"mean cosine {g['mean_cosine']:.5f} (min {g['min_cosine']:.5f}), top-{g['k']} agreement {g['topk_agreement']:.3f}"
            + (f", ΔmAP {g['delta_map']['delta']:+.4f}" if "delta_map" in g else "")
        )
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from cbir.engine.embedder import Embedder
    from cbir.validate.fidelity import calibration_images
    from cbir.validate.reduced import gate

    if a.backend == "onnxruntime" and a.precision in (None, "fp32"):
        raise CbirError("cbir validate: choose the run to check, e.g. --backend openvino --precision bf16")
    r = gate(
        Embedder(a.model),
        Embedder(a.model, backend=a.backend, precision=a.precision, device=a.device),
        calibration_images(a.images or None, a.calib),
        a.fidelity_data,
    )
    if a.json:
        print_json(r)
    else:
        print(
            f"{r['test']} vs {r['reference']} on {r['n']} images: mean cosine {r['mean_cosine']:.5f} (min {r['min_cosine']:.5f}), "
            f"top-{r['k']} agreement {r['topk_agreement']:.3f}"
            + (f", ΔmAP {r['delta_map']['delta']:+.4f}" if "delta_map" in r else "")
            + ("; PASSED" if r["passed"] else f"; FAILED: {'; '.join(r['failures'])}")
        )
    return 0 if r["passed"] else 1


def register(sub) -> None:
    q = sub.add_parser("quantize", help="INT8 post-training quantization (NNCF) for --backend openvino, gated")
    q.add_argument("model", help="FP32 ONNX from `cbir export`")
    q.add_argument(
        "--images", nargs="*", help="calibration photos, files or folders (default: scikit-image's bundled photos)"
    )
    q.add_argument("--calib", type=int, default=300, help="calibration images, spread over --images (default 300)")
    q.add_argument("--fidelity-data", help="labelled folder: the gate also checks |ΔmAP| ≤ 0.005")
    q.add_argument("-o", "--output", required=True, help="OpenVINO IR, model_int8.xml")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_quantize)
    v = sub.add_parser("validate", help="the reduced-precision gate: a backend/precision vs ONNX Runtime FP32")
    v.add_argument("model")
    backend_args(v)
    v.add_argument("--images", nargs="*", help="photos for the cosine/top-10 figures (default: scikit-image's)")
    v.add_argument("--calib", type=int, default=64)
    v.add_argument("--fidelity-data", help="labelled folder for ΔmAP")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_validate)
