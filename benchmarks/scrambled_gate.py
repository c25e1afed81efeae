"""The structure gate of engine.colour on the AugLy suite: min/max of row_stats structure per edit (40 each) and over Corel-1K.

.venv/bin/python benchmarks/scrambled_gate.py   (suite at /tmp/c26/suite from `cbir bench copies ... --suite augly`)
"""

from pathlib import Path

from cbir.copies.colour import row_stats
from cbir.engine.preprocess import Preprocess

pp = Preprocess((224, 224))
root = Path("/tmp/c26/suite")
res = {}
for kind in ("copies", "negatives"):
    for d in sorted((root / kind).iterdir()):
        res[(kind, d.name)] = [row_stats(pp(str(f)))[3] for f in sorted(d.rglob("*.jpg"))[:40]]
for k, v in sorted(res.items(), key=lambda t: min(t[1]))[:5]:
    print(k, round(float(min(v)), 4), round(float(max(v)), 4))
orig = [row_stats(pp(str(p)))[3] for p in sorted(Path("../shared/datasets/corel1k").rglob("*.jpg"))]
print("corel min", round(float(min(orig)), 3))
