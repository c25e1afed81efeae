"""Per-shard vector files ``shards/shard-NNNNNN.npz`` (``ids`` int64 [n], ``vectors`` float32 [n, D]),
written atomically (temporary file, fsync, rename). Torch-free."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def shard_path(root: Path, shard: int) -> Path:
    return root / "shards" / f"shard-{shard:06d}.npz"


def write_shard(root: Path, shard: int, ids: np.ndarray, vectors: np.ndarray) -> Path:
    path = shard_path(root, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(ids, np.int64), vectors=np.asarray(vectors, np.float32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_shard(root: Path, shard: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(shard_path(root, shard)) as z:
        return z["ids"], z["vectors"]
