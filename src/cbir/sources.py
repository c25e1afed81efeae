"""Where images come from, as URIs: local files and folders, file lists, WebDataset tar shards,
Parquet files, and fsspec URLs (``s3://``, ``gs://``, ``memory://``, ``file://`` …). Torch-free;
``fsspec`` and ``pyarrow`` are imported only when a URI needs them.

An item's identity (in the index, in outputs) is its URI:
- a local file: its absolute path;
- an fsspec object: the URL as given (``s3://bucket/a.jpg``);
- a member of a WebDataset tar shard: ``tar://<shard path or URL>#<key>`` — the sample's ``__key__``
  (the member name up to its first dot), the image taken from its ``jpg``/``jpeg``/``png``/``webp``/
  ``bmp`` member;
- a Parquet row with image bytes: ``parquet://<file or URL>#<row>`` (``--parquet-column``); with a
  path/URL column instead (``--parquet-path-column``) the row's value is the item's URI.
Bytes are read into memory, never via temporary files. Credentials are fsspec's (the environment the
user already has). A missing or unreadable item is a per-item error (``read`` raises ``ImageError``
naming the URI), like a broken file; a wrong column or an unknown scheme is one ``CbirError`` line.

Local folders (``find_images``) are walked recursively in sorted order; files are taken by extension
(any case); a directory whose name looks like an image file is not a file and is not taken; symlinked
directories are not followed (no loops); symlinked files are taken (a dangling one is then
reported as a failed image, never silently dropped). Files named explicitly are always taken.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from cbir.errors import CbirError, ImageError

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


TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
MAX_MEMBER_BYTES = 256 * 2**20  # a tar member or Parquet cell bigger than this is refused (per item), never read


@dataclass(frozen=True)
class ParquetSpec:
    """Which Parquet column holds the image: ``bytes_column`` (image bytes) or ``path_column`` (paths/URLs)."""

    bytes_column: str | None = None
    path_column: str | None = None


def is_uri(s: str) -> bool:
    return "://" in s


def _fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise CbirError(f"{url}: URLs need fsspec (pip install fsspec, plus s3fs/gcsfs for those schemes)") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as e:
        raise CbirError(f"{url}: unknown or unavailable URL scheme ({e})") from None
    return fs, path


def expand(inputs, parquet: ParquetSpec | None = None) -> list[str]:
    """Item URIs of ``inputs`` (folders, files, .tar shards, .parquet files, URLs), deduplicated, in order."""
    out: list[str] = []
    seen: set[str] = set()
    for item in inputs:
        item = os.fspath(item)
        for uri in _expand_one(item, parquet):
            if uri not in seen:
                seen.add(uri)
                out.append(uri)
    return out


def _expand_one(item: str, parquet: ParquetSpec | None) -> list[str]:
    low = item.lower()
    if low.endswith(".tar"):
        return tar_members(item)
    if low.endswith(".parquet"):
        return parquet_items(item, parquet)
    if is_uri(item):
        if item.startswith(("tar://", "parquet://")):
            return [item]
        fs, path = _fs(item)
        if fs.isdir(path):
            proto = item.split("://", 1)[0]
            found = sorted(p for p in fs.find(path) if is_image_name(p))
            return [f"{proto}://{p.lstrip('/')}" if proto != "file" else f"file://{p}" for p in found]
        return [item]
    if Path(item).is_dir():
        tars = sorted(Path(item).glob("*.tar"))
        return [os.path.abspath(p) for p in find_images([item])] + [u for t in tars for u in tar_members(str(t))]
    return [os.path.abspath(p) for p in find_images([item])]


def _open(location: str, mode: str = "rb"):
    if is_uri(location):
        fs, path = _fs(location)
        return fs.open(path, mode)
    return open(location, mode)


def tar_members(shard: str) -> list[str]:
    """``tar://shard#key`` for every sample of a WebDataset shard that has an image member."""
    shard = shard if is_uri(shard) else os.path.abspath(shard)
    try:
        with _open(shard) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            keys: dict[str, None] = {}  # insertion-ordered set: linear in the members
            for m in tf:
                key, ext = _split_member(m.name)
                if m.isfile() and ext in TAR_IMAGE_EXTS:
                    keys.setdefault(key, None)
    except (OSError, tarfile.TarError) as e:
        raise CbirError(f"{shard}: not a readable tar shard ({type(e).__name__}: {e})") from None
    return [f"tar://{shard}#{k}" for k in keys]


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: key = path up to the first dot of the basename; ext = the rest, lowercased."""
    p = PurePosixPath(name)
    base, _, ext = p.name.partition(".")
    return str(p.parent / base) if str(p.parent) != "." else base, ext.lower()


def parquet_items(location: str, spec: ParquetSpec | None) -> list[str]:
    pq = _pyarrow()
    if spec is None or not (spec.bytes_column or spec.path_column):
        raise CbirError(f"{location}: say which column holds the images (--parquet-column or --parquet-path-column)")
    column = spec.bytes_column or spec.path_column
    location = location if is_uri(location) else os.path.abspath(location)
    with _open(location) as f:
        pf = pq.ParquetFile(f)
        if column not in pf.schema_arrow.names:
            raise CbirError(
                f"--parquet-{'column' if spec.bytes_column else 'path-column'} {column!r}: "
                f"{location} has columns {pf.schema_arrow.names}"
            )
        n = pf.metadata.num_rows
        if spec.bytes_column:
            return [f"parquet://{location}#{i}?column={column}" for i in range(n)]
        values = pf.read(columns=[column]).column(column).to_pylist()
    return [v if is_uri(v) else os.path.abspath(v) for v in values if v]


def _pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CbirError("Parquet needs pyarrow (pip install pyarrow)") from None
    return pq


class Reader:
    """Reads an item's bytes by URI. A tar shard's member index (offsets, from one pass over its
    headers) and a Parquet file's image column are kept in a small LRU cache, each loaded once
    however many threads miss it at the same time (the others wait for that load). Local tar
    members are read with a descriptor of the reading call's own (open, ``pread``, close:
    cheap next to a decode), so no thread can close a descriptor another is reading from.
    Members and cells over ``max_member_bytes`` are refused. Safe to share across threads."""

    def __init__(self, cache: int = 8, max_member_bytes: int = MAX_MEMBER_BYTES):
        self._cache: OrderedDict = OrderedDict()
        self._size = cache
        self._lock = threading.Lock()
        self._loading: dict = {}  # key -> Event of the load in progress
        self.max_member_bytes = max_member_bytes

    def read(self, uri: str) -> bytes:
        try:
            if uri.startswith("tar://"):
                shard, _, key = uri[len("tar://") :].rpartition("#")
                return self._tar_member(shard, key)
            if uri.startswith("parquet://"):
                rest, _, query = uri[len("parquet://") :].partition("?column=")
                location, _, row = rest.rpartition("#")
                return self._parquet_cell(location, query, int(row))
            with _open(uri) as f:
                return f.read()
        except ImageError:
            raise
        except CbirError as e:
            raise ImageError(uri, str(e)) from None
        except FileNotFoundError:
            raise ImageError(uri, "no such file or object") from None
        except (OSError, tarfile.TarError, ValueError, KeyError, IndexError) as e:
            raise ImageError(uri, f"cannot read ({type(e).__name__}: {e})") from None

    def _cached(self, key, load):
        """The cached value of ``key``, loaded by one thread (single flight); a failed load is not kept."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                event = self._loading.get(key)
                if event is None:
                    event = self._loading[key] = threading.Event()
                    break
            event.wait()  # another thread is loading it: take its result (or load again if it failed)
        try:
            value = load()
            with self._lock:
                self._cache[key] = value
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            event.set()

    def _tar_member(self, shard: str, key: str) -> bytes:
        def load():  # one pass over the headers: where each sample's image member lies
            where = {}
            with _open(shard) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    k, ext = _split_member(m.name)
                    if m.isfile() and ext in TAR_IMAGE_EXTS and k not in where:
                        where[k] = (m.offset_data, m.size)
            return where

        uri = f"tar://{shard}#{key}"
        where = self._cached(("tar", shard), load)
        if key not in where:
            raise ImageError(uri, "no image member with this key in the shard")
        offset, size = where[key]
        if size > self.max_member_bytes:
            raise ImageError(uri, f"member of {size:,} bytes exceeds the limit of {self.max_member_bytes:,}")
        if is_uri(shard):
            with _open(shard) as f:  # a ranged read: the shard is never loaded whole
                f.seek(offset)
                data = f.read(size)
        else:
            fd = os.open(shard, os.O_RDONLY)
            try:
                data = os.pread(fd, size, offset)
            finally:
                os.close(fd)
        if len(data) != size:
            raise OSError(f"member truncated: {len(data)} of {size} bytes")
        return data

    def _parquet_cell(self, location: str, column: str, row: int) -> bytes:
        def load():
            with _open(location) as f:
                return _pyarrow().ParquetFile(f).read(columns=[column]).column(column).to_pylist()

        uri = f"parquet://{location}#{row}"
        values = self._cached(("parquet", location, column), load)
        if not 0 <= row < len(values):
            raise ImageError(uri, f"no row {row} (the file has {len(values)})")
        value = values[row]
        if value is None:
            raise ImageError(uri, "null image bytes")
        value = value if isinstance(value, (bytes, bytearray)) else str(value).encode()
        if len(value) > self.max_member_bytes:
            raise ImageError(uri, f"cell of {len(value):,} bytes exceeds the limit of {self.max_member_bytes:,}")
        return value


def stat(uri: str) -> tuple[int, float]:
    """(size, mtime) for change detection: a local file's; -1 where a URI has no cheap answer (then an
    indexed item counts as unchanged until it is removed)."""
    if is_uri(uri):
        return -1, -1.0
    try:
        st = os.stat(uri)
        return st.st_size, st.st_mtime
    except OSError:
        return -1, -1.0


DEFAULT_READER = Reader()
