"""Where on an item its verified matches lie (over its keypoints' extent): which pairs share only a
template, and which part of an item no match explains.

Template pairs: the same web-page frame, meme band or watermark around *different* photos, told
apart from copies by what the rest of the gallery matches in them.

``template_pairs(points, extent)`` → the verified pairs (a, b) for which **each** side holds a part
that the other lacks and that a third item matches: some c verified with a, not verified with b,
has more than ``OUTSIDE`` (half) of its inliers on a where a's inliers with b do not reach
(``covered``: each inlier reaches ``REACH`` (1.5) × their mean spacing, so that a few inliers spread
over a photo cover it while a dense frame leaves the hole it surrounds) — and the same from b's
side with some d.
A screenshot of photo P and one of photo Q in one frame verify through the frame, but P matches
the first screenshot where the second one shows Q, and Q the second where the first shows P: both
are composites of the frame and something else, so the pair is a template, not a copy. A captioned,
bordered or overlaid copy keeps its pair: its original's other copies match it where the original
does (the photo), so one side at least has no such third item. The rule needs the other part to be
in the gallery (the photos whose screenshots they are, found by dedup's windows pass) — or the
part of an item that most of its matches leave out (``unexplained``) stands for it: the photo in a
screenshot whose frame matched other screenshots, when the gallery does not hold that photo.

``frame_pairs(points, layouts)`` → the verified pairs whose inliers lie mostly (more than
``FRAME_OUT``, 0.8) outside **both** items' layout boxes (dedup passes ``layout.content_box``, the
block between uniform bands: the photo inside a page, a card or a meme — not the inset box, which
also finds rectangles inside plain photos): two different photos in one frame match only through
the frame. It needs no third item, so it holds for a layout the gallery has no other copies of; a
copy of a photo inside a frame matches inside the photo, and a plain photo without a layout box is
never paired away by it.

``unexplained(own, matched, extent)`` → the box (fractions of the keypoints' extent, widened by half
a cell, to the image's edge where it reaches the extent's) of the largest 4-connected block of
``GRID`` × ``GRID`` cells holding ≥ ``BLOCK_CELL_KP`` (2) of the item's keypoints where fewer than
half of its matches have an inlier, when the block holds ≥ ``BLOCK_KP`` (20) keypoints: the photo
inside a screenshot whose frame matched other screenshots — too small a part of the frame for the
fixed windows to shortlist its original.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

GRID = 8
OUTSIDE = 0.5
RASTER = 64
REACH = 1.5
BLOCK_CELL_KP = 2
BLOCK_KP = 20
FRAME_OUT = 0.8

# points[x][y]: x's inliers (float32 [n, 2], feature pixels) in its verified match with y
Points = Mapping[int, Mapping[int, np.ndarray]]


def cells(xy: np.ndarray, extent: tuple[float, float, float, float], grid: int = GRID) -> np.ndarray:
    """Grid cell (row * grid + column) of each point within ``extent`` (x0, y0, x1, y1); points
    outside it fall in the border cells."""
    x0, y0, x1, y1 = extent
    cx = np.clip(((xy[:, 0] - x0) / max(x1 - x0, 1e-6) * grid).astype(np.int64), 0, grid - 1)
    cy = np.clip(((xy[:, 1] - y0) / max(y1 - y0, 1e-6) * grid).astype(np.int64), 0, grid - 1)
    return cy * grid + cx


def covered(
    shared: np.ndarray, extent: tuple[float, float, float, float], raster: int = RASTER, reach: float = REACH
) -> np.ndarray:
    """[raster, raster] mask over ``extent`` of what the ``shared`` points cover: each reaches
    ``reach`` × their mean spacing (√(extent area / n)), so that a few inliers spread over a photo
    cover it and a dense frame leaves the hole it surrounds."""
    import cv2

    x0, y0, x1, y1 = extent
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    r = reach * np.sqrt(w * h / max(len(shared), 1))
    mask = np.zeros((raster, raster), np.uint8)
    if len(shared):
        cx = np.clip(((shared[:, 0] - x0) / w * raster).astype(np.int64), 0, raster - 1)
        cy = np.clip(((shared[:, 1] - y0) / h * raster).astype(np.int64), 0, raster - 1)
        mask[cy, cx] = 1
    kx, ky = max(1, int(np.ceil(r / w * raster))), max(1, int(np.ceil(r / h * raster)))
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * kx + 1, 2 * ky + 1))).astype(bool)


def _inside(mask: np.ndarray, xy: np.ndarray, extent: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = extent
    raster = mask.shape[0]
    cx = np.clip(((xy[:, 0] - x0) / max(x1 - x0, 1.0) * raster).astype(np.int64), 0, raster - 1)
    cy = np.clip(((xy[:, 1] - y0) / max(y1 - y0, 1.0) * raster).astype(np.int64), 0, raster - 1)
    return mask[cy, cx]


def holds_more(
    points: Points,
    extent: Mapping[int, tuple],
    a: int,
    b: int,
    block: np.ndarray | None = None,
    outside: float = OUTSIDE,
) -> bool:
    """Whether some third item verified with ``a`` and not with ``b`` — or ``a``'s ``block`` (its
    keypoints in the part no match explains, ``unexplained``) — lies mostly where ``a``'s inliers
    with ``b`` do not reach (``covered``)."""
    others = [xy for c, xy in points[a].items() if c != b and b not in points.get(c, {}) and len(xy)]
    if block is not None and len(block):
        others.append(block)
    if not others:
        return False
    mask = covered(points[a][b], extent[a])
    return any(np.mean(~_inside(mask, xy, extent[a])) > outside for xy in others)


def template_pairs(
    points: Points,
    extent: Mapping[int, tuple],
    blocks: Mapping[int, np.ndarray] | None = None,
    outside: float = OUTSIDE,
) -> set[tuple[int, int]]:
    """The pairs (a < b) of ``points`` where each side ``holds_more`` than the other (see the module
    docstring). ``extent[x]``: (x0, y0, x1, y1) of x's keypoints; ``blocks[x]``: x's keypoints in
    its unexplained part, standing for the photo a screenshot holds when the gallery does not
    (dedup passes those of items with ≥ 3 matches: a frame several images share, not two views of
    one scene that each show more than the other)."""
    blocks = blocks or {}
    out = set()
    for a, partners in points.items():
        for b in partners:
            if (
                a < b
                and holds_more(points, extent, a, b, blocks.get(a), outside)
                and holds_more(points, extent, b, a, blocks.get(b), outside)
            ):
                out.add((a, b))
    return out


def frame_pairs(points: Points, layouts: Mapping[int, tuple], outside: float = FRAME_OUT) -> set[tuple[int, int]]:
    """The pairs (a < b) of ``points`` where more than ``outside`` of each side's inliers lie outside
    its layout box (``layouts[x]``: (x0, y0, x1, y1) in x's feature pixels; see the module docstring)."""

    def out(x: int, y: int) -> bool:
        x0, y0, x1, y1 = layouts[x]
        xy = points[x][y]
        return (
            len(xy) > 0
            and float(np.mean((xy[:, 0] < x0) | (xy[:, 0] > x1) | (xy[:, 1] < y0) | (xy[:, 1] > y1))) > outside
        )

    return {
        (a, b)
        for a, partners in points.items()
        for b in partners
        if a < b and a in layouts and b in layouts and out(a, b) and out(b, a)
    }


def unexplained(
    own: np.ndarray, matched: list[np.ndarray], extent: tuple[float, float, float, float], grid: int = GRID
) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in fractions of ``extent`` (widened by half a cell; -inf / inf where the
    block reaches the extent's edge: to the image's) of the largest block of ``own`` keypoints
    that fewer than half of the ``matched`` point sets (one per match) cover; None without one (see
    the module docstring)."""
    count = np.bincount(cells(own, extent, grid), minlength=grid * grid).reshape(grid, grid)
    votes = np.zeros(grid * grid, np.int64)
    for xy in matched:
        votes[np.unique(cells(xy, extent, grid))] += 1
    free = (count >= BLOCK_CELL_KP) & (2 * votes < len(matched)).reshape(grid, grid)
    seen = np.zeros_like(free)
    best, best_kp = None, 0
    for r0, c0 in zip(*np.nonzero(free)):
        if seen[r0, c0]:
            continue
        stack, block = [(r0, c0)], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            block.append((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < grid and 0 <= cc < grid and free[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        kp = sum(int(count[r, c]) for r, c in block)
        if kp > best_kp:
            best, best_kp = block, kp
    if best is None or best_kp < BLOCK_KP:
        return None
    rows, cols = [r for r, _ in best], [c for _, c in best]
    lo = lambda v: -np.inf if v == 0 else (v - 0.5) / grid  # noqa: E731
    hi = lambda v: np.inf if v == grid - 1 else (v + 1.5) / grid  # noqa: E731
    return lo(min(cols)), lo(min(rows)), hi(max(cols)), hi(max(rows))
