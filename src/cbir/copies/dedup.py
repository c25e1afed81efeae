"""Duplicates in an index: ``find(gallery)`` → groups.

- ``exact``: indexed items with the same content hash (SHA-1 of the file bytes, recorded at build).
- ``near``: pairs whose stored vectors are k-NN of each other (``k``, default 10) with cosine ≥
  ``threshold`` (default 0.5), kept when spatially verified (RANSAC inliers ≥ the index's
  ``min_inliers``, default 15; a pair that does not verify is tried with one side mirrored).
  The low threshold is deliberate: edited copies of Lite0 GAP vectors go down to cos 0.5 (heavy
  downscaling, rotation), while the verification is what rejects same-class look-alikes.
  ``verify=False`` keeps every pair over the threshold (use a high one, e.g. 0.9).
- Windows pass (``partial``, default 3; 0 turns it off): every item's five half-size windows
  (``local_features.WINDOWS``) and its layout box (``layout.layout_box``) are embedded with the
  index's model, searched (``partial`` nearest each) and verified, and then, for each matched
  item, the part most of its matches leave out
  (``match_regions.unexplained``: the photo inside a screenshot whose frame matched other
  screenshots) — a photo pasted into another, a screenshot or meme of a photo. It re-embeds ~6
  crops per image, several times the cost of the whole-image pass (BENCHMARKS.md).
- Vote pass (with ``partial``): every item is also paired with the 2 items that share the most ORB
  descriptor matches with its stored features or its mirror's (``cbir.copies.votes``, as
  search's second look) — an upside-down or heavily pixelated copy the CNN vector does not put near
  its photo — and those pairs are verified like the k-NN's (held-out planted set: vflip recall
  0.85 → 1.00, 1.03× the time: the mirrors are extracted once for both).
- Template pairs (``match_regions.template_pairs``) are dropped: two screenshots or memes of
  *different* photos that verify only through their shared frame or band — told apart by what a
  third image matches in them, or (``match_regions.frame_pairs``) because their match lies outside
  both images' photos (each one's block between uniform bands, ``layout.content_box``), which needs
  no third image: a frame the gallery holds no other copies of.

Groups are stars, not connected components: the image with the most inliers summed over its
verified pairs becomes a group's seed and takes its unassigned verified neighbours, then the next,
and so on — every member matches its seed directly, so a shared overlay (the same caption or
watermark on different photos) cannot chain photos together. Exact duplicates are one member each
in the near search; an exact group whose member is in a near group is folded into it (listed
under ``identical``), so that an image is in one group at most.

Cost: one k-NN search per item over the index's own search structure, plus ``k`` feature matches
per item (all cores are used), plus the windows pass.
"""

from __future__ import annotations

import sys
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable

import numpy as np

from cbir.copies import local_features
from cbir.copies.match_regions import frame_pairs, template_pairs, unexplained
from cbir.copies.votes import VOTES
from cbir.copies.windows import voted, window_candidates
from cbir.cores import all_cores
from cbir.errors import CbirError

K = 10
THRESHOLD = 0.5
BATCH = 1024
PARTIAL = 3  # nearest items per window (as search's default)
MAX_PARTIAL = 20
WINDOW_BATCH = 64  # items whose windows are embedded together
ATTACH = 2  # an image no seed took joins the group holding this many of its verified neighbours
FRAME_MATCHES = 3  # an item matched by this many others through one part is a frame around the rest
_EMPTY = np.zeros((0, 2), np.float32)


def exact_groups(store) -> list[list[int]]:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, h in store.conn.execute("SELECT id, sha1 FROM items WHERE state = 'indexed' AND sha1 IS NOT NULL"):
        by_hash[h].append(int(i))
    return [sorted(v) for v in by_hash.values() if len(v) > 1]


def find(
    gallery,
    k: int = K,
    threshold: float = THRESHOLD,
    verify: bool = True,
    partial: int = PARTIAL,
    progress: bool = False,
) -> list[dict]:
    """``[{"kind": "exact"|"near", "ids": [...], "paths": [...]}, ...]``, largest groups first; a near
    group holding byte-identical files also lists them: ``"identical": [[paths], ...]``."""
    if not 1 <= k <= 1000:
        raise CbirError(f"-k {k}: must be between 1 and 1000")
    if not -1.0 <= threshold <= 1.0:
        raise CbirError(f"--threshold {threshold}: a cosine, between -1 and 1")
    if not 0 <= partial <= MAX_PARTIAL:
        raise CbirError(f"--partial {partial}: neighbours per window, between 0 (whole images only) and {MAX_PARTIAL}")
    cfg = gallery.rerank_config()
    if verify and not gallery.settings.local_features:
        raise CbirError(
            f"--index {gallery.root}: built without local features, so near-duplicates cannot be verified; "
            f"add them with `cbir index features {gallery.root}`, or pass --no-verify with a high --threshold"
        )
    exact = exact_groups(gallery.store)
    dup_of_first = {i for g in exact for i in g[1:]}
    ids = np.array([i for i in gallery.store.paths_for_ids(_all_ids(gallery.store)) if i not in dup_of_first], np.int64)
    index = gallery.index
    pairs: set[tuple[int, int]] = set()
    bar = _bar(progress and len(ids), len(ids), "dedup", "img")
    keep = set(ids.tolist())
    for s in range(0, len(ids), BATCH):
        chunk = ids[s : s + BATCH]
        sims, nn = gallery.knn(gallery.vectors_for(chunk), min(k + 1, index.ntotal))
        for a, srow, nrow in zip(chunk, sims, nn):
            for b, sim in zip(nrow, srow):
                if b >= 0 and b != a and sim >= threshold and int(b) in keep:
                    pairs.add((min(int(a), int(b)), max(int(a), int(b))))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    pairs_list = sorted(pairs)
    if verify:
        mirror = _mirrors(gallery.store.paths_for_ids(ids.tolist()))
        if partial and len(ids):
            pairs_list = sorted(pairs | _voted_pairs(gallery, ids, keep, progress, mirror))
        m, blocks, layouts = _Matches(), {}, {}
        _verified(gallery, pairs_list, cfg.min_inliers, m, progress, mirror)
        if partial and len(ids):
            sizes: dict[int, tuple[int, int]] = {}
            whole = {int(i): local_features.WINDOWS for i in ids}
            _window_matches(gallery, whole, keep, partial, cfg.min_inliers, m, progress, sizes, layouts)
            blocks = _unexplained(gallery, m, sizes)
            _window_matches(
                gallery, {i: (box,) for i, (box, _) in blocks.items()}, keep, partial, cfg.min_inliers, m, progress
            )
        frames = {i: xy for i, (_, xy) in blocks.items() if len(m.points[i]) >= FRAME_MATCHES}
        shared = template_pairs(m.points, m.extents(gallery), frames) | frame_pairs(m.points, layouts)
        weighted = [(a, b, n) for (a, b), n in sorted(m.inliers.items()) if (a, b) not in shared]
    else:
        weighted = [(a, b, 1) for a, b in pairs_list]
    return _output(gallery, exact, star_groups(weighted))


def _output(gallery, exact: list[list[int]], near: list[list[int]]) -> list[dict]:
    """Exact groups whose first member (the one the near search saw) is in a near group join it, so
    that every image is in one group at most."""
    identical = {g[0]: g for g in exact}
    groups: list[tuple[str, list[int], list[list[int]]]] = []
    for g in near:
        subsets = [identical.pop(i) for i in g if i in identical]
        groups.append(("near", sorted(set(g).union(*subsets)), subsets))
    groups += [("exact", g, []) for g in identical.values()]
    paths = gallery.store.paths_for_ids([i for _, g, _ in groups for i in g])
    out = []
    for kind, g, subsets in groups:
        d = {"kind": kind, "ids": g, "paths": [paths[i] for i in g]}
        if subsets:
            d["identical"] = [[paths[i] for i in sorted(x)] for x in subsets]
        out.append(d)
    return sorted(out, key=lambda d: (-len(d["ids"]), d["kind"], d["ids"][0]))


def _bar(on, total: int, desc: str, unit: str):
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)


def _all_ids(store) -> list[int]:
    return [r[0] for r in store.conn.execute("SELECT id FROM items WHERE state = 'indexed' ORDER BY id")]


def star_groups(pairs: list[tuple[int, int, int]], attach: int = ATTACH) -> list[list[int]]:
    """Groups from weighted pairs (a, b, inliers): seeds by summed weight (ties: lower id), each
    taking its not yet assigned neighbours; then an image left out (its neighbours all went to other
    seeds, none of which it matches) joins the group holding ≥ ``attach`` (2) of its neighbours —
    the most of them, ties to the earlier group — so that a copy matching a photo's other copies but
    not the photo itself is not lost, while one shared caption cannot pull a photo in."""
    nbrs: dict[int, list[int]] = defaultdict(list)
    weight: dict[int, int] = defaultdict(int)
    for a, b, w in pairs:
        nbrs[a].append(b)
        nbrs[b].append(a)
        weight[a] += w
        weight[b] += w
    group_of: dict[int, int] = {}
    groups: list[list[int]] = []
    for seed in sorted(nbrs, key=lambda i: (-weight[i], i)):
        if seed in group_of:
            continue
        members = [seed] + [j for j in nbrs[seed] if j not in group_of]
        if len(members) > 1:
            group_of.update((j, len(groups)) for j in members)
            groups.append(members)
    for i in sorted(set(nbrs) - set(group_of)):
        counts: dict[int, int] = defaultdict(int)
        for j in nbrs[i]:
            if j in group_of:
                counts[group_of[j]] += 1
        best = max(counts.items(), key=lambda t: (t[1], -t[0]), default=(None, 0))
        if best[1] >= attach:
            groups[best[0]].append(i)
    return [sorted(g) for g in groups]


class _Matches:
    """Verified pairs: ``inliers[(a, b)]`` (a < b, the most any match of the pair had) and
    ``points[x][y]``: x's inliers with y (every match of the pair, feature pixels)."""

    def __init__(self):
        self.inliers: dict[tuple[int, int], int] = {}
        self.points: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
        self._extents: dict[int, tuple] = {}

    def add(self, a: int, b: int, n: int, a_xy: np.ndarray, b_xy: np.ndarray) -> None:
        key = (min(a, b), max(a, b))
        self.inliers[key] = max(self.inliers.get(key, 0), n)
        for x, y, xy in ((a, b, a_xy), (b, a, b_xy)):
            self.points[x][y] = np.vstack([self.points[x][y], xy]) if y in self.points[x] else xy

    def extents(self, gallery) -> dict[int, tuple]:
        """(x0, y0, x1, y1) of each matched item's stored keypoints (read once per item)."""
        items = sorted(set(self.points) - set(self._extents))
        for i, rec in zip(items, gallery.features.get(items) if items else []):
            xy = (
                rec["xy"][: int(rec["n"])].astype(np.float32)
                if rec is not None and rec["n"]
                else np.zeros((1, 2), np.float32)
            )
            self._extents[i] = (*xy.min(0), *xy.max(0))
        return self._extents


def _mirrors(paths: dict[int, str]) -> Callable[[int], tuple | None]:
    """item id → (ORB record of the mirror of its image at ``paths[id]``, the image's width at
    ``SIDE``), or None when the file cannot be read (moved, unreadable: it keeps what its stored
    features say); the last 4,096 kept, shared by the vote pass and verification."""

    @lru_cache(maxsize=4096)
    def mirror(i: int):
        path = paths.get(i)
        try:
            img = local_features.gray(path, path)
            return local_features.detect(local_features.mirror(img)), img.shape[1]
        except Exception:
            return None

    return mirror


def _verified(
    gallery,
    pairs: list[tuple[int, int]],
    min_inliers: int,
    m: _Matches,
    progress: bool,
    mirror: Callable[[int], tuple | None] | None = None,
) -> None:
    """Adds to ``m`` the pairs that verify: with the stored features, else with a's mirrored
    features (a flipped copy; ORB descriptors are not mirror-invariant, so they are extracted from
    a's file, once per item; a file that cannot be read is not tried mirrored). Not b's mirror as
    well: on a held-out frame set it verified two different photos in one phone-viewer layout
    (BENCHMARKS.md). No guided
    re-matching here (search's ``local_features.verify`` does it): applied to each image left
    without a verified pair, it pushed 132 Corel-1K pairs over the bar, 129 of them different
    photos of one class (BENCHMARKS.md)."""
    if not pairs:
        return
    items = sorted({i for p in pairs for i in p})
    feats = dict(zip(items, gallery.features.get(items)))
    mirror = mirror or _mirrors(gallery.store.paths_for_ids(items))
    bar = _bar(progress, len(pairs), "verify", "pair")

    def check(p):
        a, b = p
        fa, fb = feats[a], feats[b]
        got = (_EMPTY, _EMPTY)
        if fa is not None and fb is not None:
            got = local_features.matched(fa, fb)
            if len(got[0]) < min_inliers and mirror(a) is not None:
                rec, width = mirror(a)
                a_xy, b_xy = local_features.matched(rec, fb)
                if len(a_xy) > len(got[0]):
                    got = local_features.unmirror(a_xy, width), b_xy
        if bar is not None:
            bar.update(1)
        return got

    with ThreadPoolExecutor(all_cores()) as pool:
        for (a, b), (a_xy, b_xy) in zip(pairs, pool.map(check, pairs)):
            if len(a_xy) >= min_inliers:
                m.add(a, b, len(a_xy), a_xy, b_xy)
    if bar is not None:
        bar.close()


def _voted_pairs(
    gallery, ids: np.ndarray, keep: set[int], progress: bool, mirror: Callable[[int], tuple | None] | None = None
) -> set[tuple[int, int]]:
    """Pairs of each item with the ``votes.VOTES`` others that share the most ORB matches with its
    stored features or its mirror's (``cbir.copies.votes``, as search's second look): copies
    the CNN vector does not put near each other (a vertical flip, heavy pixelization). Verified
    like the k-NN pairs (first fit, mirrored when it fails)."""
    index = gallery.vote_index()
    if index is None:
        return set()
    recs = dict(zip(ids.tolist(), gallery.features.get(ids)))
    mirror = mirror or _mirrors(gallery.store.paths_for_ids(ids.tolist()))
    bar = _bar(progress, len(ids), "votes", "img")

    def one(i: int) -> list[int]:
        rec = recs[i]
        if rec is None or not rec["n"]:
            return []
        flipped = mirror(i)  # None: its stored features vote alone
        got = [j for _, j in voted(index, [[rec] if flipped is None else [rec, flipped[0]]], VOTES + 1)]
        if bar is not None:
            bar.update(1)
        return [j for j in got if j != i and j in keep][:VOTES]

    out: set[tuple[int, int]] = set()
    with ThreadPoolExecutor(all_cores()) as pool:
        for i, js in zip(ids.tolist(), pool.map(one, ids.tolist())):
            out.update((min(i, j), max(i, j)) for j in js)
    if bar is not None:
        bar.close()
    return out


def _unexplained(gallery, m: _Matches, sizes: dict[int, tuple[int, int]]) -> dict[int, tuple]:
    """{item: (box, keypoints in it)}: the part of each matched item that most of its matches leave
    out (``match_regions.unexplained``), the box as fractions of the image."""
    items = sorted(i for i in m.points if i in sizes)
    extents = m.extents(gallery)
    out = {}
    for i, rec in zip(items, gallery.features.get(items)):
        if rec is None or not rec["n"]:
            continue
        xy = rec["xy"][: int(rec["n"])].astype(np.float32)
        box = unexplained(xy, list(m.points[i].values()), extents[i])
        if box is None:
            continue
        (x0, y0, x1, y1), (w, h) = extents[i], local_features.at_side(sizes[i])
        px = (
            np.clip(x0 + box[0] * (x1 - x0), 0, w),
            np.clip(y0 + box[1] * (y1 - y0), 0, h),
            np.clip(x0 + box[2] * (x1 - x0), 0, w),
            np.clip(y0 + box[3] * (y1 - y0), 0, h),
        )
        if px[2] - px[0] >= 0.1 * w and px[3] - px[1] >= 0.1 * h:
            inside = (xy[:, 0] >= px[0]) & (xy[:, 0] <= px[2]) & (xy[:, 1] >= px[1]) & (xy[:, 1] <= px[3])
            out[i] = ((float(px[0] / w), float(px[1] / h), float(px[2] / w), float(px[3] / h)), xy[inside])
    return out


def _window_matches(
    gallery,
    boxes: dict[int, tuple],
    keep: set[int],
    partial: int,
    min_inliers: int,
    m: _Matches,
    progress: bool,
    sizes: dict[int, tuple[int, int]] | None = None,
    layouts: dict[int, tuple] | None = None,
) -> None:
    """Adds to ``m`` the matches of each item's windows ``boxes[item]`` (fractions of the image;
    ``local_features.windows``: crops with their own features, as is and mirrored) with their
    ``partial`` nearest items — a photo pasted into another, a screenshot holding a photo: what
    whole-image k-NN does not shortlist. ``layouts`` (when given): each image's layout box
    (``layout.layout_box``) is a window too, and ``layouts`` is filled with its block between uniform
    bands (``layout.content_box``: a page's, a card's or a meme's photo) in feature pixels. ``sizes``:
    filled with each image's (w, h). Files that cannot be read again are skipped with a warning."""
    if not boxes:
        return
    try:
        gallery.embedder()  # refused here, with the reason, when the index has no usable model
    except CbirError as e:
        raise CbirError(
            f"{e}\n(dedup's windows pass embeds parts of each image with the index's model; "
            f"--partial 0 compares whole images only)"
        ) from None
    ids = sorted(boxes)
    paths = gallery.store.paths_for_ids(ids)
    bar = _bar(progress, len(ids), "windows", "img")
    unreadable: list[str] = []

    def windows(i: int):
        try:
            return local_features.windows(paths[i], paths[i], boxes=boxes[i], content=layouts is not None)
        except Exception as e:  # moved or unreadable since it was indexed
            unreadable.append(f"{paths[i]}: {e}")
            return None

    with ThreadPoolExecutor(all_cores()) as pool:
        for s in range(0, len(ids), WINDOW_BATCH):
            chunk = ids[s : s + WINDOW_BATCH]
            got = {i: w for i, w in zip(chunk, pool.map(windows, chunk)) if w is not None}
            if sizes is not None:
                sizes.update((i, w.size) for i, w in got.items())
            if layouts is not None:
                for i, w in got.items():
                    if w.bands is not None:
                        (fw, fh), (x0, y0, x1, y1) = local_features.at_side(w.size), w.bands
                        layouts[i] = (x0 * fw, y0 * fh, x1 * fw, y1 * fh)
            _match_windows(gallery, got, keep, partial, min_inliers, m, pool)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    if unreadable:
        warnings.warn(
            f"dedup: {len(unreadable)} indexed images could not be read for the windows pass "
            f"(compared as whole images only), e.g. {unreadable[0]}",
            stacklevel=2,
        )


def _match_windows(gallery, got: dict, keep: set[int], partial: int, min_inliers: int, m: _Matches, pool) -> None:
    """Adds to ``m`` the matches of the windows ``got`` (item → ``local_features.Windows``) with each
    window's ``partial`` nearest items (``windows.window_candidates``, as the cascade's second look)."""
    crops = [(i, n, c) for i, w in got.items() for n, c in enumerate(w.crops)]
    rows, _, _, nn = window_candidates(gallery, [c for _, _, c in crops], min(partial + 1, gallery.index.ntotal))
    if len(rows):
        tasks = [
            (crops[r][0], crops[r][1], int(c))
            for r, row in zip(rows, nn)
            for c in row
            if c >= 0 and c != crops[r][0] and int(c) in keep
        ]
        targets = sorted({c for _, _, c in tasks})
        recs = dict(zip(targets, gallery.features.get(targets)))

        def check(t):
            i, n, c = t
            w = got[i]
            best = (_EMPTY, _EMPTY)
            for v, rec in enumerate(w.features[n] if recs[c] is not None else ()):
                i_xy, c_xy = local_features.matched(rec, recs[c])
                if len(i_xy) > len(best[0]):
                    best = local_features.from_window(i_xy, w.boxes[n], w.crops[n].size, w.size, v == 1), c_xy
            return best

        for (i, _, c), (i_xy, c_xy) in zip(tasks, pool.map(check, tasks)):
            if len(i_xy) >= min_inliers:
                m.add(i, c, len(i_xy), i_xy, c_xy)
