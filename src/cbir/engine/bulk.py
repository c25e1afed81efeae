"""Bulk embedding: decode on a thread pool while the backend runs the previous batch.

Memory is O(batch): at most ``prefetch + 1`` batches (each one reusable uint8 buffer) are in flight,
whatever the number of inputs. Output order is the input order, and every input is accounted for:
it is in a batch's ``indices`` (with a vector) or in its ``errors`` (with the reason).
Pillow releases the GIL while decoding and resizing, so threads (default: all cores) suffice.

``side(data, name)`` (optional): more work on each file's bytes in the same decode worker, e.g. an
index build's local features — the file is read once and the side work runs on all cores while the
backend runs earlier batches; its result is the input's ``facts.side`` (it must not raise: it
reports its own problems in what it returns). Its time is ``Timings.side``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from cbir.cores import all_cores
from cbir.engine.preprocess import ImageError, ImageSource, Preprocess, describe
from cbir.engine.row_stats import row_stats
from cbir.sources import DEFAULT_READER, is_uri

PREFETCH = 2
Side = Callable[[object, str], object]  # (the file's bytes, or the in-memory image; its name) -> anything


@dataclass
class Timings:
    """Seconds spent per stage. read/decode are summed over worker threads; infer and wall are wall time."""

    read: float = 0.0
    decode: float = 0.0
    side: float = 0.0  # ``side`` work (summed over workers)
    infer: float = 0.0
    wait: float = 0.0  # inference thread waiting for decoded batches
    wall: float = 0.0
    images: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, read: float, decode: float, side: float = 0.0) -> None:
        with self._lock:
            self.read += read
            self.decode += decode
            self.side += side

    def as_dict(self) -> dict:
        keys = (
            ("read", "decode", "side", "infer", "wait", "wall")
            if self.side
            else ("read", "decode", "infer", "wait", "wall")
        )
        d = {k: round(getattr(self, k), 4) for k in keys}
        d.update(
            images=self.images,
            failed=self.failed,
            images_per_s=round(self.images / self.wall, 2) if self.wall > 0 else 0.0,
        )
        return d

    def summary(self) -> str:
        d = self.as_dict()
        return (
            f"{d['images']} images in {d['wall']:.2f} s ({d['images_per_s']:.1f} img/s), {d['failed']} failed; "
            f"read {d['read']:.2f} s, decode {d['decode']:.2f} s (summed over workers), "
            f"infer {d['infer']:.2f} s, waiting for decode {d['wait']:.2f} s"
        )


@dataclass
class FileFacts:
    """What was learnt about an input while reading it (files only)."""

    size: int | None = None
    sha1: str | None = None
    stats: np.ndarray | None = None  # ``row_stats`` of the decoded row
    side: object = None  # what ``iter_batches``' ``side`` returned for this input


@dataclass
class Batch:
    """One processed batch: input positions with vectors (and regional descriptors when ``run``
    returns them), and failures as (position, source, reason)."""

    indices: list[int]
    vectors: np.ndarray
    errors: list[tuple[int, str, str]]
    facts: dict[int, FileFacts]
    regions: np.ndarray | None = None


def read_source(source: str | os.PathLike, hash_files: bool = False) -> tuple[bytes, FileFacts]:
    """A path's or URI's bytes and facts; ``ImageError`` naming it when it cannot be read."""
    name = os.fspath(source)
    try:
        data = DEFAULT_READER.read(name) if is_uri(name) else open(name, "rb").read()
    except FileNotFoundError:
        kind = " (dangling symlink)" if os.path.islink(name) else ""
        raise ImageError(name, "no such file" + kind) from None
    except IsADirectoryError:
        raise ImageError(name, "is a directory") from None
    except OSError as e:
        raise ImageError(name, f"cannot read ({e.strerror or e})") from None
    return data, FileFacts(len(data), hashlib.sha1(data).hexdigest() if hash_files else None)


def _load(
    source: ImageSource, pp: Preprocess, out: np.ndarray, hash_files: bool, timings: Timings, side: Side | None = None
) -> FileFacts:
    facts = FileFacts()
    t0 = time.perf_counter()
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        data, facts = read_source(name, hash_files)
        t1 = time.perf_counter()
        try:
            pp(data, out)
        except ImageError as e:
            raise ImageError(name, e.reason) from None
    else:
        name = data = None  # an in-memory image: named only if side work needs it
        t1 = time.perf_counter()
        pp(source, out)
    facts.stats = row_stats(out, structure=False)
    t2 = t3 = time.perf_counter()
    if side is not None:
        facts.side = side(source, describe(source)) if data is None else side(data, name)
        t3 = time.perf_counter()
    timings.add(t1 - t0, t2 - t1, t3 - t2)
    return facts


def _decoded(chunk: list, futs: list) -> tuple[list[int], list[tuple], dict]:
    """(rows decoded, (position, source, reason) of those that failed, facts by position) of one
    batch's decode futures; any failure of one input is that input's error, never the job's."""
    ok, errors, facts = [], [], {}
    for slot, ((pos, src), fut) in enumerate(zip(chunk, futs)):
        try:
            facts[pos] = fut.result()
            ok.append(slot)
        except ImageError as e:
            errors.append((pos, e.source if isinstance(src, (str, os.PathLike)) else describe(src), e.reason))
        except Exception as e:  # a decoder bug must not kill the job: report it for this input
            errors.append((pos, describe(src), f"{type(e).__name__}: {e}"))
    return ok, errors, facts


def _abandon(pending: deque, running: deque) -> None:
    """Cancel decodes not started and collect answers nobody will read (frees the runner's slots)."""
    for _, _, futs in pending:
        for f in futs:
            f.cancel()
    for handle, _ in running:
        if handle is not None:
            try:
                handle()
            except Exception:
                pass


def iter_batches(
    sources: Iterable[ImageSource],
    run: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]],
    pp: Preprocess,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = PREFETCH,
    hash_files: bool = False,
    timings: Timings | None = None,
    submit: Callable[[np.ndarray], Callable[[], np.ndarray]] | None = None,
    in_flight: int = 1,
    side: Side | None = None,
) -> Iterator[Batch]:
    """``Batch``es in input order, decoding overlapping ``run`` (vectors, or (vectors, regions)). ``submit``
    (a runner's; default ``run`` at once) keeps up to ``in_flight`` batches (its ``slots``) in flight.
    ``facts.stats``: each row's mean colour (pixel-shuffled queries); ``side``: module docstring."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be ≥ 1")
    if submit is None:
        submit, in_flight = (lambda x: lambda out=run(x): out), 1
    timings = timings if timings is not None else Timings()
    h, w = pp.size
    workers = workers or all_cores()
    free: list[np.ndarray] = [np.empty((batch_size, h, w, 3), np.uint8) for _ in range(prefetch + 1)]
    it = iter(enumerate(sources))
    pending: deque = deque()  # decoding
    running: deque = deque()  # submitted to the runner: (handle, Batch without vectors)
    last = time.perf_counter()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbir-decode") as pool:

        def submit_next() -> None:
            chunk = [x for _, x in zip(range(batch_size), it)]
            if not chunk:
                return
            buf = free.pop()
            futs = [
                pool.submit(_load, src, pp, buf[slot], hash_files, timings, side) for slot, (_, src) in enumerate(chunk)
            ]
            pending.append((chunk, buf, futs))

        def collect() -> Batch:
            nonlocal last
            handle, batch = running.popleft()
            t0 = time.perf_counter()
            vectors = handle() if handle is not None else np.empty((0, 0), np.float32)
            if isinstance(vectors, tuple):
                vectors, batch.regions = vectors
            batch.vectors = vectors
            now = time.perf_counter()
            timings.infer += now - t0
            timings.images += len(batch.indices)
            timings.failed += len(batch.errors)
            timings.wall += now - last  # accumulates across calls sharing one Timings
            last = now
            return batch

        try:
            for _ in range(prefetch + 1):
                submit_next()
            while pending:
                chunk, buf, futs = pending.popleft()
                t0 = time.perf_counter()
                ok, errors, facts = _decoded(chunk, futs)
                t1 = time.perf_counter()
                timings.wait += t1 - t0
                handle = None
                if ok:
                    handle = submit(buf[: len(ok)] if len(ok) == len(chunk) else buf[ok])
                timings.infer += time.perf_counter() - t1
                free.append(buf)  # submit has copied the rows (or run has used them)
                submit_next()
                running.append((handle, Batch([chunk[s][0] for s in ok], None, errors, facts)))
                if len(running) >= in_flight:
                    yield collect()
            while running:
                yield collect()
        finally:
            _abandon(pending, running)
