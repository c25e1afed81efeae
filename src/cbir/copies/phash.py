"""A perceptual hash for copies that kept nothing but their coarse layout (heavy blur): ORB finds
few or no keypoints in a blurred photo, and the CNN vector of a heavily blurred copy drifts among
a large gallery's photos, but a 32×32 thumbnail never had the detail blur removes.

``of(img)`` → the 64-bit DCT hash (pHash) of a grayscale image as ``local_features.gray`` gives it:
the image area-resized to 32×32, its 2-D DCT, the 8×8 lowest coefficients, one bit each for the 63
above the median of the 63 AC ones (the DC bit is the mean's sign, always 1); 8 bytes. A flat or
near-flat image (AC coefficients' spread under ``FLAT``) has no hash: all zeros, which no other image
hashes to (the median splits the AC bits 31 / 32), and which matches nothing. Written into every
local-feature record (``local_features.detect``), so an index's hashes come with its features and
``cbir index features`` adds them to an index built before.

The cascade's ``hash`` stage (``look``), for an image query nothing verified: the items whose hash
is nearest the query's — as it is or mirrored — when that is within ``MAX_BITS`` (4) and every
other item is ``GAP`` (4) bits farther, are taken as copies (``Hit.by`` ``"hash"``, verified, by
cosine among themselves), ahead of the rest. Only the nearest: exact duplicates tie, while
near-duplicate shots of one scene (a stereo pair, two frames of a burst: within 4 bits of each other)
are farther from a copy of one of them than its original is, and keep their place by cosine,
unverified. The gap refuses a hash in a crowded corner of hash space (a bright shape on black, which
crops of many photos share), where the nearest of a million is near by chance. Dedup does not use
the hash: it would group such shots, and its groups are copies. Chosen on data (BENCHMARKS.md): a
copy blurred with radius 4–8 keeps its original within 4 bits and clear of the rest among a million
hashes, where no photo outside the gallery came within 6; other edits that keep the frame
(brightness, colour, JPEG, noise, resizing) stay within ~10, while crops, rotations and flips of the
frame lose the hash (the windows stage is for them). The scan is one XOR and popcount over n × 8
bytes (``gallery.hashes``, read once per feature file).
"""

from __future__ import annotations

import numpy as np

from cbir.hits import Hit

__all__ = ["BYTES", "FLAT", "GAP", "MAX_BITS", "distances", "look", "matches", "of"]

BYTES = 8
SIZE = 32  # the thumbnail the DCT is taken of
LOW = 8  # the LOW × LOW lowest frequencies give the bits
# the AC coefficients' standard deviation under which an image has no hash: a near-flat image (its
# thumbnail's grey levels within a few of each other) has its bits set by a speck — a bubble in an
# empty sky, a cell on a grey slide — and specks at like places collide (BENCHMARKS.md); every
# Corel-1K photo and heavy-blur copy is far above (≥ 49)
FLAT = 8.0
MAX_BITS = 4
GAP = 4  # the next hash is at least this many bits farther than the nearest (distances are even)


def _cv2():
    import cv2

    return cv2


def of(img: np.ndarray) -> np.ndarray:
    """The pHash of a uint8 grayscale image: uint8 [``BYTES``] (all zeros for a flat or empty image)."""
    if img.size == 0:
        return np.zeros(BYTES, np.uint8)
    cv2 = _cv2()
    small = cv2.resize(np.ascontiguousarray(img), (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:LOW, :LOW].ravel()
    ac = low[1:]
    if float(ac.std()) < FLAT:
        return np.zeros(BYTES, np.uint8)
    return np.packbits(low > np.median(ac))


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else np.unpackbits(x.view(np.uint8), axis=-1).sum(-1)


def distances(queries: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Hamming distances [n] from the nearest of ``queries`` ([m, BYTES] uint8; all-zero rows are
    skipped) to each of ``hashes`` ([n, BYTES]); ``BYTES * 8 + 1`` where no query has a hash."""
    h = np.ascontiguousarray(hashes, np.uint8).view(np.uint64).ravel()
    out = np.full(len(h), BYTES * 8 + 1, np.int64)
    for q in np.asarray(queries, np.uint8).reshape(-1, BYTES):
        if q.any():
            out = np.minimum(out, _popcount(h ^ q.view(np.uint64)[0]).astype(np.int64))
    return out


def matches(queries: np.ndarray, ids: np.ndarray, hashes: np.ndarray, max_bits: int = MAX_BITS, gap: int = GAP):
    """(ids, distance) of the items whose hash is nearest ``queries`` — when that distance is within
    ``max_bits`` and every other item is at least ``gap`` bits farther (ties, i.e. exact duplicates,
    all match); else nothing. Items with no hash (all zeros) never match."""
    d = distances(queries, hashes)
    d[~np.asarray(hashes, np.uint8).any(axis=1)] = BYTES * 8 + 1
    if not len(d) or d.min() > max_bits:
        return ids[:0], -1
    best = int(d.min())
    if (d[d > best] < best + gap).any():  # a crowded corner of hash space: the nearest is not clear
        return ids[:0], -1
    return ids[d == best], best


def query_hashes(img: np.ndarray) -> np.ndarray:
    """[2, BYTES]: the hashes of a query's grayscale image as it is and mirrored left-right."""
    return np.stack([of(img), of(np.ascontiguousarray(img[:, ::-1]))])


def look(gallery, query, hits: list[Hit], k: int, snap) -> list[Hit]:
    """The hash stage for one image ``query`` (``cascade.Query``, its features a ``Variants`` with
    its ``image``) whose ``hits`` verified nothing: the items ``matches`` gives (the nearest hash,
    within ``MAX_BITS`` and clear of the rest by ``GAP``) first (verified, ``by="hash"``, highest
    cosine first), then ``hits`` without them."""
    img = getattr(query.features, "image", None)
    if img is None:
        return hits
    ids, hashes = gallery.hashes.all()
    if not len(ids):
        return hits
    live = snap.live(gallery.store, ids)
    found = matches(query_hashes(img), ids[live], hashes[live])[0][: max(k, 1)]
    if not len(found):
        return hits
    scores = (
        gallery.vectors_for(found, snap) @ gallery.postprocess_queries(np.asarray(query.vector, np.float32)[None])[0]
    )
    order = np.argsort(-scores, kind="stable")
    paths = gallery.store.paths_of(found)
    top = [
        Hit(int(found[i]), paths[int(found[i])], float(scores[i]), True, None, "hash")
        for i in order
        if int(found[i]) in paths
    ]
    taken = {h.id for h in top}
    return (top + [h for h in hits if h.id not in taken])[:k]
