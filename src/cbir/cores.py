"""How many cores this process may use, and how many threads FAISS calls of one thread take. Torch-free."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def all_cores() -> int:
    """Cores in this process's affinity mask (respects taskset/cgroup cpusets), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def faiss_single_threaded() -> None:
    """FAISS calls made by *this* thread run on one OpenMP thread (OpenMP's thread count is per
    thread): for threads that already run in parallel with others — local-feature matching, a
    server's request threads — where FAISS's own threads would only contend (and spin) for the same
    cores. Calls from other threads keep FAISS's default."""
    import faiss

    faiss.omp_set_num_threads(1)


@contextmanager
def faiss_threads(most: int) -> Iterator[None]:
    """FAISS calls made by this thread inside run on at most ``most`` OpenMP threads (never fewer
    than one); the thread's setting is restored after. Searches pass their query count, as FAISS's
    own per-query parallelism would: with fewer queries than threads, FAISS ≥ 1.15 splits an exact
    scan over the database instead (a BLAS product per thread and block), which was slower than one
    thread's scan for one query on this project's 2-core machine (BENCHMARKS.md)."""
    import faiss

    before = faiss.omp_get_max_threads()
    if most >= before:
        yield
        return
    faiss.omp_set_num_threads(max(1, most))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
