"""Colour statistics of a model-input row, and what they say about a pixel-shuffled copy.

``row_stats(row)`` → float32 [4]: the mean R, G, B of the uint8 H×W×3 row, and its *structure*: the
larger |correlation| of grey levels 3 pixels apart, across and down. Natural photos score ≥ 0.5
(Corel-1K: ≥ 0.57); an image whose pixels were shuffled scores ≈ 0 (AugLy ``shuffle_pixels`` copies
after JPEG: ≤ 0.018; the lowest other edit of the AugLy suite, a filtered negative: 0.038) — at lag
3, not lag 1, because the resize's area averaging correlates neighbouring pixels of any image. A
shuffle keeps exactly one thing of the photo: its colours, so ``SCRAMBLED_MAX`` (0.025) marks queries that are
answered by mean colour (``Gallery.search_scrambled``, for queries that verify nothing). Area resizing keeps the mean (full-resolution vs
224×224 rows: within 0.006 of 255 on Corel-1K).
"""

from __future__ import annotations

import numpy as np

try:
    import cv2 as _cv2
except ImportError:  # pragma: no cover
    _cv2 = None

SCRAMBLED_MAX = 0.025
LAG = 3


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return abs(float(np.dot(a, b)) / den) if den > 0 else 1.0  # a flat image has structure, not noise


def row_stats(row: np.ndarray, structure: bool = True) -> np.ndarray:
    """[mean R, mean G, mean B, structure] of a uint8 [H, W, 3] row (see the module docstring);
    ``structure=False`` leaves the 4th NaN (the mean costs ~0.05 ms, the structure ~0.9 ms: a build
    needs only the gallery's means, a search the query's structure too)."""
    if _cv2 is not None:
        mean = _cv2.mean(np.ascontiguousarray(row))[:3]
    else:  # pragma: no cover
        mean = row.reshape(-1, 3).mean(axis=0, dtype=np.float64)
    s = np.nan
    if structure:
        s = 1.0
        g = (row @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)
        if g.shape[0] > LAG and g.shape[1] > LAG:  # pixel pairs LAG apart, on every other line (half the cost)
            s = max(_corr(g[::2, :-LAG], g[::2, LAG:]), _corr(g[:-LAG, ::2], g[LAG:, ::2]))
    return np.array([*mean, s], np.float32)


def scrambled(stats: np.ndarray | None) -> bool:
    """Whether a row's stats say its pixels were shuffled (no spatial structure left)."""
    return stats is not None and bool(np.isfinite(stats[3])) and float(stats[3]) <= SCRAMBLED_MAX
