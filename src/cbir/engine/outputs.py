"""Sharded embedding outputs other tools read (``cbir embed --out DIR --format npy|parquet``).

Layout (what embedding-reader, autofaiss and clip-retrieval read):
- ``npy`` (embedding-reader's ``parquet_npy``): ``DIR/embeddings/emb_NNNNN.npy`` float32 [n, D] and ``DIR/metadata/meta_NNNNN.parquet``
  with column ``uri``, the same rows in the same order;
- ``parquet``: ``DIR/embeddings/emb_NNNNN.parquet`` with columns ``uri`` and ``embedding`` (list of
  float32).
Shard ``i`` holds the items ``[i·S, (i+1)·S)`` of the input list (``S`` = ``shard_rows``, default
1,000,000) that embedded; failed items are reported in ``DIR/report.json``, never written. Files
are written atomically, the metadata (or the single parquet) last, so a shard whose last file exists
is done: a killed job resumes at the first unfinished shard (the input list must be the same).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cbir import fsio
from cbir.errors import CbirError

FORMATS = ("npy", "parquet")


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CbirError("--out needs pyarrow for the metadata/parquet files (pip install pyarrow)") from None
    return pa, pq


def shard_files(out: Path, i: int, fmt: str) -> tuple[Path, Path]:
    """(vectors file, done-marker file) of shard ``i``; for parquet they are the same file."""
    if fmt == "npy":
        return out / "embeddings" / f"emb_{i:05d}.npy", out / "metadata" / f"meta_{i:05d}.parquet"
    p = out / "embeddings" / f"emb_{i:05d}.parquet"
    return p, p


def write_sharded(
    embedder,
    uris: list[str],
    out: str | os.PathLike,
    fmt: str = "npy",
    shard_rows: int = 1_000_000,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict:
    """Embed ``uris`` into sharded outputs under ``out``; returns the report (also ``out/report.json``)."""
    if fmt not in FORMATS:
        raise CbirError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if shard_rows < 1:
        raise CbirError(f"--shard-rows {shard_rows}: must be ≥ 1")
    pa, pq = _pa()
    out = Path(out)
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        (out / "metadata").mkdir(exist_ok=True)
    written = skipped = 0
    failed: list[dict] = []
    timings = None
    for i, start in enumerate(range(0, len(uris), shard_rows)):
        vec_file, marker = shard_files(out, i, fmt)
        if marker.is_file():
            skipped += pq.ParquetFile(marker).metadata.num_rows
            continue
        chunk = uris[start : start + shard_rows]
        res = embedder.embed_files(chunk, batch_size=batch_size, progress=progress)
        timings = res.timings.as_dict()
        kept = [chunk[j] for j in res.indices]
        failed += [{"uri": s, "error": r} for _, s, r in res.errors]
        vectors = np.ascontiguousarray(res.vectors, np.float32)
        if fmt == "npy":
            with fsio.atomic_path(vec_file, suffix=".npy") as tmp:
                np.save(tmp, vectors)
            table = pa.table({"uri": kept})
        else:
            table = pa.table(
                {
                    "uri": kept,
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), embedder.dim)
                    if len(kept)
                    else pa.array([], pa.list_(pa.float32())),
                }
            )
        with fsio.atomic_path(marker, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        written += len(kept)
    report = {
        "output": str(out),
        "format": fmt,
        "embedded": written,
        "already_done": skipped,
        "dim": embedder.dim,
        "failed": failed,
        "shards": -(-len(uris) // shard_rows) if uris else 0,
        "timings": timings,
    }
    fsio.write_json(out / "report.json", report)
    return report


def read_back(out: str | os.PathLike, fmt: str = "npy") -> tuple[np.ndarray, list[str]]:
    """(vectors, uris) of a finished output, in order (pyarrow + numpy; for checks and small outputs)."""
    _, pq = _pa()
    out = Path(out)
    vecs, uris = [], []
    for marker in sorted((out / ("metadata" if fmt == "npy" else "embeddings")).glob("*.parquet")):
        t = pq.read_table(marker)
        uris += t.column("uri").to_pylist()
        if fmt == "npy":
            vecs.append(np.load(out / "embeddings" / marker.name.replace("meta_", "emb_").replace(".parquet", ".npy")))
        else:
            vecs.append(np.asarray(t.column("embedding").to_pylist(), np.float32).reshape(len(t), -1))
    return (np.concatenate(vecs) if vecs else np.empty((0, 0), np.float32)), uris
