"""OpenVINO CPU backend: the same ONNX file, FP32 and BF16 runs, INT8 via `cbir quantize` under the
reduced-precision gate, and the measured batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.cli import main
from cbir.engine.embedder import Embedder
from cbir.errors import CbirError

ov = pytest.importorskip("openvino")


def bf16_here() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_fp32_matches_onnxruntime_and_works_in_the_batcher(lite0_onnx, photos, embedder):
    ovr = Embedder(lite0_onnx, backend="openvino")
    assert ovr.runner.name == "openvino[fp32]" and ovr.fingerprint == embedder.fingerprint
    srcs = [str(p) for p in photos]
    a, b = embedder.embed(srcs), ovr.embed(srcs)
    assert np.sum(a * b, axis=1).min() >= 0.99999
    with ovr.batcher(max_batch=4) as bat:  # another thread: its own infer request
        futs = [bat.submit(s) for s in srcs[:6]]
        np.testing.assert_allclose(np.stack([f.result(60) for f in futs]), b[:6], atol=1e-4)


@pytest.mark.skipif(not bf16_here(), reason="this CPU has no BF16")
def test_openvino_bf16_stays_close(lite0_onnx, photos, embedder):
    bf = Embedder(lite0_onnx, backend="openvino", precision="bf16")
    srcs = [str(p) for p in photos]
    cos = np.sum(embedder.embed(srcs) * bf.embed(srcs), axis=1)
    assert 0.99 <= cos.min() and cos.mean() < 0.99999  # really computed in bfloat16, and close


def test_precision_refusals(lite0_onnx, monkeypatch):
    with pytest.raises(CbirError, match="--precision bf16: only --backend openvino"):
        Embedder(lite0_onnx, precision="bf16")
    with pytest.raises(CbirError, match="--precision 'int4'"):
        Embedder(lite0_onnx, backend="openvino", precision="int4")
    from cbir.engine.backends import openvino as ovb

    class NoBF16Core(ov.Core):
        def get_property(self, device, name):
            return ["FP32", "INT8"] if name == "OPTIMIZATION_CAPABILITIES" else super().get_property(device, name)

    monkeypatch.setattr(ov, "Core", NoBF16Core)
    monkeypatch.setattr(ovb, "_compiled", {})
    with pytest.raises(CbirError, match="--precision bf16: this CPU has no BF16 support"):
        Embedder(lite0_onnx, backend="openvino", precision="bf16")


def test_auto_batch_size_is_measured_once_and_used(lite0_onnx, photos):
    from cbir.engine import embedder as em

    e = Embedder(lite0_onnx, backend="openvino")
    em._auto_batch.clear()
    calls = []
    run = e.runner.run
    e.runner.run = lambda x: calls.append(len(x)) or run(x)
    best = e.auto_batch_size
    assert best in em.AUTO_BATCH_CANDIDATES and set(calls) == set(em.AUTO_BATCH_CANDIDATES)
    calls.clear()
    assert e.auto_batch_size == best and calls == []  # cached
    e.embed_files([str(p) for p in photos] * 3)
    assert max(calls) == best  # bulk batches are the measured size
    assert Embedder(lite0_onnx, backend="openvino", batch_size=3).resolve_batch_size() == 3


def test_quantize_gate_refuses_and_writes_nothing(lite0_onnx, photos, tmp_path, capsys):
    out = tmp_path / "m_int8.xml"
    rc = main(["quantize", str(lite0_onnx), "--calib", "16", "-o", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # NNCF's own import may log above it
    assert rc == 2 and last.startswith("cbir: error: INT8 fidelity gate failed") and "short by" in last
    assert list(tmp_path.iterdir()) == []


def test_quantized_model_runs_with_its_metadata(lite0_onnx, photos, tmp_path, monkeypatch, capsys, embedder):
    """With the gate's cosine target lowered (only for this test), the IR is written and loads."""
    from cbir.validate import reduced

    monkeypatch.setattr(reduced, "MIN_MEAN_COSINE", 0.95)
    out = tmp_path / "m_int8.xml"
    assert main(["quantize", str(lite0_onnx), "--calib", "16", "-o", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["gate"]["passed"] and r["gate"]["max_norm_error"] < 1e-3 and r["calibration_images"] == 16
    q = Embedder(out, backend="openvino")
    assert q.info.precision == "int8" and q.fingerprint == embedder.fingerprint
    assert q.info.extra["fidelity_int8"]["mean_cosine"] == pytest.approx(r["gate"]["mean_cosine"])
    srcs = [str(p) for p in photos]
    assert np.sum(embedder.embed(srcs) * q.embed(srcs), axis=1).mean() >= 0.95


def test_validate_reports_the_gate(lite0_onnx, capsys):
    rc = main(["validate", str(lite0_onnx), "--backend", "openvino", "--precision", "fp32", "--calib", "8", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and r["passed"] and r["mean_cosine"] >= 0.99999 and r["test"] == "openvino[fp32]"
