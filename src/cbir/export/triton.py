"""``cbir export-triton``: a Triton Inference Server model-repository entry for a cbir model.

Writes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (platform ``onnxruntime_onnx``) or
``model.plan`` (platform ``tensorrt_plan``). Inputs, outputs, dtypes and dims come from the model's
metadata (ONNX metadata, or the plan's manifest); the batch dimension is Triton's
(``max_batch_size``), so dims are per image: input ``[H, W, 3]`` uint8, output ``[D]`` fp32. With
``dynamic_batching`` Triton groups requests up to ``max_queue_delay_microseconds``. The model
facts are copied into ``parameters`` so a client can check the fingerprint.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cbir import fsio
from cbir.engine.backends.tensorrt_plan import read_manifest
from cbir.errors import CbirError
from cbir.modelinfo import read_onnx

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def model_facts(model: Path) -> tuple[dict, str, str, str]:
    """(model info dict, input name, output name, kind) for an ONNX file or a plan with manifest."""
    if model.suffix == ".plan":
        m = read_manifest(model)
        if m is None:
            raise CbirError(f"--model {model}: no manifest {model}.json beside the plan (build it with `cbir compile`)")
        return m["model"], m.get("input", "images"), "embeddings", "plan"
    info, input_name, output_name = read_onnx(model)
    return info.public(), input_name, output_name, "onnx"


def config_text(
    name: str,
    info: dict,
    input_name: str,
    output_name: str,
    kind: str,
    max_batch: int,
    dynamic_batching: bool,
    max_queue_delay_us: int,
    instance_kind: str,
) -> str:
    h, w = info["input_size"]
    lines = [
        f'name: "{name}"',
        f'platform: "{"tensorrt_plan" if kind == "plan" else "onnxruntime_onnx"}"',
        f"max_batch_size: {max_batch}",
        f'input [ {{ name: "{input_name}" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ {h}, {w}, 3 ] }} ]',
        f'output [ {{ name: "{output_name}" data_type: TYPE_FP32 dims: [ {info["dim"]} ] }} ]',
        f"instance_group [ {{ kind: {instance_kind} count: 1 }} ]",
    ]
    if dynamic_batching:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    for key in ("arch", "block", "pooling", "fingerprint", "precision", "resize", "interpolation"):
        lines.append(f'parameters {{ key: "cbir_{key}" value: {{ string_value: "{info.get(key)}" }} }}')
    return "\n".join(lines) + "\n"


def export_triton(
    model: str | os.PathLike,
    repo: str | os.PathLike,
    name: str | None = None,
    max_batch: int = 64,
    dynamic_batching: bool = False,
    max_queue_delay_us: int = 100,
    instance_kind: str | None = None,
) -> dict:
    model, repo = Path(model), Path(repo)
    if not model.is_file():
        raise CbirError(f"--model {model}: no such file")
    if max_batch < 1:
        raise CbirError(f"--max-batch {max_batch}: must be ≥ 1")
    info, input_name, output_name, kind = model_facts(model)
    name = name or model.stem
    if not _NAME.match(name):
        raise CbirError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only")
    if kind == "plan":
        prof = read_manifest(model)["profile"]
        if max_batch > prof["max_batch"]:
            raise CbirError(f"--max-batch {max_batch}: the engine's profile stops at {prof['max_batch']}")
    instance_kind = instance_kind or ("KIND_GPU" if kind == "plan" else "KIND_CPU")
    text = config_text(
        name, info, input_name, output_name, kind, max_batch, dynamic_batching, max_queue_delay_us, instance_kind
    )
    entry = repo / name
    (entry / "1").mkdir(parents=True, exist_ok=True)
    target = entry / "1" / ("model.plan" if kind == "plan" else "model.onnx")
    with fsio.atomic_path(target) as tmp:
        shutil.copyfile(model, tmp)
    fsio.write_text(entry / "config.pbtxt", text)
    return {
        "repo": str(repo),
        "name": name,
        "config": str(entry / "config.pbtxt"),
        "model": str(target),
        "platform": "tensorrt_plan" if kind == "plan" else "onnxruntime_onnx",
        "max_batch_size": max_batch,
    }
