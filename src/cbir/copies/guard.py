"""Error boundaries of the search cascade's stages (``cbir.copies.cascade``).

``guarded(stage, notes, deadline, run, fallback)``: a stage past the request's ``Deadline`` is not
started (named in ``Notes.skipped``: the answer is partial); a stage that raises on one query leaves
that query's answer as the stage before made it — logged, counted in ``ERRORS`` (``/metrics``) and
named in ``Notes.failed`` — and never fails the request or the other queries of a batch.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from cbir.deadline import Deadline

log = logging.getLogger("cbir.search")
T = TypeVar("T")
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
