"""How many cores this process may use, and how many threads FAISS calls of one thread take. Torch-free."""

from __future__ import annotations

import os


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
