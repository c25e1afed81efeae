"""The hash stage's margin as a gallery grows past what an index here holds: the perceptual hashes
of an index (``Gallery.hashes``, as the hash stage reads them) plus N stand-in hashes of new crops
of the distractor sources (``bench.distractors``' boxes at another seed, each source downscaled once
to 1,024 px, the crop scaled to the local features' 320 px as ``local_features.gray`` does) — real
crops of real photos, hashed only (no vector, no ORB).

For each suite's copies (per edit): the original's distance, whether it is within ``MAX_BITS``,
how many other items and stand-ins are too. For the suite's negatives and for the index's own Corel
photos against everything that is not Corel (photos outside a distractors-only gallery; 1,000
independent scenes): the nearest distance, how many come within 4 / 6 / 8 bits, and the share of
(query, item) pairs within 4 bits — the expected false matches per query at a million items.

    python benchmarks/phash_at_scale.py INDEX DATA N SUITE [SUITE ...]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cbir.bench import distractors
from cbir.copies import local_features as lf
from cbir.copies import phash
from cbir.index.gallery import Gallery
from cbir.sources import find_images

AT = (4, 6, 8)


def _source_hashes(s: int, src: Path, count: int) -> np.ndarray:
    with Image.open(src) as im:
        img = im.convert("L")
    img.thumbnail((1024, 1024))
    a = np.asarray(img)
    rng = np.random.default_rng([7, s])
    out = np.zeros((count, phash.BYTES), np.uint8)
    for k in range(count):
        x0, y0, x1, y1 = distractors.crop_box(rng, a.shape[1], a.shape[0])
        crop = a[y0:y1, x0:x1]
        w, h = lf.at_side((crop.shape[1], crop.shape[0]))
        out[k] = phash.of(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA))
    return out


def stand_ins(n: int) -> np.ndarray:
    srcs = distractors.sources()
    per = np.full(len(srcs), n // len(srcs))
    per[: n % len(srcs)] += 1
    with ThreadPoolExecutor(2) as ex:
        return np.concatenate(list(ex.map(lambda j: _source_hashes(j[0], j[1], int(per[j[0]])), enumerate(srcs))))


def query(path: Path) -> np.ndarray:
    return phash.query_hashes(lf.gray(path, str(path)))


def nearest_report(name: str, qs: list[np.ndarray], pools: dict[str, np.ndarray]) -> None:
    pools = {k: h for k, h in pools.items() if len(h)}
    near = {k: np.array([phash.distances(q, h).min() for q in qs]) for k, h in pools.items()}
    pairs = {k: sum(int((phash.distances(q, h) <= phash.MAX_BITS).sum()) for q in qs) for k, h in pools.items()}
    for k, d in near.items():
        counts = ", ".join(f"<= {t}: {(d <= t).sum()}" for t in AT)
        rate = pairs[k] / (len(qs) * len(pools[k]))
        print(
            f"{name} vs {k} ({len(pools[k])}): nearest min {d.min()} median {np.median(d):g}; {counts} of {len(d)};"
            f" pairs within {phash.MAX_BITS}: {pairs[k]} ({rate:.2e} per pair, {rate * 1e6:.3f} per query at 1M)",
            flush=True,
        )


def main() -> None:
    index, data, n = Path(sys.argv[1]), Path(sys.argv[2]).resolve(), int(sys.argv[3])
    g = Gallery(index)
    ids, hashes = g.hashes.all()
    paths = g.store.paths_of(ids)
    corel = np.array([Path(paths[int(i)]).resolve().is_relative_to(data) for i in ids])
    key = {
        str(Path(paths[int(i)]).resolve().relative_to(data).with_suffix("")): j for j, i in enumerate(ids) if corel[j]
    }
    t = time.time()
    more = stand_ins(n) if n else np.zeros((0, phash.BYTES), np.uint8)
    more = more[more.any(axis=1)]
    print(
        f"index {len(ids)} hashes ({corel.sum()} Corel); {len(more)} stand-ins in {time.time() - t:.0f} s", flush=True
    )
    for suite in map(Path, sys.argv[4:]):
        for aug in sorted(d.name for d in (suite / "copies").iterdir()):
            files = sorted(find_images([suite / "copies" / aug]))[:50]
            within = first = others = extra = 0
            dist = []
            for f in files:
                q = query(f)
                want = key[str(f.relative_to(suite / "copies" / aug).with_suffix(""))]
                d = phash.distances(q, hashes)
                dist.append(int(d[want]))
                within += bool(d[want] <= phash.MAX_BITS)
                first += bool(d[want] <= phash.MAX_BITS and (d < d[want]).sum() == 0)
                others += int((d <= phash.MAX_BITS).sum() - (d[want] <= phash.MAX_BITS))
                extra += int((phash.distances(q, more) <= phash.MAX_BITS).sum()) if len(more) else 0
            print(
                f"{suite.name}/{aug}: original within {phash.MAX_BITS}: {within}/{len(files)} (nearest: {first}); distance"
                f" median {np.median(dist):g} max {max(dist)}; other items within: {others}, stand-ins within: {extra}",
                flush=True,
            )
        if (suite / "negatives").is_dir():
            qs = [query(f) for f in sorted(find_images([suite / "negatives"]))]
            nearest_report(f"{suite.name} negatives", qs, {"index": hashes, "stand-ins": more})
    qs = [query(Path(paths[int(i)])) for i in ids[corel]]  # as a query: as it is and mirrored
    nearest_report("Corel photos", qs, {"non-Corel items": hashes[~corel], "stand-ins": more})
    d = [np.sort(phash.distances(h[None], hashes[corel]))[1] for h in hashes[corel]]
    print("Corel vs Corel: nearest other within 4 / 6 / 8:", *[int((np.array(d) <= t).sum()) for t in AT])


if __name__ == "__main__":
    main()
