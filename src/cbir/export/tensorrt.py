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
- Engine cache: ``plan`` + ``plan.json`` manifest. The key hashes the ONNX file's SHA-256, the
  TensorRT version, GPU name and compute capability, the profile and workspace; a plan whose
  manifest key differs (stale) is rebuilt, never loaded. The manifest also records the model facts
  and the FP16 fidelity figures from the ONNX metadata.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cbir.errors import CbirError


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise CbirError(f"TensorRT is not installed ({e}); install it with pip install 'cbir[gpu]' "
                        f"(wheels come from NVIDIA's package index) or use NVIDIA's containers") from None
    return trt


@dataclass(frozen=True)
class Profile:
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise CbirError(f"batch profile {self.min_batch}/{self.opt_batch}/{self.max_batch}: need 1 ≤ min ≤ opt ≤ max")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, profile: Profile,
              workspace_gb: float) -> str:
    """Everything that makes a plan valid; any change means rebuild."""
    parts = {"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu_name, "cc": compute_capability,
             "profile": asdict(profile), "workspace_gb": workspace_gb}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def manifest_path(plan: str | Path) -> Path:
    return Path(str(plan) + ".json")


def read_manifest(plan: str | Path) -> dict | None:
    p = manifest_path(plan)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_fresh(plan: str | Path, key: str) -> bool:
    """True when ``plan`` exists, its manifest has ``key`` and the plan bytes are the ones recorded."""
    m = read_manifest(plan)
    return bool(m and m.get("key") == key and Path(plan).is_file() and sha256_file(plan) == m.get("plan_sha256"))


def gpu_facts(device: int = 0) -> dict:
    """GPU name and compute capability via cuda-python, else torch; raises when no CUDA device."""
    try:
        from cuda.bindings import runtime as cudart

        err, prop = cudart.cudaGetDeviceProperties(device)
        if err == cudart.cudaError_t.cudaSuccess:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return {"name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}
        raise CbirError(f"no CUDA device {device}: {cudart.cudaGetErrorString(err)[1]}")
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        raise CbirError("neither cuda-python nor torch is installed: cannot query the GPU") from None
    if not torch.cuda.is_available():
        raise CbirError("no CUDA device visible (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(device)
    return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def onnx_model_info(onnx_path: Path):
    import onnx

    from cbir.modelinfo import METADATA_KEY, ModelInfo

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise CbirError(f"{onnx_path}: not a cbir model (no '{METADATA_KEY}' metadata)")
    return ModelInfo.from_json(meta[METADATA_KEY], str(onnx_path)), model.graph.input[0].name


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike, profile: Profile = Profile(),
                 workspace_gb: float = 4.0, timing_cache: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Build (or reuse when fresh) a serialized engine; returns its manifest."""
    onnx_path, output = Path(onnx_path), Path(output)
    if not onnx_path.is_file():
        raise CbirError(f"MODEL {onnx_path}: no such file")
    info, input_name = onnx_model_info(onnx_path)
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
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(plan)
    os.replace(tmp, output)
    if timing_cache:
        tc = Path(timing_cache)
        tc_tmp = tc.with_name(tc.name + ".tmp")
        tc_tmp.write_bytes(config.get_timing_cache().serialize())
        os.replace(tc_tmp, tc)
    manifest = {"key": key, "onnx": str(onnx_path), "onnx_sha256": onnx_sha, "tensorrt": trt.__version__, "gpu": gpu,
                "profile": asdict(profile), "workspace_gb": workspace_gb, "input": input_name,
                "plan_sha256": sha256_file(output), "build_seconds": round(time.perf_counter() - t0, 2),
                "model": info.public(), "fidelity": info.extra.get("fidelity"), "cached": False}
    write_manifest(output, manifest)
    return manifest


def write_manifest(plan: str | Path, manifest: dict) -> None:
    p = manifest_path(plan)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, p)
