"""FP16 fidelity gate (DESIGN.md §4): FP16 graph vs the FP32 model on real photos, without a GPU.

ONNX Runtime CPU has no FP16 kernels (it inserts casts and computes in FP32, hiding overflow), so
the FP16 numbers come from two estimates, each named in the report:
- ``reference``: ``onnx.reference.ReferenceEvaluator`` running the exported FP16 graph in true FP16
  NumPy arithmetic (slow: seconds per image) — the gate decides on this one;
- ``torch_half``: the same PyTorch module in ``half()`` on CPU (oneDNN; faster, used for ΔmAP on a
  labelled set).
``ort_cpu`` is reported too, to show how little ORT CPU sees. Targets: min cosine ≥ 0.999, top-10
agreement ≥ 0.98, |ΔmAP| ≤ 0.005; non-finite outputs fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.validate.parity import compare

MIN_COSINE = 0.999
MIN_TOPK = 0.98
MAX_DELTA_MAP = 0.005


def calibration_images(images: list | None, limit: int = 32) -> list:
    """Up to ``limit`` images spread evenly over ``images`` (files or folders); default skimage photos."""
    from cbir.samples import sample_photos
    from cbir.sources import find_images

    paths = find_images(images) if images else sample_photos()
    if len(paths) > limit:
        paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, limit)]
    return [str(p) for p in paths]


def reference_evaluator_vectors(onnx_path: str | Path, batch: np.ndarray, input_name: str = "images") -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(str(onnx_path))
    return np.concatenate([ev.run(None, {input_name: batch[i : i + 1]})[0] for i in range(len(batch))])


def torch_vectors(model, batch: np.ndarray, chunk: int = 16) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate(
            [model(torch.from_numpy(batch[i : i + chunk])).float().numpy() for i in range(0, len(batch), chunk)]
        )


def fp16_gate(
    fp32_model,
    fp16_model,
    onnx_path: Path,
    info,
    images: list | None = None,
    calib: int = 32,
    data: str | None = None,
    enforce: bool = True,
) -> dict:
    """Run the gate; returns the report, raises ``CbirError`` when ``enforce`` and a target is missed."""
    from cbir.engine.backends.onnxruntime import OrtRunner, load_session
    from cbir.engine.preprocess import Preprocess

    paths = calibration_images(images, calib)
    pp = Preprocess.for_model(info)
    batch = np.stack([pp(p) for p in paths])
    ref = torch_vectors(fp32_model, batch)
    with np.errstate(all="ignore"):
        ev = reference_evaluator_vectors(onnx_path, batch)
    report = {
        "images": len(paths),
        "targets": {"min_cosine": MIN_COSINE, "topk_agreement": MIN_TOPK, "abs_delta_map": MAX_DELTA_MAP},
    }
    for name, vecs in (
        ("reference", ev),
        ("torch_half", torch_vectors(fp16_model, batch)),
        ("ort_cpu", OrtRunner(load_session(onnx_path)).run(batch)),
    ):
        finite = bool(np.isfinite(vecs).all())
        fid = compare(ref, np.nan_to_num(vecs, nan=0.0, posinf=0.0, neginf=0.0))
        report[name] = {**fid.as_dict(), "finite": finite}
    report["estimate"] = "onnx.reference.ReferenceEvaluator, true FP16 arithmetic (gate); torch half() on CPU (ΔmAP)"
    if data:
        report["delta_map"] = delta_map(fp32_model, fp16_model, data, pp)
    r = report["reference"]
    failures = []
    if not r["finite"]:
        failures.append("non-finite outputs (FP16 overflow)")
    if r["min_cosine"] < MIN_COSINE:
        failures.append(f"min cosine {r['min_cosine']:.5f} < {MIN_COSINE}")
    if r["topk_agreement"] < MIN_TOPK:
        failures.append(f"top-{r['k']} agreement {r['topk_agreement']:.3f} < {MIN_TOPK}")
    if data and abs(report["delta_map"]["delta"]) > MAX_DELTA_MAP:
        failures.append(f"|ΔmAP| {abs(report['delta_map']['delta']):.4f} > {MAX_DELTA_MAP}")
    report["passed"] = not failures
    report["failures"] = failures
    if failures and enforce:
        raise CbirError(
            f"FP16 fidelity gate failed for {info.arch} Block {info.block} {info.pooling} "
            f"on {len(paths)} photos: {'; '.join(failures)}"
        )
    return report


def delta_map(fp32_model, fp16_model, data: str, pp) -> dict:
    """mAP (every image as a query, query kept) of FP32 vs torch-half vectors on a labelled folder."""
    from cbir.eval.protocol import load_dataset
    from cbir.eval.ranking import evaluate

    ds = load_dataset(data)
    out = {}
    for name, model in (("fp32", fp32_model), ("fp16", fp16_model)):
        vecs = []
        for i in range(0, len(ds.paths), 32):
            vecs.append(torch_vectors(model, np.stack([pp(p) for p in ds.paths[i : i + 32]])))
        out[name] = evaluate(np.concatenate(vecs), ds.labels, np.arange(len(ds.paths)))[0]["mAP"]
    return {
        "fp32": out["fp32"],
        "fp16": out["fp16"],
        "delta": out["fp16"] - out["fp32"],
        "images": len(ds.paths),
        "estimate": "torch half() on CPU",
    }
