"""The build pipeline of an index directory: scan files into shards, embed pending shards (here or on
Ray), commit each shard in one SQLite transaction, adopt finished-but-uncommitted shard outputs.

Resume: files are assigned to shards (``shard_size``, default 1,024) before any work; a shard is
embedded whole and committed (vector file, then one SQLite transaction marking it done). A job
killed at any point redoes only the unfinished shards, so every image ends up exactly once.
A file is embedded again when its size or mtime changed (a URI with no cheap stat — tar members,
Parquet rows, objects — only when it was removed); a file that failed is retried only with
``retry_failed`` (else it stays failed and is reported as failed, not as unchanged).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir import crashpoints
from cbir.index.storage import features, regions
from cbir.index.storage.shards import ShardOutput, read_shard, shard_path, write_shard
from cbir.sources import ParquetSpec, expand, is_uri, stat


@dataclass
class Scan:
    queued: int = 0
    unchanged: list[str] = field(default_factory=list)
    still_failed: list[str] = field(default_factory=list)
    still_removed: list[str] = field(default_factory=list)  # removed earlier, left out (no ``restore``)


def progress_bar(total: int, enabled: bool):
    if not (enabled and total):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)


def scan(
    store,
    shard_size: int,
    paths: Sequence[str | os.PathLike],
    retry_failed: bool = False,
    parquet: ParquetSpec | None = None,
    restore: bool = False,
) -> Scan:
    """Register new or changed images (and failed ones, with ``retry_failed``; removed ones only with
    ``restore``) as pending in new shards.
    ``paths``: folders, files, tar shards, Parquet files, URLs (``cbir.sources``); items are URIs."""
    files = expand(paths, parquet)
    known = store.items_by_paths()
    result = Scan()
    with store.transaction():
        shard, in_shard = None, 0
        for key in files:
            size, mtime = stat(key)  # -1 for URIs and unreadable files (those fail and are reported)
            old = known.get(key)
            if old is not None:
                _, osize, omtime, state = old
                if state == "removed" and not restore:  # a takedown holds until it is undone on purpose
                    result.still_removed.append(key)
                    continue
                unknown = size == -1 and is_uri(key)  # no cheap stat for this URI: as indexed, unchanged
                if state != "removed" and (unknown or (osize == size and omtime == mtime)):
                    if state == "failed" and not retry_failed:
                        result.still_failed.append(key)
                        continue
                    if state != "failed":
                        result.unchanged.append(key)
                        continue
            if shard is None or in_shard >= shard_size:
                shard, in_shard = store.new_shard(), 0
            if old is None:
                store.add_item(key, size, mtime, shard)
            else:
                store.requeue_item(old[0], size, mtime, shard)
            in_shard += 1
            result.queued += 1
    return result


def commit_shard(store, shard: int, out: ShardOutput) -> tuple[int, int]:
    """Mark a shard done from its output file's rows, in one transaction; returns (indexed, failed)."""
    with store.transaction():
        store.finish_shard(
            shard,
            [(int(i), str(h), int(s)) for i, h, s in zip(out.ids, out.sha1, out.size)],
            [(int(i), str(r)) for i, r in zip(out.failed_ids, out.failed_reasons)],
        )
    crashpoints.hit("shard-committed")
    return len(out.ids), len(out.failed_ids)


def adopt_outputs(store, root) -> int:
    """Commit pending shards whose output file covers every item still pending there (a worker
    finished it, the coordinator died before committing); returns how many were adopted. Items
    removed meanwhile stay removed (``Store.finish_shard``)."""
    adopted = 0
    for shard in store.pending_shards():
        if not shard_path(root, shard).is_file():
            continue
        try:
            out = read_shard(root, shard)
        except Exception:  # a damaged file: the shard is embedded again
            continue
        if {i for i, _ in store.shard_items(shard, "pending")} <= out.item_ids():
            commit_shard(store, shard, out)
            adopted += 1
    return adopted


def pending_work(store) -> list[tuple[int, list[tuple[int, str]]]]:
    """(shard, its pending items) for every pending shard (removed items are not embedded)."""
    return [(s, store.shard_items(s, "pending")) for s in store.pending_shards()]


def features_in_decode(gallery, embedder) -> bool:
    """Whether a local build extracts local features in its decode workers: when the index keeps
    them and the model runs on a GPU (the CPU cores are otherwise idle while it runs). On the CPU
    the model's threads and ORB contend for the same cores: together measured 0.88× the speed of a
    separate pass after the vectors (BENCHMARKS.md), so it stays separate there."""
    return bool(gallery.settings.local_features) and bool(getattr(embedder.runner, "on_gpu", False))


def process_pending(gallery, batch_size: int | None = None, progress: bool = False, fused: bool | None = None) -> dict:
    """Embed every pending shard here and commit each as it finishes; returns counts and stage
    timings (``build.ray.process_with_ray`` is the same on Ray workers). ``fused`` (default:
    ``features_in_decode``): the decode workers extract local features too (``features.one``) and
    each shard's feature file is written right after its commit; their problems are ``warnings``."""
    adopt_outputs(gallery.store, gallery.root)
    from cbir.engine.bulk import Timings

    emb = gallery.embedder()
    timings = Timings()
    work = pending_work(gallery.store)
    fused = features_in_decode(gallery, emb) if fused is None else fused and bool(gallery.settings.local_features)
    warnings: list[dict] = []
    bar = progress_bar(sum(len(items) for _, items in work), progress)
    indexed = failed = 0
    for shard, items in work:
        sides: dict | None = {} if fused else None
        out = embed_shard(emb, gallery.root, shard, items, batch_size, timings, bar.update if bar else None, sides)
        n_ok, n_bad = commit_shard(gallery.store, shard, out)
        if sides is not None:
            paths = dict(items)
            rows = [(int(i), paths[int(i)], sides[int(i)]) for i in out.ids]
            features.write_records(
                gallery.root,
                shard,
                rows,
                lambda p, r: warnings.append({"path": p, "stage": "local features", "error": r}),
            )
        indexed += n_ok
        failed += n_bad
    if bar is not None:
        bar.close()
    t = timings.as_dict()
    if "side" in t:  # seconds summed over the decode workers
        t["local_features_in_decode"] = t.pop("side")
    return {"indexed": indexed, "failed_now": failed, "timings": t, "warnings": warnings}


def embed_shard(
    embedder,
    root: Path,
    shard: int,
    items: Sequence[tuple[int, str]],
    batch_size: int | None = None,
    timings=None,
    on_batch: Callable[[int], None] | None = None,
    sides: dict | None = None,
) -> ShardOutput:
    """Embed one shard's files and write its output file (the worker side of a build). A model with
    regional descriptors (``cbir export --regions``) also gets its regions file, written first.
    ``sides`` (a dict): filled with each embedded item's local features (``features.one``), by id."""
    ids = np.array([i for i, _ in items], np.int64)
    with_regions = embedder.num_regions > 0
    vec_parts, reg_parts, ok, sha1, size, bad, reasons, colours = [], [], [], [], [], [], [], []
    side = features.one if sides is not None else None
    for b in embedder.iter_batches(
        [p for _, p in items], batch_size, hash_files=True, timings=timings, regions=with_regions, side=side
    ):
        if b.indices:
            vec_parts.append(b.vectors)
            if with_regions:
                reg_parts.append(b.regions)
            for pos in b.indices:
                ok.append(ids[pos])
                sha1.append(b.facts[pos].sha1)
                size.append(b.facts[pos].size)
                st = b.facts[pos].stats
                colours.append(st[:3] if st is not None else np.full(3, np.nan, np.float32))
                if sides is not None:
                    sides[int(ids[pos])] = b.facts[pos].side
        for pos, _, reason in b.errors:
            bad.append(ids[pos])
            reasons.append(reason)
        if on_batch is not None:
            on_batch(len(b.indices) + len(b.errors))
    vectors = np.concatenate(vec_parts) if vec_parts else np.empty((0, embedder.dim), np.float32)
    out = ShardOutput(
        np.array(ok, np.int64),
        vectors,
        np.array(sha1, str),
        np.array(size, np.int64),
        np.array(bad, np.int64),
        np.array(reasons, str),
        np.array(colours, np.float32).reshape(-1, 3),
    )
    if with_regions:
        regions.write(
            root,
            shard,
            np.concatenate(reg_parts) if reg_parts else np.empty((0, embedder.num_regions, embedder.dim), np.float16),
        )
    write_shard(root, shard, out)
    return out
