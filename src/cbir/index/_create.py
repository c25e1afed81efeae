"""Creating an index directory, or opening the existing one with the same model and options
(``Gallery.create``), checking a model against it (``Gallery.check_model``), and undoing a first
build that failed (``Gallery.discard``). Bound to ``Gallery``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TypeVar

from cbir.errors import CbirError
from cbir.index.ann import faiss_index, milvus_store, tuning
from cbir.index.query import rerank as _rerank
from cbir.index.storage import config as _config
from cbir.index.storage.config import INDEX_JSON
from cbir.index.storage.lock import LOCK_NAME, DirectoryGone, WriterLock

G = TypeVar("G")  # the Gallery class these are bound to


def refuse_foreign(root: Path) -> None:
    """Refuse a folder holding anything cbir did not make (nothing there is changed)."""
    foreign = _config.foreign_entries(root)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CbirError(
            f"--index {root}: exists and is not a cbir index (it holds {shown}); "
            f"give a new or empty folder, nothing there was changed"
        )


def create(
    cls: type[G],
    root: str | os.PathLike,
    embedder,
    factory: str | None = None,
    shard_size: int | None = None,
    whitening: str | None = None,
    dba: int | None = None,
    dba_alpha: float | None = None,
    memory_budget: str | None = None,
    target_recall: float | None = None,
    wait: bool = False,
    dim: int | None = None,
    on_disk: bool | None = None,
    local_features: str | None = None,
    rerank: str | None = None,
    store: str | None = None,
) -> G:
    """Create INDEX_DIR for ``embedder``'s model, or open it if it exists (same model, and the
    same options where they are given: ``None`` = as recorded, or the default for a new index).
    ``embedder=None`` with ``dim``: an index of existing vectors with no model (vectors-only).
    ``local_features``: ``orb`` (default with a model: stored per shard for spatial verification)
    or ``none``; ``rerank``: the stored re-ranking preset (default ``default`` with local
    features, else ``class``; ``none`` for vectors-only and on-disk indexes); ``store``: a Milvus
    collection for the vectors instead of index.faiss (``cbir.index.ann.milvus_store``)."""
    from cbir.vectors import Whitening

    root = Path(root)
    if local_features not in (None, "orb", "none"):
        raise CbirError(f"--local-features {local_features}: choose orb or none")
    given = {
        "factory": factory,
        "shard_size": shard_size,
        "dba": dba,
        "dba_alpha": dba_alpha,
        "memory_budget": memory_budget,
        "target_recall": target_recall,
        "on_disk": on_disk,
        "store": milvus_store.parse(store).text if store else None,
    }
    wt = Whitening.load(whitening) if whitening else None
    if (root / INDEX_JSON).is_file():
        try:
            return _open_existing(cls, root, embedder, wait, {**given, "whitening": wt.fingerprint if wt else None})
        except (sqlite3.Error, CbirError):
            if (root / INDEX_JSON).is_file():
                raise
            # a failing first build discarded the index while this one opened it: create it afresh below
    if root.exists() and not root.is_dir():
        raise CbirError(f"--index {root}: exists and is not a directory")
    refuse_foreign(root)
    options, dim, model_dim = _new_options(root, embedder, given, wt, whitening, dim, local_features, rerank)
    lock, made_dir = _made_and_locked(root)  # every check is done: only now is anything written
    try:
        if (root / INDEX_JSON).is_file():  # opened under the lock: its maker cannot discard it meanwhile
            return _open_existing(cls, root, embedder, wait, {**given, "whitening": wt.fingerprint if wt else None})
        refuse_foreign(root)
        if wt is not None:
            wt.save(root / "whitening.npz")
        _config.save(root, _config.new(embedder, options, dim, wt.fingerprint if wt else None, model_dim))
    finally:
        lock.release()
    g = cls(root, embedder, wait=wait)
    g.created, g._made_dir = True, made_dir
    return g


def _new_options(
    root: Path, embedder, given: dict, wt, whitening, dim, local_features, rerank
) -> tuple[dict, int, int]:
    """(index.json options, the index's dimension, the model's) of a new index, every option checked
    before anything is written."""
    options = {k: _config.DEFAULTS[k] if v is None else v for k, v in given.items()}
    if options["shard_size"] < 1:
        raise CbirError(f"--shard-size {options['shard_size']}: must be ≥ 1")
    if embedder is None and not dim:
        raise CbirError(f"--index {root}: a new index needs a model (--model) or the vectors' dimension")
    dim = model_dim = embedder.dim if embedder is not None else dim
    if wt is not None and wt.in_dim != dim:
        raise CbirError(f"--whitening {whitening}: fitted on {wt.in_dim}-d vectors, the model gives {dim}-d")
    dim = wt.out_dim if wt else dim
    if options["factory"] == "auto":  # validate now, not after embedding
        tuning.parse_bytes(options["memory_budget"])
        if not 0 < options["target_recall"] <= 1:
            raise CbirError(f"--target-recall {options['target_recall']}: must be in (0, 1]")
    else:
        faiss_index.create(dim, options["factory"], id_map=not options["on_disk"])
    if options["store"]:
        _check_store(options)
    feats = (local_features or "orb") if embedder is not None else "none"
    options["local_features"] = None if feats == "none" else feats
    # vectors from elsewhere (no model) or an on-disk index: plain k-NN unless asked; images: both kinds of query
    plain = embedder is None or options["on_disk"]
    preset = rerank or ("none" if plain else "default" if options["local_features"] else "class")
    options["rerank"] = _rerank.resolve(preset=preset).to_dict()
    if options["rerank"]["verify"] and not options["local_features"]:
        raise CbirError(
            f"--rerank {rerank}: verifies, and the index would have no local features (--local-features none)"
        )
    return options, dim, model_dim


def _check_store(options: dict) -> None:
    """A ``--store`` index takes neither index-time DBA nor on-disk lists, and a factory Milvus has."""
    if options["dba"] or options["on_disk"]:
        flag = "--dba" if options["dba"] else "--on-disk"
        raise CbirError(f"--store {options['store']}: not with {flag} (the collection holds the vectors as they are)")
    if options["factory"] != "auto":
        milvus_store.index_type(options["factory"])


def _made_and_locked(root: Path) -> tuple[WriterLock, bool]:
    """(the writer lock, held; whether the folder was made here). Two first builds at once: one
    creates, the other waits and opens what it made."""
    lock = WriterLock(root)
    for attempt in range(5):
        try:
            root.mkdir(parents=True)
            made_dir = True
        except FileExistsError:
            made_dir = False
        try:  # two first builds at once: one creates, the other waits and opens what it made
            lock.acquire(wait=True)
            break
        except DirectoryGone:  # the other one failed and removed the folder it had made: start afresh
            if attempt == 4:
                raise
    return lock, made_dir


def _open_existing(cls, root: Path, embedder, wait: bool, given: dict) -> G:
    g = cls(root, embedder, wait=wait)
    g._given = _config.check_options(root, g.config, given)
    return g


def discard(gallery) -> bool:
    """Undo ``create`` after a first build failed before any shard was done: delete only what cbir
    made in INDEX_DIR (and the folder if ``create`` made it and it is empty now). Returns False,
    changing nothing, when the index holds work (another writer's included) or is being written."""
    if not gallery.created or not gallery._writer.acquire(blocking_error=False):
        return False
    try:
        if gallery.store.done_shards() or not (gallery.root / INDEX_JSON).is_file():
            return False
        gallery.store.close()
        import shutil

        for entry in sorted(gallery.root.iterdir(), key=lambda e: e.name == LOCK_NAME):  # the lock file last
            if _config.is_own_name(entry.name):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
        if gallery._made_dir:
            try:
                gallery.root.rmdir()
            except OSError:  # something else appeared meanwhile: leave the folder
                pass
        return True
    finally:
        gallery._writer.release()


def check_model(gallery, embedder) -> None:
    """Refuse an embedder whose model or preprocessing is not the one the index was built with."""
    s = gallery.settings
    if embedder.fingerprint != gallery.fingerprint:
        m = s.model
        raise CbirError(
            f"--model {embedder.model_path}: this index was built with another model "
            f"({m['arch']} Block {m['block']} {m['pooling']}, fingerprint {gallery.fingerprint}; "
            f"given {embedder.info.arch} Block {embedder.info.block} {embedder.info.pooling}, "
            f"fingerprint {embedder.fingerprint}); use that model or build a new index"
        )
    if s.preprocess is not None and embedder.preprocess.policy != s.preprocess:
        raise CbirError(
            f"--model {embedder.model_path}: this index was built with preprocessing {s.preprocess}, "
            f"the embedder uses {embedder.preprocess.policy}; its vectors would not be comparable"
        )
