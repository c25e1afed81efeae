"""User-facing errors: one line naming the thing (file, argument) and what is wrong with it."""

from __future__ import annotations


class CbirError(Exception):
    """An error the CLI prints as a single line and exits non-zero with (exit code 2)."""


class ImageError(CbirError):
    """One image could not be used; ``source`` names it and the message says why (a job reports it
    and goes on)."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason
