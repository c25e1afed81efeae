"""EfficientNet trunks cut after Block 6 or Block 7: ``conv_stem, bn1, blocks[:k]`` (DESIGN.md §2).

timm's ``features_only`` does not expose ``blocks[5]`` and ``prune_intermediate_layers`` can keep
the head conv, so the trunk is assembled here and its output channels are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cbir.errors import CbirError
from cbir.models.archs import ArchSpec, get_arch
from cbir.models.weights import load_pretrained, load_trunk_state, read_checkpoint

BLOCKS = (6, 7)


@dataclass
class Trunk:
    """A built trunk with the facts the export needs."""

    module: nn.Sequential
    spec: ArchSpec
    block: int
    weights: str  # "random", "offline:...", "timm-hub", or the checkpoint path
    meta: dict | None = None  # the checkpoint's meta dict, if any

    @property
    def dim(self) -> int:
        return self.spec.dim(self.block)


def build_trunk(arch: str | None, block: int = 7, pretrained: bool = False, weights: str | Path | None = None) -> Trunk:
    """Build the trunk of ``arch`` up to ``block`` (6 or 7), random, ImageNet or checkpoint weights."""
    import timm

    if block not in BLOCKS:
        raise CbirError(f"--block {block}: must be 6 or 7")
    meta = None
    if weights is not None:
        state, meta = read_checkpoint(weights)
        ck_arch = (meta or {}).get("arch")
        if arch is None:
            arch = ck_arch
        elif ck_arch and ck_arch != arch:
            raise CbirError(f"--weights {weights}: checkpoint is for {ck_arch}, not --arch {arch}")
    if arch is None:
        raise CbirError("--arch is required (the checkpoint names no architecture)")
    spec = get_arch(arch)
    model = timm.create_model(spec.name, pretrained=False, num_classes=0, exportable=True)
    source = "random"
    if pretrained and weights is not None:
        raise CbirError("--pretrained and --weights are exclusive: choose one")
    if pretrained:
        model = timm.create_model(spec.name, pretrained=False, exportable=True)  # keep the classifier so keys match
        source = load_pretrained(model, spec.name)
    elif weights is not None:
        load_trunk_state(model, state, str(weights), spec.name, block)
        source = str(weights)
    module = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:block]).eval()
    with torch.no_grad():
        channels = module(torch.zeros(1, 3, 64, 64)).shape[1]
    if channels != spec.dim(block):
        raise CbirError(f"{spec.name} Block {block}: trunk gives {channels} channels, expected {spec.dim(block)}")
    return Trunk(module, spec, block, source, meta)
