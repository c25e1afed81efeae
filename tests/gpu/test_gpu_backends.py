"""GPU tests: run them all on a GPU machine with ``python -m pytest -q tests/gpu``.

A test skips only when its library cannot be imported or no CUDA device is visible (always, on CPU
CI); anything else that goes wrong — a bug in the build, the runner, the provider set-up — fails it.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest


def _import_or_skip(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.skip(f"{name} cannot be imported: {e}")


def _cuda_devices() -> int:
    """Visible CUDA devices, from cuda-python if installed, else torch; 0 when neither can tell.
    Only "no device" (or no NVIDIA driver loaded at all: no /proc/driver/nvidia) counts as none: any
    other error of the device query (a driver too old, a broken install) fails the test, since it is
    exactly what these tests are for."""
    import os

    if not os.path.exists("/proc/driver/nvidia/version"):
        return 0
    try:
        from cuda.bindings import runtime as cudart

        err, n = cudart.cudaGetDeviceCount()
        if err == cudart.cudaError_t.cudaErrorNoDevice:
            return 0
        assert err == cudart.cudaError_t.cudaSuccess, f"cudaGetDeviceCount failed: {err}"
        return n
    except ImportError:
        pass
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _need_device() -> None:
    if _cuda_devices() == 0:
        pytest.skip("no CUDA device visible")


if _cuda_devices() == 0:  # before any fixture: on a CPU machine the module costs nothing
    pytest.skip("no CUDA device visible", allow_module_level=True)


def _need_ort_provider(provider: str) -> None:
    ort = _import_or_skip("onnxruntime")
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} is not in this onnxruntime build ({ort.get_available_providers()})")
    _need_device()


@pytest.fixture(scope="module")
def fp16_model(tmp_path_factory, photos):
    _need_device()  # before the export: on a CPU machine these tests skip without paying for it
    from cbir.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("gpu") / "lite0_gem_fp16.onnx"
    export_onnx("tf_efficientnet_lite0", out, block=7, pooling="gem", pretrained=True, precision="fp16", calib=8)
    return out


def test_tensorrt_engine_matches_fp32_and_caches(fp16_model, lite0_onnx, photos, tmp_path):
    _import_or_skip("tensorrt")
    _import_or_skip("cuda.bindings.runtime")
    _need_device()
    from cbir.engine.backends.tensorrt_plan import Profile
    from cbir.engine.embedder import Embedder
    from cbir.export.tensorrt import build_engine

    plan = tmp_path / "m.plan"
    m = build_engine(fp16_model, plan, Profile(1, 8, 16), workspace_gb=2, timing_cache=tmp_path / "tc.bin")
    assert not m["cached"] and (tmp_path / "tc.bin").is_file() and m["fidelity"]["min_cosine"] >= 0.999
    assert build_engine(fp16_model, plan, Profile(1, 8, 16), workspace_gb=2)["cached"]
    srcs = [str(p) for p in photos] * 2  # 32 images: more than max_batch, split by the runner
    trt = Embedder(plan, backend="tensorrt")
    trt_vecs = trt.embed(srcs)
    cpu_vecs = Embedder(fp16_model).embed(srcs)
    assert np.sum(trt_vecs * cpu_vecs, axis=1).min() >= 0.999
    with trt.batcher(max_batch=8) as b:  # the batcher's worker thread runs the engine
        np.testing.assert_allclose(b.embed(srcs[0]), trt_vecs[0], atol=1e-3)
    trt.runner.close()


def test_tensorrt_run_torch_splits_batches(fp16_model, tmp_path):
    _import_or_skip("tensorrt")
    _import_or_skip("cuda.bindings.runtime")
    torch = _import_or_skip("torch")
    _need_device()
    from cbir.engine.backends.tensorrt import TrtRunner
    from cbir.engine.backends.tensorrt_plan import Profile
    from cbir.export.tensorrt import build_engine

    plan = tmp_path / "m.plan"
    build_engine(fp16_model, plan, Profile(1, 4, 8), workspace_gb=2)
    x = torch.randint(0, 256, (19, 224, 224, 3), dtype=torch.uint8)
    with TrtRunner(plan) as runner:
        got = runner.run_torch(x.cuda()).cpu().numpy()
        want = runner.run(x.numpy())
    assert got.shape == (19, runner.info.dim)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_ort_cuda_provider_and_io_binding(lite0_onnx, photos):
    _need_ort_provider("CUDAExecutionProvider")
    torch = _import_or_skip("torch")
    from cbir.engine.embedder import Embedder

    gpu, cpu = Embedder(lite0_onnx, backend="onnxruntime-cuda"), Embedder(lite0_onnx)
    assert gpu.runner.providers[0] == "CUDAExecutionProvider"
    batch = np.stack([gpu.preprocess(p) for p in photos[:8]])
    np.testing.assert_allclose(gpu.run(batch), cpu.run(batch), atol=2e-3)
    np.testing.assert_allclose(gpu.runner.run_torch(torch.from_numpy(batch).cuda()), cpu.run(batch), atol=2e-3)


def test_ort_tensorrt_provider(fp16_model, photos):
    _need_ort_provider("TensorrtExecutionProvider")
    from cbir.engine.embedder import Embedder

    e = Embedder(fp16_model, backend="onnxruntime-trt")
    assert e.runner.providers[0] == "TensorrtExecutionProvider"
    assert np.isfinite(e.embed([str(p) for p in photos[:4]])).all()
    # proof that the graph ran in TensorRT, not in a CUDA fallback: the EP wrote its engine cache
    cache = fp16_model.parent / (fp16_model.stem + ".trt_cache")
    assert cache.is_dir() and any(f.suffix == ".engine" for f in cache.iterdir()), sorted(cache.iterdir())


def test_gallery_searches_on_gpu(embedder, gallery_dir, tmp_path):
    faiss = _import_or_skip("faiss")
    if not hasattr(faiss, "StandardGpuResources"):
        pytest.skip("faiss-cpu is installed (no GPU support)")
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-gpu sees no GPU")
    from cbir.index.gallery import Gallery

    g = Gallery.create(tmp_path / "idx", embedder)
    g.build([gallery_dir])
    assert g.search_index is not g.index
    q = sorted(gallery_dir.rglob("*.jpg"))[0]
    assert g.search([str(q)], k=3)[0]["results"][0]["score"] > 0.999
    h = Gallery.create(tmp_path / "hnsw", embedder, factory="HNSW16")
    h.build([gallery_dir])
    assert h.search_index is h.index  # no GPU HNSW: the CPU index answers
    assert h.search([str(q)], k=3)[0]["results"][0]["score"] > 0.999


def test_torch_backend_on_cuda_matches_ort_fp32(lite0_onnx, embedder, photos):
    torch = _import_or_skip("torch")
    from cbir.engine.embedder import Embedder

    srcs = [str(p) for p in photos]
    ref = embedder.embed(srcs)  # ONNX Runtime FP32 on the CPU
    fp16 = Embedder(lite0_onnx, backend="torch", device="cuda")
    assert fp16.runner.providers == ["torch-cuda-fp16-graphs"]
    assert float(np.sum(fp16.embed(srcs) * ref, axis=1).min()) >= 0.999
    fp32 = Embedder(lite0_onnx, backend="torch", device="cuda", precision="fp32")
    assert float(np.sum(fp32.embed(srcs) * ref, axis=1).min()) >= 0.9999
    batch = np.stack([fp16.preprocess(p) for p in photos[:8]])
    out = fp16.runner.run_torch(torch.from_numpy(batch).cuda())
    assert out.is_cuda and out.shape == (8, fp16.info.dim)


def test_torch_cuda_graphs_match_eager(lite0_onnx):
    """Graph replays (buckets 4, 8, 64 and 256 for batches of 3, 8 and 300 rows) give the eager answers."""
    _import_or_skip("torch")
    from cbir.engine.embedder import Embedder

    graphs = Embedder(lite0_onnx, backend="torch", device="cuda")
    eager = Embedder(lite0_onnx, backend="torch", device="cuda", cuda_graphs=False)
    h, w = graphs.info.input_size
    x = np.random.default_rng(0).integers(0, 256, (300, h, w, 3), dtype=np.uint8)
    for n in (3, 8, 300, 3):
        a, b = graphs.run(x[:n]), eager.run(x[:n])
        assert a.shape == (n, graphs.info.dim)
        assert float(np.sum(a * b, axis=1).min()) >= 0.9999
    assert graphs.runner.captured == [4, 8, 64, 256]


def test_torch_slots_keep_two_batches_in_flight(lite0_onnx):
    """Two submitted batches hold both slots until collected; answers equal one slot's, in order, also
    with four threads sharing the slots; the bulk pipeline submits with the runner's two slots."""
    _import_or_skip("torch")
    from concurrent.futures import ThreadPoolExecutor

    from cbir.engine.embedder import Embedder

    two = Embedder(lite0_onnx, backend="torch", device="cuda", precision="fp32")
    one = Embedder(lite0_onnx, backend="torch", device="cuda", precision="fp32", slots=1)
    assert two.runner.slots == 2 and one.runner.slots == 1
    h, w = two.info.input_size
    x = np.random.default_rng(0).integers(0, 256, (300, h, w, 3), dtype=np.uint8)
    first, second = two.runner.submit(x[:5]), two.runner.submit(x[5:37])
    assert two.runner._slots.qsize() == 0  # both in flight
    a, b = first(), second()
    assert two.runner._slots.qsize() == 2 and first() is a  # a handle answers once, then repeats it
    np.testing.assert_allclose(np.concatenate([a, b]), one.run(x[:37]), atol=1e-5)
    np.testing.assert_allclose(two.run(x), one.run(x), atol=1e-5)  # 300 rows: past one slot, run splits

    def job(seed):
        y = np.random.default_rng(seed).integers(0, 256, (9, h, w, 3), dtype=np.uint8)
        return np.allclose(two.run(y), one.run(y), atol=1e-5)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(12)))


def test_torch_compile_and_tf32_flags(lite0_onnx, embedder, photos):
    """``compile`` (max-autotune, BatchNorm frozen in) agrees with ORT FP32; FP32 says whether TF32 ran."""
    torch = _import_or_skip("torch")
    from cbir.engine.embedder import Embedder

    srcs = [str(p) for p in photos]
    ref = embedder.embed(srcs)
    compiled = Embedder(lite0_onnx, backend="torch", device="cuda", compile=True, batch_size=8)
    assert compiled.runner.providers == ["torch-cuda-fp16-compiled"]
    assert float(np.sum(compiled.embed(srcs) * ref, axis=1).min()) >= 0.999
    ieee = Embedder(lite0_onnx, backend="torch", device="cuda", precision="fp32", tf32=False)
    assert ieee.runner.providers[0].endswith("-ieee") and not torch.backends.cudnn.allow_tf32
    assert float(np.sum(ieee.embed(srcs) * ref, axis=1).min()) >= 0.9999
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True


def test_torch_ivf_on_cuda_answers_like_faiss(tmp_path):
    """IVF-Flat (FP16 lists) and IVF-SQ8 (uint8 codes) scanned on the device: FAISS CPU's neighbours
    at the same nprobe (FP16 may swap near-ties), and a gallery of each searches through them."""
    _import_or_skip("torch")
    import faiss

    from cbir.bench.scale import Synthetic
    from cbir.index.ann import faiss_index
    from cbir.index.ann.torch_ivf import TorchIVF

    rng = np.random.default_rng(0)
    syn = Synthetic(40_000, 64)
    x, q = syn.draw(40_000, rng), syn.draw(200, rng)
    for factory in ("IVF128,Flat", "IVF128,SQ8"):
        index, _ = faiss_index.build(x, np.arange(40_000, dtype=np.int64) * 5, factory)
        index.nprobe = 8
        t = TorchIVF(index, "cuda")
        want = index.search(q, 10)[1]
        got = t.search(q, 10)[1]
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
        assert overlap >= 0.99, (factory, overlap)
        assert t.search(q, 10, faiss.SearchParametersIVF(nprobe=128))[1].shape == (200, 10)


def test_gpu_decode_matches_cpu_decode(lite0_onnx, photos, tmp_path):
    """--decode gpu (nvImageCodec + device resize) against CPU decode, same torch FP32 model: every
    file accounted for in the same order (the PNGs through the per-image CPU fallback), cos ≥ 0.99."""
    _import_or_skip("torch")
    _import_or_skip("nvidia.nvimgcodec")
    from cbir.engine.embedder import Embedder
    from conftest import make_gallery

    files = [str(p) for p in make_gallery(tmp_path / "g", photos)]
    (tmp_path / "broken.jpg").write_bytes(open(files[1], "rb").read()[:300])
    files.append(str(tmp_path / "broken.jpg"))
    gpu = Embedder(lite0_onnx, backend="torch", device="cuda", precision="fp32", decode="gpu")
    assert gpu.decoder.backends[0] in ("HW_GPU_ONLY", "default")  # the hardware JPEG decoder asked for first
    cpu = Embedder(lite0_onnx, backend="torch", device="cuda", precision="fp32")
    a, b = gpu.embed_files(files, batch_size=8), cpu.embed_files(files, batch_size=8)
    assert list(a.indices) == list(b.indices) and [e[1] for e in a.errors] == [e[1] for e in b.errors] == [files[-1]]
    assert float(np.sum(a.vectors * b.vectors, axis=1).min()) >= 0.99
