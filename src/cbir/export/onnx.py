"""``cbir export``: a retrieval model -> ONNX file with cbir metadata, checked by the parity gate.

Graph: input ``images`` uint8 [batch, H, W, 3] (RGB, NHWC, batch dynamic, H×W static); output
``embeddings`` float32 [batch, D], L2-normalised; with ``regions=True`` a second output ``regions``
float32 [batch, R, D] (regional descriptors for regional re-ranking, metadata ``extra.regions`` = R),
checked against PyTorch like the embeddings. Exported with torch's dynamo exporter (opset 20)
from a batch of 2 (torch.export specialises size-1 dims). The file is written to a temporary name
beside the output and renamed only after the parity gate passes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from cbir.errors import CbirError
from cbir.export import trt_lint
from cbir.modelinfo import METADATA_KEY, RESAMPLING_POLICIES, ModelInfo

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
REGIONS_NAME = "regions"


def _with_regions(model):
    """The module torch.onnx exports for a two-output model (one trunk pass)."""
    import torch

    class WithRegions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.forward_with_regions(x)

    return WithRegions(model).eval()


def graph_fingerprint(model) -> str:
    """SHA-256 (16 hex) of the serialized model without its metadata."""
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    del clone.metadata_props[:]
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()[:16]


def write_metadata(model, info: ModelInfo) -> None:
    """Set the ``cbir`` metadata entry (replacing an old one)."""
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key == METADATA_KEY:
            del model.metadata_props[i]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()


def check_writable(output: Path) -> None:
    parent = output.resolve().parent
    if not parent.is_dir():
        raise CbirError(f"-o {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CbirError(f"-o {output}: directory {parent} is not writable")
    if output.is_dir():
        raise CbirError(f"-o {output}: is a directory")


def export_onnx(
    arch: str | None,
    output: str | os.PathLike,
    block: int = 7,
    pooling: str = "gap",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    whitening: str | os.PathLike | None = None,
    resize: str = "squash",
    resampling: str = "opencv",
    parity_images: list | None = None,
    min_cosine: float | None = None,
    precision: str = "fp32",
    gem_p: float | None = None,
    fp16_head: bool = False,
    calib: int = 32,
    fidelity_data: str | None = None,
    scales: tuple[float, ...] = (1.0,),
    regions: bool = False,
    torch_checkpoint: bool = False,
) -> dict:
    """Export and gate; returns the summary printed by ``cbir export --json``.

    ``precision="fp16"``: trunk in FP16, head FP32 (``fp16_head=True`` halves the head too, which the
    FP16 fidelity gate is expected to reject when it overflows); gated by ``fidelity.fp16_gate``
    on ``calib`` images from ``parity_images`` and, with ``fidelity_data``, ΔmAP. ``torch_checkpoint``:
    also write ``<output stem>.torch.pt`` (the FP32 module's weights and spec, tied to the ONNX
    fingerprint) for ``--backend torch``."""
    import copy

    import onnx
    import torch

    from cbir.models.retrieval import RetrievalModel
    from cbir.models.trunk import build_trunk
    from cbir.vectors import Whitening

    output = Path(output)
    check_writable(output)
    _check_options(resampling, precision, torch_checkpoint, whitening, regions)
    t0 = time.perf_counter()
    trunk = build_trunk(arch, block, pretrained=pretrained, weights=weights)
    wt = Whitening.load(whitening) if whitening else None
    model = RetrievalModel(
        trunk, pooling, image_size or (trunk.meta or {}).get("input_size"), wt, scales, regions
    ).eval()
    if gem_p is not None:
        if pooling != "gem":
            raise CbirError(f"--gem-p applies to --pooling gem, not {pooling}")
        with torch.no_grad():
            model.pool.p.fill_(gem_p)
    reference = model
    if precision == "fp16":
        reference = copy.deepcopy(model)
        model.to_fp16(head=fp16_head)
    size = model.image_size
    info = _model_info(trunk, model, block, pooling, resize, resampling, wt, regions)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=output.resolve().parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proto = _export_graph(model, regions, size, tmp, info)
        export_s = time.perf_counter() - t0
        lint = trt_lint.lint(proto)
        fidelity = _gate(
            model, reference, tmp, info, parity_images, min_cosine, precision, regions, calib, fidelity_data
        )
        write_metadata(proto, info)
        onnx.save(proto, str(tmp))
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    checkpoint = None
    if torch_checkpoint:
        from cbir.engine.backends.torch import write_checkpoint

        checkpoint = str(write_checkpoint(reference, info, info.arch, block, pooling, output))
    return _summary(output, info, block, pooling, model, fidelity, regions, lint, export_s, checkpoint)


def _check_options(resampling: str, precision: str, torch_checkpoint: bool, whitening, regions: bool) -> None:
    if resampling not in RESAMPLING_POLICIES:
        raise CbirError(f"--resampling {resampling!r}: must be one of {', '.join(RESAMPLING_POLICIES)}")
    if precision not in ("fp32", "fp16"):
        raise CbirError(f"--precision {precision!r}: must be fp32 or fp16")
    if torch_checkpoint and (whitening or regions):
        raise CbirError(
            "--torch-checkpoint: models with --whitening or --regions are not supported by --backend torch yet"
        )
    if regions and precision != "fp32":
        raise CbirError("--regions: regional descriptors are exported in FP32 only; drop --precision fp16")


def _model_info(trunk, model, block: int, pooling: str, resize: str, resampling: str, wt, regions: bool) -> ModelInfo:
    """The model's metadata (``cbir.modelinfo``), before the graph's fingerprint is known."""
    from cbir.version import __version__

    size = model.image_size
    meta = trunk.meta or {}
    return ModelInfo(
        arch=trunk.spec.name,
        block=block,
        pooling=pooling,
        dim=model.dim,
        input_size=(size, size),
        mean=tuple(model.mean),
        std=tuple(model.std),
        interpolation=meta.get("interpolation", trunk.spec.interpolation),
        resize=resize,
        resampling=resampling,
        whitening=wt.fingerprint if wt else None,
        weights=trunk.weights,
        precision=model.precision,
        cbir_version=__version__,
        extra={
            **{k: meta[k] for k in ("classes", "split_seed", "split") if k in meta},
            **({"scales": list(model.scales)} if model.scales != (1.0,) else {}),
            **({"regions": model.num_regions} if regions else {}),
        },
    )


def _gate(
    model,
    reference,
    tmp: Path,
    info: ModelInfo,
    parity_images,
    min_cosine,
    precision: str,
    regions: bool,
    calib: int,
    fidelity_data,
) -> dict:
    """The export's fidelity gate (FP32: parity, and regions; FP16: ``fidelity.fp16_gate``), its
    figures recorded in ``info.extra["fidelity"]`` (they travel with the model)."""
    if precision == "fp32":
        from cbir.validate.parity import parity_gate

        fidelity = parity_gate(model, tmp, info, parity_images, min_cosine).as_dict()
        if regions:
            from cbir.validate.parity import regions_gate

            fidelity["regions"] = regions_gate(model, tmp, info, parity_images, min_cosine).as_dict()
    else:
        from cbir.validate.fidelity import fp16_gate

        fp16 = fp16_gate(reference, model, tmp, info, parity_images, calib, fidelity_data)
        fidelity = {**fp16["reference"], "fp16_gate": fp16}
    # the gate's figures travel with the model (the TensorRT manifest copies them); metadata is
    # outside the fingerprint, so this does not change it
    info.extra["fidelity"] = {k: fidelity[k] for k in ("n", "min_cosine", "mean_cosine", "topk_agreement")}
    if "fp16_gate" in fidelity:
        info.extra["fidelity"]["estimate"] = fidelity["fp16_gate"]["estimate"]
        if "delta_map" in fidelity["fp16_gate"]:
            info.extra["fidelity"]["delta_map"] = fidelity["fp16_gate"]["delta_map"]["delta"]
    return fidelity


def _summary(
    output: Path,
    info: ModelInfo,
    block: int,
    pooling: str,
    model,
    fidelity: dict,
    regions: bool,
    lint,
    export_s: float,
    checkpoint,
) -> dict:
    """What ``cbir export --json`` prints."""
    size = model.image_size
    data = output.read_bytes()
    return {
        "output": str(output),
        "arch": info.arch,
        "block": block,
        "pooling": pooling,
        "dim": info.dim,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", size, size, 3]},
        "output_tensor": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", info.dim]},
        "weights": info.weights,
        "fingerprint": info.fingerprint,
        "precision": info.precision,
        "scales": list(model.scales),
        "regions": model.num_regions,
        "regions_min_cosine": fidelity["regions"]["min_cosine"] if regions else None,
        "min_cosine": fidelity["min_cosine"],
        "mean_cosine": fidelity["mean_cosine"],
        "parity_images": fidelity["n"],
        "fp16_gate": fidelity.get("fp16_gate"),
        "tensorrt_lint": lint,
        "export_seconds": round(export_s, 2),
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "torch_checkpoint": checkpoint,
    }


def _export_graph(model, regions: bool, size: int, tmp: Path, info: ModelInfo):
    """``torch.onnx.export`` (dynamo, dynamic batch) to ``tmp``, fingerprinted and with ``info`` as
    metadata; returns the ONNX proto."""
    import onnx
    import torch

    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _with_regions(model) if regions else model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, REGIONS_NAME] if regions else [OUTPUT_NAME],
            dynamic_shapes=({0: "batch"},),
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = onnx.load(str(tmp))
    info.fingerprint = graph_fingerprint(proto)
    write_metadata(proto, info)
    onnx.save(proto, str(tmp))
    return proto
