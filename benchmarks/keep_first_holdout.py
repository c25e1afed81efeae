"""Class queries that are not in the gallery, under each ``keep_first``: every class folder's first
10 photos (natural sort) held out of an index of the rest; the default search; mAP over each query's
class (all of its photos in the index), P@1, P@10. BENCHMARKS.md, issue 41.

    python benchmarks/keep_first_holdout.py CORELDIR MODEL.onnx WORKDIR 0.8 0.7 0
"""

import re
import shutil
import sys
from pathlib import Path

import numpy as np

from cbir.engine.embedder import Embedder
from cbir.index.gallery import Gallery
from cbir.sources import find_images


def natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def split(corel: Path, work: Path, held: int = 10) -> None:
    for d in sorted(x for x in corel.iterdir() if x.is_dir()):
        files = sorted(find_images([d]), key=natural)
        for i, f in enumerate(files):
            dst = work / ("q" if i < held else "g") / d.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)


def main(corel: str, model: str, work: str, *keep_first: str) -> None:
    root = Path(work)
    if not (root / "idx").exists():
        split(Path(corel), root)
        Gallery.create(root / "idx", Embedder(model)).build([root / "g"])
    g = Gallery(root / "idx")
    qs = sorted(find_images([root / "q"]))
    for kf in keep_first:
        res = g.search([str(q) for q in qs], k=g.index.ntotal, rerank={"keep_first": float(kf)})
        aps, p1, p10 = [], [], []
        for q, r in zip(qs, res):
            rel = np.array([Path(h["path"]).parent.name == q.parent.name for h in r["results"]])
            n_rel = sum(1 for _ in find_images([root / "g" / q.parent.name]))
            aps.append(float((np.cumsum(rel) / np.arange(1, len(rel) + 1))[rel].sum() / n_rel))
            p1.append(rel[0])
            p10.append(rel[:10].mean())
        print(
            f"keep_first {kf}: mAP {np.mean(aps):.4f}  P@1 {np.mean(p1):.2f}  P@10 {np.mean(p10):.4f}  ({len(qs)} queries)"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
