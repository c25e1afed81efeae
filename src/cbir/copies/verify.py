"""Spatial verification of a query's candidates against the gallery's stored local features.

``query_features(source)`` gives a query's ``local_features.extract_query`` variants (itself and,
detected on demand, its mirror), or None when ORB can take nothing from it (it then verifies
nothing: it was embedded, that is enough to search). ``verifier`` turns the stored features
(``get(ids)`` → records) into the k-NN stage's ``verify(query row, candidate ids) -> inliers``:
guided re-matching when no candidate reaches ``min_inliers``, and no candidate past the first when
the first's inliers cover ``SURE`` (half) of the query's keypoints — the very photo or a copy barely
changed (a near-duplicate shot or an edited copy keeps far fewer). -1 means "not checked": past the
deadline, or when verification failed on that query (``cascade.guarded``).

All matching runs in one shared thread pool (``pool``), one thread per core; OpenCV and FAISS release
the GIL, and each thread runs FAISS single-threaded (the pool is the parallelism).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from cbir.copies import local_features
from cbir.copies.guard import Notes, guarded
from cbir.cores import all_cores, faiss_single_threaded
from cbir.deadline import NEVER, Deadline

SURE = 0.5  # a first candidate with inliers for this share of the query's keypoints ends verification


@lru_cache(maxsize=1)
def pool() -> ThreadPoolExecutor:
    """The threads local-feature matching runs on (one per core, shared by every search)."""
    return ThreadPoolExecutor(all_cores(), thread_name_prefix="cbir-verify", initializer=faiss_single_threaded)


def source_name(source) -> str:
    """How a query is named in messages: its path, else ``<query>`` (bytes, arrays)."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "<query>"


def query_features(source, name: str | None = None, max_pixels: int | None = None):
    """A query's local-feature variants, or None when it has none to give (verifies nothing)."""
    try:
        extra = {} if max_pixels is None else {"max_pixels": max_pixels}
        return local_features.extract_query(source, name or source_name(source), **extra)
    except Exception:  # the query was embedded; an image ORB cannot use just verifies nothing
        return None


def sure_inliers(features, min_inliers: int) -> int:
    """Inliers with which the k-NN's first candidate ends verification (``SURE`` of the query's own
    keypoints, at least ``min_inliers``): ``local_features.verify``'s ``stop_at``."""
    return max(min_inliers, int(np.ceil(SURE * int(local_features.primary(features)["n"]))))


def verifier(
    get: Callable[[np.ndarray], list],
    features: Sequence,
    min_inliers: int,
    deadline: Deadline = NEVER,
    notes: Sequence[Notes] | None = None,
) -> Callable[[int, np.ndarray], np.ndarray]:
    """verify(query row, candidate ids) -> RANSAC inliers of each candidate (-1: not checked), from
    ``features`` (one entry per query row, None: verifies nothing) and the stored records ``get(ids)``."""

    def verify(row: int, ids: np.ndarray) -> np.ndarray:
        qf = features[row]
        unchecked = np.full(len(ids), -1, np.int64)
        if qf is None:
            return unchecked
        return guarded(
            "verify",
            notes[row] if notes else None,
            deadline,
            lambda: local_features.verify(
                [(qf, r) for r in get(ids)], min_inliers, pool().map, sure_inliers(qf, min_inliers)
            ),
            unchecked,
        )

    return verify
