"""Shard outputs ``shards/shard-NNNNNN.npz``: one atomic file per shard (temporary file, fsync, rename)
holding the vectors and the metadata rows — ``ids`` int64 [n], ``vectors`` float32 [n, D], ``sha1``,
``size``, and the failures ``failed_ids`` / ``failed_reasons``. A complete file *is* the shard's
result, so a coordinator can commit it later (``Gallery.commit_shard``) whoever wrote it: this
process, or a Ray worker (``index.distributed``). Torch-free.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir import crashpoints, fsio
from cbir.errors import CbirError


@dataclass
class ShardOutput:
    ids: np.ndarray
    vectors: np.ndarray
    sha1: np.ndarray
    size: np.ndarray
    failed_ids: np.ndarray
    failed_reasons: np.ndarray

    def item_ids(self) -> set[int]:
        return set(self.ids.tolist()) | set(self.failed_ids.tolist())


def shard_path(root: Path, shard: int) -> Path:
    return Path(root) / "shards" / f"shard-{shard:06d}.npz"


def write_shard(root: Path, shard: int, out: ShardOutput) -> Path:
    path = shard_path(root, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsio.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(out.ids, np.int64), vectors=np.asarray(out.vectors, np.float32),
                 sha1=np.asarray(out.sha1, str), size=np.asarray(out.size, np.int64),
                 failed_ids=np.asarray(out.failed_ids, np.int64), failed_reasons=np.asarray(out.failed_reasons, str))
    crashpoints.hit("shard-written")
    return path


def read_shard(root: Path, shard: int) -> ShardOutput:
    """A shard's output file; a missing or damaged one is a ``CbirError`` naming it and the way out."""
    path = shard_path(root, shard)
    try:
        with np.load(path, allow_pickle=False) as z:
            return ShardOutput(z["ids"], z["vectors"], z["sha1"], z["size"], z["failed_ids"], z["failed_reasons"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CbirError(f"{path}: missing or damaged shard file ({type(e).__name__}: {e}); `cbir index check "
                        f"{Path(root)}` says what is affected, `cbir index repair {Path(root)}` recovers") from None


def embed_shard(embedder, root: Path, shard: int, items: Sequence[tuple[int, str]], batch_size: int | None = None,
                timings=None, on_batch: Callable[[int], None] | None = None) -> ShardOutput:
    """Embed one shard's files and write its output file (the worker side of a build). A model with
    regional descriptors (``cbir export --regions``) also gets its regions file, written first."""
    ids = np.array([i for i, _ in items], np.int64)
    with_regions = embedder.num_regions > 0
    vec_parts, reg_parts, ok, sha1, size, bad, reasons = [], [], [], [], [], [], []
    for b in embedder.iter_batches([p for _, p in items], batch_size, hash_files=True, timings=timings,
                                   regions=with_regions):
        if b.indices:
            vec_parts.append(b.vectors)
            if with_regions:
                reg_parts.append(b.regions)
            for pos in b.indices:
                ok.append(ids[pos])
                sha1.append(b.facts[pos].sha1)
                size.append(b.facts[pos].size)
        for pos, _, reason in b.errors:
            bad.append(ids[pos])
            reasons.append(reason)
        if on_batch is not None:
            on_batch(len(b.indices) + len(b.errors))
    vectors = np.concatenate(vec_parts) if vec_parts else np.empty((0, embedder.dim), np.float32)
    out = ShardOutput(np.array(ok, np.int64), vectors, np.array(sha1, str), np.array(size, np.int64),
                      np.array(bad, np.int64), np.array(reasons, str))
    if with_regions:
        from cbir.index import regions

        regions.write(root, shard, np.concatenate(reg_parts) if reg_parts
                      else np.empty((0, embedder.num_regions, embedder.dim), np.float16))
    write_shard(root, shard, out)
    return out
