"""A Milvus collection as an index's vector store (``--store``), in place of index.json's index.faiss.

``--store milvus://HOST:PORT/COLLECTION`` (Milvus Standalone / Distributed, or a ``milvus-lite server``)
or ``--store milvus-lite:PATH.db[/COLLECTION]`` (a local Milvus Lite file; one process at a time may
open it — Milvus Lite's own lock; default collection ``cbir``). The index directory stays the ledger:
SQLite says what is indexed, the shards hold the raw vectors, local features and colours stay there.
The collection follows the ledger and holds each indexed item's post-processed vector (what a FAISS
index would hold), its id (the primary key), its path and the shard its vector came from; the
collection's ``cbir.owner`` property names the index (model fingerprint, whitening, creation time):
a collection written by another index is refused.

Writing (``sync``): the (id, shard) pairs in the collection are compared with the ledger's; rows
whose item is no longer indexed are deleted, rows missing or from an older shard are upserted — so a
re-run writes nothing twice, a killed write is finished by the next one, and a removed item is deleted
there. A Milvus Lite collection that no longer loads — its files torn by a write killed while Milvus
Lite flushed them ("file seems not fully written") — is dropped and remade from the ledger by the
next write (searches meanwhile get one line saying so); a server's collection is never dropped.
The collection is flushed before index.json records the generation it holds (``faiss_generation``
keeps its name: "the generation the vector store holds"). ``update`` is the quick path of a write
that knows what it changed.

Searching (``MilvusIndex``): the FAISS surface the query path uses — ``search``, ``ntotal``,
``reconstruct_batch`` (the stored vectors, fetched from the collection), the search knob (``nprobe``
for IVF types, ``efSearch`` → Milvus ``ef`` for HNSW). The ids it holds are the ledger's indexed ids
when it is opened in step with SQLite (else read from the collection); a search returns only those,
so an item another host adds shows up at the next published generation, as with index.faiss.

The FAISS factory an index resolves to (``--factory``, or ``auto``) is mapped to a Milvus index type
(``index_type``): Flat → FLAT, IVFn,Flat → IVF_FLAT, IVFn,SQ8 / PQ / OPQ → IVF_SQ8 (Milvus Lite has
no IVF_PQ), HNSWm → HNSW. Metric: inner product. pymilvus is imported lazily (extra ``milvus``).
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass

import numpy as np

from cbir import crashpoints
from cbir.errors import CbirError

DEFAULT_COLLECTION = "cbir"
BATCH = 4096  # rows per upsert / get call
OWNER = "cbir.owner"


@dataclass(frozen=True)
class Target:
    """Where the vectors live: ``uri`` as ``MilvusClient`` takes it, the collection, the text given."""

    uri: str
    collection: str
    text: str


def parse(text: str) -> Target:
    """``milvus://HOST:PORT/COLLECTION`` or ``milvus-lite:PATH.db[/COLLECTION]`` (PATH made absolute)."""
    if m := re.fullmatch(r"milvus://([^/]+)/([A-Za-z_][A-Za-z0-9_]*)", text):
        return Target(f"http://{m.group(1)}", m.group(2), text)
    if text.startswith("milvus-lite:"):
        path, db, coll = text[len("milvus-lite:") :].partition(".db")
        coll = coll.lstrip("/") or DEFAULT_COLLECTION
        if path and db and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", coll):
            db = os.path.abspath(path + ".db")
            return Target(db, coll, f"milvus-lite:{db}/{coll}")
    raise CbirError(
        f"--store {text}: give milvus://HOST:PORT/COLLECTION or milvus-lite:PATH.db[/COLLECTION] "
        f"(a collection name is letters, digits and _)"
    )


_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def client(target: Target):
    """One ``MilvusClient`` per URI in this process (thread-safe; Milvus Lite serves one process)."""
    with _clients_lock:
        if target.uri not in _clients:
            try:
                from pymilvus import MilvusClient
            except ImportError:
                raise CbirError(
                    f"--store {target.text}: needs pymilvus (pip install 'cbir[milvus]', which brings Milvus Lite)"
                ) from None
            try:
                _clients[target.uri] = MilvusClient(target.uri)
            except Exception as e:
                raise CbirError(
                    f"--store {target.text}: cannot connect ({type(e).__name__}: {_first_line(e)})"
                ) from None
        return _clients[target.uri]


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def owner(config: dict) -> dict:
    """What names an index in its collection (a copied index directory — a replica — is the same index)."""
    return {
        "fingerprint": config["model"]["fingerprint"],
        "whitening": config.get("whitening"),
        "created": config["created"],
    }


def index_type(factory: str) -> tuple[str, dict, str | None]:
    """(Milvus index type, its build params, the knob: nprobe / efSearch / None) for a FAISS factory."""
    if factory == "Flat":
        return "FLAT", {}, None
    if m := re.fullmatch(r"IVF(\d+),Flat", factory):
        return "IVF_FLAT", {"nlist": int(m.group(1))}, "nprobe"
    if m := re.fullmatch(r"(?:OPQ\d+(?:_\d+)?,)?IVF(\d+),(?:SQ8|PQ\d+(?:x\d+)?)", factory):
        return "IVF_SQ8", {"nlist": int(m.group(1))}, "nprobe"
    if m := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", factory):
        return "HNSW", {"M": int(m.group(1)), "efConstruction": 200}, "efSearch"
    raise CbirError(f"--factory {factory}: no Milvus index type for it (use Flat, IVFn,Flat, IVFn,SQ8 or HNSWm)")


def ensure_collection(config: dict, dim: int):
    """(client, target, made now) with the collection made (schema: id, vector, path, shard) or checked
    as this index's."""
    from pymilvus import DataType

    target = parse(config["store"])
    c = client(target)
    if c.has_collection(target.collection):
        _check_owner(c, target, config)
        if not c.list_indexes(target.collection):  # made by a write killed before its index: give it one
            _create_index(c, target.collection, "FLAT", {})
        try:
            c.load_collection(target.collection)  # a process of its own: queries need it loaded
            return c, target, False
        except Exception as e:
            if not target.text.startswith("milvus-lite:"):
                raise CbirError(_unloadable(target, e)) from None
            c.drop_collection(target.collection)  # a Milvus Lite file torn by a killed write: the ledger refills it
    schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("path", DataType.VARCHAR, max_length=65535)
    schema.add_field("shard", DataType.INT64)
    c.create_collection(target.collection, schema=schema, properties={OWNER: json.dumps(owner(config))})
    _create_index(c, target.collection, "FLAT", {})  # queries need a loaded collection, loading an index
    c.load_collection(target.collection)
    return c, target, True


def _unloadable(target: Target, e: Exception) -> str:
    return (
        f"--store {target.text}: collection {target.collection} cannot be loaded ({_first_line(e)}); "
        f"a Milvus Lite file a killed write left torn is remade from the index's shards by the next write "
        f"(e.g. `cbir index build --resume`)"
    )


def _check_owner(c, target: Target, config: dict) -> None:
    """Refuse a collection whose ``cbir.owner`` is not this index (``owner``)."""
    theirs = json.loads((c.describe_collection(target.collection).get("properties") or {}).get(OWNER) or "{}")
    if theirs != owner(config):
        raise CbirError(
            f"--store {target.text}: collection {target.collection} holds the vectors of another index "
            f"(model {theirs.get('fingerprint', '?')}, created {theirs.get('created', '?')}); "
            f"choose another collection or drop that one"
        )


def _index_name(kind: str, params: dict) -> str:
    """What an index is named for what it was built as (``flat``, ``ivf_flat_1024``, ...)."""
    return "_".join([kind.lower(), *(str(v) for v in params.values())])


def _create_index(c, collection: str, kind: str, params: dict) -> None:
    """The vector index of ``kind``, named by ``_index_name``."""
    ip = c.prepare_index_params()
    name = _index_name(kind, params)
    # nested "params": what Milvus Lite reads (pymilvus 3 would send them flattened, which Lite ignores)
    ip.add_index(field_name="vector", index_type=kind, index_name=name, metric_type="IP", params={"params": params})
    c.create_index(collection, ip)


def held_shards(c, collection: str) -> dict[int, int]:
    """id → shard of every row in the collection (read in pages; slow on a large collection)."""
    out: dict[int, int] = {}
    it = c.query_iterator(collection, batch_size=16384, filter="", output_fields=["id", "shard"])
    try:
        while rows := it.next():
            out.update((int(r["id"]), int(r["shard"])) for r in rows)
    finally:
        it.close()
    return out


def diff(store, c, collection: str) -> tuple[list[int], dict[int, set[int]]]:
    """(ids to delete, shard → ids to write) that bring the collection to the ledger."""
    have, want = held_shards(c, collection), store.indexed_shards()
    delete = sorted(i for i in have if i not in want)
    write: dict[int, set[int]] = {}
    for i, s in want.items():
        if have.get(i) != s:
            write.setdefault(s, set()).add(i)
    return delete, write


def write(gallery, c, coll: str, delete: list[int], write_ids: dict[int, set[int]]) -> None:
    """Delete ``delete``, upsert the post-processed vectors of ``write_ids`` (shard → ids) from the
    shard files, then flush: what index.json will say the collection holds is on its disk first."""
    from cbir.index.storage.shards import read_shard

    for s in range(0, len(delete), BATCH * 4):
        c.delete(coll, ids=[int(i) for i in delete[s : s + BATCH * 4]])
        crashpoints.hit("store-batch")
    for shard in sorted(write_ids):
        got = read_shard(gallery.root, shard)
        keep = np.isin(got.ids, np.fromiter(write_ids[shard], np.int64))
        ids = got.ids[keep]
        vecs = np.ascontiguousarray(gallery.postprocess_queries(got.vectors[keep]), np.float32)
        paths = gallery.store.paths_for_ids(ids.tolist())
        for s in range(0, len(ids), BATCH):
            rows = [
                {"id": int(i), "vector": v, "path": paths.get(int(i), ""), "shard": shard}
                for i, v in zip(ids[s : s + BATCH], vecs[s : s + BATCH])
            ]
            c.upsert(coll, rows)
            crashpoints.hit("store-batch")
    c.flush(coll)
    crashpoints.hit("store-written")


def ensure_index(c, coll: str, factory: str) -> None:
    """The collection's vector index of ``factory``'s Milvus type (made again when it differs), loaded."""
    kind, params, _ = index_type(factory)
    if c.list_indexes(coll) == [_index_name(kind, params)]:
        return
    c.release_collection(coll)
    for name in c.list_indexes(coll):
        c.drop_index(coll, name)
    _create_index(c, coll, kind, params)
    c.load_collection(coll)


def sync(gallery, factory: str, changed: np.ndarray | None = None, new_shards=()) -> MilvusIndex:
    """Bring the collection to the ledger and return it as an index. ``changed`` None: compare it
    whole (``diff``); else the write knows what it changed — ``changed`` ids (removed, or queued again
    into ``new_shards``) and the items of ``new_shards``."""
    c, target, made = ensure_collection(gallery.config, gallery.settings.dim)
    if changed is None or made:  # a collection made now (first, or remade) holds nothing: fill it whole
        delete, write_ids = diff(gallery.store, c, target.collection)
    else:
        write_ids = {int(s): gallery.store.indexed_ids_of_shard(int(s)) for s in new_shards}
        now = set().union(*write_ids.values()) if write_ids else set()
        delete = sorted(int(i) for i in changed if int(i) not in now)
    write(gallery, c, target.collection, delete, write_ids)
    ensure_index(c, target.collection, factory)
    # it holds the ledger's indexed ids now (the writer lock is held: no commit comes in between)
    return open_index({**gallery.config, "index_factory": factory}, gallery.store, gallery.store.indexed_ids())


def open_index(config: dict, store, held: np.ndarray | None = None) -> MilvusIndex:
    """The collection of ``config["store"]`` as an index, holding ``held`` if given, else the ledger's
    indexed ids when index.json's generation is SQLite's (read twice around the ids: no commit in
    between), else the collection's own (read whole)."""
    target = parse(config["store"])
    c = client(target)
    if not c.has_collection(target.collection):
        raise CbirError(
            f"--store {target.text}: no collection {target.collection} (the build did not finish: "
            f"run `cbir index build --resume`)"
        )
    _check_owner(c, target, config)
    try:
        c.load_collection(target.collection)
    except Exception as e:
        raise CbirError(_unloadable(target, e)) from None
    if held is None:
        generation = store.generation
        held = store.indexed_ids() if generation == config.get("faiss_generation") else None
        if held is None or store.generation != generation:
            held = np.fromiter(held_shards(c, target.collection), np.int64)
    factory = config.get("index_factory", config.get("factory", "Flat"))
    return MilvusIndex(c, target, int(config["dim"]), factory, held)


class MilvusIndex:
    """A collection searched like a FAISS index (the surface ``cbir.index.query`` uses)."""

    external = True
    is_trained = True

    def __init__(self, c, target: Target, dim: int, factory: str, held: np.ndarray):
        self.client, self.target, self.d = c, target, dim
        self.kind, build, self.knob = index_type(factory)
        self.nlist = build.get("nlist")
        self.held = np.sort(np.asarray(held, np.int64))
        self.ntotal = len(self.held)
        self.params: dict = {}

    def stored_ids(self) -> np.ndarray:
        """The ids searches return (sorted)."""
        return self.held

    def collection_ids(self) -> np.ndarray:
        """The ids the collection holds now (read whole: ``index check``, ``consistency``)."""
        return np.fromiter(held_shards(self.client, self.target.collection), np.int64)

    def set_params(self, params: dict) -> None:
        """{"nprobe": n} or {"efSearch": n}; refused for a knob the index type lacks."""
        for name, value in params.items():
            if value is None:
                continue
            if name != self.knob:
                flag = "--nprobe" if name == "nprobe" else "--ef-search"
                raise CbirError(f"{flag} {value}: does not apply to a Milvus {self.kind} index")
            self.params[name] = int(value)

    def _milvus_params(self, params: dict | None, k: int) -> dict:
        p = {**self.params, **(params or {})}
        if "efSearch" in p:
            return {"ef": max(int(p["efSearch"]), k)}
        return {"nprobe": int(p["nprobe"])} if "nprobe" in p else {}

    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sims, ids) [q, k] of the held ids (padded with -inf / -1); ``params`` override the knob."""
        k = int(min(k, 16384))  # Milvus's top-k limit
        q = np.ascontiguousarray(queries, np.float32)
        sims = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        if not len(q) or not self.ntotal:
            return sims, ids
        found = self.client.search(
            self.target.collection,
            data=list(q),
            limit=k,
            output_fields=[],
            search_params={"metric_type": "IP", "params": self._milvus_params(params, k)},
        )
        for r, hits in enumerate(found):
            got_i = np.fromiter((h["id"] for h in hits), np.int64, len(hits))
            got_s = np.fromiter((h["distance"] for h in hits), np.float32, len(hits))
            held = np.isin(got_i, self.held, assume_unique=True)  # added by another writer since: not yet
            n = int(held.sum())
            sims[r, :n], ids[r, :n] = got_s[held], got_i[held]
        return sims, ids

    def reconstruct_batch(self, ids) -> np.ndarray:
        """Stored vectors of ``ids`` [n] -> [n, d] from the collection (zeros for an id it lacks)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.zeros((len(ids), self.d), np.float32)
        at = {int(i): n for n, i in enumerate(ids)}
        uniq = list(at)
        for s in range(0, len(uniq), BATCH):
            for row in self.client.get(self.target.collection, ids=uniq[s : s + BATCH], output_fields=["vector"]):
                out[at[int(row["id"])]] = row["vector"]
        for n, i in enumerate(ids):  # repeated ids
            if at[int(i)] != n:
                out[n] = out[at[int(i)]]
        return out
