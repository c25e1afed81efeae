"""Peers of ``cbir dedup`` on the same images, for ``cbir bench dedup --peers``: imagededup's PHash
(its CNN needs downloaded weights) and fastdup, each at its documented default threshold, their
pairs turned into groups by connected components (how both present duplicates) and scored with
``cbir.bench.copies.score_dedup`` exactly like cbir's groups. Both are optional installs
(``pip install imagededup fastdup``); a peer that does not import is reported as such, not skipped
silently.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from cbir.sources import find_images


def _components(pairs: list[tuple[str, str]]) -> list[dict]:
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(root(x), []).append(x)
    return [{"kind": "near", "paths": sorted(g)} for g in groups.values() if len(g) > 1]


def imagededup_phash(files: list[str], max_distance: int = 10) -> list[dict]:
    """imagededup PHash groups (Hamming distance ≤ ``max_distance`` of 64, its default 10)."""
    from imagededup.methods import PHash

    hasher = PHash(verbose=False)
    codes = {f: hasher.encode_image(image_file=f) for f in files}
    codes = {f: c for f, c in codes.items() if c}
    dups = hasher.find_duplicates(encoding_map=codes, max_distance_threshold=max_distance)
    return _components([(a, b) for a, bs in dups.items() for b in bs])


def fastdup_groups(files: list[str], threshold: float = 0.9) -> list[dict]:
    """fastdup's connected components of pairs with similarity ≥ ``threshold`` (its default 0.9)."""
    import fastdup

    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        fd = fastdup.create(work_dir=os.path.join(tmp, "work"), input_dir=str(listing))
        fd.run(threshold=threshold, ccthreshold=threshold, overwrite=True, verbose=False)
        sim = fd.similarity()
        pairs = [
            (str(a), str(b))
            for a, b, s in zip(sim["filename_from"], sim["filename_to"], sim["distance"])
            if s >= threshold
        ]
    return _components(pairs)


@contextlib.contextmanager
def _stdout_to_stderr():
    """``sys.stdout`` and file descriptor 1 (a native library's prints) pointed at stderr, then restored."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


PEERS = {"imagededup-phash": imagededup_phash, "fastdup": fastdup_groups}


def run_peers(folders: list[str], data: str, copies: str, names: list[str] | None = None) -> dict:
    """Every peer of ``PEERS`` (or ``names``) on the images under ``folders``, scored."""
    from cbir.bench.copies import score_dedup

    files = [str(Path(f).resolve()) for f in sorted(find_images(folders))]
    out = {}
    for name in names or list(PEERS):
        t0 = time.perf_counter()
        try:
            with _stdout_to_stderr():  # fastdup prints banners and progress bars on stdout, into the JSON
                groups = PEERS[name](files)
        except ImportError as e:
            out[name] = {"error": f"not installed ({e})"}
            continue
        out[name] = {**score_dedup(groups, data, copies), "seconds": round(time.perf_counter() - t0, 2)}
    return out
