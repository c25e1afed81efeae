"""How many cores this process may use. Torch-free."""

from __future__ import annotations

import os


def all_cores() -> int:
    """Cores in this process's affinity mask (respects taskset/cgroup cpusets), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
