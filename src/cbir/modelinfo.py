"""Model facts stored in the ONNX file's metadata (key ``cbir``, a JSON object). Torch-free.

Every stage after export (engine, index, bench) reads these from the model file instead of flags.
``fingerprint`` identifies the vectors a model produces: the SHA-256 (first 16 hex digits) of the
serialized graph and weights without the metadata, so re-saving metadata does not change it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from cbir.errors import CbirError

METADATA_KEY = "cbir"
RESIZE_POLICIES = ("squash", "crop")
RESAMPLING_POLICIES = ("opencv", "pillow")


@dataclass
class ModelInfo:
    """What a model file says about itself."""

    arch: str
    block: int
    pooling: str
    dim: int
    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize: str = "squash"  # squash to H×W, or "crop": shorter side to size + centre crop
    resampling: str = "opencv"  # engine.preprocess: "opencv" (area/cubic) or "pillow" (antialiased)
    whitening: str | None = None  # whitening fingerprint
    weights: str = "random"
    precision: str = "fp32"
    fingerprint: str = ""
    cbir_version: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelInfo":
        try:
            d = json.loads(text)
            d["input_size"] = tuple(d["input_size"])
            d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
            known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, KeyError, TypeError) as e:
            raise CbirError(f"{source}: unreadable cbir metadata ({e})") from None

    def public(self) -> dict:
        """The facts shown by `index info` and `--json` outputs."""
        return asdict(self)


def read_onnx(path: str | os.PathLike) -> tuple[ModelInfo, str, str]:
    """(facts, input name, output name) of a cbir ONNX file, read without loading external weights."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, OSError, ...
        raise CbirError(f"--model {path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise CbirError(
            f"--model {path}: not a cbir model (no '{METADATA_KEY}' metadata; export it with `cbir export`)"
        )
    return (
        ModelInfo.from_json(meta[METADATA_KEY], os.fspath(path)),
        model.graph.input[0].name,
        model.graph.output[0].name,
    )
