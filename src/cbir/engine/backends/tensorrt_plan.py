"""TensorRT plan facts shared by the builder (``cbir.export.tensorrt``) and the runner
(``cbir.engine.backends.tensorrt``): the batch profile, the engine-cache key and the ``plan.json``
manifest. Engine side so that the runner never imports the export (torch) package; ``tensorrt`` and
``cuda-python`` are imported lazily.

Engine cache: ``plan`` + ``plan.json`` manifest. The key hashes the ONNX file's SHA-256, the
TensorRT version, GPU name and compute capability, the profile and workspace; a plan whose manifest
key differs (stale) is rebuilt by ``cbir compile`` and refused by the runner.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cbir import fsio
from cbir.errors import CbirError


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise CbirError(
            f"TensorRT is not installed ({e}); install it with pip install 'cbir[gpu]' "
            f"(wheels come from NVIDIA's package index) or use NVIDIA's containers"
        ) from None
    return trt


@dataclass(frozen=True)
class Profile:
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise CbirError(
                f"batch profile {self.min_batch}/{self.opt_batch}/{self.max_batch}: need 1 ≤ min ≤ opt ≤ max"
            )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(
    onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, profile: Profile, workspace_gb: float
) -> str:
    """Everything that makes a plan valid; any change means rebuild."""
    parts = {
        "onnx": onnx_sha256,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "cc": compute_capability,
        "profile": asdict(profile),
        "workspace_gb": workspace_gb,
    }
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
    """GPU name and compute capability via cuda-python; raises when it is missing or sees no device."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise CbirError("cuda-python is not installed (pip install 'cbir[gpu]'): cannot query the GPU") from None
    err, prop = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise CbirError(f"no CUDA device {device}: {cudart.cudaGetErrorString(err)[1]}")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}


def write_manifest(plan: str | Path, manifest: dict) -> None:
    fsio.write_json(manifest_path(plan), manifest)
