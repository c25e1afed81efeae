"""Supported architectures and their facts (DESIGN.md §2). Torch-free.

Block 6 is the output of timm's ``blocks[5]``, Block 7 of ``blocks[6]`` (before ``conv_head``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cbir.errors import CbirError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ArchSpec:
    """Facts about one timm EfficientNet variant."""

    name: str
    input_size: int
    dims: dict[int, int]  # block -> output channels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def dim(self, block: int) -> int:
        if block not in self.dims:
            raise CbirError(f"--block {block}: must be one of {sorted(self.dims)} for {self.name}")
        return self.dims[block]


_SIZES = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456}
_DIMS = {
    "b0": (192, 320),
    "b1": (192, 320),
    "b2": (208, 352),
    "b3": (232, 384),
    "b4": (272, 448),
    "b5": (304, 512),
}
_LITE = {"lite0": (224, 192, 320), "lite1": (240, 192, 320), "lite2": (260, 208, 352)}

ARCHS: dict[str, ArchSpec] = {}
for _v, _size in _SIZES.items():
    _d6, _d7 = _DIMS[_v]
    ARCHS[f"efficientnet_{_v}"] = ArchSpec(f"efficientnet_{_v}", _size, {6: _d6, 7: _d7}, IMAGENET_MEAN, IMAGENET_STD)
    ARCHS[f"tf_efficientnet_{_v}"] = ArchSpec(
        f"tf_efficientnet_{_v}", _size, {6: _d6, 7: _d7}, IMAGENET_MEAN, IMAGENET_STD
    )
for _v, (_size, _d6, _d7) in _LITE.items():
    ARCHS[f"tf_efficientnet_{_v}"] = ArchSpec(
        f"tf_efficientnet_{_v}", _size, {6: _d6, 7: _d7}, TF_LITE_MEAN, TF_LITE_STD
    )

# Short names used by `cbir bench sweep --archs b0,lite0`.
ALIASES = {**{v: f"efficientnet_{v}" for v in _SIZES}, **{v: f"tf_efficientnet_{v}" for v in _LITE}}


def get_arch(name: str) -> ArchSpec:
    """Look up an architecture by timm name or short alias (``b0``, ``lite0``)."""
    spec = ARCHS.get(ALIASES.get(name, name))
    if spec is None:
        raise CbirError(f"--arch {name!r}: unknown architecture; choose one of {', '.join(sorted(ARCHS))}")
    return spec
