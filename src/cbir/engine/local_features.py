"""Local features for spatial verification: ORB keypoints of a downscaled grayscale image, matched
with Lowe's ratio test and checked with a RANSAC affine model (OpenCV). Torch-free.

An image whose shorter side is under ``MIN_SIDE`` (63 px) at that scale has no features.
``extract(source)`` → one record of ``DTYPE`` (fixed size, so that a shard's features are one
memory-mappable ``.npy``): ``n`` keypoints (≤ ``MAX_KEYPOINTS``, default 500) of the image scaled
to ``SIDE`` pixels on its longer side (default 320), their ``xy`` (float16, pixels) and 32-byte ORB
``desc``. ``inliers(a, b)`` → the number of RANSAC inliers of a 6-dof affine map from ``a``'s
matched keypoints to ``b``'s: crops, rescaling, rotation, recompression, colour shifts, borders and
captions keep many; different scenes keep almost none. An image with too few keypoints (flat, tiny)
verifies nothing — it has 0 inliers with everything.

ORB over SIFT: binary descriptors are 4× smaller than SIFT's 128 floats (32 B vs 512 B per
keypoint) and Hamming matching is several times faster; on the edited-copy benchmark both verify the
copies (BENCHMARKS.md, "Re-ranking and copy detection").
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from cbir.engine.preprocess import MAX_PIXELS, ImageSource, open_image, to_rgb

MAX_KEYPOINTS = 500
SIDE = 320
RATIO = 0.8  # Lowe's ratio test on Hamming distances
REPROJ_PX = 6.0  # RANSAC reprojection threshold, pixels at SIDE
MIN_MATCHES = 8
# ORB ignores a 31-pixel border (its patch size): a shorter side holds no keypoint, and its 8-level
# pyramid would shrink such a strip (e.g. 2000×3 → 320×0 at the top level) until OpenCV asserts.
MIN_SIDE = 2 * 31 + 1
DTYPE = np.dtype([("n", "<u2"), ("xy", "<f2", (MAX_KEYPOINTS, 2)), ("desc", "u1", (MAX_KEYPOINTS, 32))])

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
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC,
                         reducing_gap=2.0 if scale < 1 else None)
    return np.asarray(img)


def extract(source: ImageSource, name: str = "<image>", max_pixels: int = MAX_PIXELS) -> np.void:
    """One ``DTYPE`` record of ``source``'s ORB features. Raises ``ImageError`` naming ``name``."""
    cv2 = _cv2()
    img = gray(source, name, max_pixels=max_pixels)
    rec = np.zeros((), DTYPE)
    if min(img.shape) < MIN_SIDE:  # a thin strip or a tiny image: nothing to detect (verifies nothing)
        return rec
    # ORB objects are not documented thread-safe: one per call costs ~20 µs, nothing next to detection
    kps, desc = cv2.ORB_create(nfeatures=MAX_KEYPOINTS, fastThreshold=10).detectAndCompute(img, None)
    if desc is None or not kps:
        return rec
    n = min(len(kps), MAX_KEYPOINTS)
    rec["n"] = n
    rec["xy"][:n] = np.array([k.pt for k in kps[:n]], np.float32)
    rec["desc"][:n] = desc[:n]
    return rec


def empty() -> np.void:
    """The record of an image with no features (verifies nothing)."""
    return np.zeros((), DTYPE)


def match(a: np.void, b: np.void) -> tuple[int, np.ndarray | None]:
    """(RANSAC inliers, 2×3 affine map of a's pixels onto b's) — (0, None) when fewer than
    ``MIN_MATCHES`` matches pass the ratio test or no model is found."""
    na, nb = int(a["n"]), int(b["n"])
    if na < MIN_MATCHES or nb < MIN_MATCHES:
        return 0, None
    cv2 = _cv2()
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a["desc"][:na], b["desc"][:nb], k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_MATCHES:
        return 0, None
    src = a["xy"][[m.queryIdx for m in good]].astype(np.float32)
    dst = b["xy"][[m.trainIdx for m in good]].astype(np.float32)
    model, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJ_PX,
                                       maxIters=2000, confidence=0.99)
    return (0, None) if mask is None else (int(mask.sum()), model)


def inliers(a: np.void, b: np.void) -> int:
    """RANSAC inliers of the affine map a → b (see ``match``)."""
    return match(a, b)[0]
