"""Which installed wheel provides each runtime module, and the refusal of a mixed install.

The install flavours (pyproject extras; README "Install flavours"): the base install carries no
runtime wheel; ``cpu`` adds onnxruntime + faiss-cpu, ``gpu`` (CUDA 13) onnxruntime-gpu 1.31 +
TensorRT 10 for CUDA 13 + cuda-python 13 + faiss-cpu, ``gpu-cu12`` (CUDA 12) an onnxruntime-gpu
CUDA 12 build + TensorRT 10 for CUDA 12 + cuda-python 12 + faiss-gpu (PyPI's faiss-gpu is built for
CUDA 12 only). Two wheels of one module (onnxruntime and onnxruntime-gpu both install
``onnxruntime``; faiss-cpu and faiss-gpu both ``faiss``) overwrite each other's files: with both ORT
wheels the CUDA provider disappears (onnxruntime issue 26996) and which ``faiss`` wins depends on
install order — so ``mixed()`` names such a pair and ``cbir doctor`` refuses it in one line.
"""

from __future__ import annotations

from importlib import metadata

from cbir.errors import CbirError

# module → the distributions that install it (one at a time)
MODULES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cuvs", "faiss-gpu-cu12", "faiss-gpu-cu11"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def installed(dists_of: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """module → the installed distributions that provide it (``importlib.metadata``), for ``MODULES``."""
    found = metadata.packages_distributions() if dists_of is None else dists_of
    out = {}
    for module, known in MODULES.items():
        names = sorted({_norm(d) for d in found.get(module, [])})
        out[module] = [d for d in names if d in known] or names
    return out


def mixed(dists_of: dict[str, list[str]] | None = None) -> str | None:
    """One line naming a module installed by two wheels, with what to do; None when clean."""
    for module, dists in installed(dists_of).items():
        if len(dists) > 1:
            return (
                f"`import {module}` is installed by {len(dists)} wheels ({', '.join(dists)}), which overwrite each "
                f"other's files: `pip uninstall -y {' '.join(dists)}`, then install one flavour "
                f"(pip install 'cbir[cpu]', 'cbir[gpu]' or 'cbir[gpu-cu12]')"
            )
    return None


def check() -> dict[str, list[str]]:
    """``installed()``, or ``CbirError`` with ``mixed()``'s line."""
    line = mixed()
    if line:
        raise CbirError(line)
    return installed()
