"""A request's deadline: a point in time (monotonic clock) every stage of a search checks before
it starts. ``Deadline(None)`` never expires (the CLI and the library by default)."""

from __future__ import annotations

import math
import time


class Deadline:
    def __init__(self, seconds: float | None = None):
        self.seconds = seconds
        self.end = math.inf if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (never below 0; ``inf`` without a deadline)."""
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


NEVER = Deadline(None)
