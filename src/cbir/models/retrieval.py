"""The whole retrieval model as exported: uint8 NHWC RGB in, L2-normalised float32 [N, D] out.

forward(x): float → ×1/(255·std) − mean/std (NHWC) → NCHW → trunk → pooling →
[L2 → PCA-whitening P(x − m)] → L2. For ``rcrow`` the whitening is applied per region instead.
"""
from __future__ import annotations

import torch
from torch import nn

from cbir.errors import CbirError
from cbir.models import functional as F
from cbir.models.pooling import RegionalCroW, create_pooling
from cbir.models.trunk import Trunk
from cbir.models.whitening import Whitening

STRIDE = 32  # EfficientNet's Block 6/7 outputs are at 1/32 of the input


class RetrievalModel(nn.Module):
    """Trunk + pooling + optional whitening + L2, with the input normalisation folded in."""

    def __init__(self, trunk: Trunk, pooling: str = "gap", image_size: int | None = None, whitening: Whitening | None = None):
        super().__init__()
        self.trunk_info = trunk
        self.image_size = image_size or trunk.spec.input_size
        self.pooling_name = pooling
        self.trunk = trunk.module
        with torch.no_grad():
            hw = tuple(self.trunk(torch.zeros(1, 3, self.image_size, self.image_size)).shape[2:])
        self.feature_hw = hw
        if whitening is not None and whitening.in_dim != trunk.dim:
            raise CbirError(f"--whitening: fitted on {whitening.in_dim}-d vectors, the model gives {trunk.dim}-d")
        self.whitening = whitening
        if pooling == "rcrow":
            wt = None if whitening is None else (torch.from_numpy(whitening.mean), torch.from_numpy(whitening.proj))
            self.pool = RegionalCroW(*hw, whitening=wt)
        else:
            self.pool = create_pooling(pooling, hw)
        plain = whitening is not None and pooling != "rcrow"
        self.register_buffer("whiten_mean", torch.from_numpy(whitening.mean) if plain else None)
        self.register_buffer("whiten_proj", torch.from_numpy(whitening.proj) if plain else None)
        mean = torch.tensor(trunk.spec.mean if trunk.meta is None else trunk.meta.get("mean", trunk.spec.mean))
        std = torch.tensor(trunk.spec.std if trunk.meta is None else trunk.meta.get("std", trunk.spec.std))
        self.mean, self.std = mean.tolist(), std.tolist()
        self.register_buffer("scale", (1.0 / (255.0 * std)).reshape(1, 1, 1, 3))
        self.register_buffer("shift", (-mean / std).reshape(1, 1, 1, 3))

    @property
    def dim(self) -> int:
        return self.trunk_info.dim if self.whitening is None else self.whitening.out_dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float32 NCHW."""
        return (x.to(torch.float32) * self.scale + self.shift).permute(0, 3, 1, 2)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooling, whitening and L2 on a trunk feature map."""
        v = self.pool(features)
        if self.whiten_proj is not None:
            v = torch.matmul(F.l2n(v) - self.whiten_mean, self.whiten_proj.t())
        return F.l2n(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.normalize(x)))
