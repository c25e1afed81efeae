"""Local features for spatial verification: ORB keypoints of a downscaled grayscale image, matched
with Lowe's ratio test and checked with a RANSAC affine model (OpenCV; the Hamming k-NN on FAISS's
binary kernels). Torch-free.

An image whose shorter side is under ``MIN_SIDE`` (63 px) at that scale has no features.
``extract(source)`` → one record of ``DTYPE`` (fixed size, so that a shard's features are one
memory-mappable ``.npy``): ``n`` keypoints (≤ ``MAX_KEYPOINTS``, default 500) of the image scaled
to ``SIDE`` pixels on its longer side (default 320), their ``xy`` (float16, pixels) and 32-byte ORB
``desc``. ``inliers(a, b)`` → the number of RANSAC inliers of a 6-dof affine map from ``a``'s
matched keypoints to ``b``'s — one to one: of the query keypoints whose nearest is the same stored
keypoint, only the closest is kept (a flat crop with a few dozen keypoints otherwise "verified" a
photo by matching each of its few corners a dozen times) — counted only when the map is
``plausible`` (orientation kept, scale ≤ 8×, stretch ≤ 4, inliers spanning ≥ 1 % of the
keypoints' area): crops, rescaling, rotation, recompression, colour shifts, borders and captions
keep many; different scenes keep almost none, and the chance matches they do keep collapse onto a
line, which the check refuses. An image with too few keypoints (flat, tiny) verifies nothing — it
has 0 inliers with everything.

Guided re-matching (``verify``): when none of a query's candidates verifies, the ``GUIDE_MAX`` (2)
candidates whose plausible fit had the most inliers from ``GUIDE_MIN`` (6) up to the verified bar
are matched again under that fit (``rematch``): each query keypoint is projected, paired with the
stored keypoint within ``GUIDE_PX`` (16 px) of the smallest Hamming distance (≤ ``GUIDE_BITS``, 64),
one to one, and the map is re-fitted (``GUIDE_ROUNDS``, 2) under the same ``plausible`` check. The
ratio test throws away the true matches of a blurred, warped or re-edited copy whose descriptors
moved; the first fit's geometry finds them again. Only then: applied to every near candidate, a
near-duplicate shot of the same scene overtook a cropped copy's original (AugLy suite,
BENCHMARKS.md). Only for a first fit within ``GUIDE_TURN`` (30°) of upright, on the variant that
fitted: ORB is rotation-invariant, so a turned copy verifies without help, while the chance fits
that re-matching grew into false verifications among 100k photos (round icons onto a template's
round avatars, text onto text) were turned far from upright (BENCHMARKS.md).

Queries: ``extract_query`` gives the image's record and its left-right mirror's (ORB descriptors
are not mirror-invariant; the mirror turned by 180° is the upside-down copy), ``inliers`` takes the
best; ``windows`` gives five half-size windows of a query with their own features (as is and
mirrored), for a photo pasted into another, flipped or not.

Tilted views (``tilted_views``): ORB's patch survives a copy's rotation and scale, not a strong
shear or perspective (the patch is squeezed). The second look (``windows.look``) also matches the
query compressed by ``TILTS`` — ASIFT's simulated tilts (Morel & Yu 2009), the four of its first
levels that recovered the most AugLy copies unverified as they are: by 2 along either axis and by
√2 along either diagonal — against the first look's candidates, so a copy warped beyond the patch's
tolerance is fitted from the view that undoes most of the warp (BENCHMARKS.md).

ORB over SIFT: binary descriptors are 4× smaller than SIFT's 128 floats (32 B vs 512 B per
keypoint) and Hamming matching is several times faster; on the edited-copy benchmark both verify the
copies (BENCHMARKS.md, "Re-ranking and copy detection").
"""

from __future__ import annotations

import threading
from collections import abc
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageOps

from cbir.copies import phash
from cbir.copies.layout import content_box, innermost, inset_box
from cbir.cores import faiss_threads
from cbir.engine.preprocess import MAX_PIXELS, ImageSource, open_image, to_rgb

MAX_KEYPOINTS = 500
SIDE = 320
RATIO = 0.8  # Lowe's ratio test on Hamming distances
REPROJ_PX = 6.0  # RANSAC reprojection threshold, pixels at SIDE
MIN_MATCHES = 8
MAX_SCALE = 8.0  # the most a copy is shrunk or enlarged relative to its original (at SIDE on both)
MAX_STRETCH = 4.0  # aspect changes, skew and perspective stay well below this ratio of singular values
MIN_SPREAD = 0.01  # inliers span ≥ 1 % of the keypoints' area on one side at least
GUIDE_MIN = 6  # a plausible fit with this many inliers (but under the verified bar) is re-matched
GUIDE_PX = 16.0  # guided re-matching: a stored keypoint within this radius of the projected query one
GUIDE_BITS = 64  # … whose descriptor is at most this Hamming distance away
GUIDE_ROUNDS = 2
GUIDE_MAX = 2  # re-matched per ``verify`` call at most: the near pairs with the most first-fit inliers
GUIDE_TURN = 30.0  # … and only a first fit turned by at most this many degrees (``turn``)
# ORB ignores a 31-pixel border (its patch size): a shorter side holds no keypoint, and its 8-level
# pyramid would shrink such a strip (e.g. 2000×3 → 320×0 at the top level) until OpenCV asserts.
MIN_SIDE = 2 * 31 + 1
# ``wh``: the grey image's (w, h) at ``SIDE`` — the frame the keypoints lie in (feature files written
# before it existed lack the field: ``aspect`` is None for their records); ``phash``: its perceptual
# hash (``cbir.copies.phash``; older files lack it: their items are not hash candidates)
DTYPE = np.dtype(
    [
        ("n", "<u2"),
        ("xy", "<f2", (MAX_KEYPOINTS, 2)),
        ("desc", "u1", (MAX_KEYPOINTS, 32)),
        ("wh", "<u2", (2,)),
        ("phash", "u1", (phash.BYTES,)),
    ]
)
STRETCH = 1.5  # ORB still matches a copy stretched this much (AugLy change_aspect_ratio 0.5–2 verifies)


def _cv2():
    import cv2

    return cv2


def gray(source: ImageSource, name: str, side: int = SIDE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 grayscale [h, w] scaled so that its longer side is ``side`` (EXIF orientation applied).
    Small images are scaled up: ORB finds nothing in a 64-pixel thumbnail, and a copy is often one."""
    img = open_image(source, name, max_pixels)
    if img.format == "JPEG":
        img.draft("L", (side, side))  # DCT-domain downscale: most of the decode is skipped
    img = ImageOps.exif_transpose(img)
    if img.mode != "L":  # the embedder's conversion (alpha on white, 16-bit and float scaled), then grey
        img = to_rgb(img).convert("L")
    scale = side / max(img.size)
    if scale != 1.0:
        img = img.resize(
            at_side(img.size, side),
            Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC,
            reducing_gap=2.0 if scale < 1 else None,
        )
    return np.asarray(img)


def detect(img: np.ndarray) -> np.void:
    """One ``DTYPE`` record of the ORB features (and the hash) of a grayscale image (as ``gray`` returns it)."""
    rec = np.zeros((), DTYPE)
    rec["wh"] = img.shape[1], img.shape[0]
    rec["phash"] = phash.of(img)
    if min(img.shape) < MIN_SIDE:  # a thin strip or a tiny image: nothing to detect (verifies nothing)
        return rec
    # ORB objects are not documented thread-safe: one per call (cheap next to detection)
    kps, desc = _cv2().ORB_create(nfeatures=MAX_KEYPOINTS, fastThreshold=10).detectAndCompute(img, None)
    if desc is None or not kps:
        return rec
    n = min(len(kps), MAX_KEYPOINTS)
    rec["n"] = n
    rec["xy"][:n] = np.array([k.pt for k in kps[:n]], np.float32)
    rec["desc"][:n] = desc[:n]
    return rec


def extract(source: ImageSource, name: str = "<image>", max_pixels: int = MAX_PIXELS) -> np.void:
    """One ``DTYPE`` record of ``source``'s ORB features. Raises ``ImageError`` naming ``name``."""
    return detect(gray(source, name, max_pixels=max_pixels))


def extract_query(
    source: ImageSource, name: str = "<query>", max_pixels: int = MAX_PIXELS, mirrored: bool = True
) -> tuple[np.void, ...]:
    """A query's feature variants: the image's record and, with ``mirrored`` (default), its left-right
    mirror's. ORB descriptors are not mirror-invariant, so a flipped copy matches only the mirror's
    features; the mirror turned by 180° is the vertically flipped image, which the affine model
    covers. ``inliers`` takes the best variant."""
    img = gray(source, name, max_pixels=max_pixels)
    return Variants(img) if mirrored else (detect(img),)


# (tilt, direction in degrees): a view compresses the image by 1/tilt along that direction
TILTS = ((2.0, 0.0), (2.0, 90.0), (2**0.5, 45.0), (2**0.5, 135.0))


def tilted(img: np.ndarray, tilt: float, degrees: float) -> np.ndarray:
    """A grayscale image compressed by 1/``tilt`` along the direction ``degrees`` (0: x), on a black
    canvas that holds all of it, scaled back up to ``SIDE`` on its longer side when it came out smaller."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    rot = np.array([[c, s], [-s, c]])
    a = rot.T @ np.diag([1.0 / tilt, 1.0]) @ rot
    h, w = img.shape
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float) @ a.T
    lo, hi = corners.min(0), corners.max(0)
    scale = max(1.0, SIDE / float((hi - lo).max()))
    size = np.maximum(1, np.round((hi - lo) * scale)).astype(int)
    m = np.hstack([a * scale, -lo[:, None] * scale])
    return _cv2().warpAffine(img, m, (int(size[0]), int(size[1])), flags=_cv2().INTER_LINEAR)


def tilted_views(img: np.ndarray) -> tuple[np.void, ...]:
    """The records of a grayscale image's ``TILTS`` views (as is, not mirrored)."""
    return tuple(detect(tilted(img, t, d)) for t, d in TILTS)


class Variants(abc.Sequence):
    """``extract_query``'s two variants of a grayscale image: its record, and its mirror's — detected
    only when first asked for (a search whose first candidate verifies as it is never asks)."""

    def __init__(self, img: np.ndarray):
        self._img, self._recs = img, [detect(img), None]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return 2

    @property
    def image(self) -> np.ndarray:
        """The grayscale image the variants were detected in (``gray``'s scale)."""
        return self._img

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(2))]
        i = i + 2 if i < 0 else i
        if i == 1 and self._recs[1] is None:
            with self._lock:
                if self._recs[1] is None:
                    self._recs[1] = detect(mirror(self._img))
        return self._recs[i]


def as_and_mirrored(img: np.ndarray) -> tuple[np.void, np.void]:
    """The records of a grayscale image and of its left-right mirror (a query's two variants)."""
    return detect(img), detect(mirror(img))


def aspect(rec: np.void) -> float | None:
    """Width / height of the image a record was detected in; None for records without ``wh``."""
    if "wh" not in (rec.dtype.names or ()) or not rec["wh"][1]:
        return None
    return float(rec["wh"][0]) / float(rec["wh"][1])


def restretched(img: np.ndarray, to: float) -> tuple[np.void, np.void]:
    """``extract_query``'s variants of a grayscale image (as ``gray`` gives it) resampled to the aspect
    ratio ``to`` (w / h; longer side ``SIDE``): a copy squeezed or stretched beyond ``STRETCH`` keeps
    its keypoints but not their descriptors (ORB's patch is square), so it matches an original of
    that aspect only when stretched back."""
    size = (SIDE, max(1, round(SIDE / to))) if to >= 1 else (max(1, round(SIDE * to)), SIDE)
    return as_and_mirrored(np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC)))


def mirror(img: np.ndarray) -> np.ndarray:
    """The left-right mirror of a grayscale image, contiguous (as ORB wants it)."""
    return np.ascontiguousarray(img[:, ::-1])


# Windows of a query searched on their own when nothing verified (a photo inside another photo, a
# screenshot, a collage): five half-size windows, (x0, y0, x1, y1) as fractions — the centre one and
# those centred on the middles of the four quarter lines (a plus). On 100 AugLy picture-in-picture
# and screenshot copies of Corel images they find as many originals (93) as the full 3 × 3 grid of
# half-size windows at quarter steps, for 5/9 of its cost (BENCHMARKS.md).
WINDOWS = (
    (0.25, 0.0, 0.75, 0.5),
    (0.0, 0.25, 0.5, 0.75),
    (0.25, 0.25, 0.75, 0.75),
    (0.5, 0.25, 1.0, 0.75),
    (0.25, 0.5, 0.75, 1.0),
)


class Windows(NamedTuple):
    crops: list  # RGB crops (to embed)
    features: list  # each crop's ``extract_query`` variants
    size: tuple[int, int]  # the image's (w, h)
    boxes: tuple  # each crop's box, fractions (x0, y0, x1, y1)
    bands: tuple | None = None  # with ``content``: the image's ``layout.content_box``


def windows(
    source: ImageSource,
    name: str = "<query>",
    max_pixels: int = MAX_PIXELS,
    boxes: tuple = WINDOWS,
    content: bool = False,
) -> Windows:
    """The query's ``boxes`` as RGB crops with their own feature variants (``extract_query``: as is
    and mirrored, detected in the crop scaled to ``SIDE``, so that an inset gets a full set of
    keypoints); with ``content``, also the photo inside the image's layout (``layout.layout_box``)
    when it has one, and its box between uniform bands (``content_box``) as ``bands``."""
    img = to_rgb(ImageOps.exif_transpose(open_image(source, name, max_pixels)))
    bands = None
    if content:
        bands = content_box(img)
        if (box := innermost(bands, inset_box(img))) is not None:  # = layout.layout_box
            boxes = tuple(boxes) + (box,)
    crops = [
        img.crop((round(x0 * img.width), round(y0 * img.height), round(x1 * img.width), round(y1 * img.height)))
        for x0, y0, x1, y1 in boxes
    ]
    return Windows(crops, [extract_query(c, name, max_pixels) for c in crops], img.size, tuple(boxes), bands)


def from_window(
    xy: np.ndarray, box: tuple, crop_size: tuple[int, int], size: tuple[int, int], mirrored: bool = False
) -> np.ndarray:
    """Points of a window's features (detected in the crop scaled to ``SIDE``; ``mirrored``: in its
    mirror, ``extract_query``'s second variant) in the whole image's feature pixels. ``box``: the
    window as fractions (``WINDOWS``); ``crop_size``, ``size``: the crop's and the image's (w, h)."""
    (cw, ch), (w, h) = at_side(crop_size), at_side(size)
    x, y = (unmirror(xy, cw) if mirrored else xy).T
    x0, y0, x1, y1 = box
    return np.stack([(x0 + (x1 - x0) * x / cw) * w, (y0 + (y1 - y0) * y / ch) * h], 1).astype(np.float32)


def unmirror(xy: np.ndarray, width: int) -> np.ndarray:
    """Points found in ``mirror`` of an image ``width`` pixels wide, in the image itself."""
    return np.stack([width - 1 - xy[:, 0], xy[:, 1]], 1)


def at_side(size: tuple[int, int], side: int = SIDE) -> tuple[int, int]:
    """(w, h) of an image of ``size`` as ``gray`` scales it (longer side ``side``)."""
    s = side / max(size)
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def empty() -> np.void:
    """The record of an image with no features (verifies nothing)."""
    return np.zeros((), DTYPE)


def _knn2(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two nearest b descriptors (Hamming) of every a descriptor: FAISS's popcount kernels, about
    4× OpenCV's brute-force matcher on 500 × 500 ORB descriptors. On one thread: matching runs
    beside other matchers, or right after ONNX Runtime embedded the query while its threads still
    spin on the cores, where more OpenMP threads only wait (BENCHMARKS.md)."""
    import faiss

    index = faiss.IndexBinaryFlat(256)
    index.add(np.ascontiguousarray(b))
    with faiss_threads(1):
        return index.search(np.ascontiguousarray(a), 2)


def _hull_area(xy: np.ndarray) -> float:
    return float(_cv2().contourArea(_cv2().convexHull(np.ascontiguousarray(xy, np.float32)))) if len(xy) >= 3 else 0.0


def plausible(model: np.ndarray, src: np.ndarray, dst: np.ndarray, a_xy: np.ndarray, b_xy: np.ndarray) -> bool:
    """Whether an affine map found by RANSAC is a copy's geometry, not a coincidence: it keeps the
    orientation (mirrors are matched by mirrored features), its scale is within ``MAX_SCALE`` and its
    stretch (ratio of singular values) within ``MAX_STRETCH``, and its inliers (``src`` in a, ``dst`` in
    b) span at least ``MIN_SPREAD`` of the area the image's keypoints span, on one side at least
    (a crop's inliers cover the crop, not the original). Chance matches between different photos
    collapse onto a line or a point (singular values like 3.3 and 0.007)."""
    m = model[:, :2]
    det = float(np.linalg.det(m))
    if det <= 0:
        return False
    sv = np.linalg.svd(m, compute_uv=False)
    if sv[0] > MAX_STRETCH * sv[1] or not 1 / MAX_SCALE <= np.sqrt(det) <= MAX_SCALE:
        return False
    spread = max(_hull_area(src) / max(_hull_area(a_xy), 1.0), _hull_area(dst) / max(_hull_area(b_xy), 1.0))
    return spread >= MIN_SPREAD


def match(a: np.void, b: np.void) -> tuple[int, np.ndarray | None]:
    """(RANSAC inliers, 2×3 affine map of a's pixels onto b's) — (0, None) when fewer than
    ``MIN_MATCHES`` matches pass the ratio test, no model is found or the model is not ``plausible``."""
    n, model, _ = _match(a, b)
    return n, model


def matched(a: np.void, b: np.void) -> tuple[np.ndarray, np.ndarray]:
    """``match``'s inliers as points: (a's [n, 2], b's [n, 2]), float32 pixels at ``SIDE``; empty
    ([0, 2] each) when the pair has no plausible map."""
    n, model, pts = _match(a, b)
    return pts if model is not None else (np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))


def _match(a: np.void, b: np.void) -> tuple[int, np.ndarray | None, tuple | None]:
    na, nb = int(a["n"]), int(b["n"])
    if na < MIN_MATCHES or nb < MIN_MATCHES:
        return 0, None, None
    dist, nn = _knn2(a["desc"][:na], b["desc"][:nb])
    good = np.flatnonzero(dist[:, 0] < RATIO * dist[:, 1])
    good, to = _one_to_one(good, nn[good, 0], dist[good, 0])
    if len(good) < MIN_MATCHES:
        return 0, None, None
    src = a["xy"][good].astype(np.float32)
    dst = b["xy"][to].astype(np.float32)
    return _fit(src, dst, a["xy"][:na].astype(np.float32), b["xy"][:nb].astype(np.float32))


def _fit(
    src: np.ndarray, dst: np.ndarray, a_xy: np.ndarray, b_xy: np.ndarray
) -> tuple[int, np.ndarray | None, tuple | None]:
    """(RANSAC inliers, affine map, (inlier src, inlier dst)) of matched points ``src`` → ``dst``;
    (0, None, None) when no map is found or it is not ``plausible`` (``a_xy`` / ``b_xy``: all
    keypoints of each side)."""
    model, mask = _cv2().estimateAffine2D(
        src, dst, method=_cv2().RANSAC, ransacReprojThreshold=REPROJ_PX, maxIters=2000, confidence=0.99
    )
    if mask is None or model is None:
        return 0, None, None
    keep = mask.ravel().astype(bool)
    if not plausible(model, src[keep], dst[keep], a_xy, b_xy):
        return 0, None, None
    return int(keep.sum()), model, (src[keep], dst[keep])


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _one_to_one(ii: np.ndarray, jj: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (ii, jj) thinned to each a keypoint's closest b one (Hamming ``bits``), then each b
    keypoint's closest a one. No pairs in, none out."""
    if not len(ii):
        return ii, jj
    for by_a in (True, False):
        side = ii if by_a else jj
        order = np.lexsort((bits, side))
        first = np.r_[True, side[order][1:] != side[order][:-1]]
        ii, jj, bits = ii[order][first], jj[order][first], bits[order][first]
    return ii, jj


def upright(model: np.ndarray) -> bool:
    """Whether a first fit may be re-matched: turned by at most ``GUIDE_TURN`` degrees."""
    return abs(turn(model)) <= GUIDE_TURN


def turn(model: np.ndarray) -> float:
    """Degrees (-180, 180] an affine map turns the x axis by."""
    return float(np.degrees(np.arctan2(model[1, 0], model[0, 0])))


def rematch(a: np.void, b: np.void, model: np.ndarray) -> tuple[int, np.ndarray | None]:
    """``match`` guided by a first fit ``model`` of a onto b (see the module docstring): (inliers,
    map) of the last plausible re-fit, (0, None) when a round finds too few pairs or no plausible map."""
    na, nb = int(a["n"]), int(b["n"])
    axy, bxy = a["xy"][:na].astype(np.float32), b["xy"][:nb].astype(np.float32)
    n = 0
    for _ in range(GUIDE_ROUNDS):
        p = axy @ model[:, :2].T.astype(np.float32) + model[:, 2].astype(np.float32)
        dx, dy = p[:, :1] - bxy[:, 0], p[:, 1:] - bxy[:, 1]  # per axis: a reduction over a length-2 axis is slow
        ii, jj = np.nonzero(dx * dx + dy * dy < GUIDE_PX**2)
        bits = _POPCOUNT[np.bitwise_xor(a["desc"][ii], b["desc"][jj])].sum(1, dtype=np.int32)
        ok = bits <= GUIDE_BITS
        ii, jj = _one_to_one(ii[ok], jj[ok], bits[ok])
        if len(ii) < MIN_MATCHES:
            return 0, None
        n, model, _ = _fit(axy[ii], bxy[jj], axy, bxy)
        if model is None:
            return 0, None
    return n, model


def _variants(a) -> tuple:
    return a if isinstance(a, Variants) else tuple(a) if isinstance(a, (tuple, list)) else (a,)


def primary(a) -> np.void:
    """A query's own record: the first of its variants (``a`` may be one record)."""
    return _variants(a)[0]


def _fits(pair: tuple, stop_at: float = np.inf) -> list:
    """``match`` of each of the query's variants with the record, in order, until one reaches
    ``stop_at`` inliers ([] for a record of None)."""
    q, r = pair
    out: list = []
    if r is None:
        return out
    for v in _variants(q):
        out.append(match(v, r))
        if out[-1][0] >= stop_at:
            break
    return out


def verify(pairs: Sequence[tuple], min_inliers: int, map_: Callable = map, stop_at: int | None = None) -> np.ndarray:
    """RANSAC inliers of each (query, record) pair (a query may be a tuple of variants, the best
    counts; a record of None has 0). When no pair reaches ``min_inliers``, the ``GUIDE_MAX`` (2) pairs
    whose plausible fit had the most inliers from ``GUIDE_MIN`` to ``min_inliers`` - 1, turned by at
    most ``GUIDE_TURN`` degrees, are re-matched under that fit (``rematch``). ``stop_at``: the first
    pair is matched alone first, and when one of its variants reaches that many inliers the others
    are not checked (-1): a search whose nearest candidate is surely a copy of the query skips the
    rest (default None: every pair).
    ``map_``: e.g. a thread pool's ``map`` (OpenCV and FAISS release the GIL)."""
    head: list = []
    if stop_at is not None and len(pairs):
        head = [_fits(pairs[0], stop_at)]
        first = max((n for n, _ in head[0]), default=0)
        if first >= stop_at:
            out = np.full(len(pairs), -1, np.int64)
            out[0] = first
            return out
    got = head + list(map_(_fits, pairs[len(head) :]))
    best = np.array([max((n for n, _ in f), default=0) for f in got], np.int64)
    if not len(best) or best.max() >= min_inliers:
        return best

    def near(f) -> tuple[int, int]:  # (first-fit inliers, variant) of a pair's best near fit, else (0, -1)
        return max(
            ((n, v) for v, (n, m) in enumerate(f) if m is not None and GUIDE_MIN <= n < min_inliers and upright(m)),
            default=(0, -1),
        )

    nearest = [near(f) for f in got]

    def guided(i):
        (q, r), v = pairs[i], nearest[i][1]
        return max(int(best[i]), rematch(_variants(q)[v], r, got[i][v][1])[0])

    near_n = np.array([n for n, _ in nearest])
    chosen = [i for i in np.argsort(-near_n, kind="stable")[:GUIDE_MAX] if near_n[i]]  # ties: earlier pairs
    best[chosen] = list(map_(guided, chosen))
    return best


def inliers(a, b: np.void) -> int:
    """RANSAC inliers of the affine map a → b (see ``match``); ``a`` may be a tuple of a query's
    variants (``extract_query``): the best one counts. No guided re-matching (``verify`` does it)."""
    return max((match(v, b)[0] for v in _variants(a)), default=0)
