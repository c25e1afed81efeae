"""The gate for reduced precision on the CPU (OpenVINO BF16, INT8): a runner's vectors vs ONNX Runtime
FP32 on the same images — min/mean cosine, top-10 agreement, and ΔmAP on a labelled folder.

Corel-1K has many near-tied scores, so top-10 agreement is reported but not judged; the gate judges
mean cosine ≥ 0.999 and |ΔmAP| ≤ 0.005 (when a labelled folder is given), and refuses non-finite or
non-unit-norm outputs (a quantized L2 would show there).
"""

from __future__ import annotations

import numpy as np

from cbir.validate.parity import compare

MIN_MEAN_COSINE = 0.999
MAX_DELTA_MAP = 0.005


def delta_map(reference, test, data: str) -> dict:
    """mAP (every image a query, kept in its ranking) of both embedders' vectors on a labelled folder."""
    from cbir.eval.protocol import load_dataset
    from cbir.eval.ranking import evaluate

    ds = load_dataset(data)
    out = {}
    for name, emb in (("reference", reference), ("test", test)):
        res = emb.embed_files([str(p) for p in ds.paths])
        out[name] = evaluate(res.vectors, ds.labels[res.indices], np.arange(len(res.indices)))[0]["mAP"]
    return {
        "reference": out["reference"],
        "test": out["test"],
        "delta": out["test"] - out["reference"],
        "images": len(ds.paths),
    }


def gate(reference, test, images: list[str], data: str | None = None) -> dict:
    """Report (``passed``, ``failures``, figures) of embedder ``test`` against embedder ``reference``."""
    ref = reference.embed_files(images)
    got = test.embed_files(images)
    both = np.intersect1d(ref.indices, got.indices)
    a = ref.vectors[np.searchsorted(ref.indices, both)]
    b = got.vectors[np.searchsorted(got.indices, both)]
    fid = compare(a, np.nan_to_num(b))
    norms = np.linalg.norm(b, axis=1)
    report = {
        **fid.as_dict(),
        "finite": bool(np.isfinite(b).all()),
        "max_norm_error": float(np.abs(norms - 1).max()),
        "targets": {"mean_cosine": MIN_MEAN_COSINE, "abs_delta_map": MAX_DELTA_MAP},
        "reference": reference.runner.name,
        "test": test.runner.name,
    }
    failures = []
    if not report["finite"]:
        failures.append("non-finite outputs")
    if report["max_norm_error"] > 1e-3:
        failures.append(f"outputs not unit-norm (max |‖v‖ − 1| = {report['max_norm_error']:.3g})")
    if fid.mean_cosine < MIN_MEAN_COSINE:
        failures.append(
            f"mean cosine {fid.mean_cosine:.5f} < {MIN_MEAN_COSINE} (short by {MIN_MEAN_COSINE - fid.mean_cosine:.5f})"
        )
    if data:
        report["delta_map"] = delta_map(reference, test, data)
        d = report["delta_map"]["delta"]
        if abs(d) > MAX_DELTA_MAP:
            failures.append(f"|ΔmAP| {abs(d):.4f} > {MAX_DELTA_MAP} (over by {abs(d) - MAX_DELTA_MAP:.4f})")
    report["passed"], report["failures"] = not failures, failures
    return report
