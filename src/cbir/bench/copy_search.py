"""``cbir bench copy-search``: find the original of every copy through a real index, the way a user
searches (``Gallery.search``: the index's stored re-ranking, query embedding and local features
included), one query at a time.

Input: a suite folder as ``cbir bench copies --suite augly`` writes it — ``copies/<aug>/<path of the
original relative to data>`` and, optionally, ``negatives/<aug>/<name>`` (photos that are not in the
gallery). Per augmentation: rank-1 (the original is the first hit), in the top 10, and how often the
first hit is *verified* (``first_by_hash``: by the hash stage); for negatives, the verified false-positive rate (a first hit marked verified
although the photo is not in the gallery) and the margin under the verified bar: how many negatives
reach 10, 12, 13, 14, 15 inliers on any checked hit (``negatives_inliers_at_least``) and the most any
reaches (``negatives_max_inliers``), beside the 1st/5th/25th/50th percentiles of the inliers of
copies found first and verified (``copies_inliers_percentiles``). ``ms_per_query``: median and mean wall time of one
``Gallery.search`` call (decode, embedding, local features, k-NN, verification, re-ranking).
``crashes``: queries whose search raised, or whose answer says a stage failed; the search goes on.
The descriptor-vote index is made before the first query (searches meanwhile would go without it).

At scale (``at_sizes``, ``--distractors DIR --at N,…``): the distractors (``cbir bench distractors``)
are added to the index in ``distractors.ordered`` order until it holds each size in turn, and the suite
is searched at each; one row per size, with this process's peak resident memory so far. Past the
distractors' count, ``--from-vectors V.npy`` adds vectors-only items (``vector_distractors``: the
CNN shortlist and the scan at 1M; they have no local features). The index is written to: run it on
a copy, or on an index made for it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from cbir.errors import CbirError
from cbir.sources import find_images

MARGIN = (10, 12, 13, 14, 15)  # inlier counts whose reach by negatives is reported (the default bar: 15)


def _stats(ms: list[float]) -> dict:
    return {"median": round(float(np.median(ms)), 2), "mean": round(float(np.mean(ms)), 2)} if ms else {}


def original_ids(gallery, data: str) -> dict[str, int]:
    """Indexed items under ``data`` by their path relative to it, without suffix — the key a suite's
    copy has under ``copies/<aug>/``."""
    data_root, out = Path(data).resolve(), {}
    for i, p in gallery.store.paths_for_ids(gallery.store.indexed_ids().tolist()).items():
        try:
            out[str(Path(p).resolve().relative_to(data_root).with_suffix(""))] = i
        except ValueError:
            continue
    return out


def copy_search(
    gallery,
    data: str,
    suite: str,
    k: int = 10,
    rerank=None,
    per_aug: int | None = None,
    keeps: dict[str, bool] | None = None,
    skip: int = 0,
) -> dict:
    """Score the suite under ``suite`` against ``gallery`` (a ``Gallery`` holding ``data``).
    ``per_aug``: at most this many queries per augmentation (the first in path order, after the
    first ``skip``: ``skip=50, per_aug=50`` is the held-out half of a 100-per-edit suite whose first
    50 the cascade was tuned on).
    ``keeps``: augmentation → keeps ≥ 25 % of the original's pixels (``augly_suite.AUGS``), for the
    ``min_rank1_keeping`` figure."""
    if skip < 0:
        raise CbirError(f"--skip {skip}: the queries left out per edit, 0 or more")
    root, t_start = Path(suite), time.perf_counter()
    key_of = original_ids(gallery, data)
    if not key_of:
        raise CbirError(f"--data {data}: no indexed image lies under it")
    if gallery.settings.local_features:  # the steady state a user searches in: the vote index made
        gallery.vote_index()  # (a gallery over ``votes.SYNC_ITEMS`` makes its first one aside)
        gallery.votes.wait()
    out: dict = {"copies": {}, "negatives": {}}
    ms: dict[str, list[float]] = {"copies": [], "negatives": []}
    most: list[int] = []  # per negative: the most inliers of any checked hit
    crashes: list[str] = []
    found: list[int] = []  # per copy whose original came first, verified: its inliers
    for kind in ("copies", "negatives"):
        base = root / kind
        if not base.is_dir():
            continue
        for aug in sorted(d.name for d in base.iterdir() if d.is_dir()):
            files = sorted(find_images([base / aug]))[skip:][:per_aug]
            if not files:  # an empty edit folder, or all of it skipped: no row (and no 0 / 0)
                continue
            rank1 = top = verified = hashed = 0
            for f in files:
                t0 = time.perf_counter()
                hits = _one_query(gallery, f, k, rerank, crashes)
                ms[kind].append((time.perf_counter() - t0) * 1e3)
                first_verified = bool(hits and hits[0]["verified"])
                verified += first_verified
                hashed += bool(hits and hits[0].get("by") == "hash")  # verified by the hash stage
                if kind == "copies":
                    want = key_of.get(str(Path(f).relative_to(base / aug).with_suffix("")))
                    if want is None:
                        raise CbirError(f"--suite {suite}: {f} has no original under --data {data}")
                    ids = [h["id"] for h in hits]
                    rank1 += bool(ids and ids[0] == want)
                    if ids and ids[0] == want and first_verified and hits[0]["inliers"]:
                        found.append(hits[0]["inliers"])
                    top += want in ids
                else:
                    most.append(max((h["inliers"] or 0 for h in hits), default=0))
            n = len(files)
            row = {"n": n, "first_verified": round(verified / n, 4), "first_by_hash": round(hashed / n, 4)}
            if kind == "copies":
                row.update(rank1=round(rank1 / n, 4), in_top10=round(top / n, 4))
            out[kind][aug] = row
    summary = _summary(out, ms, crashes, found, most, keeps)
    summary.update(items=gallery.store.count("indexed"), search_s=round(time.perf_counter() - t_start, 1))
    return {**summary, "per_aug": out["copies"], "per_aug_negatives": out["negatives"]}


def _one_query(gallery, f: Path, k: int, rerank, crashes: list[str]) -> list[dict]:
    """The hits of one query; a search that raised, or whose answer says a stage failed, is added to
    ``crashes`` (the run goes on)."""
    try:
        r = gallery.search([str(f)], k=k, rerank=rerank)[0]
    except Exception as e:  # counted, reported, and the run goes on
        crashes.append(f"{f}: {type(e).__name__}: {e}")
        return []
    if r.get("failed") or r.get("error"):
        crashes.append(f"{f}: {r.get('error') or r.get('failed')}")
    return r.get("results", [])


def _summary(out: dict, ms: dict, crashes: list[str], found: list[int], most: list[int], keeps) -> dict:
    """The run's figures over the per-edit rows ``out``."""
    c, ng = out["copies"], out["negatives"]
    summary: dict = {
        "ms_per_query": {kind: _stats(v) for kind, v in ms.items()},
        "crashes": len(crashes),
        "crashed": crashes[:20],
    }
    if c:
        total = sum(r["n"] for r in c.values())
        summary["rank1"] = round(sum(r["rank1"] * r["n"] for r in c.values()) / total, 4)
        summary["in_top10"] = round(sum(r["in_top10"] * r["n"] for r in c.values()) / total, 4)
        if found:  # the other side of the bar: how few inliers the verified originals had
            summary["copies_inliers_percentiles"] = dict(
                zip(("1", "5", "25", "50"), np.percentile(found, [1, 5, 25, 50]).round(1).tolist())
            )
        kept = [a for a in c if (keeps or {}).get(a, True)]
        if kept:
            worst = min(kept, key=lambda a: c[a]["rank1"])
            summary["min_rank1_keeping"] = {"aug": worst, "rank1": c[worst]["rank1"]}
    if ng:
        total = sum(r["n"] for r in ng.values())
        fp = sum(round(r["first_verified"] * r["n"]) for r in ng.values())
        summary["negatives"] = total
        summary["verified_false_positives"] = fp
        summary["verified_fp_rate"] = round(fp / total, 4)
        summary["negatives_inliers_at_least"] = {t: sum(m >= t for m in most) for t in MARGIN}
        summary["negatives_max_inliers"] = max(most, default=0)
    return summary


def at_sizes(
    gallery,
    data: str,
    suite: str,
    distractors: str | None,
    sizes: Sequence[int],
    progress: bool = False,
    vectors: str | None = None,
    **search,
) -> list[dict]:
    """``copy_search`` at each gallery size in ``sizes`` (ascending), the index grown to it with the
    distractors under ``distractors`` (never removed: a size below the index's is searched as it is),
    and past them with the rows of the .npy ``vectors`` (``vector_distractors``: vectors-only items).
    ``search``: ``copy_search``'s keywords."""
    from cbir.bench import vector_distractors
    from cbir.bench.distractors import grow, ordered
    from cbir.bench.scale import peak_rss_mb

    base = gallery.store.count("indexed")
    pool = ordered(distractors) if distractors else []
    rows = []
    for size in sorted(sizes):
        images = min(size, base + len(pool)) if vectors else size
        grown = grow(gallery, distractors or "", images, base, progress, pool)
        if vectors:
            grown.update(vector_distractors.grow(gallery, vectors, size, progress))
        row = copy_search(gallery, data, suite, **search)
        row.update(size=size, **grown, peak_rss_mb=round(peak_rss_mb(), 1))
        rows.append(row)
    return rows
