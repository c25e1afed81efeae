"""A lead for heavy blur, not built: a DCT perceptual hash (pHash — 32×32 grey, the top-left 8×8 of
its DCT, one bit per coefficient above their median) of Corel-1K and the first N distractors, and
for each copy of a suite the Hamming distance to its original's hash and whether the original is the
unique nearest; for the suite's negatives (photos not in the gallery), the distance to their
nearest gallery hash. Blur removes the high frequencies a 32×32 thumbnail never had.

    python benchmarks/phash_lead.py 100000 /tmp/c41/blur_suite /tmp/c37/suite
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from cbir.sources import find_images

COREL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "corel1k"
DISTRACTORS = Path("/tmp/c41/dall")
POP = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def phash(path: Path) -> np.ndarray:
    try:
        im = Image.open(path)
        im.draft("L", (64, 64))
        im = im.convert("L").resize((32, 32), Image.Resampling.BILINEAR)
    except Exception:  # an unreadable file: an all-zero hash, reported by its distances
        return np.zeros(64, bool)
    d = dctn(np.asarray(im, np.float32), norm="ortho")[:8, :8].ravel()
    return d > np.median(d[1:])


def hashes(files: list[Path]) -> np.ndarray:
    with ThreadPoolExecutor(2) as ex:
        return np.packbits(np.array(list(ex.map(phash, files))), axis=1)


def main() -> None:
    corel = sorted(find_images([COREL]))
    dis = sorted(find_images([DISTRACTORS]))[: int(sys.argv[1])]
    t = time.time()
    gallery = hashes(corel + dis)
    print("gallery hashes", len(gallery), round(time.time() - t, 1), "s", flush=True)
    key = {str(p.relative_to(COREL).with_suffix("")): i for i, p in enumerate(corel)}
    for suite in map(Path, sys.argv[2:]):
        for aug in sorted(d.name for d in (suite / "copies").iterdir()):
            files = sorted(find_images([suite / "copies" / aug]))[:50]
            first, dist = 0, []
            for f, q in zip(files, hashes(files)):
                want = key[str(f.relative_to(suite / "copies" / aug).with_suffix(""))]
                h = POP[np.bitwise_xor(gallery, q)].sum(1)
                dist.append(int(h[want]))
                first += bool(h[want] == h.min() and (h == h[want]).sum() == 1)
            print(aug, "unique nearest", first, "/", len(files), "distance median / p90 / max",
                  np.median(dist), np.percentile(dist, 90), max(dist), flush=True)  # fmt: skip
        if (suite / "negatives").is_dir():
            near = np.array(
                [
                    POP[np.bitwise_xor(gallery, q)].sum(1).min()
                    for q in hashes(sorted(find_images([suite / "negatives"])))
                ]
            )
            print("negatives' nearest: min", near.min(), "median", np.median(near), "<= 6:", (near <= 6).sum(),
                  "<= 10:", (near <= 10).sum(), "of", len(near))  # fmt: skip


if __name__ == "__main__":
    main()
