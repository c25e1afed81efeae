"""``cbir index check`` / ``cbir index repair``: verify an index directory against its SQLite metadata
and rebuild what is derived.

What ``check`` verifies (read-only, no lock needed): SQLite's own integrity; for every done shard,
its vector file (readable, the dimension recorded in index.json, finite values, every item SQLite
calls indexed in it present); its local-feature file when the index has local features (readable,
covering its indexed items) and its regional descriptors when the model has them (readable, one row
per vector); and index.faiss (loads, holds the generation SQLite is at, holds exactly the indexed
ids, and a sample of stored vectors finds its own id among the ones that score as well as the first —
byte-identical files have equal vectors and are not damage; ids that point at other vectors are).

What ``repair`` does (under the writer lock): a damaged feature or regions file is deleted and made
again (features from the images; regions by embedding that shard again); a shard whose vector file
is lost has its items queued again and embedded again from their images when the index has a model
(``recovered``) — without one (an index built from vectors), or when an image is gone, those items
are ``lost``: marked failed with the reason, never silently dropped; index.faiss is rebuilt from the
shards. Everything it cannot bring back is listed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from cbir.errors import CbirError
from cbir.index.ann import faiss_index, maintain
from cbir.index.storage.features import feature_path
from cbir.index.storage.regions import regions_path
from cbir.index.storage.shards import read_shard, shard_path

SAMPLE = 200  # stored vectors searched for their own id
TIES = 16  # … among this many nearest (equal vectors: copies of one file)
TIE_EPS = 1e-4  # scores this close to the first count as ties


def _problem(part: str, what: str, shard: int | None = None) -> dict:
    return {"part": part, "shard": shard, "problem": what}


def check(gallery) -> dict:
    """``{"ok": bool, "problems": [{"part", "shard", "problem"}], "checked": {...}}``."""
    problems: list[dict] = []
    store, cfg = gallery.store, gallery.config
    try:
        verdict = store.conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        verdict = str(e)
    if verdict != "ok":
        problems.append(_problem("meta.sqlite", f"integrity check: {verdict}"))
    dim = cfg["model"]["dim"]
    shards = store.done_shards()
    for shard in shards:
        problems += _check_shard(gallery, shard, dim)
    problems += _check_faiss(gallery)
    return {
        "ok": not problems,
        "problems": problems,
        "checked": {"shards": len(shards), "indexed": store.count("indexed"), "generation": store.generation},
    }


def _check_shard(gallery, shard: int, dim: int) -> list[dict]:
    store, root = gallery.store, Path(gallery.root)
    live = store.indexed_ids_of_shard(shard)
    out: list[dict] = []
    try:
        got = read_shard(root, shard)
    except CbirError as e:
        return [_problem("shard", str(e), shard)] if live else []
    vectors_ok = got.vectors.ndim == 2 and got.vectors.shape[1] == dim and len(got.vectors) == len(got.ids)
    if not vectors_ok:
        out.append(
            _problem(
                "shard",
                f"{shard_path(root, shard)}: vectors of shape {got.vectors.shape}, expected [{len(got.ids)}, {dim}]",
                shard,
            )
        )
    elif not np.isfinite(got.vectors).all():
        out.append(_problem("shard", f"{shard_path(root, shard)}: non-finite values", shard))
    missing = live - set(got.ids.tolist())
    if missing:
        out.append(
            _problem(
                "shard",
                f"{shard_path(root, shard)}: {len(missing)} indexed items have no vector "
                f"there (e.g. id {min(missing)})",
                shard,
            )
        )
    if gallery.settings.local_features and live:
        path = feature_path(root, shard)
        try:
            ids = set(np.load(path, mmap_mode="r")["id"].tolist())
            if live - ids:
                out.append(_problem("features", f"{path}: {len(live - ids)} indexed items have no record", shard))
        except (OSError, ValueError, KeyError) as e:
            out.append(_problem("features", f"{path}: missing or damaged ({type(e).__name__}: {e})", shard))
    if gallery.num_regions and vectors_ok:
        path = regions_path(root, shard)
        try:
            reg = np.load(path, mmap_mode="r")
            if reg.shape[0] != len(got.ids) or reg.shape[1:] != (gallery.num_regions, dim):
                out.append(
                    _problem(
                        "regions",
                        f"{path}: shape {reg.shape}, expected [{len(got.ids)}, {gallery.num_regions}, {dim}]",
                        shard,
                    )
                )
        except (OSError, ValueError) as e:
            out.append(_problem("regions", f"{path}: missing or damaged ({type(e).__name__}: {e})", shard))
    return out


def _check_faiss(gallery) -> list[dict]:
    """index.faiss — or the ``--store`` collection (part ``store``) — against the ledger."""
    store, root, cfg = gallery.store, Path(gallery.root), gallery.config
    part = "store" if cfg.get("store") else "index.faiss"
    if not maintain.published(root, cfg):
        return [_problem(part, "missing")] if store.done_shards() else []
    try:
        index = maintain.load(root, cfg, store)
    except CbirError as e:
        return [_problem(part, str(e))]
    out = []
    if gallery.settings.faiss_generation != store.generation:
        out.append(
            _problem(
                part,
                f"behind SQLite (generation {cfg.get('faiss_generation')} "
                f"vs {store.generation}): a writer died before writing it",
            )
        )
    held, want, stale = _held(index, store)
    if held != want or stale:
        lacks = f"lacks {len(want - held)} indexed ids" + (f", holds an older vector of {stale}" if stale else "")
        out.append(_problem(part, f"holds {len(held - want)} ids not indexed and {lacks}"))
        return out
    ids, vecs = _sample(gallery, SAMPLE)
    if len(ids):
        from cbir.index.ann import tuning

        tuning.set_search_params(index, gallery.settings.search)
        q = np.ascontiguousarray(gallery.postprocess_queries(vecs), np.float32)
        if gallery.settings.dba:  # stored vectors were augmented: compare with what FAISS stores
            return out
        wrong = _misplaced(index, q, ids)
        if wrong > len(ids) // 20:  # ANN may miss a few; ids pointing at other vectors miss most
            out.append(
                _problem(
                    "index.faiss",
                    f"{wrong} of {len(ids)} stored vectors do not find their own id: ids point at other vectors",
                )
            )
    return out


def _held(index, store) -> tuple[set[int], set[int], int]:
    """(ids the vector store holds, ids the ledger calls indexed, indexed ids a ``--store`` collection
    holds from an older shard than the ledger's — a re-embedded file); a collection is read once."""
    want = store.indexed_shards()
    if not faiss_index.is_external(index):
        return set(faiss_index.stored_ids(index).tolist()), set(want), 0
    from cbir.index.ann import milvus_store

    have = milvus_store.held_shards(index.client, index.target.collection)
    return set(have), set(want), sum(1 for i, s in have.items() if i in want and want[i] != s)


def _misplaced(index, q: np.ndarray, ids: np.ndarray, k: int = TIES) -> int:
    """How many sampled vectors ``q`` do not find their own id among their nearest ones that score
    as well as the first (to ``TIE_EPS``): byte-identical files have equal vectors, and either of
    them may come first; an id that points at another vector is not among them. A vector with
    ``k`` or more equal ones cannot be told from them this way and is not counted."""
    sims, found = faiss_index.search(index, q, k)
    tied = (sims >= sims[:, :1] - TIE_EPS) & (found >= 0)
    own = (tied & (found == ids[:, None])).any(1)
    return int((~own & ~tied.all(1)).sum())


def _sample(gallery, n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        return maintain.sample_vectors(gallery.store, gallery.root, n, seed=3)
    except CbirError:  # a damaged shard: reported on its own
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)


def repair(gallery, progress: bool = False) -> dict:
    """Fix what ``check`` finds (see the module doc); returns what was done and what is lost."""
    from cbir.index.ingest import pipeline as build

    with gallery.writing():
        before = check(gallery)
        done: list[str] = []
        requeue: dict[int, str] = {}  # shard -> why its items are embedded again
        root, store = Path(gallery.root), gallery.store
        for p in before["problems"]:
            shard = p["shard"]
            if p["part"] == "features":
                feature_path(root, shard).unlink(missing_ok=True)
                done.append(f"shard {shard}: local features deleted, extracted again")
            elif p["part"] in ("shard", "regions"):
                requeue.setdefault(shard, p["part"])
        lost: list[dict] = []
        requeued: set[str] = set()
        for shard, why in sorted(requeue.items()):
            items = store.shard_items(shard, "indexed")
            for path in (shard_path(root, shard), regions_path(root, shard), feature_path(root, shard)):
                path.unlink(missing_ok=True)
            if gallery.settings.model_path is None:  # vectors-only: nothing to embed them from
                with store.transaction():
                    store.mark_failed([i for i, _ in items], "vector file lost (cbir index repair); ingest it again")
                lost += [{"path": p, "error": "vector file lost; no model to embed it again"} for _, p in items]
                done.append(f"shard {shard}: {why} damaged, {len(items)} items lost (index built from vectors)")
                continue
            with store.transaction():
                new = store.new_shard()
                for item_id, _ in items:
                    store.requeue_item(item_id, -1, -1.0, new)
                store.retire_shard(shard)
            requeued.update(p for _, p in items)
            done.append(f"shard {shard}: {why} damaged, {len(items)} items queued to be embedded again")
        work = {"indexed": 0, "timings": {}}
        if requeue and gallery.settings.model_path is not None:
            work = build.process_pending(gallery, progress=progress)
            lost += [f for f in store.failed() if f["path"] in requeued]
        if gallery.settings.local_features:
            gallery.extract_features(progress)
        gallery.rebuild_index()
        done.append(f"{gallery.config.get('store') or 'index.faiss'} rebuilt from the shards")
        after = check(gallery)
        return {
            "problems_found": before["problems"],
            "done": done,
            "recovered": work["indexed"],
            "lost": lost,
            "ok": after["ok"],
            "problems_left": after["problems"],
        }
