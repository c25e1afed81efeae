"""What the colour statistics of a query row (``cbir.engine.row_stats``) say about a pixel-shuffled copy.

Natural photos have structure ≥ 0.5 (Corel-1K: ≥ 0.57); an image whose pixels were shuffled scores
≈ 0 (AugLy ``shuffle_pixels`` copies after JPEG: ≤ 0.018; the lowest other edit of the AugLy suite, a
filtered negative: 0.038). A shuffle keeps exactly one thing of the photo: its colours, so
``SCRAMBLED_MAX`` (0.025) marks queries that are answered by mean colour (the cascade's ``colour``
stage, for queries that verify nothing). Area resizing keeps the mean (full-resolution vs 224×224
rows: within 0.006 of 255 on Corel-1K).
"""

from __future__ import annotations

import numpy as np

from cbir.engine.preprocess import ImageError
from cbir.engine.row_stats import row_stats
from cbir.hits import Hit

__all__ = ["SCRAMBLED_MAX", "look", "nearest", "row_stats", "scrambled"]

SCRAMBLED_MAX = 0.025


def scrambled(stats: np.ndarray | None) -> bool:
    """Whether a row's stats say its pixels were shuffled (no spatial structure left)."""
    return stats is not None and bool(np.isfinite(stats[3])) and float(stats[3]) <= SCRAMBLED_MAX


def look(gallery, query, hits: list[Hit], k: int, snap) -> list[Hit]:
    """The colour stage for one image ``query`` (``cascade.Query``) whose ``hits`` verified nothing:
    ``hits``, or — when the query has no spatial structure left (its pixels were shuffled) — its
    ``k`` nearest items by mean colour. Only such queries pay for decoding the query again."""
    try:
        stats = row_stats(gallery.embedder().preprocess(query.source))
    except ImageError:  # it was embedded, so it decodes; if not, the hits stand
        return hits
    if not scrambled(stats):
        return hits
    return nearest(gallery, stats[:3], query.vector, k, snap) or hits


def nearest(gallery, mean: np.ndarray, vector: np.ndarray, k: int, snap) -> list[Hit] | None:
    """The ``k`` items nearest to ``mean`` (RGB distance), the only thing a shuffle keeps; scores are
    the usual cosines to ``vector`` (the query's raw embedding), nothing is verified. None when no
    item ``snap`` holds has a stored colour (older builds)."""
    ids, cols = gallery.colours.all()
    live = snap.live(gallery.store, ids)
    ids, cols = ids[live], cols[live]
    if not len(ids):
        return None
    order = np.argsort(np.linalg.norm(cols - np.asarray(mean, np.float32), axis=1), kind="stable")[:k]
    top = ids[order]
    scores = gallery.vectors_for(top, snap) @ gallery.postprocess_queries(np.asarray(vector, np.float32)[None])[0]
    paths = gallery.store.paths_of(top)
    return [Hit(int(i), paths[int(i)], float(s), False, None, "colour") for i, s in zip(top, scores) if int(i) in paths]
