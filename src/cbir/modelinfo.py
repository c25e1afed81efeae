"""Model facts stored in the ONNX file's metadata (key ``cbir``, a JSON object). Torch-free.

Every stage after export (engine, index, bench) reads these from the model file instead of flags.
``fingerprint`` identifies the vectors a model produces: the SHA-256 (first 16 hex digits) of the
serialized graph and weights without the metadata, so re-saving metadata does not change it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from cbir.errors import CbirError

METADATA_KEY = "cbir"
RESIZE_POLICIES = ("squash", "crop")


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
