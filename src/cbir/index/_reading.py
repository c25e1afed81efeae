"""What a ``Gallery`` reads out besides searching: ``info`` (``cbir index info``) and query vectors for
tuning and evaluation (``query_vectors``: one ``.npy`` of raw model vectors, or images, folders and
URIs embedded with the index's model). Bound to ``Gallery``.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np

from cbir.errors import CbirError
from cbir.index.storage.config import VOTES_FILE
from cbir.vectors import l2_normalize


def query_vectors(gallery, specs: Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
    """Post-processed, L2-normalised query vectors from ``specs``: one ``.npy`` [n, D] of raw model
    vectors, or images, folders and URIs (embedded with the index's model). Raises ``CbirError``
    in one line for a wrong dimension, an unreadable file or no usable query."""
    specs = [os.fspath(s) for s in specs]
    if not specs:
        raise CbirError("--queries: give images, folders, URIs or one .npy of query vectors")
    if len(specs) == 1 and specs[0].endswith(".npy"):
        try:
            v = np.load(specs[0], allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CbirError(f"--queries {specs[0]}: not a readable .npy array ({e})") from None
        want = gallery.settings.model_dim
        if v.ndim != 2 or v.dtype.kind != "f" or v.shape[1] != want:
            raise CbirError(
                f"--queries {specs[0]}: need float vectors [n, {want}] (the index's model dimension), "
                f"got {v.dtype} {list(v.shape)}"
            )
        v = v[np.isfinite(v).all(axis=1) & (np.abs(v).sum(axis=1) > 0)].astype(np.float32)
    else:
        from cbir.sources import expand

        items = expand(specs)
        if not items:
            raise CbirError(f"--queries {' '.join(specs)}: no images there")
        res = gallery.embedder().embed_files(items)
        for _, src, reason in res.errors:
            print(f"cbir: query {src}: {reason} (left out)", file=sys.stderr)
        v = res.vectors
    if len(v) == 0:
        raise CbirError(f"--queries {' '.join(specs)}: no usable query (all unreadable or empty)")
    return gallery.postprocess_queries(l2_normalize(np.asarray(v, np.float32)))


def info(gallery) -> dict:
    """What ``cbir index info`` prints: counts and index.json's settings."""
    s, count = gallery.settings, gallery.store.count
    return {
        "count": count("indexed"),
        "dim": s.dim,
        "model": s.model,
        "model_path": s.model_path,
        "preprocess": s.preprocess,
        "factory": s.factory,
        "index_factory": s.index_factory,
        "search": s.search,
        "tuning": s.tuning,
        "index_bytes": s.index_bytes,
        "store": s.store or "index.faiss",
        "trained_on": s.trained_on,
        "whitening": s.whitening,
        "dba": s.dba,
        "failed": count("failed"),
        "removed": count("removed"),
        "pending_shards": len(gallery.store.pending_shards()),
        "shards": len(gallery.store.done_shards()),
        "vote_index_bytes": votes.stat().st_size if (votes := gallery.root / VOTES_FILE).is_file() else None,
        "path": str(gallery.root),
    }
