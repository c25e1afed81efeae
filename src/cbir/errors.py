"""User-facing errors: one line naming the thing (file, argument) and what is wrong with it."""
from __future__ import annotations


class CbirError(Exception):
    """An error the CLI prints as a single line and exits non-zero with (exit code 2)."""
