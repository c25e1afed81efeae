"""``cbir bench``: the benchmark commands (accuracy, latency, sweep, copies, dedup, live, http, …).
A leaf: only ``cbir.cli`` imports it; the scoring it shares with ``validate`` and ``finetune`` is in
``cbir.eval``."""
