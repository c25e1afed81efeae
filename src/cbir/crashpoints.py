"""Named crash points for kill -9 tests: ``CBIR_CRASH_AT=NAME:N`` makes this process kill itself with
SIGKILL the N-th time (1-based) it reaches point NAME — exactly what a power cut or the OOM killer
does there, at a place chosen by the test instead of by the machine's speed. Unset (always, outside
tests), ``hit`` is one dictionary look-up.

Points: ``shard-written`` (a shard's vector file is on disk, not committed), ``shard-committed``
(SQLite marks it done), ``features-written``, ``faiss-written`` (index.faiss replaced, index.json
not yet), ``config-written``, ``removed-committed`` (SQLite marks items removed, index.faiss not yet
updated), ``votes-written`` (the vote index's temporary file written, votes.npz not yet replaced).
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("CBIR_CRASH_AT", "")
_name, _, _n = _spec.partition(":")
_count = {"n": int(_n) if _n.isdigit() else 1}


def hit(name: str) -> None:
    """Die here (SIGKILL) when ``CBIR_CRASH_AT`` names this point and its count is reached."""
    if name != _name:
        return
    _count["n"] -= 1
    if _count["n"] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
