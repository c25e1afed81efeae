"""Colour statistics of a model-input row (computed as it is decoded, ``cbir.engine.bulk``).

``row_stats(row)`` → float32 [4]: the mean R, G, B of the uint8 H×W×3 row, and its *structure*: the
larger |correlation| of grey levels ``LAG`` (3) pixels apart, across and down — at lag 3, not lag 1,
because the resize's area averaging correlates neighbouring pixels of any image. Area resizing keeps
the mean. What the structure says about a copy: ``cbir.copies.colour``.
"""

from __future__ import annotations

import numpy as np

try:
    import cv2 as _cv2
except ImportError:  # pragma: no cover
    _cv2 = None

LAG = 3


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return abs(float(np.dot(a, b)) / den) if den > 0 else 1.0  # a flat image has structure, not noise


def row_stats(row: np.ndarray, structure: bool = True) -> np.ndarray:
    """[mean R, mean G, mean B, structure] of a uint8 [H, W, 3] row (see the module docstring);
    ``structure=False`` leaves the 4th NaN (the structure costs far more than the mean: a build
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
