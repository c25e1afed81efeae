"""Native TensorRT engines (GPU; ``tensorrt`` and ``cuda-python`` imported lazily).

Written for TensorRT 10.12+ and 11.x from GPU_NOTES.md §Q1 (TensorRT's pyCore.cpp bindings and the
10.x→11.x migration guide); none of it could run on the CPU-only development machines.

- Precision lives in the ONNX graph: build from ``cbir export --precision fp16``. TensorRT 11 has no
  ``BuilderFlag.FP16`` and builds strongly typed networks only ("Strongly typed networks are now the
  default", 11.0.0 release notes); on 10.12+ we ask for ``STRONGLY_TYPED`` explicitly so both versions
  build the same engine. ``EXPLICIT_BATCH`` is never used (removed in 11.x).
- One optimisation profile on the batch dimension (min/opt/max); H×W are static.
- Timing cache read and written back (``config.set_timing_cache(cache, ignore_mismatch=False)``:
  the second argument has no default in the bindings).
- Engine cache and manifest: ``cbir.engine.backends.tensorrt_plan`` (a fresh plan is reused, a stale
  one rebuilt). The manifest also records the model facts and the FP16 fidelity figures from the
  ONNX metadata.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from cbir import fsio
from cbir.engine.backends.tensorrt_plan import (
    Profile,
    cache_key,
    gpu_facts,
    import_tensorrt,
    is_fresh,
    read_manifest,
    sha256_file,
    write_manifest,
)
from cbir.errors import CbirError
from cbir.modelinfo import read_onnx

__all__ = ["Profile", "build_engine"]


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike,
    profile: Profile = Profile(),
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    force: bool = False,
) -> dict:
    """Build (or reuse when fresh) a serialized engine; returns its manifest."""
    onnx_path, output = Path(onnx_path), Path(output)
    if not onnx_path.is_file():
        raise CbirError(f"MODEL {onnx_path}: no such file")
    info, input_name, _ = read_onnx(onnx_path)
    trt = import_tensorrt()
    gpu = gpu_facts()
    onnx_sha = sha256_file(onnx_path)
    key = cache_key(onnx_sha, trt.__version__, gpu["name"], gpu["compute_capability"], profile, workspace_gb)
    if not force and is_fresh(output, key):
        return {**read_manifest(output), "cached": True}

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)  # raises TypeError (factory returned nullptr) without a usable GPU
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # required on 10.x, ignored on 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CbirError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    h, w = info.input_size
    prof = builder.create_optimization_profile()
    prof.set_shape(input_name, (profile.min_batch, h, w, 3), (profile.opt_batch, h, w, 3), (profile.max_batch, h, w, 3))
    config.add_optimization_profile(prof)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CbirError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    fsio.write_bytes(output, bytes(plan))
    if timing_cache:
        fsio.write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    manifest = {
        "key": key,
        "onnx": str(onnx_path),
        "onnx_sha256": onnx_sha,
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "profile": asdict(profile),
        "workspace_gb": workspace_gb,
        "input": input_name,
        "plan_sha256": sha256_file(output),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "model": info.public(),
        "fidelity": info.extra.get("fidelity"),
        "cached": False,
    }
    write_manifest(output, manifest)
    return manifest
