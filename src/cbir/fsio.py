"""Atomic file writes: write a temporary file beside the target, fsync it, rename it over the target,
fsync the directory. A reader (or a process killed half-way) sees the old file or the new one, never
a partial one. Torch-free; the one place in cbir that writes a file that must survive a crash.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory by path (directories: so that a rename inside it is durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write tmp`` — on success ``tmp`` is fsynced and renamed to ``p``;
    on error it is removed and ``p`` is untouched. ``suffix`` keeps an extension writers insist on."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str))
