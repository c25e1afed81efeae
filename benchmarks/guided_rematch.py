"""Guided re-matching (``local_features.verify``, in the default search since session 7) on and off.

    python benchmarks/guided_rematch.py INDEX DATA SUITE AUGS [NEGATIVES]

INDEX: a default index of DATA (e.g. Corel-1K); SUITE: ``cbir bench copies DATA SUITE --suite augly``;
AUGS: comma-separated edit folders (first 50 copies each); NEGATIVES: how many of the suite's negatives
to search, reporting how many reach each inlier count among their checked hits (none may reach 15).
Knobs (environment): ``G_ON=0`` switches the re-matching off (the baseline), ``G_R`` / ``G_H`` /
``G_MIN0`` / ``G_IT`` set ``GUIDE_PX`` / ``GUIDE_BITS`` / ``GUIDE_MIN`` / ``GUIDE_ROUNDS``.
Session 6 measured the variant "re-match every near candidate, verified or not" with this script's
first version (commit 0149a14); the product keeps "only when nothing verified"."""

import os
import sys
import time
from pathlib import Path

from cbir.bench.copy_search import original_ids
from cbir.copies import local_features as lf
from cbir.index.gallery import Gallery


def main(index: str, data: str, suite: str, augs: str, nneg: int = 0) -> None:
    lf.GUIDE_PX = float(os.environ.get("G_R", lf.GUIDE_PX))
    lf.GUIDE_BITS = int(os.environ.get("G_H", lf.GUIDE_BITS))
    lf.GUIDE_ROUNDS = int(os.environ.get("G_IT", lf.GUIDE_ROUNDS))
    lf.GUIDE_MIN = int(os.environ.get("G_MIN0", lf.GUIDE_MIN)) if os.environ.get("G_ON", "1") == "1" else 10**9
    g = Gallery(index)
    key = original_ids(g, data)
    for aug in augs.split(","):
        base = Path(suite) / "copies" / aug
        files = sorted(base.rglob("*.jpg"))[:50]
        ok = 0
        for f in files:
            h = g.search([str(f)], k=10)[0]["results"]
            ok += bool(h) and h[0]["id"] == key[str(f.relative_to(base).with_suffix(""))]
        print(aug, "rank-1", ok / len(files), flush=True)
    if nneg:
        t, top = time.time(), []
        for f in sorted((Path(suite) / "negatives").rglob("*.jpg"))[:nneg]:
            top.append(max([x["inliers"] or 0 for x in g.search([str(f)], k=10)[0]["results"]], default=0))
        print(
            "negatives, most inliers >= t:",
            {t_: sum(v >= t_ for v in top) for t_ in (10, 12, 13, 14, 15)},
            "max",
            max(top),
            "s",
            round(time.time() - t),
        )


if __name__ == "__main__":
    main(*sys.argv[1:5], int(sys.argv[5]) if len(sys.argv) > 5 else 0)
