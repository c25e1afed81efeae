"""The photo inside a layout: ``content_box(img)`` → the largest block of an image bounded by
uniform bands (fractions (x0, y0, x1, y1)), or None when that block is (nearly) the whole image.

A screenshot, a meme or a letterboxed frame puts a photo between bands of one colour (a page's
white gaps, a meme's caption band, black bars). Rows are *busy* when more than ``BUSY`` (10 %) of
their pixels differ from the row's median by more than ``TOL`` (12 grey levels) — a robust test, so
that a black bar crossing a few white rows stays uniform. The tallest run of busy rows is kept,
then the widest run of busy columns within it, twice over, on the image scaled to ``SIDE`` (256)
pixels. Natural photos often have a uniform sky or floor too (a third of Corel-1K yields a sub-box):
callers search the box beside the whole image, never instead of it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 256
TOL = 12.0
BUSY = 0.1
ROUNDS = 2
MAX_AREA = 0.8  # a block this large is the image itself
MIN_SIDE = 0.15  # a block this thin (fraction of the image's side) is a strip, not a photo


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _busy(a: np.ndarray, axis: int) -> np.ndarray:
    return (np.abs(a - np.median(a, axis=axis, keepdims=True)) > TOL).mean(axis=axis) > BUSY


def content_box(img: Image.Image) -> tuple[float, float, float, float] | None:
    """The largest uniform-bounded block of ``img`` (see the module docstring); None when it covers
    ≥ ``MAX_AREA`` of the image, is thinner than ``MIN_SIDE`` or the image is uniform."""
    g = img.convert("L")
    s = SIDE / max(g.size)
    g = np.asarray(g.resize((max(1, round(g.width * s)), max(1, round(g.height * s)))), np.float32)
    h, w = g.shape
    y0, y1, x0, x1 = 0, h, 0, w
    for _ in range(ROUNDS):
        for axis in (1, 0):  # rows (busy across their columns), then columns
            runs = _runs(_busy(g[y0:y1, x0:x1], axis))
            if not runs:
                return None
            a, b = max(runs, key=lambda r: r[1] - r[0])
            if axis == 1:
                y0, y1 = y0 + a, y0 + b
            else:
                x0, x1 = x0 + a, x0 + b
    box = (x0 / w, y0 / h, x1 / w, y1 / h)
    if (box[2] - box[0]) * (box[3] - box[1]) >= MAX_AREA or min(box[2] - box[0], box[3] - box[1]) < MIN_SIDE:
        return None
    return box
