"""Shard outputs ``shards/shard-NNNNNN.npz``: one atomic file per shard (temporary file, fsync, rename)
holding the vectors and the metadata rows — ``ids`` int64 [n], ``vectors`` float32 [n, D], ``sha1``,
``size``, the failures ``failed_ids`` / ``failed_reasons`` and, when the build decoded the files,
``colours`` float32 [n, 3] (the rows' mean R, G, B: ``engine.colour``; older shards have none). A complete file *is* the shard's
result, so a coordinator can commit it later (``Gallery.commit_shard``) whoever wrote it: this
process, or a Ray worker (``index.ingest.ray``); ``index.ingest.pipeline.embed_shard`` writes it. Torch-free.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

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
    colours: np.ndarray | None = None

    def item_ids(self) -> set[int]:
        return set(self.ids.tolist()) | set(self.failed_ids.tolist())


def shard_path(root: Path, shard: int) -> Path:
    return Path(root) / "shards" / f"shard-{shard:06d}.npz"


def write_shard(root: Path, shard: int, out: ShardOutput) -> Path:
    path = shard_path(root, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsio.atomic_path(path) as tmp, open(tmp, "wb") as f:
        extra = {} if out.colours is None else {"colours": np.asarray(out.colours, np.float32)}
        np.savez(
            f,
            ids=np.asarray(out.ids, np.int64),
            vectors=np.asarray(out.vectors, np.float32),
            sha1=np.asarray(out.sha1, str),
            size=np.asarray(out.size, np.int64),
            failed_ids=np.asarray(out.failed_ids, np.int64),
            failed_reasons=np.asarray(out.failed_reasons, str),
            **extra,
        )
    crashpoints.hit("shard-written")
    return path


def read_shard(root: Path, shard: int) -> ShardOutput:
    """A shard's output file; a missing or damaged one is a ``CbirError`` naming it and the way out."""
    path = shard_path(root, shard)
    try:
        with np.load(path, allow_pickle=False) as z:
            return ShardOutput(
                z["ids"],
                z["vectors"],
                z["sha1"],
                z["size"],
                z["failed_ids"],
                z["failed_reasons"],
                z["colours"] if "colours" in z.files else None,
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CbirError(
            f"{path}: missing or damaged shard file ({type(e).__name__}: {e}); `cbir index check "
            f"{Path(root)}` says what is affected, `cbir index repair {Path(root)}` recovers"
        ) from None
