"""The whole retrieval model as exported: uint8 NHWC RGB in, L2-normalised float32 [N, D] out.

forward(x): float → ×1/(255·std) − mean/std (NHWC) → NCHW → trunk → pooling →
[L2 → PCA-whitening P(x − m)] → L2. For ``rcrow`` the whitening is applied per region instead.

Multi-scale (``scales``, e.g. 1, 1/√2, √2 — cirtorch's standard): the normalised image is resized
bilinearly to each scale, each pooled vector is L2-normalised, and they are averaged as a power mean
v = (mean_s v_s^p)^(1/p), p = the GeM exponent for ``gem`` (1 otherwise), before whitening and L2.

Regional descriptors (``regions=True``, for regional re-ranking): ``forward_with_regions`` also
returns [N, R, D] — the same pooling applied inside each R-MAC window (L = 3, windows equal to the
whole map left out: 13 for a 7×7 map), each whitened and L2-normalised like the global vector; for
``rcrow`` its own regional vectors. Export puts them in a second output ``regions``.

``to_fp16()`` puts the trunk in FP16 with explicit casts around it, so the exported graph carries
the precision (TensorRT 11 builds strongly typed networks only): normalisation, pooling,
whitening and L2 stay FP32 (DESIGN.md §4). ``to_fp16(head=True)`` also halves the head — only to
show that the fidelity gate catches FP16 overflow (GeM's pow, region sums).
"""

from __future__ import annotations

import torch
from torch import nn

from cbir.errors import CbirError
from cbir.models import functional as F
from cbir.models.pooling import RegionalCroW, create_pooling
from cbir.models.trunk import Trunk
from cbir.vectors import Whitening

STRIDE = 32  # EfficientNet's Block 6/7 outputs are at 1/32 of the input


class RetrievalModel(nn.Module):
    """Trunk + pooling + optional whitening + L2, with the input normalisation folded in."""

    def __init__(
        self,
        trunk: Trunk,
        pooling: str = "gap",
        image_size: int | None = None,
        whitening: Whitening | None = None,
        scales: tuple[float, ...] = (1.0,),
        regions: bool = False,
    ):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or any(not 0.25 <= s <= 4.0 for s in scales):
            raise CbirError(f"--scales {','.join(map(str, scales))}: each scale must be between 0.25 and 4")
        if pooling == "rcrow" and scales != (1.0,):
            raise CbirError("--scales: regional CroW's regions are laid out for one feature-map size; use one scale")
        if regions and scales != (1.0,):
            raise CbirError("--regions: regional descriptors are computed at one scale; drop --scales")
        self.scales = scales
        self.with_regions = regions
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
        self.windows = F.window_regions(*hw)
        if regions and not self.windows:
            raise CbirError(f"--regions: a {hw[0]}×{hw[1]} feature map has no R-MAC window smaller than itself")
        plain = whitening is not None and pooling != "rcrow"
        self.register_buffer("whiten_mean", torch.from_numpy(whitening.mean) if plain else None)
        self.register_buffer("whiten_proj", torch.from_numpy(whitening.proj) if plain else None)
        mean = torch.tensor(trunk.spec.mean if trunk.meta is None else trunk.meta.get("mean", trunk.spec.mean))
        std = torch.tensor(trunk.spec.std if trunk.meta is None else trunk.meta.get("std", trunk.spec.std))
        self.mean, self.std = mean.tolist(), std.tolist()
        self.trunk_dtype = self.head_dtype = torch.float32
        self.register_buffer("scale", (1.0 / (255.0 * std)).reshape(1, 1, 1, 3))
        self.register_buffer("shift", (-mean / std).reshape(1, 1, 1, 3))

    def to_fp16(self, head: bool = False) -> "RetrievalModel":
        """Trunk (and with ``head=True`` the pooling/whitening too) in FP16; input and output stay FP32."""
        self.trunk.half()
        self.trunk_dtype = torch.float16
        if head:
            self.pool.half()
            for name in ("whiten_mean", "whiten_proj"):
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name).half())
            self.head_dtype = torch.float16
        return self

    @property
    def precision(self) -> str:
        return (
            "fp32"
            if self.trunk_dtype == torch.float32
            else ("fp16" if self.head_dtype == torch.float32 else "fp16-head")
        )

    @property
    def dim(self) -> int:
        return self.trunk_info.dim if self.whitening is None else self.whitening.out_dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float32 NCHW."""
        return (x.to(torch.float32) * self.scale + self.shift).permute(0, 3, 1, 2)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooling, whitening and L2 on a trunk feature map."""
        return self.finish(self.pool(features))

    def finish(self, v: torch.Tensor) -> torch.Tensor:
        """Whitening and L2 of a pooled vector."""
        if self.whiten_proj is not None:
            v = torch.matmul(F.l2n(v) - self.whiten_mean, self.whiten_proj.t())
        return F.l2n(v)

    @property
    def num_regions(self) -> int:
        return len(self.windows) if self.with_regions else 0  # rcrow's own windows are the same ones

    def forward_with_regions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global [N, D], regional [N, R, D]) from one trunk pass (one scale)."""
        f = self.trunk(self.normalize(x).to(self.trunk_dtype)).to(self.head_dtype)
        if self.pooling_name == "rcrow":
            regions = self.pool.regions(f)
        else:
            regions = self.finish(F.pool_windows(f, self.pool, self.windows))
        return self.head(f).to(torch.float32), regions.to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The .to() calls are no-ops (no graph nodes) in FP32 and explicit Casts in FP16.
        x = self.normalize(x)
        if self.scales == (1.0,):
            return self.head(self.trunk(x.to(self.trunk_dtype)).to(self.head_dtype)).to(torch.float32)
        p = self.pool.p if self.pooling_name == "gem" else 1.0
        h, w = x.shape[2], x.shape[3]
        acc = 0.0
        for s in self.scales:
            xs = (
                x
                if s == 1.0
                else nn.functional.interpolate(
                    x, size=(max(32, round(h * s)), max(32, round(w * s))), mode="bilinear", align_corners=False
                )
            )
            v = F.l2n(self.pool(self.trunk(xs.to(self.trunk_dtype)).to(self.head_dtype)))
            acc = acc + v.clamp_min(F.EPS) ** p
        return self.finish((acc / len(self.scales)) ** (1.0 / p)).to(torch.float32)
