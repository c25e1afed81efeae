"""The search cascade: the one place that says which stages a query goes through, in which order.

1. ``knn``: the k-NN search with re-ranking (``Gallery.search_vectors``: shortlist, the re-ranking
   stages and spatial verification of the first ``verify`` candidates), batched over the queries.
2. ``windows``: the second look — only for an image query with nothing verified and ``partial`` on:
   its windows and layout box searched and verified, and the items sharing the most ORB
   descriptor matches with it (``votes``) verified (``Gallery.search_windows``).
3. ``colour``: only for an image query with nothing verified whose pixels were shuffled: its
   nearest items by mean colour (``Gallery.search_scrambled``).

Every stage has an error boundary (``guarded``): a stage that raises on one query leaves that
query's answer as the stage before made it — logged, counted in ``ERRORS`` (``/metrics``) and named
in the query's ``Notes.failed`` — and never fails the request or the other queries of a batch.
Verification is guarded per query the same way (a query it fails on keeps its hits unverified).
Past the request's ``Deadline`` a stage is not started: it is named in ``Notes.skipped`` and the
answer is marked partial. ``Gallery.search``, ``cbir search``, ``cbir bench copy-search`` and
``cbir serve``'s POST /search all run ``second_look``; none of them lists the stages itself.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from cbir.deadline import NEVER, Deadline

log = logging.getLogger("cbir.search")
T = TypeVar("T")
STAGES = ("knn", "verify", "windows", "colour")  # in the order they run; "verify" runs inside "knn"
ERRORS: Counter = Counter()  # stage -> queries it failed on (this process)
_errors_lock = threading.Lock()


@dataclass
class Notes:
    """What happened to one query beyond its hits: stages skipped (past the deadline) or failed."""

    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.skipped)


def guarded(stage: str, notes: Notes | None, deadline: Deadline, run: Callable[[], T], fallback: T) -> T:
    """``run()``, or ``fallback`` when the deadline has passed (noted as skipped) or it raises
    (logged, counted, noted as failed)."""
    if deadline.expired:
        if notes is not None:
            notes.skipped.append(stage)
        return fallback
    try:
        return run()
    except Exception as e:  # the error boundary: this query keeps what it had
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        log.warning("search stage %s failed on one query: %s", stage, reason, exc_info=log.isEnabledFor(logging.DEBUG))
        with _errors_lock:
            ERRORS[stage] += 1
        if notes is not None:
            notes.failed.append(f"{stage}: {reason}")
        return fallback


def second_look(
    gallery,
    source,
    vector,
    hits: list,
    k: int,
    cfg,
    features=None,
    snap=None,
    deadline: Deadline = NEVER,
    notes: Notes | None = None,
) -> list:
    """Stages 2 and 3 for one image query ``source`` (path or bytes) whose k-NN answer is ``hits``
    (``vector``: its raw embedding, ``features``: its ``extract_query`` variants or None)."""
    snap = snap or gallery.snapshot()
    hits = (
        guarded(
            "windows",
            notes,
            deadline,
            lambda: gallery.search_windows(source, hits, k, cfg, features, snap, deadline),
            hits,
        )
        if cfg.verify and cfg.partial and not any(h.verified for h in hits)
        else hits
    )
    if not any(h.verified for h in hits):
        hits = guarded("colour", notes, deadline, lambda: gallery.search_scrambled(source, vector, hits, k, snap), hits)
    return hits
