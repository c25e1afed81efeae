"""FAISS indexes from a factory string, with inner product on L2-normalised vectors (= cosine).

Every index is wrapped in ``IndexIDMap2`` (unless the factory already starts with ``IDMap``) so ids
are our stable int64 item ids. Trained factories (IVF, PQ, ...) are trained on a seeded random
sample of at most ``TRAIN_SAMPLE`` = 100,000 vectors (the count is recorded in index.json).
GPU: ``to_gpu`` copies a CPU master index to GPU 0 when faiss-gpu sees a GPU (GPU indexes cannot
remove ids, so the CPU index stays the one that is written and edited; GPU_NOTES.md §Q4). Types
FAISS cannot put on a GPU (HNSW, PQ without IVF, ...) stay on the CPU, and that is said once per
type on stderr.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from cbir import crashpoints, fsio
from cbir.cores import faiss_threads
from cbir.errors import CbirError

TRAIN_SAMPLE = 100_000
GPU_MAX_K = 2048


def create(dim: int, factory: str = "Flat", id_map: bool = True):
    """An empty index that takes our ids: IVF indexes keep ids in their lists themselves; others are
    wrapped in ``IndexIDMap2``. Never an IDMap around an IVF: the map addresses the inner index by
    position, ``remove_ids`` compacts the map but not the IVF's positions, and every id after a
    removed one then points at its neighbour's vector. ``id_map=False`` insists on an IVF (on-disk)."""
    import faiss

    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise CbirError(
            f"--factory {factory!r}: FAISS cannot build it for {dim}-d vectors ({_first_line(e)})"
        ) from None
    if faiss.try_extract_index_ivf(index) is not None:
        return index
    if not id_map:
        raise CbirError(f"--on-disk needs an IVF factory (IVF…, OPQ…,IVF…), not {factory!r}")
    return index if factory.startswith("IDMap") else faiss.IndexIDMap2(index)


def fill_on_disk(index, shards, root: Path, factory: str) -> Path:
    """Fill a trained, empty IVF ``index`` with (ids, vectors) shards through on-disk inverted lists:
    one block file per shard, merged into ``root/ivflists-<n>.bin`` (see ``maintain``). Returns that path."""
    import shutil
    import uuid

    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    blocks = root / f".blocks-{uuid.uuid4().hex[:8]}"
    blocks.mkdir()
    try:
        names = []
        for i, (ids, vecs) in enumerate(shards):
            block = faiss.clone_index(index)
            block.add_with_ids(vecs, ids)
            names.append(str(blocks / f"block-{i:06d}.index"))
            faiss.write_index(block, names[-1])
            del block
        lists = root / f"ivflists-{uuid.uuid4().hex[:12]}.bin"
        merge_ondisk(index, names, str(lists))
    finally:
        shutil.rmtree(blocks, ignore_errors=True)
    return lists


def stored_ids(index) -> np.ndarray:
    """Every id the index holds: the IDMap's table, the ids in an IVF's inverted lists, or what an
    external store (``milvus_store.MilvusIndex``) says it holds."""
    import faiss

    if is_external(index):
        return index.stored_ids()

    index = faiss.downcast_index(index)
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(l), lists.list_size(l)).copy() for l in range(ivf.nlist) if lists.list_size(l)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def train(index, vectors: np.ndarray, factory: str, seed: int = 0) -> int:
    """Train if needed on a sample; returns the number of training vectors (0 if untrained)."""
    if index.is_trained:
        return 0
    n = len(vectors)
    sample = (
        vectors if n <= TRAIN_SAMPLE else vectors[np.random.default_rng(seed).choice(n, TRAIN_SAMPLE, replace=False)]
    )
    try:
        index.train(np.ascontiguousarray(sample, np.float32))
    except RuntimeError as e:
        raise CbirError(
            f"--factory {factory!r}: cannot train on {len(sample)} vectors ({_first_line(e)}); "
            f"use 'Flat' or a smaller factory for small galleries"
        ) from None
    return len(sample)


def build(vectors: np.ndarray, ids: np.ndarray, factory: str = "Flat") -> tuple[object, int]:
    """A filled index and the training sample size."""
    index = create(vectors.shape[1], factory)
    trained = train(index, vectors, factory) if len(vectors) else 0
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    return index, trained


def remove(index, ids: np.ndarray) -> bool:
    """Remove ids in place; False when the index type cannot (e.g. HNSW) or must not (an IDMap around
    an IVF, as built before 0.1: see ``create``): rebuild then."""
    import faiss

    if len(ids) == 0:
        return True
    if hasattr(index, "id_map") and faiss.try_extract_index_ivf(faiss.downcast_index(index.index)) is not None:
        return False
    try:
        index.remove_ids(faiss.IDSelectorArray(np.asarray(ids, np.int64)))
        return True
    except RuntimeError:
        return False


def enable_reconstruct(index) -> None:
    """IVF indexes reconstruct stored vectors only with a direct map (needed by re-ranking). A hash
    table, not an array: after removals (or in on-disk lists) the ids are not 0..n-1. An external
    store fetches stored vectors itself."""
    import faiss

    if is_external(index):
        return

    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


def save(index, path: Path) -> None:
    """Write atomically; for an on-disk IVF, then delete the list files it no longer refers to (a
    reader that still has one mapped keeps reading it: an unlinked file lives while mapped)."""
    import faiss

    with fsio.atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    crashpoints.hit("faiss-written")
    ivf = faiss.try_extract_index_ivf(faiss.downcast_index(index))
    current = getattr(faiss.downcast_InvertedLists(ivf.invlists), "filename", None) if ivf is not None else None
    for old in Path(path).parent.glob("ivflists-*.bin"):
        if str(old) != current:
            old.unlink(missing_ok=True)


def load(path: Path):
    """Read an index file; a damaged one is a ``CbirError`` naming it and the way out."""
    import faiss

    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise CbirError(
            f"{path}: damaged FAISS index ({_first_line(e)}); `cbir index repair {Path(path).parent}` "
            f"rebuilds it from the shards"
        ) from None


def gpu_available() -> bool:
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


# Index classes index_cpu_to_gpu can clone (faiss/gpu/GpuCloner.cpp); wrappers are looked through.
GPU_TYPES = frozenset(
    {"IndexFlat", "IndexFlatIP", "IndexFlatL2", "IndexIVFFlat", "IndexIVFPQ", "IndexIVFScalarQuantizer"}
)
_WRAPPERS = ("IndexIDMap", "IndexIDMap2", "IndexPreTransform")
_said_cpu: set[str] = set()


def is_external(index) -> bool:
    """A vector store outside FAISS searched through the same surface (``milvus_store.MilvusIndex``)."""
    return getattr(index, "external", False) is True


def innermost(index):
    """The index inside IDMap / IDMap2 / PreTransform wrappers (downcast to its concrete class)."""
    import faiss

    index = faiss.downcast_index(index)
    while type(index).__name__ in _WRAPPERS:
        index = faiss.downcast_index(index.index)
    return index


def gpu_capable(index) -> bool:
    """True when FAISS can put ``index`` (through its wrappers) on a GPU."""
    return type(innermost(index)).__name__ in GPU_TYPES


def to_gpu(index):
    """A GPU copy of a CPU index (the IDMap wrapper stays on the CPU side), or the CPU index itself
    for types FAISS cannot put on a GPU (said once per type on stderr)."""
    import faiss

    kind = type(innermost(index)).__name__
    if kind in GPU_TYPES:
        try:
            res = faiss.StandardGpuResources()
            opts = faiss.GpuClonerOptions()
            opts.useFloat16LookupTables = True  # IVF-PQ over 48 bytes per code needs them (shared memory)
            gpu = faiss.index_cpu_to_gpu(res, 0, index, opts)
            gpu.cbir_resources = res  # keep the resources alive as long as the index
            return Serialized(gpu)
        except RuntimeError as e:
            reason = _first_line(e)
    else:
        reason = "FAISS has no GPU version of it"
    if kind not in _said_cpu:
        _said_cpu.add(kind)
        print(f"cbir: {kind} index stays on the CPU ({reason})", file=sys.stderr)
    return index


class Serialized:
    """A GPU index searched by one thread at a time: FAISS GPU indexes are not thread-safe, not even
    for search (their temporary memory is shared), and ``cbir serve`` searches from a thread pool."""

    def __init__(self, index):
        self.index = index
        self._lock = threading.Lock()

    def search(self, *args, **kwargs):
        with self._lock:
            return self.index.search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.index, name)


def search(index, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """(sims, ids) of the top ``k`` (capped at the index size); ``params``: a ``faiss.SearchParameters``.
    On at most one OpenMP thread per query (``cores.faiss_threads``)."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    q = np.ascontiguousarray(queries, np.float32)
    with faiss_threads(len(q)):
        return index.search(q, k) if params is None else index.search(q, k, params=params)


def _first_line(e: Exception) -> str:
    lines = [l for l in str(e).splitlines() if l.strip()]
    return lines[-1].strip() if lines else type(e).__name__
