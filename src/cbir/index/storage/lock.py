"""One writer per index directory, across processes: ``fcntl.flock`` on ``INDEX_DIR/.writer.lock``.

Writers (build, add, remove, tune, reconcile) hold it for the whole operation; a second writer gets a
one-line error naming the holder's pid, or waits with ``wait=True`` (``--wait``). Readers (search,
serve, info) never take it. The kernel drops the lock when the holder dies (kill -9 included), so a
crashed writer never leaves a stale lock behind. A lock file unlinked while we waited on it (a failed
first build discarded its new index directory) is noticed after ``flock`` returns: we retry on the
path's current file, or say the directory is gone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cbir.errors import CbirError

LOCK_NAME = ".writer.lock"


class DirectoryGone(CbirError):
    """The index directory vanished while we waited for its lock."""


class WriterLock:
    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = False, blocking_error: bool = True) -> bool:
        """Take the lock; False (or a ``CbirError`` when ``blocking_error``) if another process has it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                raise DirectoryGone(
                    f"--index {self.path.parent}: the directory is gone (another process's failed "
                    f"first build removed what it had made); run the command again"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                if not blocking_error:
                    return False
                raise CbirError(
                    f"--index {self.path.parent}: another cbir process (pid {holder}) is writing to it; "
                    f"wait for it to finish or pass --wait"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file that was unlinked meanwhile: lock the one there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
