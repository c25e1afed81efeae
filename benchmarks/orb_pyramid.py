"""ORB's pyramid against its cost and the copy-search figures: is there a cheaper local feature for a
GPU build, whose bound is decode + ORB on the CPU cores (issue 38)? An experiment, not a default.

For each variant (pyramid levels × scale factor; the default is 8 × 1.2): ORB extraction ms per image
on one thread (Corel JPEGs, median of 3 passes), then a fresh default index of the data set built with
that ORB (the index's and the queries' features alike) and the AugLy suite searched through it
(``bench.copy_search``: rank-1, the worst edit, verified negatives, ms per query). One process, the
variants in turn; ``local_features._cv2`` is wrapped so ``ORB_create`` gets the variant's pyramid.

Usage: python benchmarks/orb_pyramid.py MODEL DATA SUITE OUT.json [PER_AUG]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {"8x1.2": (8, 1.2), "4x1.2": (4, 1.2), "4x1.44": (4, 1.44)}


def patched(levels: int, factor: float):
    """A stand-in for ``local_features._cv2`` whose ``ORB_create`` uses this pyramid."""
    import types

    import cv2

    def orb_create(**kw):
        return cv2.ORB_create(nlevels=levels, scaleFactor=factor, **kw)

    names = {n: getattr(cv2, n) for n in dir(cv2) if not n.startswith("__")}
    module = types.SimpleNamespace(**{**names, "ORB_create": orb_create})  # made once: ``_cv2()`` is called often
    return lambda: module


def orb_ms(files: list[str]) -> float:
    from cbir.copies import local_features

    datas = [Path(f).read_bytes() for f in files]
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for d in datas:
            local_features.extract(d, "bench")
        runs.append((time.perf_counter() - t0) / len(datas) * 1e3)
    return float(np.median(runs))


def main(model: str, data: str, suite: str, out: str, per_aug: int | None = 20) -> None:
    from cbir.bench.copy_search import copy_search
    from cbir.copies import local_features
    from cbir.engine.embedder import Embedder
    from cbir.index.gallery import Gallery
    from cbir.sources import find_images

    files = [str(p) for p in find_images([data])][::5][:200]
    emb = Embedder(model)
    original, report = local_features._cv2, {"model": model, "data": data, "suite": suite, "per_aug": per_aug}
    tmp = Path(tempfile.mkdtemp(prefix="orb-pyramid-"))
    try:
        for name, (levels, factor) in VARIANTS.items():
            local_features._cv2 = patched(levels, factor)
            ms = orb_ms(files)
            g = Gallery.create(tmp / name, emb)
            g.build([data])
            r = copy_search(g, data, suite, per_aug=per_aug)
            report[name] = {
                "orb_ms_per_image": round(ms, 2),
                **{k: v for k, v in r.items() if k != "per_aug_negatives"},
            }
            print(
                name,
                round(ms, 2),
                "ms",
                r["rank1"],
                r["min_rank1_keeping"],
                r["verified_false_positives"],
                file=sys.stderr,
            )
            Path(out).write_text(json.dumps(report, indent=1))
            shutil.rmtree(tmp / name)
    finally:
        local_features._cv2 = original
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:5], *(int(x) for x in sys.argv[5:6]))
