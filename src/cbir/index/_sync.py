"""Keeping a ``Gallery``'s loaded index.faiss in step with SQLite and with other processes.

SQLite's generation (``store``) moves with every change to the indexed set; index.json's
``faiss_generation`` says which generation index.faiss holds, written after index.faiss. Opening the
FAISS index when they differ (a writer died between the two) rebuilds it from the shards first — if
no other writer is at work (``reconcile``); a reader that cannot take the writer lock searches the
index as it is, and still never shows a removed or failed item (the snapshot's stale ids are left
out). ``refresh`` picks up a newer index.faiss written by another process (``cbir serve`` calls it)
and swaps it in atomically: searches already running finish on the old one. Bound to ``Gallery`` as
methods of the same names.
"""

from __future__ import annotations

import threading
import time

from cbir.index.ann import maintain, tuning
from cbir.index.storage import config as _config
from cbir.index.storage.config import INDEX_JSON


def set_index(gallery, index) -> None:
    """Adopt a freshly written index.faiss: record the SQLite generation it holds, swap it in."""
    gallery.config["faiss_generation"] = gallery.store.generation
    gallery.save_config()
    tuning.set_search_params(index, gallery.settings.search)
    with gallery._lock:
        gallery._index, gallery._reconstructable = index, None
        gallery._index_generation = gallery.settings.faiss_generation


def in_sync(gallery) -> bool:
    """index.faiss holds what SQLite says is indexed (same generation)."""
    published = maintain.published(gallery.root, gallery.config)
    return published and gallery.config.get("faiss_generation") == gallery.store.generation


def reconcile(gallery) -> bool:
    """Rebuild index.faiss from the shards when it is behind SQLite and no other writer is at
    work (one died between its SQLite commit and index.faiss); returns True if it rebuilt."""
    if gallery.in_sync or not (gallery.store.done_shards() or maintain.published(gallery.root, gallery.config)):
        return False
    if gallery._writer_depth == 0:
        if not gallery._writer.acquire(blocking_error=False):
            return False  # someone is writing: they will bring index.faiss up to date
        gallery._writer_depth = 1
        try:
            gallery._reload_config()  # the writer before us may have saved a newer one
            if gallery.in_sync:
                return False
            set_index(gallery, maintain.rebuild(gallery))
        finally:
            gallery._writer_depth = 0
            gallery._writer.release()
    else:  # this object is the writer: its config is the current one
        set_index(gallery, maintain.rebuild(gallery))
    return True


def refresh(gallery, reconcile_in_background: bool = True) -> bool:
    """Pick up what another process wrote (``cbir serve`` calls this before each search); True if
    a new index was swapped in. Changes are seen by index.json's ``revision`` (not its mtime) and
    SQLite's generation. index.json is read again when its (inode, mtime, size) changed, and at
    least once a second whatever they say (two writes in one clock tick, an inode reused): a
    check costs a stat and one SQLite read instead of a JSON parse. A newer
    index.faiss that fails to load is reported in ``load_error`` and retried (at most once a
    second) while the old one keeps answering; an index.faiss left behind by a writer that died
    is rebuilt in a background thread (``reconcile``)."""
    swapped = False
    now = time.monotonic()
    if now >= gallery._retry_at:
        st = (gallery.root / INDEX_JSON).stat()
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig != gallery._config_sig or now - gallery._config_read_at >= 1.0:
            config = _config.load(gallery.root)
            gallery._config_sig, gallery._config_read_at = sig, now
            gallery._disk_generation = config.get("faiss_generation")
            if config.get("revision") != gallery.settings.revision:
                swapped = _adopt_config(gallery, config)
    if gallery.votes.background:
        gallery.votes.current()  # a change of the indexed set starts the vote index's update aside
    disk = gallery._disk_generation if gallery._disk_generation is not None else gallery.settings.faiss_generation
    if reconcile_in_background and gallery.store.generation != disk:  # index.faiss on disk is behind SQLite
        _reconcile_in_background(gallery)
    return swapped


def _adopt_config(gallery, config: dict) -> bool:
    loaded = gallery._index is not None
    if loaded and config.get("faiss_generation") != gallery._index_generation:
        try:
            index = maintain.load(gallery.root, config, gallery.store)
        except Exception as e:  # keep answering from the index we have; try again shortly
            where = config.get("store") or gallery.root / "index.faiss"
            gallery.load_error = f"{where}: cannot load ({type(e).__name__}: {e})"
            gallery._retry_at = time.monotonic() + 1.0
            gallery._config_sig = ()  # read index.json again on the retry
            return False
        tuning.set_search_params(index, config.get("search"))
        with gallery._lock:
            gallery._index, gallery._reconstructable = index, None
            gallery._index_generation = config.get("faiss_generation")
            gallery.config = config
        gallery.load_error = None
        return True
    if loaded and config.get("search") != gallery.settings.search:
        tuning.set_search_params(gallery._index, config.get("search"))  # `cbir index tune` ran
    gallery.config = config
    gallery.load_error = None
    return False


def _reconcile_in_background(gallery) -> None:
    with gallery._lock:
        if gallery._reconciler is not None and gallery._reconciler.is_alive():
            return
        if not gallery._writer.acquire(blocking_error=False):
            return  # a writer is at work (it will write index.faiss): nothing died
        gallery._writer.release()

        def run():
            try:
                gallery.reconcile()
            except Exception as e:
                gallery.load_error = (
                    f"{gallery.root}: rebuilding index.faiss after a writer died failed ({type(e).__name__}: {e})"
                )

        gallery._reconciler = threading.Thread(target=run, name="cbir-reconcile", daemon=True)
        gallery._reconciler.start()


def consistency(gallery) -> dict:
    """Ids FAISS (or the ``--store`` collection) holds vs ids SQLite calls indexed (both empty sets = consistent)."""
    held = set(maintain.stored_ids(gallery.index).tolist())
    want = set(gallery.store.indexed_ids().tolist())
    return {
        "generation": gallery.store.generation,
        "faiss_generation": gallery.settings.faiss_generation,
        "missing_from_faiss": sorted(want - held),
        "not_indexed_in_faiss": sorted(held - want),
    }
