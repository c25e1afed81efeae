"""Giving freed memory back to the system in a long-lived process (``cbir serve``), glibc only.

A server that lives through writes frees whole generations (FAISS indexes, vote indexes with their
thousands of inverted lists, feature rows) while many threads allocate; glibc keeps freed heap
pages, one heap per thread arena, so RSS stays at its peak. ``limit_arenas`` caps the arenas
(``mallopt(M_ARENA_MAX)``; default 2, as ``MALLOC_ARENA_MAX=2`` would, unless that variable is set)
and ``trim`` returns free pages of every arena (``malloc_trim(0)``). Both are no-ops where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

M_ARENA_MAX = -8  # glibc's mallopt parameter


@lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``n`` (call before threads start); False where it cannot."""
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, n))


def trim() -> bool:
    """Return free heap pages to the system; True when some were."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
