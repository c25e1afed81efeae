"""Finding image files. Torch-free.

Folders are walked recursively in sorted order; files are taken by extension (any case); a
directory whose name looks like an image file is not a file and is not taken; symlinked
directories are not followed (no loops); symlinked files are taken (a dangling one is then
reported as a failed image, never silently dropped). Files named explicitly are always taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from cbir.errors import CbirError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files under ``paths`` (files or folders), deduplicated, in a stable order."""
    found: list[Path] = []
    seen: set[str] = set()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    if is_image_name(f):
                        _add(Path(root) / f, found, seen)
        elif p.is_file() or p.is_symlink():
            _add(p, found, seen)
        else:
            raise CbirError(f"{p}: no such file or directory")
    return found


def _add(p: Path, found: list[Path], seen: set[str]) -> None:
    key = os.path.abspath(p)
    if key not in seen:
        seen.add(key)
        found.append(p)
