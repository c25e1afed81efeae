"""The search cascade: the one place that says which stages a query goes through, in which order,
when each runs and what it costs under the request budget.

1. ``knn``: the k-NN search with re-ranking, batched over the queries (``Searchable.search_vectors``:
   shortlist, the re-ranking stages, and inside it
   ``verify``: spatial verification of the first ``verify`` candidates, ``cbir.copies.verify``).
2. ``hash``: only for an image query with nothing verified (its features extracted): the items
   whose perceptual hash is within a few bits of its own (``cbir.copies.phash``; heavy blur). First
   of the second look: it costs one pass over n × 8 bytes, and a copy it finds skips the windows.
3. ``windows``: only for an image query with nothing verified, ``verify`` and ``partial`` on: its
   windows and layout box searched and verified, and the items sharing the most ORB descriptor
   matches with it verified (``cbir.copies.windows``).
4. ``colour``: only for an image query with nothing verified whose pixels were shuffled: its nearest
   items by mean colour (``cbir.copies.colour``).

Every stage runs inside an error boundary (``guard.guarded``): past the request's ``Deadline`` it
is not started (the answer is partial), and when it raises on one query that query keeps the answer
of the stage before. ``Gallery.search`` (``cbir search``, ``cbir bench copy-search``) and ``cbir
serve``'s POST /search call ``search``; none of them lists the stages. Costs: each stage's ``gflop``
is what it may add to one query at most (ORB matching counted as ``VERIFY_GFLOP`` per candidate);
``rerank.cost`` adds them to the vector re-ranking's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from cbir.copies import colour, local_features, phash, votes, windows
from cbir.copies.guard import ERRORS, Notes, guarded
from cbir.deadline import NEVER, Deadline
from cbir.hits import Hit, any_verified

__all__ = ["ERRORS", "STAGES", "Notes", "Query", "Searchable", "Stage", "gflop", "search", "second_look"]

# ORB matching of one candidate as budget "GFLOP", calibrated on FAISS's Hamming k-NN (twice with
# the mirrored query; BENCHMARKS.md)
VERIFY_GFLOP = 0.025
# one guided re-match (``local_features.rematch``); each verification pass (the top candidates, the
# windows) re-matches at most ``GUIDE_MAX`` near pairs, only when nothing verified
REMATCH_GFLOP = 0.055
# one vote: an IVF search of the query's ≤ 1,000 ORB descriptors
VOTE_GFLOP = 0.05
# per common gallery shape a query is re-stretched to (``votes.ASPECTS`` at most): two more ORB
# detections before its own vote
RESTRETCH_GFLOP = 0.08


@dataclass
class Query:
    """One query: its image ``source`` (path or bytes; None for a vector or an item as query), its
    raw embedding, its ``extract_query`` feature variants (None: it verifies nothing), its notes."""

    source: Any
    vector: np.ndarray
    features: Any = None
    notes: Notes = field(default_factory=Notes)


class Searchable(Protocol):
    """What the stages read of a gallery (``cbir.index.gallery.Gallery`` is one)."""

    store: Any  # ``paths_of``, and ``snap.live`` reads it
    features: Any  # ``get(ids)`` → stored local-feature records
    colours: Any  # ``all()`` → (ids, mean colours)
    hashes: Any  # ``all()`` → (ids, perceptual hashes)

    def search_vectors(self, queries, k, rerank, nprobe, ef_search, query_features, snap, deadline, notes): ...
    def knn(self, queries: np.ndarray, k: int, snap=None) -> tuple[np.ndarray, np.ndarray]: ...
    def vectors_for(self, ids: np.ndarray, snap=None) -> np.ndarray: ...
    def postprocess_queries(self, v: np.ndarray) -> np.ndarray: ...
    def embedder(self): ...
    def vote_index(self): ...
    def snapshot(self): ...


@dataclass(frozen=True)
class Stage:
    """A stage of the second look: its ``name`` (in notes and metrics), ``when`` it runs for a query
    and its answer so far, ``run`` (gallery, query, hits, k, cfg, snap, deadline) → hits, and the
    ``gflop`` it may cost one query under ``cfg``."""

    name: str
    when: Callable[[Any, Query, list[Hit]], bool]
    run: Callable[..., list[Hit]]
    gflop: Callable[[Any], float]


def _verify_gflop(cfg) -> float:
    return cfg.verify * VERIFY_GFLOP + bool(cfg.verify) * local_features.GUIDE_MAX * REMATCH_GFLOP


def _windows_gflop(cfg) -> float:
    if not cfg.partial:
        return 0.0
    checked = len(local_features.WINDOWS) * cfg.partial + 1  # + the layout box's first candidate
    voting = (1 + votes.ASPECTS) * (VOTE_GFLOP + votes.VOTES * VERIFY_GFLOP) + votes.ASPECTS * RESTRETCH_GFLOP
    # a view: half a query (no mirror); the views vote and are verified against the first look's and their votes' items
    views = len(local_features.TILTS) / 2
    tilts = views * ((cfg.verify + votes.VOTES) * VERIFY_GFLOP + RESTRETCH_GFLOP + VOTE_GFLOP)
    return checked * VERIFY_GFLOP + voting + tilts + local_features.GUIDE_MAX * REMATCH_GFLOP


HASH = Stage(
    "hash",
    when=lambda cfg, q, hits: getattr(q.features, "image", None) is not None and not any_verified(hits),
    run=lambda gallery, q, hits, k, cfg, snap, deadline: phash.look(gallery, q, hits, k, snap),
    gflop=lambda cfg: 0.0,
)
WINDOWS = Stage(
    "windows",
    when=lambda cfg, q, hits: q.source is not None and bool(cfg.verify and cfg.partial) and not any_verified(hits),
    run=windows.look,
    gflop=_windows_gflop,
)
COLOUR = Stage(
    "colour",
    when=lambda cfg, q, hits: q.source is not None and not any_verified(hits),
    run=lambda gallery, q, hits, k, cfg, snap, deadline: colour.look(gallery, q, hits, k, snap),
    gflop=lambda cfg: 0.0,
)
SECOND_LOOK = (HASH, WINDOWS, COLOUR)
STAGES = ("knn", "verify") + tuple(s.name for s in SECOND_LOOK)  # in the order they run; "verify" inside "knn"


def gflop(cfg) -> float:
    """What verification and the second look may cost one query under ``cfg``, in budget GFLOP."""
    return _verify_gflop(cfg) + sum(s.gflop(cfg) for s in SECOND_LOOK)


def second_look(
    gallery: Searchable, query: Query, hits: list[Hit], k: int, cfg, snap, deadline: Deadline = NEVER
) -> list[Hit]:
    """The stages after the k-NN for one query whose k-NN answer is ``hits``, each when it applies."""
    for stage in SECOND_LOOK:
        if stage.when(cfg, query, hits):
            run = stage.run
            hits = guarded(
                stage.name, query.notes, deadline, lambda: run(gallery, query, hits, k, cfg, snap, deadline), hits
            )
    return hits


def search(
    gallery: Searchable,
    queries: Sequence[Query],
    k: int,
    cfg,
    snap=None,
    deadline: Deadline = NEVER,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> list[list[Hit]]:
    """Every query through the cascade on one snapshot (default: the gallery's current one)."""
    if not queries:
        return []
    snap = snap or gallery.snapshot()
    features = [q.features for q in queries] if any(q.features is not None for q in queries) else None
    hits = gallery.search_vectors(
        np.stack([q.vector for q in queries]),
        k,
        cfg,
        nprobe,
        ef_search,
        features,
        snap,
        deadline,
        [q.notes for q in queries],
    )
    return [second_look(gallery, q, h, k, cfg, snap, deadline) for q, h in zip(queries, hits)]
