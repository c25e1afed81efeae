"""GPU tests: run them all on a GPU machine with ``python -m pytest -q tests/gpu``.
Each test skips with the reason when its library or a CUDA device is missing (always, on CPU CI)."""
from __future__ import annotations

import numpy as np
import pytest

from cbir.doctor import run_checks

STATUS = {r["name"]: r for r in run_checks()}


def need(name: str):
    r = STATUS[name]
    return pytest.mark.skipif(not r["available"], reason=f"{name} unavailable: {r['reason']}")


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory, photos):
    from cbir.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("gpu") / "lite0_gem_fp16.onnx"
    export_onnx("tf_efficientnet_lite0", out, block=7, pooling="gem", pretrained=True, precision="fp16", calib=8)
    return out


@need("tensorrt")
def test_tensorrt_engine_matches_fp32_and_caches(fp16_model, lite0_onnx, photos, tmp_path):
    from cbir.engine.embedder import Embedder
    from cbir.export.tensorrt import Profile, build_engine

    plan = tmp_path / "m.plan"
    m = build_engine(fp16_model, plan, Profile(1, 8, 16), workspace_gb=2, timing_cache=tmp_path / "tc.bin")
    assert not m["cached"] and (tmp_path / "tc.bin").is_file() and m["fidelity"]["min_cosine"] >= 0.999
    assert build_engine(fp16_model, plan, Profile(1, 8, 16), workspace_gb=2)["cached"]
    srcs = [str(p) for p in photos] * 2  # 32 images: more than max_batch, split by the runner
    trt_vecs = Embedder(plan, backend="tensorrt").embed(srcs)
    cpu_vecs = Embedder(fp16_model).embed(srcs)
    assert np.sum(trt_vecs * cpu_vecs, axis=1).min() >= 0.999


@need("onnxruntime-cuda")
def test_ort_cuda_provider_and_io_binding(lite0_onnx, photos):
    import torch

    from cbir.engine.embedder import Embedder

    gpu, cpu = Embedder(lite0_onnx, backend="onnxruntime-cuda"), Embedder(lite0_onnx)
    assert gpu.runner.providers[0] == "CUDAExecutionProvider"
    batch = np.stack([gpu.preprocess(p) for p in photos[:8]])
    np.testing.assert_allclose(gpu.run(batch), cpu.run(batch), atol=2e-3)
    np.testing.assert_allclose(gpu.runner.run_torch(torch.from_numpy(batch).cuda()), cpu.run(batch), atol=2e-3)


@need("onnxruntime-tensorrt")
def test_ort_tensorrt_provider(fp16_model, photos):
    from cbir.engine.embedder import Embedder

    e = Embedder(fp16_model, backend="onnxruntime-trt")
    assert e.runner.providers[0] == "TensorrtExecutionProvider"
    assert np.isfinite(e.embed([str(p) for p in photos[:4]])).all()


@need("faiss-gpu")
def test_gallery_searches_on_gpu(embedder, gallery_dir, tmp_path):
    from cbir.index.gallery import Gallery

    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([gallery_dir])
    assert g.search_index is not g.index
    q = sorted(gallery_dir.rglob("*.jpg"))[0]
    assert g.search([str(q)], k=3)[0]["results"][0]["score"] > 0.999
