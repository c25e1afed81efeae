"""Guided re-matching for copies that nearly verify (issue 26 experiment; not in the product yet).

When a query verifies nothing, re-match each candidate whose first RANSAC affine fit was plausible
but had 6–14 inliers: every query keypoint is projected by that map, paired with the stored keypoint
within ``G_R`` px (default 16) of smallest Hamming distance (≤ ``G_H`` bits, default 64; one-to-one),
and the affine map is re-fitted (``G_IT`` rounds, default 2) with the same plausibility check.

    python benchmarks/guided_rematch.py INDEX DATA SUITE AUGS [NEGATIVES]

INDEX: a default index of DATA (e.g. Corel-1K); SUITE: ``cbir bench copies DATA SUITE --suite augly``;
AUGS: comma-separated edit folders (first 50 copies each). ``G_ON=0`` gives the baseline. Negatives:
the highest inlier count among each negative's checked hits (none may reach 15)."""
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from cbir.bench.copy_search import original_ids
from cbir.engine import local_features as lf
from cbir.index.gallery import Gallery

_POP = np.array([bin(i).count("1") for i in range(256)], np.uint8)
R = float(os.environ.get("G_R", 16))
HMAX = int(os.environ.get("G_H", 64))
MIN0 = int(os.environ.get("G_MIN0", 6))
ITERS = int(os.environ.get("G_IT", 2))
ON = os.environ.get("G_ON", "1") == "1"
_orig = lf.match


def _one_to_one(ii, jj, ham):
    """Each query keypoint's closest stored one (Hamming), then each stored one's closest query one."""
    order = np.lexsort((ham, ii))
    ii, jj, ham = ii[order], jj[order], ham[order]
    first = np.r_[True, ii[1:] != ii[:-1]]
    ii, jj, ham = ii[first], jj[first], ham[first]
    order = np.lexsort((ham, jj))
    ii, jj = ii[order], jj[order]
    first = np.r_[True, jj[1:] != jj[:-1]]
    return ii[first], jj[first]


def guided(a, b, model):
    na, nb = int(a["n"]), int(b["n"])
    axy, bxy = a["xy"][:na].astype(np.float32), b["xy"][:nb].astype(np.float32)
    n = 0
    for _ in range(ITERS):
        p = axy @ model[:, :2].T + model[:, 2]
        ii, jj = np.nonzero(((p[:, None, :] - bxy[None, :, :]) ** 2).sum(-1) < R * R)
        ham = _POP[np.bitwise_xor(a["desc"][ii], b["desc"][jj])].sum(1, dtype=np.int32)
        ok = ham <= HMAX
        ii, jj = _one_to_one(ii[ok], jj[ok], ham[ok])
        if len(ii) < lf.MIN_MATCHES:
            return 0, None
        src, dst = axy[ii], bxy[jj]
        m2, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=lf.REPROJ_PX,
                                        maxIters=2000, confidence=0.99)
        if m2 is None:
            return 0, None
        keep = mask.ravel().astype(bool)
        if not lf.plausible(m2, src[keep], dst[keep], axy, bxy):
            return 0, None
        model, n = m2, int(keep.sum())
    return n, model


def match(a, b):
    n, model = _orig(a, b)
    if model is None or n >= 15 or n < MIN0:
        return n, model
    n2, m2 = guided(a, b, model)
    return (n2, m2) if n2 > n else (n, model)


def main(index, data, suite, augs, nneg=0):
    g = Gallery(index)
    key = original_ids(g, data)

    def search(f):  # the guided pass only for a query that verified nothing (then with the windows)
        lf.match = _orig
        h = g.search([str(f)], k=10, rerank={"partial": 0} if ON else None)[0]["results"]
        if ON and not any(x["verified"] for x in h):
            lf.match = match
            h = g.search([str(f)], k=10)[0]["results"]
            lf.match = _orig
        return h

    for aug in augs.split(","):
        base = Path(suite) / "copies" / aug
        files = sorted(base.rglob("*.jpg"))[:50]
        ok = 0
        for f in files:
            h = search(f)
            ok += bool(h) and h[0]["id"] == key[str(f.relative_to(base).with_suffix(""))]
        print(aug, "rank-1", ok / len(files), flush=True)
    if nneg:
        t, top = time.time(), []
        for f in sorted((Path(suite) / "negatives").rglob("*.jpg"))[:nneg]:
            top.append(max([x["inliers"] or 0 for x in search(f)], default=0))
        print("negatives, most inliers >= t:", {t_: sum(v >= t_ for v in top) for t_ in (10, 12, 13, 14, 15)},
              "max", max(top), "s", round(time.time() - t))


if __name__ == "__main__":
    main(*sys.argv[1:4], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 0)
