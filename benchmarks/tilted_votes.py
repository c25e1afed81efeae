"""A lead, not built: the descriptor votes of a query's four tilted views (``local_features.TILTS``)
on a saved 101k vote index, for the misses listed in a ``fails`` file (one JSON object per line:
aug, dir, f, want, tilt) and for every tenth AugLy negative (chance votes). BENCHMARKS.md, issue 41.

    python benchmarks/tilted_votes.py   # paths as in the session that ran it (/tmp/c44/grow, /tmp/c45)
"""

import json
import time
from pathlib import Path

import numpy as np

from cbir.copies import local_features as lf
from cbir.copies import votes
from cbir.index.gallery import Gallery
from cbir.sources import find_images

g = Gallery("/tmp/c44/grow")
st = g.vote_index()
print("keep", st.keep, "ntotal", st.ntotal)
fails = [json.loads(l) for l in open("/tmp/c45/fails101k.txt") if l.startswith("{")]
ms = []
for r in fails:
    f = f"/tmp/c37/suite/copies/{r['aug']}/{r['dir']}/{r['f']}"
    views = lf.tilted_views(lf.gray(f, f))
    t = time.time()
    c = votes.counts(st, list(views))
    ms.append((time.time() - t) * 1e3)
    top = sorted(c.items(), key=lambda t: -t[1])[:2]
    print(r["aug"][:6], r["dir"], r["f"], "tilt inl", max(r["tilt"]), "orig votes", c.get(r["want"], 0), "top2", top)
print("ms per 4-view vote", np.median(ms))
neg = sorted(find_images([Path("/tmp/c37/suite/negatives")]))[::10][:63]
best = []
for f in neg:
    views = lf.tilted_views(lf.gray(str(f), str(f)))
    c = votes.counts(st, list(views))
    best.append(max(c.values(), default=0))
print(
    "negatives (63): best item votes from tilted views: max",
    max(best),
    "n>=2:",
    sum(b >= 2 for b in best),
    "n>=3:",
    sum(b >= 3 for b in best),
)
