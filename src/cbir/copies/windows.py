"""The cascade's second look at a query nothing verified: its windows, and the items that share the
most ORB descriptors with it (``rerank.Rerank.partial``).

``look(gallery, query, hits, k, cfg, snap, deadline)``: each of the query's ``WINDOWS`` (five
half-size windows) is embedded, searched on its own and its first ``partial`` candidates verified
against that window's own features (a photo pasted into another, a screenshot, a collage); a query
with a layout (a block bounded by bands of one colour, ``layout``) has that block as a sixth window,
whose first candidate only is verified; and the query's own features are verified against the
``votes.VOTES`` items with the most descriptor matches (``voted``: a shortlist that needs no CNN
vector, for copies too degraded or flipped for it), also with the query stretched back to each of
the gallery's common shapes when it is more than ``local_features.STRETCH`` off one; and the
query's tilted views (``local_features.tilted_views``: a sheared or perspective-warped copy) are
verified against the first look's candidates (the first ``cfg.verify`` of ``hits``, keeping their
score there) and vote as one more variant (its ``votes.VOTES`` items, first fit only, like every
voted item: a warp strong enough to move the original out of the CNN's reach). The verified come
first (most inliers first, scored by their best window's cosine), then ``hits`` without them.

Dedup's windows and vote passes use the same two steps (``window_candidates``, ``voted``) over every
indexed item. The gallery is read through the methods of ``cascade.Searchable``.
"""

from __future__ import annotations

import numpy as np

from cbir.copies import local_features, votes
from cbir.copies.verify import pool, source_name
from cbir.deadline import NEVER, Deadline
from cbir.engine.preprocess import ImageError
from cbir.hits import Hit


def window_candidates(gallery, crops: list, n: int, snap=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows of ``crops`` that embedded, their post-processed vectors, sims, ids): each embedded
    crop's ``n`` nearest items in ``snap`` (default: the current snapshot)."""
    res = gallery.embedder().embed_files(crops)
    if not len(res.indices):
        empty = np.zeros((0, 0))
        return np.zeros(0, np.int64), empty, empty, empty.astype(np.int64)
    wvec = gallery.postprocess_queries(res.vectors)
    sims, ids = gallery.knn(wvec, n, snap)
    return np.asarray(res.indices), wvec, sims, ids


def voted(state: votes.VoteState | None, variants: list, top: int | None = None) -> list[tuple]:
    """(variant, item id) for the ``top`` (default ``votes.VOTES``) items each of ``variants`` (feature
    records, or a query's ``extract_query`` variants) shares the most descriptor matches with."""
    top = votes.VOTES if top is None else top
    return [(v, i) for v in variants for i in votes.vote(state, v, top)]


def _query_variants(source, name: str, features, aspects: list[float]) -> list:
    """The query's features, and — when its shape is more than ``STRETCH`` away from one of the
    gallery's common ``aspects`` — the query stretched to each such shape."""
    out = [features]
    qa = local_features.aspect(local_features.primary(features))
    targets = [a for a in aspects if qa is not None and max(qa / a, a / qa) > local_features.STRETCH]
    if targets:
        try:
            img = local_features.gray(source, name)
        except (ImageError, OSError):
            return out
        out += [local_features.restretched(img, a) for a in targets]
    return out


def vote_pairs(gallery, source, name: str, features, snap, views: tuple | None = None) -> list[tuple]:
    """(query variant, item id) pairs to verify by descriptor votes: only items ``snap`` holds and
    SQLite still calls indexed. ``views``: the query's tilted views vote too, as one more variant (an
    item's votes: its matches with the best view) — a perspective-warped copy whose descriptors moved."""
    state = gallery.vote_index()
    variants = _query_variants(source, name, features, state.common if state is not None else [])
    pairs = voted(state, variants + ([views] if views else []))
    live = snap.live(gallery.store, [i for _, i in pairs]) if pairs else []
    return [p for p, ok in zip(pairs, live) if ok]


def tilted_views(query, name: str) -> tuple | None:
    """The records of the query's tilted views (``local_features.tilted_views``), or None when the
    query has no features or its image cannot be read again."""
    if query.features is None or not local_features.TILTS:
        return None
    img = getattr(query.features, "image", None)
    if img is None:
        try:
            img = local_features.gray(query.source, name)
        except (ImageError, OSError):
            return None
    return local_features.tilted_views(img)


def tilted_pairs(views: tuple | None, hits: list[Hit], n: int) -> list[tuple]:
    """(the query's tilted ``views``, item id) for the first ``n`` of ``hits``; [] without views."""
    if views is None or not n or not hits:
        return []
    return [(views, h.id) for h in hits[:n] if h.id >= 0]


def look(gallery, query, hits: list[Hit], k: int, cfg, snap, deadline: Deadline = NEVER) -> list[Hit]:
    """The windows stage for one image ``query`` (``cascade.Query``) whose ``hits`` verified nothing."""
    name = source_name(query.source)
    try:
        win = local_features.windows(query.source, name, content=True)
    except (ImageError, OSError):  # the query was embedded; windows it cannot give just find nothing more
        return hits
    rows, wvec, sims, ids = window_candidates(gallery, win.crops, min(cfg.partial, snap.cpu.ntotal), snap)
    if not len(rows) or deadline.expired:
        return hits
    best: dict[int, float] = {}
    pairs = []  # (query features, candidate)
    for w, srow, irow in zip(rows, sims, ids):
        top = 1 if w >= len(local_features.WINDOWS) else len(irow)  # the layout box: its nearest only
        for s_, i in zip(srow[:top], irow[:top]):
            if i >= 0:
                pairs.append((win.features[w], int(i)))
                best[int(i)] = max(best.get(int(i), -np.inf), float(s_))
    views = tilted_views(query, name)
    tilts = tilted_pairs(views, hits, cfg.verify)
    scores = {h.id: float(h.score) for h in hits}
    for _, i in tilts:
        best[i] = max(best.get(i, -np.inf), scores[i])
    pairs += tilts
    by_votes = (
        vote_pairs(gallery, query.source, name, query.features, snap, views) if query.features is not None else []
    )
    if by_votes:  # their score: the best window's cosine, like the windows' own candidates
        ids_ = np.array([i for _, i in by_votes], np.int64)
        for i, c in zip(ids_.tolist(), (gallery.vectors_for(ids_, snap) @ wvec.T).max(1)):
            best[i] = max(best.get(i, -np.inf), float(c))
    recs = dict(zip(best, gallery.features.get(np.array(list(best), np.int64))))
    inl = list(local_features.verify([(q, recs[i]) for q, i in pairs], cfg.min_inliers, pool().map))
    # the voted items on the first fit only: guided re-matching rests on the CNN calling a
    # candidate near, and re-matched chance votes verified AugLy negatives (BENCHMARKS.md)
    first_fit = lambda p: local_features.inliers(p[0], recs[p[1]]) if recs[p[1]] is not None else 0  # noqa: E731
    inl += list(pool().map(first_fit, by_votes))
    found: dict[int, int] = {}
    for (_, i), n in zip(pairs + by_votes, inl):
        if n >= cfg.min_inliers:
            found[i] = max(found.get(i, 0), int(n))
    if not found:
        return hits
    paths = gallery.store.paths_of(list(found))
    first = [Hit(i, paths[i], best[i], True, n) for i, n in sorted(found.items(), key=lambda t: -t[1]) if i in paths]
    return (first + [h for h in hits if h.id not in found])[:k]
