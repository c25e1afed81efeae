"""The photo inside a layout, as fractions (x0, y0, x1, y1) of the image, or None:
``content_box`` — the largest block bounded by uniform bands; ``inset_box`` — the best rectangle
bounded by straight edges (a photo pasted into another); ``layout_box`` — the ``innermost`` of the
two, the sixth window of search and dedup beside the five half-size ones.

A screenshot, a meme or a letterboxed frame puts a photo between bands of one colour (a page's
white gaps, a meme's caption band, black bars). Rows are *busy* when more than ``BUSY`` (10 %) of
their pixels differ from the row's median by more than ``TOL`` (12 grey levels) — a robust test, so
that a black bar crossing a few white rows stays uniform. The tallest run of busy rows is kept,
then the widest run of busy columns within it, twice over, on the image scaled to ``SIDE`` (256)
pixels. Natural photos often have a uniform sky or floor too (a third of Corel-1K yields a sub-box):
callers search the box beside the whole image, never instead of it.

A picture-in-picture has no bands: the inset's border is a set of straight edges instead. On 100
AugLy ``pip`` copies (the suite's first 100, where the detector was built) ``inset_box`` finds a box in
89 and 19 of 100 plain Corel photos give one too (straight lines of buildings, horizons) — an extra
window that verifies nothing costs one verification, no false match. Where both finds exist the
smaller is the photo: a page's card frame is an edged box around a screenshot's photo, and a
picture-in-picture's background often has a uniform sky around the inset (BENCHMARKS.md).
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


def _scaled(img: Image.Image, mode: str) -> np.ndarray:
    """``img`` in ``mode`` ("L" or "RGB") with its longer side scaled to ``SIDE``, as float32."""
    a = img.convert(mode)
    s = SIDE / max(a.size)
    return np.asarray(a.resize((max(1, round(a.width * s)), max(1, round(a.height * s)))), np.float32)


def content_box(img: Image.Image) -> tuple[float, float, float, float] | None:
    """The largest uniform-bounded block of ``img`` (see the module docstring); None when it covers
    ≥ ``MAX_AREA`` of the image, is thinner than ``MIN_SIDE`` or the image is uniform."""
    g = _scaled(img, "L")
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


# inset_box: a photo pasted into another photo (picture-in-picture) or any sharp-edged rectangle
EDGE = 24.0  # grey levels (max over RGB) across 2 pixels: a pasted photo's border on the 256-px image
LINE = 0.1  # a candidate line holds a run of edge pixels this long (fraction of the image's side)
SUPPORT = 0.7  # each side of the box that is not the image's border: this fraction of it on an edge
INSET_AREA = 0.6


def _lines(e: np.ndarray) -> list[int]:
    """Rows of ``e`` (boolean edge map, one line per row) with a run ≥ ``LINE`` of their length, kept
    where their edge count is the largest within ±2 lines."""
    n = e.shape[1]
    count = e.sum(axis=1)
    c = np.cumsum(e, axis=1, dtype=np.int32)
    longest = (c - np.maximum.accumulate(np.where(e, 0, c), axis=1)).max(axis=1)  # each line's longest run
    peak = count >= np.lib.stride_tricks.sliding_window_view(np.pad(count, 2), 5).max(axis=1)
    return np.flatnonzero((longest >= LINE * n) & peak).tolist()


def _support(c: np.ndarray, idx: list[int], ends: list[int]) -> np.ndarray:
    """[len(idx), len(ends), len(ends)]: the fraction of edge pixels on line ``idx[i]`` between
    ``ends[a]`` and ``ends[b]`` (best of the line and its two neighbours); ``c``: cumulative edge
    counts along the lines, [length + 1, lines]."""
    best = None
    for d in (-1, 0, 1):
        cc = c[:, np.clip(np.asarray(idx) + d, 0, c.shape[1] - 1)][np.asarray(ends)]  # [ends, idx]
        s = (cc[None] - cc[:, None]).transpose(2, 0, 1)
        best = s if best is None else np.maximum(best, s)
    e = np.asarray(ends, np.float64)
    length = e[None] - e[:, None]
    return best / np.where(length > 0, length, np.inf)[None]


def inset_box(img: Image.Image) -> tuple[float, float, float, float] | None:
    """The best rectangle of ``img`` whose sides are straight edges or the image's border, at least
    two of them edges (a photo pasted into another photo); None when there is none between
    ``MIN_SIDE`` per side and ``INSET_AREA`` of the image. On the image scaled to ``SIDE``: edge pixels
    differ from the pixels two away by more than ``EDGE``; candidate lines hold a run of them ≥ ``LINE``
    of the side; a box's edge sides must be ≥ ``SUPPORT`` on an edge. Chosen by the most edge sides,
    then the best weakest side (a pasted photo's border is on an edge all along), then the area."""
    a = _scaled(img, "RGB")
    h, w, _ = a.shape
    ev, eh = np.zeros((h, w), bool), np.zeros((h, w), bool)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]  # channel by channel: numpy's max over a last axis of 3 is slow
    ev[:, 1:-1] = (
        np.maximum(np.maximum(np.abs(r[:, 2:] - r[:, :-2]), np.abs(g[:, 2:] - g[:, :-2])), np.abs(b[:, 2:] - b[:, :-2]))
        > EDGE
    )
    eh[1:-1] = np.maximum(np.maximum(np.abs(r[2:] - r[:-2]), np.abs(g[2:] - g[:-2])), np.abs(b[2:] - b[:-2])) > EDGE
    xs = [x for x in _lines(ev.T) if 2 <= x <= w - 3]
    ys = [y for y in _lines(eh) if 2 <= y <= h - 3]
    if not xs and not ys:
        return None
    X, Y = [0, *xs, w], [0, *ys, h]
    V = _support(np.r_[np.zeros((1, w)), np.cumsum(ev, axis=0)], X, Y)  # column X[i], rows Y[a]..Y[b]
    H = _support(np.r_[np.zeros((1, h)), np.cumsum(eh.T, axis=0)], Y, X)  # row Y[j], columns X[a]..X[b]
    V[[0, -1]], H[[0, -1]] = np.nan, np.nan  # the image's border: no edge needed
    Xa, Ya = np.asarray(X, float), np.asarray(Y, float)
    i0, i1 = np.triu_indices(len(X), 1)  # column pairs, left < right, wide enough
    keep = (Xa[i1] - Xa[i0]) / w >= MIN_SIDE
    i0, i1 = i0[keep, None], i1[keep, None]
    j0, j1 = np.triu_indices(len(Y), 1)
    keep = (Ya[j1] - Ya[j0]) / h >= MIN_SIDE
    j0, j1 = j0[None, keep], j1[None, keep]
    sides = np.stack([V[i0, j0, j1], V[i1, j0, j1], H[j0, i0, i1], H[j1, i0, i1]])  # [4, column pairs, row pairs]
    edges = (~np.isnan(sides)).sum(axis=0)
    area = (Xa[i1] - Xa[i0]) / w * (Ya[j1] - Ya[j0]) / h
    least = np.where(np.isnan(sides), 1.0, sides).min(axis=0)  # the weakest edge side
    ok = (least >= SUPPORT) & (edges >= 2) & (area <= INSET_AREA)
    if not ok.any():
        return None
    p, q = np.unravel_index(np.argmax(np.where(ok, edges * 10 + 2 * least + area, -1.0)), ok.shape)
    return Xa[i0[p, 0]] / w, Ya[j0[0, q]] / h, Xa[i1[p, 0]] / w, Ya[j1[0, q]] / h


def innermost(*boxes: tuple | None) -> tuple[float, float, float, float] | None:
    """The smallest of ``boxes`` that exist, as floats; None when none does."""
    found = [b for b in boxes if b is not None]
    return tuple(float(v) for v in min(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))) if found else None


def layout_box(img: Image.Image) -> tuple[float, float, float, float] | None:
    """The photo inside ``img``'s layout: the smaller of ``content_box`` (between uniform bands) and
    ``inset_box`` (between straight edges) when both find one — the photo is the innermost block (a
    page's frame around a screenshot's photo is an edged box too; a picture-in-picture's background
    often has a uniform sky around the inset) — else whichever finds one; None when neither does."""
    return innermost(content_box(img), inset_box(img))
