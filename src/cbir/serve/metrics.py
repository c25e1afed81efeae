"""Minimal Prometheus text exposition: counters and fixed-bucket histograms, thread-safe."""
from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.hist: dict[tuple[str, tuple], list] = {}
        self.help: dict[str, tuple[str, str]] = {}

    def inc(self, name: str, help_: str, value: float = 1.0, **labels) -> None:
        with self._lock:
            self.help.setdefault(name, ("counter", help_))
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, help_: str, seconds: float, **labels) -> None:
        with self._lock:
            self.help.setdefault(name, ("histogram", help_))
            key = (name, tuple(sorted(labels.items())))
            h = self.hist.setdefault(key, [[0] * len(BUCKETS), 0.0, 0])
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[0][i] += 1
            h[1] += seconds
            h[2] += 1

    def render(self) -> str:
        def lab(labels: tuple, extra: tuple = ()) -> str:
            items = list(labels) + list(extra)
            return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}" if items else ""

        lines = []
        with self._lock:
            for name, (kind, help_) in sorted(self.help.items()):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                if kind == "counter":
                    for (n, labels), v in sorted(self.counters.items()):
                        if n == name:
                            lines.append(f"{name}{lab(labels)} {v:g}")
                else:
                    for (n, labels), (counts, total, count) in sorted(self.hist.items()):
                        if n != name:
                            continue
                        for b, c in zip(BUCKETS, counts):
                            lines.append(f"{name}_bucket{lab(labels, (('le', f'{b:g}'),))} {c}")
                        lines.append(f"{name}_bucket{lab(labels, (('le', '+Inf'),))} {count}")
                        lines.append(f"{name}_sum{lab(labels)} {total:.6f}")
                        lines.append(f"{name}_count{lab(labels)} {count}")
        return "\n".join(lines) + "\n"
