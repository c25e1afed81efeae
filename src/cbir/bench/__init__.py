"""Benchmarks (torch-free except the torch baseline): retrieval metrics, the Corel-style protocol,
accuracy and latency commands.

- ``metrics``: AP, mAP, mAP@K, P@K, R@K over rankings (DESIGN.md §5), per-class breakdown.
- ``protocol``: labelled data sets (class folders or ``N.jpg`` with class N // 100), stratified splits.
- ``accuracy``: ``cbir bench accuracy``.
- ``latency``: ``cbir bench latency``.
"""
