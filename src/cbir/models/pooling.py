"""Thin ``nn.Module`` wrappers over ``functional`` and one string-keyed registry (``POOLINGS``).

| name  | formula (x: C×H×W, ε = 1e-6)                                                     |
|-------|----------------------------------------------------------------------------------|
| gap   | mean_ij x                                                                        |
| spoc  | Σ_ij x (computed as the mean; identical after L2)                                |
| mac   | max_ij x                                                                         |
| gem   | (mean_ij clamp(x, ε)^p)^(1/p), p = 3, learnable                                  |
| crow  | ReLU; β_k Σ_ij α_ij x_kij, α = (S/‖S‖₂)^(1/2), β_k = log(Σ_j Q_j / (ε + Q_k))    |
| rcrow | ReLU; CroW-weighted map summed in R-MAC windows (L = 3) + whole map, each region   |
|       | L2 → [PCA-whiten → L2] → sum                                                     |
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cbir.errors import CbirError
from cbir.models import functional as F


class GAP(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gap(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.spoc(x)


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mac(x)


class GeM(nn.Module):
    """GeM with a learnable exponent p (default 3)."""

    def __init__(self, p: float = 3.0, eps: float = F.EPS):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gem(x, self.p, self.eps)


class CroW(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.crow(x)


class RegionalCroW(nn.Module):
    """Regional CroW for a static feature-map size ``(h, w)``; regional whitening optional."""

    def __init__(self, h: int, w: int, levels: int = 3, whitening: tuple | None = None):
        super().__init__()
        self.register_buffer("mask", torch.from_numpy(F.region_mask(h, w, levels)))
        # mask columns of the windows smaller than the map (column 0 is the whole map)
        self.windows = [1 + j for j in F.window_indices(h, w, levels)]
        mean, proj = whitening if whitening is not None else (None, None)
        self.register_buffer("whiten_mean", None if mean is None else torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("whiten_proj", None if proj is None else torch.as_tensor(proj, dtype=torch.float32))

    @property
    def num_regions(self) -> int:
        return self.mask.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rcrow(x, self.mask, self.whiten_mean, self.whiten_proj)

    def regions(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors of the R-MAC windows smaller than the map, [N, len(windows), C]."""
        return F.rcrow_regions(x, self.mask, self.whiten_mean, self.whiten_proj)[:, self.windows]


# name -> factory(feature_hw) -> module
POOLINGS: dict[str, Callable[[tuple[int, int]], nn.Module]] = {
    "gap": lambda hw: GAP(),
    "spoc": lambda hw: SPoC(),
    "mac": lambda hw: MAC(),
    "gem": lambda hw: GeM(),
    "crow": lambda hw: CroW(),
    "rcrow": lambda hw: RegionalCroW(*hw),
}


def create_pooling(name: str, feature_hw: tuple[int, int]) -> nn.Module:
    """Build the pooling module registered under ``name`` for a static feature map size."""
    if name not in POOLINGS:
        raise CbirError(f"--pooling {name!r}: unknown pooling; choose one of {', '.join(POOLINGS)}")
    return POOLINGS[name](feature_hw)
