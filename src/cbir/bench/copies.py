"""Edited copies of gallery images, for the "find this photo" benchmark and for dedup's recall.

``EDITS`` is the registry: name → function(PIL RGB image, rng) → edited image. Each is what happens
to a photo on its way back to a user:

- ``crop``      a random crop keeping ~60 % of each side (36 % of the area)
- ``rotate``    rotation by ±5–15° (expanded canvas, white corners)
- ``jpeg``      recompression at JPEG quality 8
- ``colour``    colour shift: saturation ×0.3–1.7, brightness ×0.7–1.3, a hue roll of the channels' weights
- ``downscale`` downscaling to 1/4 of each side (and back up to at most 128 px)
- ``border``    a 12–20 % coloured border on every side
- ``caption``   a white band with black text over the bottom 15 %

``make(src, out, n, seed)`` picks ``n`` images of ``src`` (stratified by folder, seeded) and writes
``out/<edit>/<path relative to src>`` for every edit; the copy's original is the image at the same
relative path in ``src`` (``original_of``). Deterministic for a seed.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from cbir.sources import find_images


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.55, 0.65)), int(h * rng.uniform(0.55, 0.65))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(5, 15)) * (1 if rng.random() < 0.5 else -1)
    return img.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=8)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _colour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.3, 1.7)))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
    a = np.asarray(img, np.float32)
    mix = np.eye(3) * 0.7 + np.roll(np.eye(3), 1, axis=1) * 0.3  # a hue shift
    return Image.fromarray(np.clip(a @ mix.T, 0, 255).astype(np.uint8))


def _downscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, w // 4), max(1, h // 4)), Image.Resampling.BILINEAR)


def _border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    b = int(max(w, h) * rng.uniform(0.12, 0.2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    out = Image.new("RGB", (w + 2 * b, h + 2 * b), colour)
    out.paste(img, (b, b))
    return out


def _caption(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = img.copy()
    w, h = img.size
    d = ImageDraw.Draw(img)
    d.rectangle((0, int(h * 0.85), w, h), fill=(255, 255, 255))
    d.text((6, int(h * 0.87)), f"photo #{int(rng.integers(1000, 9999))} (c) someone else", fill=(0, 0, 0))
    return img


EDITS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": _crop,
    "rotate": _rotate,
    "jpeg": _jpeg,
    "colour": _colour,
    "downscale": _downscale,
    "border": _border,
    "caption": _caption,
}


def pick(src: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` images of ``src``, spread evenly over its folders, in a seeded order."""
    files = sorted(find_images([src]))
    by_dir: dict[Path, list[Path]] = {}
    for f in files:
        by_dir.setdefault(Path(f).parent, []).append(Path(f))
    rng = np.random.default_rng(seed)
    lists = [list(rng.permutation(v)) for _, v in sorted(by_dir.items())]
    out: list[Path] = []
    while len(out) < min(n, len(files)):
        for lst in lists:
            if lst and len(out) < n:
                out.append(Path(lst.pop()))
    return out


def make(
    src: str | os.PathLike, out: str | os.PathLike, n: int = 100, seed: int = 0, edits: list[str] | None = None
) -> list[Path]:
    """Write edited copies of ``n`` images of ``src`` under ``out/<edit>/``; returns the copies."""
    src, out = Path(src), Path(out)
    written = []
    for i, original in enumerate(pick(src, n, seed)):
        img = Image.open(original).convert("RGB")
        rel = original.relative_to(src).with_suffix(".jpg")
        for j, name in enumerate(edits or EDITS):
            rng = np.random.default_rng([seed, i, j])
            dst = out / name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            EDITS[name](img, rng).save(dst, "JPEG", quality=90)
            written.append(dst)
    return written


def original_of(
    copy: str | os.PathLike, copies_root: str | os.PathLike, gallery_root: str | os.PathLike
) -> tuple[str, Path]:
    """(edit name, relative path of the original in the gallery, any extension) of a copy."""
    rel = Path(copy).relative_to(copies_root)
    return rel.parts[0], Path(*rel.parts[1:]).with_suffix("")


def score_dedup(groups: list[dict], data: str | os.PathLike, copies: str | os.PathLike) -> dict:
    """Recall and purity of ``cbir dedup`` groups on a gallery holding ``data`` and its planted
    ``copies`` (``make``'s layout, anywhere under the indexed folders). Recall: copies grouped with
    their original. Pair precision: pairs inside groups that share an original (Corel's own
    same-scene shots count as misses here, so it is a lower bound). Cross-class groups: groups whose
    originals lie in different top-level folders of ``data``. ``recall_per_edit``: the same per edit
    folder. ``groups_mixing_same_edit``: groups holding copies of different originals made by one
    edit — different photos in one template (meme, screenshot frame) grouped through the template."""
    data, copies = Path(data).resolve(), Path(copies).resolve()

    def original(p: str) -> str | None:
        p = Path(p).resolve()
        for root, skip in ((copies, 1), (data, 0)):
            try:
                rel = p.relative_to(root)
            except ValueError:
                continue
            return str(Path(*rel.parts[skip:]).with_suffix(""))
        return None

    group_of: dict[str, int] = {}
    cross = mixed = same_edit = pairs = good_pairs = 0
    for n, g in enumerate(groups):
        keys = [original(p) for p in g["paths"]]
        by_edit: dict[str, set] = defaultdict(set)
        for k, p in zip(keys, g["paths"]):
            if k is not None and Path(p).resolve().is_relative_to(copies):
                by_edit[Path(p).resolve().relative_to(copies).parts[0]].add(k)
        same_edit += any(len(v) > 1 for v in by_edit.values())
        for k, p in zip(keys, g["paths"]):
            if k is not None and Path(p).resolve().is_relative_to(copies):
                group_of[f"copy:{p}"] = n
            elif k is not None:
                group_of[f"orig:{k}"] = n
        known = [k for k in keys if k is not None]
        cross += len({k.split("/")[0] for k in known}) > 1
        mixed += len(set(known)) > 1
        for i in range(len(known)):
            for j in range(i + 1, len(known)):
                pairs += 1
                good_pairs += known[i] == known[j]
    planted = sorted(find_images([copies]))
    hit = {c: group_of.get(f"copy:{c}", -1) == group_of.get(f"orig:{original(c)}", -2) for c in planted}
    per_edit: dict[str, list[bool]] = defaultdict(list)
    for c, ok in hit.items():
        per_edit[Path(c).resolve().relative_to(copies).parts[0]].append(ok)
    return {
        "groups": len(groups),
        "planted_copies": len(planted),
        "recall": round(sum(hit.values()) / max(len(planted), 1), 4),
        "pair_precision": round(good_pairs / max(pairs, 1), 4),
        "cross_class_groups": cross,
        "groups_mixing_originals": mixed,
        "groups_mixing_same_edit": same_edit,
        "recall_per_edit": {e: round(sum(v) / len(v), 3) for e, v in sorted(per_edit.items())},
    }
