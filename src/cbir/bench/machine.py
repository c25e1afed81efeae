"""A description of the machine and library versions for benchmark reports. Torch-free."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from cbir.cores import all_cores


def describe() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    versions = {}
    for pkg in (
        "cbir",
        "numpy",
        "onnxruntime",
        "onnx",
        "faiss-cpu",
        "pillow",
        "opencv-python-headless",
        "torch",
        "timm",
    ):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": all_cores(),
        "memory_gb": round(mem, 1) if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
