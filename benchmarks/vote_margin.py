"""How close the descriptor votes bring photos that are NOT in the gallery to verifying (issue 26):
for every AugLy negative, the items the second look votes for (as it is and re-stretched to the
gallery's common shapes) and the most first-fit inliers any of them reaches; with guided
re-matching too, for comparison (what the votes do not use). Index: a default build of Corel-1K.

    .venv/bin/python benchmarks/vote_margin.py INDEX NEGATIVES_DIR [NEGATIVES_DIR ...]
"""

import sys
from pathlib import Path

import numpy as np

from cbir.copies import local_features as lf
from cbir.copies.windows import vote_pairs
from cbir.index.gallery import Gallery

g = Gallery(sys.argv[1])
first, guided, votes_ = [], [], []
for d in sys.argv[2:]:
    for f in sorted(Path(d).rglob("*.jpg")):
        pairs = vote_pairs(g, str(f), str(f), lf.extract_query(str(f)), g.snapshot())
        recs = g.features.get(np.array([i for _, i in pairs], np.int64))
        first.append(max([lf.inliers(q, r) for (q, _), r in zip(pairs, recs) if r is not None], default=0))
        guided.append(
            max([int(lf.verify([(q, r)], 15)[0]) for (q, _), r in zip(pairs, recs) if r is not None], default=0)
        )
        votes_.append(len(pairs))
at = (8, 10, 12, 13, 14, 15)
print(f"negatives {len(first)}, voted pairs per negative: mean {np.mean(votes_):.2f}, max {max(votes_)}")
print(
    "first fit (what verifies), negatives reaching t inliers:",
    {t: sum(v >= t for v in first) for t in at},
    "max",
    max(first),
)
print("with guided re-matching (not used for votes):", {t: sum(v >= t for v in guided) for t in at}, "max", max(guided))
