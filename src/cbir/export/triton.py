"""``cbir export-triton``: a Triton Inference Server model-repository entry for a cbir model.

Writes ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx`` (platform ``onnxruntime_onnx``) or
``model.plan`` (platform ``tensorrt_plan``). Inputs, outputs, dtypes and dims come from the model's
metadata (ONNX metadata, or the plan's manifest); the batch dimension is Triton's
(``max_batch_size``), so dims are per image: input ``[H, W, 3]`` uint8, output ``[D]`` fp32. With
``dynamic_batching`` Triton groups requests up to ``max_queue_delay_microseconds``. The model
facts are copied into ``parameters`` so a client can check the fingerprint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from cbir.errors import CbirError

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def model_facts(model: Path) -> tuple[dict, str, str, str]:
    """(model info dict, input name, output name, kind) for an ONNX file or a plan with manifest."""
    if model.suffix == ".plan":
        from cbir.export.tensorrt import read_manifest

        m = read_manifest(model)
        if m is None:
            raise CbirError(f"--model {model}: no manifest {model}.json beside the plan (build it with `cbir compile`)")
        return m["model"], m.get("input", "images"), "embeddings", "plan"
    import onnx

    from cbir.modelinfo import METADATA_KEY

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:
        raise CbirError(f"--model {model}: not a readable ONNX file ({e})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise CbirError(f"--model {model}: not a cbir model (no '{METADATA_KEY}' metadata)")
    return json.loads(meta[METADATA_KEY]), proto.graph.input[0].name, proto.graph.output[0].name, "onnx"


def config_text(name: str, info: dict, input_name: str, output_name: str, kind: str, max_batch: int,
                dynamic_batching: bool, max_queue_delay_us: int, instance_kind: str) -> str:
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


def export_triton(model: str | os.PathLike, repo: str | os.PathLike, name: str | None = None, max_batch: int = 64,
                  dynamic_batching: bool = False, max_queue_delay_us: int = 100, instance_kind: str | None = None) -> dict:
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
        from cbir.export.tensorrt import read_manifest

        prof = read_manifest(model)["profile"]
        if max_batch > prof["max_batch"]:
            raise CbirError(f"--max-batch {max_batch}: the engine's profile stops at {prof['max_batch']}")
    instance_kind = instance_kind or ("KIND_GPU" if kind == "plan" else "KIND_CPU")
    text = config_text(name, info, input_name, output_name, kind, max_batch, dynamic_batching, max_queue_delay_us, instance_kind)
    entry = repo / name
    (entry / "1").mkdir(parents=True, exist_ok=True)
    target = entry / "1" / ("model.plan" if kind == "plan" else "model.onnx")
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(model, tmp)
    os.replace(tmp, target)
    (entry / "config.pbtxt").write_text(text)
    return {"repo": str(repo), "name": name, "config": str(entry / "config.pbtxt"), "model": str(target),
            "platform": "tensorrt_plan" if kind == "plan" else "onnxruntime_onnx", "max_batch_size": max_batch}
