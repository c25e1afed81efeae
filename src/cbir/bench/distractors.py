"""``cbir bench distractors``: a gallery-sized set of real photos that are not the benchmark's, for
copy detection at scale (a copy's original must still come first among them, a photo that is not in
the gallery must still verify nothing).

Sources: the photos and wallpapers Debian's desktop packages install (``DEFAULT_SOURCES``:
``plasma-workspace-wallpapers``, ``mate-backgrounds``, ``ukui-wallpapers``, ``gnome-backgrounds``;
the largest file of each wallpaper folder), or the folders given. Never scikit-image's or
scikit-learn's bundled photos: the AugLy suite makes its negatives from them, and a distractor cut
from a negative's source would be a true copy of it. There are far fewer sources than distractors
wanted, so each distractor is a crop of one at a random position, size (``SCALE`` of the source's
sides) and aspect (``ASPECT``), shrunk to at most ``SIDE`` px and saved as JPEG: crops of one source
that overlap share content, as different photos of one place do. Deterministic for a seed.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.cores import all_cores
from cbir.errors import CbirError
from cbir.sources import find_images

DEFAULT_SOURCES = ("/usr/share/wallpapers", "/usr/share/backgrounds")
SCALE = (0.2, 0.7)  # a crop's area as a share of the source's, drawn uniformly
ASPECT = (0.5, 2.0)  # width / height, log-uniform
SIDE = 512
QUALITY = 85


def sources(dirs: list[str] | None = None) -> list[Path]:
    """Source photos: every image under ``dirs``, or under ``DEFAULT_SOURCES`` the largest file of
    each wallpaper (it ships at several resolutions) and every other photo."""
    if dirs:
        return find_images(dirs)
    found: list[Path] = []
    for root in (Path(d) for d in DEFAULT_SOURCES if Path(d).is_dir()):
        by_folder: dict[Path, list[Path]] = {}
        for p in find_images([root]):
            if p.stem != "screenshot":  # KDE's preview of a wallpaper it also ships in full
                by_folder.setdefault(p.parent, []).append(p)
        for folder, files in sorted(by_folder.items()):
            if folder.name.startswith("images"):  # KDE's <name>/contents/images/<w>x<h>.jpg: one photo
                files = [max(files, key=lambda f: f.stat().st_size)]
            found.extend(sorted(files))
    if not found:
        raise CbirError(
            "no distractor sources: install Debian's plasma-workspace-wallpapers, mate-backgrounds, "
            "ukui-wallpapers or gnome-backgrounds, or pass --from DIR"
        )
    return found


def crop_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """A random box inside a w × h image: area ``SCALE`` of it, aspect ``ASPECT``, at least 64 px a side."""
    area = rng.uniform(*SCALE) * w * h
    aspect = float(np.exp(rng.uniform(np.log(ASPECT[0]), np.log(ASPECT[1]))))
    cw = int(min(w, max(64, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(64, round(np.sqrt(area / aspect)))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return x0, y0, x0 + cw, y0 + ch


def _one_source(s: int, src: Path, count: int, out: Path, seed: int) -> int:
    """Write source ``s``'s ``count`` crops (those not written yet); returns how many were written."""
    name = src.parents[2].name if src.parent.name.startswith("images") else src.stem
    folder = out / f"{s:04d}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        img = im.convert("RGB")
    rng = np.random.default_rng([seed, s])
    written = 0
    for k in range(count):
        box = crop_box(rng, *img.size)  # drawn for every k, so a resumed run cuts the same boxes
        path = folder / f"{k:06d}.jpg"
        if path.is_file():
            continue
        crop = img.crop(box)
        crop.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
        crop.save(path, quality=QUALITY)
        written += 1
    return written


def make(out: str | os.PathLike, n: int, dirs: list[str] | None = None, seed: int = 0) -> dict:
    """Write ``n`` distractors under ``out/<k>-<source name>/<i>.jpg``, spread evenly over the
    sources, one source per thread (Pillow's decode, resize and encode release the GIL); returns
    counts. Existing files are kept (a killed run resumes)."""
    srcs = sources(dirs)
    out = Path(out)
    per = np.full(len(srcs), n // len(srcs))
    per[: n % len(srcs)] += 1
    jobs = [(s, src, int(c)) for s, (src, c) in enumerate(zip(srcs, per)) if c]
    with ThreadPoolExecutor(all_cores()) as pool:
        written = sum(pool.map(lambda j: _one_source(*j, out, seed), jobs))
    return {"sources": len(srcs), "distractors": int(per.sum()), "written": written, "out": str(out)}


def ordered(out: str | os.PathLike) -> list[Path]:
    """The distractors ``make`` wrote under ``out``, interleaved over their sources (every source's
    first crop, then every source's second, …): any prefix spreads over all sources."""
    files = find_images([out])
    if not files:
        raise CbirError(f"--distractors {out}: no images (write them with `cbir bench distractors {out} -n N`)")
    return sorted(files, key=lambda p: (p.stem, p.parent.name))


def grow(
    gallery, distractors: str | os.PathLike, size: int, base: int, progress: bool = False, pool: list | None = None
) -> dict:
    """Add the first ``size`` - ``base`` distractors (``pool``, default ``ordered(distractors)``; none
    when that is ≤ 0) to ``gallery``, which held ``base`` items of its own before any was added
    (those already indexed are skipped by the add): {"added": items indexed now, "add_s": seconds}."""
    pool, want = pool if pool is not None else ordered(distractors), size - base
    if want > len(pool):
        raise CbirError(f"--at {size}: --distractors {distractors} holds {len(pool)}, {want} needed")
    t0 = time.perf_counter()
    added = gallery.add([str(p) for p in pool[:want]], progress=progress) if want > 0 else {"indexed": 0}
    return {"added": int(added["indexed"]), "add_s": round(time.perf_counter() - t0, 1)}


def source_of(path: str | os.PathLike, root: Path) -> str | None:
    """The source a distractor under ``root`` (resolved) was cut from — its folder's name without
    ``make``'s ``NNNN-`` number, so two sets written apart agree — or None for a path outside it."""
    path = Path(path).resolve()
    return re.sub(r"^\d+-", "", path.parent.name) if path.is_relative_to(root) else None


def score_groups(groups: list[dict], distractors: str | os.PathLike) -> dict:
    """How dedup ``groups`` (each with ``paths``) treat the distractors under ``distractors``
    (``make``'s layout, at any depth: a source is its folder's name without the ``NNNN-`` number,
    so two sets written apart agree): ``groups_joining_distractors`` — groups holding a distractor
    and any other item (all false: the distractors are neither the benchmark's photos nor made from
    them); ``distractor_groups_across_sources`` — distractor-only groups spanning two source names
    (false, unless two packages ship one picture, e.g. in two resolutions); ``distractors_grouped``
    — distractors in any group (crops of one source that overlap are near-duplicates of each other,
    so not an error by itself)."""
    root = Path(distractors).resolve()
    joining = across = grouped = 0
    for g in groups:
        srcs = [source_of(p, root) for p in g["paths"]]
        inside = [s for s in srcs if s is not None]
        grouped += len(inside)
        joining += bool(inside) and len(inside) < len(srcs)
        across += len(inside) == len(srcs) and len(set(inside)) > 1
    return {
        "groups_joining_distractors": joining,
        "distractor_groups_across_sources": across,
        "distractors_grouped": grouped,
    }
