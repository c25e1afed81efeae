"""Local features of an index's items, for spatial verification: one ``shards/shard-NNNNNN.orb.npy``
per shard (``cbir.copies.local_features.DTYPE`` records plus an ``id`` field, row order = the
shard's items), written atomically after the shard's vectors were committed.

Resume: a done shard without its feature file gets one on the next ``ensure`` (build, add, or
``cbir index features``), so a killed job redoes only the unfinished shards. An image that cannot be
read, or has no keypoints, gets an empty record (it verifies nothing). Removed items keep their rows
until their shard is rewritten, but are never looked up (only ``indexed`` items are searched).
Any exception of one image (not only a decode error) gives that image an empty record and a
warning in the build report; it never stops the job.
Files are memory-mapped: a query reads only the rows it verifies.

A local build extracts them in its decode workers (``one`` as ``bulk.iter_batches``' ``side``: each
file read once, the features on all cores while the model runs) and writes a shard's file right
after committing its vectors (``write_records``); ``ensure`` does the rest (Ray builds, shards of a
killed build, ``cbir index features``).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir import crashpoints, fsio
from cbir.copies import local_features
from cbir.cores import all_cores
from cbir.engine.preprocess import ImageError
from cbir.index.storage.shard_rows import ShardRows

KIND = "orb"
DTYPE = np.dtype([("id", "<i8")] + [(n, local_features.DTYPE.fields[n][0]) for n in local_features.DTYPE.names])


def feature_path(root: Path, shard: int) -> Path:
    return Path(root) / "shards" / f"shard-{shard:06d}.{KIND}.npy"


def one(source, name: str) -> tuple[np.void, str | None]:
    """(record, None), or (empty record, reason) when this image gives no features: the item stays
    indexed (its vector is good) and simply verifies nothing; the reason goes into the report.
    ``source``: a path, or the file's bytes (``name`` names it). Never raises."""
    try:
        return local_features.extract(source, name), None
    except ImageError as e:
        return local_features.empty(), e.reason
    except Exception as e:  # any other failure of one image (an OpenCV assertion, a decoder bug) is that image's
        return local_features.empty(), f"{type(e).__name__}: {e}"


def extract_shard(
    root: Path,
    shard: int,
    items: Sequence[tuple[int, str]],
    workers: int | None = None,
    on_item=None,
    on_problem: Callable[[str, str], None] | None = None,
) -> Path:
    """Extract and write one shard's feature file; returns its path. ``on_problem(path, reason)``
    hears of every image that gave no features because of an error."""
    with ThreadPoolExecutor(workers or all_cores()) as pool:  # OpenCV and Pillow release the GIL

        def counted(path: str) -> tuple[np.void, str | None]:
            got = one(path, path)
            if on_item is not None:
                on_item(1)
            return got

        results = list(pool.map(counted, [p for _, p in items]))
    return write_records(root, shard, [(i, p, r) for (i, p), r in zip(items, results)], on_problem)


def write_records(
    root: Path,
    shard: int,
    rows: Sequence[tuple[int, str, tuple[np.void, str | None]]],
    on_problem: Callable[[str, str], None] | None = None,
) -> Path:
    """Write one shard's feature file from (id, path, ``one``'s answer) rows; returns its path."""
    out = np.zeros(len(rows), DTYPE)
    out["id"] = [i for i, _, _ in rows]
    for row, (_, path_, (rec, problem)) in enumerate(rows):
        for name in local_features.DTYPE.names:
            out[row][name] = rec[name]
        if problem is not None and on_problem is not None:
            on_problem(path_, problem)
    path = feature_path(root, shard)
    with fsio.atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, out)
    crashpoints.hit("features-written")
    return path


def outdated(path: Path) -> bool:
    """Whether a feature file predates a field of the records (the frame size ``wh``, the hash
    ``phash``), or cannot be read."""
    try:
        return not set(DTYPE.names) <= set(np.load(path, mmap_mode="r").dtype.names)
    except Exception:
        return True


def ensure(
    store,
    root: Path,
    progress: bool = False,
    on_problem: Callable[[str, str], None] | None = None,
    upgrade: bool = False,
) -> int:
    """Write the feature file of every done shard that lacks one — with ``upgrade``, also of every
    shard whose file is ``outdated`` (``cbir index features``); returns how many were written."""
    todo = [
        s
        for s in store.done_shards()
        if not feature_path(root, s).is_file() or (upgrade and outdated(feature_path(root, s)))
    ]
    work = [(s, store.shard_items(s, "indexed")) for s in todo]
    bar = None
    if progress and work:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(w) for _, w in work), unit="img", desc="local features", file=sys.stderr)
    for shard, items in work:
        extract_shard(root, shard, items, on_item=bar.update if bar else None, on_problem=on_problem)
    if bar is not None:
        bar.close()
    return len(work)


class FeatureStore:
    """Look up the feature records of indexed items by id (memory-mapped shard files, cached)."""

    def __init__(self, store, root: Path):
        self.root = Path(root)
        self._rows = ShardRows(store, self._open)

    def _open(self, shard: int):
        path = feature_path(self.root, shard)
        if not path.is_file():
            return None
        arr = np.load(path, mmap_mode="r")
        return arr, arr["id"]

    def get(self, ids: Sequence[int]) -> list[np.void | None]:
        """Records for ``ids`` (None where an item has no feature file, e.g. a shard not yet done)."""
        return [None if loc is None else np.array(loc[0][loc[1]]) for loc in self._rows.locate(ids)]


def descriptors(
    store, root: Path, keep: Callable[[int], np.ndarray], ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ORB descriptors [n, 32] uint8, their items' ids [n], the items read [m], each one's aspect
    ratio [m] — NaN where its record predates ``wh``) of ``ids`` (default: every indexed item) that
    have features, each read from the shard that holds its current vector; ``keep(count)`` picks
    which of an item's ``count`` descriptors go in (row numbers)."""
    by_shard: dict[int, list[int]] = {}
    for i, shard in store.shards_for_ids(store.indexed_ids() if ids is None else ids).items():
        by_shard.setdefault(shard, []).append(i)
    descs, owners, items, aspects = [], [], [], []
    for shard in sorted(by_shard):
        path = feature_path(root, shard)
        if not path.is_file():
            continue
        arr = np.load(path, mmap_mode="r")
        for row in np.flatnonzero(np.isin(arr["id"], by_shard[shard])):
            rec = arr[row]
            rows = keep(int(rec["n"]))
            descs.append(rec["desc"][rows])
            owners.append(np.full(len(rows), int(rec["id"]), np.int64))
            items.append(int(rec["id"]))
            a = local_features.aspect(rec)
            aspects.append(np.nan if a is None else a)
    if not descs:
        return np.zeros((0, 32), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(descs), np.concatenate(owners), np.array(items, np.int64), np.array(aspects)
