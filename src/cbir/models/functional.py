"""Pooling formulas as pure torch functions (DESIGN.md §3). x: [N, C, H, W] -> [N, C].

All use plain ONNX-exportable ops with static H×W. ε = 1e-6.
Stage outputs are signed (linear projection + BN); GeM clamps, CroW and regional CroW apply ReLU first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-6


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling: mean over H×W (the paper's head)."""
    return x.mean(dim=(2, 3))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """SPoC: sum pooling over H×W; computed as the mean (same direction, L2 follows)."""
    return x.mean(dim=(2, 3))


def mac(x: torch.Tensor) -> torch.Tensor:
    """MAC: max over H×W."""
    return x.amax(dim=(2, 3))


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = EPS) -> torch.Tensor:
    """GeM: ``(mean(clamp(x, eps)^p))^(1/p)``, p = 3 by default."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def crow_weights(
    x: torch.Tensor, a: float = 2.0, b: float = 2.0, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """CroW weights of a non-negative map x: spatial α [N,1,H,W] and channel β [N,C].

    S = Σ_c x; α = (S / ‖S‖_a)^(1/b); Q_k = fraction of non-zero entries of channel k;
    β_k = log(Σ_j Q_j / (ε + Q_k)).
    """
    s = x.sum(dim=1, keepdim=True)
    norm = s.pow(a).sum(dim=(2, 3), keepdim=True).pow(1.0 / a)
    alpha = (s / (norm + eps)).pow(1.0 / b)
    q = (x > 0).to(x.dtype).mean(dim=(2, 3))
    beta = torch.log(q.sum(dim=1, keepdim=True) / (eps + q))
    return alpha, beta


def crow(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """CroW (Kalantidis et al.): ReLU, then f_k = β_k · Σ_ij α_ij x_kij (a = b = 2)."""
    x = torch.relu(x)
    alpha, beta = crow_weights(x, eps=eps)
    return beta * (x * alpha).sum(dim=(2, 3))


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int, int]]:
    """The R-MAC square-window grid (cnnimageretrieval-pytorch ``rmac``) as (top, left, size, size).

    Side at level l is ``floor(2·min(H,W)/(l+1))``; the longer side gets extra windows chosen for
    ~40 % overlap. The whole map is not included (callers add it).
    """
    side = min(h, w)
    steps = np.array([2, 3, 4, 5, 6, 7], dtype=np.float64)
    b = (max(h, w) - side) / (steps - 1)
    idx = int(np.argmin(np.abs(((side**2 - side * b) / side**2) - overlap)))
    wd = idx + 1 if h < w else 0
    hd = idx + 1 if h > w else 0
    regions = []
    for level in range(1, levels + 1):
        wl = math.floor(2 * side / (level + 1))
        if wl == 0:
            continue
        wl2 = math.floor(wl / 2 - 1)

        def centres(n_extra: int, length: int) -> list[int]:
            step = 0 if level + n_extra == 1 else (length - wl) / (level + n_extra - 1)
            return [int(math.floor(wl2 + i * step) - wl2) for i in range(level + n_extra)]

        for top in centres(hd, h):
            for left in centres(wd, w):
                regions.append((top, left, wl, wl))
    return regions


def region_mask(h: int, w: int, levels: int = 3) -> np.ndarray:
    """Constant [H·W, R] 0/1 matrix: column 0 is the whole map, then the R-MAC windows."""
    regions = rmac_regions(h, w, levels)
    mask = np.zeros((h, w, len(regions) + 1), dtype=np.float32)
    mask[:, :, 0] = 1.0
    for r, (top, left, sh, sw) in enumerate(regions, start=1):
        mask[top : top + sh, left : left + sw, r] = 1.0
    return mask.reshape(h * w, -1)


def l2n(x: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """L2-normalise along ``dim``: x / (‖x‖ + eps)."""
    return x / (x.norm(p=2, dim=dim, keepdim=True) + eps)


def rcrow(
    x: torch.Tensor,
    mask: torch.Tensor,
    whiten_mean: torch.Tensor | None = None,
    whiten_proj: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """Regional CroW: ReLU; CroW-weighted map y = β_k·α_ij·x_kij; region sums as one MatMul with the
    constant [H·W, R] ``mask``; each regional vector L2-normalised, optionally PCA-whitened
    (``P(v − m)``) and L2-normalised again; summed over regions. Output is not L2-normalised
    (the model's final L2 does it).
    """
    return rcrow_regions(x, mask, whiten_mean, whiten_proj, eps).sum(dim=1)


def rcrow_regions(
    x: torch.Tensor,
    mask: torch.Tensor,
    whiten_mean: torch.Tensor | None = None,
    whiten_proj: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """The regional vectors [N, R, C] that ``rcrow`` sums (L2-normalised, whitened if given)."""
    x = torch.relu(x)
    alpha, beta = crow_weights(x, eps=eps)
    n, c = x.shape[0], x.shape[1]
    y = (x * alpha).reshape(n, c, -1)  # [N, C, HW]
    regions = torch.matmul(y, mask).transpose(1, 2) * beta.unsqueeze(1)  # [N, R, C]
    regions = l2n(regions, eps=eps)
    if whiten_proj is not None:
        regions = l2n(torch.matmul(regions - whiten_mean, whiten_proj.t()), eps=eps)
    return regions


def window_indices(h: int, w: int, levels: int = 3) -> list[int]:
    """Positions in ``rmac_regions`` of the windows smaller than the H×W map (regional re-ranking
    compares them next to the global vector, which already covers the whole map)."""
    return [j for j, r in enumerate(rmac_regions(h, w, levels)) if (r[2], r[3]) != (h, w)]


def window_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """The R-MAC windows smaller than the H×W map (``window_indices``)."""
    regions = rmac_regions(h, w, levels)
    return [regions[j] for j in window_indices(h, w, levels)]


def pool_windows(x: torch.Tensor, pool, windows: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """[N, C, H, W] -> [N, R, C]: ``pool`` applied to each static window (top, left, h, w)."""
    return torch.stack([pool(x[:, :, t : t + sh, l : l + sw]) for t, l, sh, sw in windows], dim=1)
