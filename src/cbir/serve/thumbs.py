"""Thumbnails of indexed items, by id: ``Thumbnails(root, store).get(item_id)`` → (JPEG bytes, ETag).

Generated on first use from the item's stored path (never a path from a caller) into
``INDEX_DIR/thumbs/{id}-{content key}-{size}.jpg`` with an atomic write; the content key is the
item's SHA-1, so a changed file gets a new thumbnail and a new ETag. Bounds: each thumbnail fits in
``size`` × ``size`` pixels (default 256, JPEG quality 80, about 10 KB); the cache keeps at most
``max_cache_bytes`` (default 1 GiB), evicting the least recently written files (checked after
each 1/16 of the cap written). Sources obey the
same pixel-bomb limit as queries. Items that are not ``indexed`` (removed, failed) have none. An
index folder that cannot be written to still answers (thumbnails are then made per request).
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from PIL import Image, ImageOps

from cbir import fsio
from cbir.engine.preprocess import MAX_PIXELS, ImageSource, open_image, to_rgb

THUMBS_DIR = "thumbs"
SIZE = 256
QUALITY = 80
MAX_CACHE_BYTES = 1 << 30


def make(
    source: ImageSource, name: str, size: int = SIZE, quality: int = QUALITY, max_pixels: int = MAX_PIXELS
) -> bytes:
    """Any image source -> JPEG bytes that fit in ``size`` × ``size`` (EXIF orientation applied,
    alpha on white). Raises ``ImageError`` naming ``name``."""
    img = open_image(source, name, max_pixels)
    if img.format == "JPEG":
        img.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when that is enough
    img = to_rgb(ImageOps.exif_transpose(img))
    img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


class Thumbnails:
    """The thumbnail cache of one index; safe to use from many threads."""

    def __init__(
        self,
        root: str | os.PathLike,
        store,
        size: int = SIZE,
        max_pixels: int = MAX_PIXELS,
        max_cache_bytes: int = MAX_CACHE_BYTES,
    ):
        self.dir = Path(root) / THUMBS_DIR
        self.store, self.size, self.max_pixels, self.max_cache_bytes = store, size, max_pixels, max_cache_bytes
        self._lock = threading.Lock()
        self._since_evict = 0  # bytes written since the cache size was last checked

    def etag(self, row: dict) -> str:
        key = row["sha1"] or f"{row['size']}-{row['mtime']}"
        return f"{row['id']}-{key[:16]}-{self.size}"

    def get(self, item_id: int) -> tuple[bytes, str] | None:
        """(JPEG, ETag) of an indexed item; None when no such item is indexed (a removed item's cached
        thumbnails are deleted then). Raises ``ImageError`` when its source can no longer be read."""
        row = self.store.item(item_id)
        if row is None or row["state"] != "indexed":
            if row is not None:
                self.forget([item_id])
            return None
        tag = self.etag(row)
        path = self.dir / f"{tag}.jpg"
        try:
            return path.read_bytes(), tag
        except OSError:
            pass
        data = make(row["path"], row["path"], self.size, max_pixels=self.max_pixels)
        self._store(item_id, path, data)
        return data, tag

    def forget(self, ids) -> None:
        """Delete the cached thumbnails of these ids (removed items)."""
        for i in ids:
            for old in self.dir.glob(f"{int(i)}-*.jpg"):
                old.unlink(missing_ok=True)

    def _store(self, item_id: int, path: Path, data: bytes) -> None:
        with self._lock:  # one writer per process: atomic_path's temporary name is per process
            try:
                self.dir.mkdir(exist_ok=True)
                for old in self.dir.glob(f"{item_id}-*.jpg"):  # an earlier version of a changed file
                    old.unlink(missing_ok=True)
                fsio.write_bytes(path, data)
            except OSError:
                return  # a read-only index: serve without caching
            self._since_evict += len(data)
            if self._since_evict >= self.max_cache_bytes // 16:
                self._since_evict = 0
                self._evict()

    def _evict(self) -> None:
        files = [
            (e.stat().st_mtime_ns, e.stat().st_size, e.path) for e in os.scandir(self.dir) if e.name.endswith(".jpg")
        ]
        total = sum(s for _, s, _ in files)
        for _, s, p in sorted(files):
            if total <= self.max_cache_bytes:
                break
            Path(p).unlink(missing_ok=True)
            total -= s
