"""Descriptor votes: the items that share the most ORB matches with a query, found without the
CNN vector — the second look's shortlist for copies the global vector no longer recognises
(vertically flipped, shrunk to 96 pixels, grey and filtered, pasted small into another photo).

``build(descriptors, owners)``: a FAISS ``IndexBinaryIVF`` over the gallery's stored ORB
descriptors, each labelled with its item's id; its ``nlist`` cells are centred on descriptors drawn
from the gallery (``4·√n`` of them, 256–16,384: no k-means, whose float clustering of 256-bit codes
would cost minutes; binary ORB codes spread well enough over sampled centres). ``vote(index,
variants, top)``: every query descriptor's two nearest gallery descriptors (``NPROBE`` cells), kept
when the nearest passes Lowe's ratio test (``local_features.RATIO``) — the same test verification
uses — and counted once per item and query variant (as is, mirrored: the best variant counts); the
``top`` items with the most such matches, at least ``MIN_VOTES``.

Why it works where the CNN vector fails: on the misses of AugLy chains of three edits
(BENCHMARKS.md), a copy whose original verifies (≥ 15 inliers) has it first by votes, usually by a wide
margin, while its CNN rank is far down. The IVF (nprobe 8) ranks them as the exhaustive vote does.

Stretched copies: ORB's patch is square, so a copy squeezed or stretched beyond
``local_features.STRETCH`` (1.5×) keeps its keypoints but not their descriptors, and votes for
nothing. ``common_aspects`` gives the gallery's most common image shapes (from the records' ``wh``);
``Gallery`` votes again with the query stretched back to each one it is more than 1.5× away from
(``local_features.restretched``): on those chains it puts the original first for all 7 misses that
had a squeezing ``resize`` in them.

Memory: 40 bytes per indexed descriptor (32-byte code, 8-byte id). ``per_item`` keeps at most
``max_mib`` (default ``MAX_MIB``, 512 MiB) in all, or as many bytes per item as its vector takes
when that is more: every descriptor of a gallery up to ~26,800 items of 500 keypoints, then
``kept`` ones of each item — half its coarsest, half evenly spaced over the rest — 134 per item at
100k (at 33, the 128 MiB of before, copies whose original only the votes find were lost among 100k
photos: BENCHMARKS.md), and never fewer than a vector's bytes allow (32 for 320-d float32 vectors:
a 1M gallery's vote index takes about what its vectors take, 1.2 GiB, instead of voting with 13
descriptors per item); build times are in BENCHMARKS.md. ``save`` / ``load``: one ``.npz`` (the
serialised index, its items, their shards and aspects), written atomically. ``updated`` follows a
change of the indexed set without a rebuild (a copy of the index, the removed items' descriptors
taken out, the added ones' put in); ``cbir.copies.vote_cache`` decides when and where (in the
caller, or aside for ``cbir serve``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir import crashpoints, fsio
from cbir.copies.local_features import MAX_KEYPOINTS, RATIO

NPROBE = 8
MIN_VOTES = 2  # one match is chance: a random photo shares one ratio-test match with many items
MAX_MIB = 512.0
SYNC_ITEMS = 20_000  # a gallery up to this size builds its vote index within the search, a larger one aside
VOTES = 2  # a query's second look verifies it against this many items by descriptor votes
ASPECTS = 2  # a query stretched away from the gallery's common shapes is re-stretched to at most this many
ASPECT_SHARE = 0.1  # … each the shape of at least this share of the items
BYTES = 40  # per indexed descriptor: the code and its int64 label


def per_item(items: int, max_mib: float | None = None, vector_bytes: int = 0) -> int:
    """Descriptors kept per item so that ``items`` fit ``max_mib`` (default ``MAX_MIB``) — or, when
    more, ``vector_bytes`` per item (what each item's vector takes) — at most ``MAX_KEYPOINTS``, at
    least 1."""
    items = max(items, 1)
    budget = max((MAX_MIB if max_mib is None else max_mib) * 2**20, items * vector_bytes)
    return int(np.clip(budget // (BYTES * items), 1, MAX_KEYPOINTS))


def kept(n: int, keep: int) -> np.ndarray:
    """``keep`` of an item's ``n`` keypoint rows (all when ``n`` ≤ ``keep``), ascending: the last
    ``keep`` // 2 — ORB lists its keypoints pyramid level by level, finest first, so these are the
    coarsest, the scale at which a copy pasted small or shrunk shows the photo — and evenly spaced
    ones of the rest."""
    if n <= keep:
        return np.arange(n)
    coarse = keep // 2
    return np.r_[np.linspace(0, n - coarse - 1, keep - coarse).astype(np.int64), np.arange(n - coarse, n)]


def build(descriptors: np.ndarray, owners: np.ndarray, seed: int = 0):
    """``IndexBinaryIVF`` over ``descriptors`` [n, 32] uint8 labelled ``owners`` [n] (item ids), or None
    when there are none."""
    import faiss

    if not len(descriptors):
        return None
    descriptors = np.ascontiguousarray(descriptors, np.uint8)
    nlist = int(np.clip(4 * np.sqrt(len(descriptors)), 256, 16_384))
    nlist = min(nlist, len(descriptors))
    quantizer = faiss.IndexBinaryFlat(256)
    quantizer.add(descriptors[np.random.default_rng(seed).choice(len(descriptors), nlist, replace=False)])
    index = faiss.IndexBinaryIVF(quantizer, 256, nlist)
    index.is_trained = True  # the sampled centres stand in for training
    index.add_with_ids(descriptors, np.ascontiguousarray(owners, np.int64))
    index.nprobe = NPROBE
    index.quantizer_ref = quantizer  # the IVF does not own its quantizer: keep it alive with the index
    return index


@dataclass(frozen=True)
class VoteState:
    """A vote index and what it was made of (immutable: a change makes a new one, ``updated``).
    ``generation``: the SQLite generation it follows; ``ids``: the items it holds (sorted);
    ``keep``: descriptors per item; ``aspects``: each held item's w / h (NaN: unknown), by ``ids``;
    ``churn``: items added or removed since its cells were drawn (``build``)."""

    generation: int | None
    index: object | None
    ids: np.ndarray
    keep: int
    aspects: np.ndarray
    churn: int = 0
    common: list = field(default_factory=list)  # ``common_aspects(aspects)``
    shards: np.ndarray | None = None  # by ``ids``: the shard each item's descriptors were read from

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)


def updated(
    state: VoteState,
    generation: int,
    gone: np.ndarray,
    descriptors: np.ndarray,
    owners: np.ndarray,
    added: np.ndarray,
    aspects: np.ndarray,
    shards: np.ndarray | None = None,
) -> VoteState:
    """``state`` without the items ``gone`` and with ``added`` (their ``descriptors`` labelled
    ``owners``, one aspect and one shard each): a copy of its index is changed, never the index
    itself, so that searches still voting on it are unaffected."""
    import faiss

    index = state.index
    if index is not None and (len(gone) or len(descriptors)):
        index = faiss.clone_binary_index(index)
        if len(gone):
            index.remove_ids(faiss.IDSelectorBatch(np.asarray(gone, np.int64)))
        if len(descriptors):
            index.add_with_ids(np.ascontiguousarray(descriptors, np.uint8), np.ascontiguousarray(owners, np.int64))
        index.nprobe = NPROBE
    keep = ~np.isin(state.ids, gone)
    ids = np.concatenate([state.ids[keep], np.asarray(added, np.int64)])
    asp = np.concatenate([state.aspects[keep], np.asarray(aspects, np.float64)])
    order = np.argsort(ids, kind="stable")
    held = None
    if state.shards is not None and shards is not None:
        held = np.concatenate([state.shards[keep], np.asarray(shards, np.int64)])[order]
    churn = state.churn + len(gone) + len(added)
    return VoteState(generation, index, ids[order], state.keep, asp[order], churn, common_aspects(asp), held)


FORMAT = 1  # of a saved vote state (``save``)


def save(state: VoteState, path) -> None:
    """Write ``state`` to ``path`` (one ``.npz``, replaced atomically: a reader sees the old file or
    the new one, and a crash mid-write leaves the old one)."""
    import faiss

    index = np.zeros(0, np.uint8) if state.index is None else faiss.serialize_index_binary(state.index)
    shards = np.zeros(0, np.int64) if state.shards is None else state.shards  # -1 in it: an item not read
    meta = np.array([FORMAT, -1 if state.generation is None else state.generation, state.keep, state.churn], np.int64)
    _drop_dead_temporaries(Path(path))
    with fsio.atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=meta, index=index, ids=state.ids, aspects=state.aspects, shards=shards)
        crashpoints.hit("votes-written")


def _drop_dead_temporaries(path: Path) -> None:
    """Remove what a writer killed mid-``save`` left (``.votes.npz.<pid>.npz`` of a pid no longer
    alive): up to the size of the vote index each."""
    for tmp in path.parent.glob(f".{path.name}.*.npz"):
        pid = tmp.name[len(path.name) + 2 : -len(".npz")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, someone else's
        return True
    return True


def load(path) -> VoteState:
    """The vote state ``save`` wrote to ``path``; raises ValueError when it is not one."""
    import faiss

    with np.load(path, allow_pickle=False) as z:
        meta, ids, aspects, shards, code = z["meta"], z["ids"], z["aspects"], z["shards"], z["index"]
    if len(meta) != 4 or int(meta[0]) != FORMAT or len(ids) != len(aspects) or len(shards) not in (0, len(ids)):
        raise ValueError(f"{path}: not a vote index of this version")
    index = faiss.deserialize_index_binary(code) if len(code) else None
    if index is not None:
        index.nprobe = NPROBE
    generation = None if meta[1] < 0 else int(meta[1])
    held = shards if len(shards) else None
    return VoteState(generation, index, ids, int(meta[2]), aspects, int(meta[3]), common_aspects(aspects), held)


def counts(index, variants) -> dict[int, int]:
    """item id → ratio-test matches with the best of the query's feature ``variants``; ``index``:
    a ``VoteState`` or a bare vote index."""
    index = index.index if isinstance(index, VoteState) else index
    best: dict[int, int] = {}
    for v in variants:
        n = int(v["n"])
        if n < 2:
            continue
        dist, nn = index.search(np.ascontiguousarray(v["desc"][:n]), 2)
        good = (nn[:, 0] >= 0) & (dist[:, 0] < RATIO * dist[:, 1])
        ids, c = np.unique(nn[good, 0], return_counts=True)
        for i, x in zip(ids.tolist(), c.tolist()):
            best[i] = max(best.get(i, 0), x)
    return best


def vote(index, variants, top: int) -> list[int]:
    """The ``top`` item ids with the most matches (≥ ``MIN_VOTES``), most first; [] without an index."""
    index = index.index if isinstance(index, VoteState) else index
    if index is None or top < 1:
        return []
    got = counts(index, variants)
    ranked = sorted((i for i, c in got.items() if c >= MIN_VOTES), key=lambda i: (-got[i], i))
    return ranked[:top]


def common_aspects(aspects: np.ndarray, top: int = ASPECTS, share: float = ASPECT_SHARE) -> list[float]:
    """The gallery's most common image shapes (w / h, binned at ±5 %, NaN ignored): at most ``top``,
    each held by ≥ ``share`` of the items, most common first — Corel-1K: [1.0]; a camera roll: 4:3
    and 3:4."""
    a = np.asarray(aspects, np.float64)
    a = a[np.isfinite(a) & (a > 0)]
    if not len(a):
        return []
    bins = np.round(np.log(a) / np.log(1.1)).astype(np.int64)  # 10 %-wide bins
    values, count = np.unique(bins, return_counts=True)
    order = np.argsort(-count, kind="stable")[:top]
    return [float(np.median(a[bins == values[j]])) for j in order if count[j] >= share * len(a)]
