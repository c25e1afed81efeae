"""How close the AugLy negatives come to verifying, and what a lower --min-inliers would buy (issue 26):
for every negative, the most plausible-map inliers among its top-10 candidates; for the copies of the
hardest edits, how many of their originals verify at each threshold. Index: a default build of Corel-1K.

    .venv/bin/python benchmarks/min_inliers_margin.py   (index /tmp/c26/idx4, suite /tmp/c26/suite)
"""

from collections import Counter
from pathlib import Path

from cbir.bench.copy_search import original_ids
from cbir.index.gallery import Gallery

g = Gallery("/tmp/c26/idx4")
cfg = {"min_inliers": 4, "partial": 0}
neg = []
for f in sorted(Path("/tmp/c26/suite/negatives").rglob("*.jpg")):
    h = g.search([str(f)], k=10, rerank=cfg)[0]["results"]
    neg.append(max([x["inliers"] or 0 for x in h if x["verified"]], default=0))
print(
    "negatives: max plausible inliers in top-10, counts >= t:",
    {t: sum(v >= t for v in neg) for t in (8, 10, 11, 12, 13, 14, 15)},
    "max",
    max(neg),
)
key = original_ids(g, "../shared/datasets/corel1k")
gain = Counter()
for aug in [
    "perspective_transform",
    "chain2",
    "chain3",
    "crop",
    "pip",
    "screenshot",
    "overlay_stripes",
    "pixelization",
]:
    base = Path("/tmp/c26/suite/copies") / aug
    vals = []
    for f in sorted(base.rglob("*.jpg"))[:50]:
        want = key[str(f.relative_to(base).with_suffix(""))]
        h = g.search([str(f)], k=10, rerank=cfg)[0]["results"]
        vals.append(next((x["inliers"] for x in h if x["id"] == want and x["verified"]), 0))
    print(aug, {t: sum(v >= t for v in vals) for t in (10, 11, 12, 13, 15)})
