"""Install flavours (issue 27): no flavour co-installs CPU and GPU wheels of one module, each GPU
flavour sticks to one CUDA major, and `cbir doctor` names the wheels and refuses a mixed install."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tomllib

from cbir import install

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
EXTRAS = PYPROJECT["optional-dependencies"]
PROVIDES = {d: m for m, ds in install.MODULES.items() for d in ds}


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()


def _expand(extra: str, seen: set | None = None) -> list[str]:
    """An extra's requirements with cbir[...] self-references expanded."""
    seen = seen if seen is not None else set()
    out = []
    for req in EXTRAS[extra]:
        m = re.fullmatch(r"cbir\[(.+)\]", req)
        if m:
            for e in m.group(1).split(","):
                if e not in seen:
                    seen.add(e)
                    out += _expand(e, seen)
        else:
            out.append(req)
    return out


def test_base_carries_no_runtime_wheel():
    assert not [r for r in PYPROJECT["dependencies"] if _name(r) in PROVIDES]


@pytest.mark.parametrize("flavour", ["cpu", "gpu", "gpu-cu12", "dev"])
def test_no_flavour_installs_one_module_twice(flavour):
    mods: dict[str, list[str]] = {}
    for req in _expand(flavour):
        if _name(req) in PROVIDES:
            mods.setdefault(PROVIDES[_name(req)], []).append(_name(req))
    assert mods.get("onnxruntime") and mods.get("faiss"), mods
    assert all(len(set(v)) == 1 for v in mods.values()), mods


@pytest.mark.parametrize("flavour,major", [("gpu", 13), ("gpu-cu12", 12)])
def test_gpu_flavours_stick_to_one_cuda_major(flavour, major):
    reqs = _expand(flavour)
    for req in reqs:
        tags = {int(t) for t in re.findall(r"cu(\d\d)", _name(req))}
        assert tags <= {major}, req
    cuda_python = next(r for r in reqs if _name(r) == "cuda-python")
    assert f">={major}" in cuda_python.replace(" ", "") and f"<{major + 1}" in cuda_python.replace(" ", "")
    assert any(_name(r) == "onnxruntime-gpu" and "<" in r for r in reqs)  # bounded: the CUDA major moves with it


def test_dev_is_the_cpu_flavour_only():
    names = {_name(r) for r in _expand("dev")}
    assert {"onnxruntime", "faiss-cpu"} <= names
    assert not names & {"onnxruntime-gpu", "faiss-gpu", "tensorrt-cu13", "tensorrt-cu12", "cuda-python"}


def test_a_mixed_install_is_named_in_one_line():
    assert install.mixed() is None  # this environment: the cpu flavour only
    assert install.installed()["onnxruntime"] == ["onnxruntime"]
    fake = {"onnxruntime": ["onnxruntime", "onnxruntime_gpu"], "faiss": ["faiss-cpu"]}
    line = install.mixed(fake)
    assert "onnxruntime, onnxruntime-gpu" in line and "pip uninstall -y onnxruntime onnxruntime-gpu" in line
    assert "\n" not in line
    assert install.mixed({"faiss": ["faiss-cpu", "faiss-gpu"]}).startswith("`import faiss` is installed by 2 wheels")


def test_doctor_names_the_wheels(capsys):
    from cbir.cli import main

    assert main(["doctor", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wheels"]["onnxruntime"] == ["onnxruntime"] and out["wheels"]["faiss"] == ["faiss-cpu"]
