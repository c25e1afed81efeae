"""Choose a FAISS index for a memory budget, and tune its search knob to a recall target.

``choose_factory(n, d, budget)`` — rules in the spirit of autofaiss (exact where it is cheap, inverted
lists when it is not, compressed codes when the budget demands):
- n ≤ 20,000 and the raw vectors fit: ``Flat`` (exact);
- raw float32 vectors (n·d·4 bytes, +16 bytes/vector for ids) fit: ``IVF{nlist},Flat``;
- one byte per dimension fits: ``IVF{nlist},SQ8``;
- else ``OPQ{m},IVF{nlist},PQ{m}`` with the largest m (dividing d, ≥ 8) whose codes fit;
- nothing fits: a one-line refusal naming the smallest budget that would.
nlist = the power of two nearest 4·√n, between 16 and n/39 (FAISS wants ≥ 39 training points per list).

``tune`` raises ``nprobe`` (IVF) or ``efSearch`` (HNSW) through 1, 2, 4, ... and keeps the lowest value
whose recall@k against exact search on the given queries meets the target (and, if given, the
ms/query limit). Queries must be real vectors held out of the comparison: ``gallery_queries`` takes
stored (raw, from the shard files, not reconstructed) vectors and excludes each query's own id from
both rankings, so an item finding itself does not count.
"""

from __future__ import annotations

import re
import time

import numpy as np

from cbir.errors import CbirError
from cbir.index.ann import faiss_index

FLAT_MAX_N = 20_000
ID_BYTES = 16  # IDMap2: the id array and the reverse map


def parse_bytes(text: str | int) -> int:
    """ "4GB", "512MB", "1.5G", "1000000" -> bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise CbirError(f"--memory-budget {text!r}: use a size like 4GB, 512MB or a byte count")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def nlist_for(n: int) -> int:
    target = 4 * np.sqrt(max(n, 1))
    nlist = 2 ** int(round(np.log2(max(target, 1))))
    return int(max(16, min(nlist, max(16, n // 39))))


def choose_factory(n: int, d: int, budget: int) -> str:
    """The factory string for n d-dimensional vectors within ``budget`` bytes (see module doc)."""
    nlist = nlist_for(n)
    raw = n * (d * 4 + ID_BYTES)
    if n <= FLAT_MAX_N and raw <= budget:
        return "Flat"
    if raw + nlist * d * 4 <= budget:
        return f"IVF{nlist},Flat"
    if n * (d + ID_BYTES) + nlist * d * 4 <= budget:
        return f"IVF{nlist},SQ8"
    for m in sorted((m for m in range(8, d // 2 + 1) if d % m == 0 and m <= 64), reverse=True):
        if n * (m + ID_BYTES) + nlist * d * 4 + d * d * 4 <= budget:
            return f"OPQ{m},IVF{nlist},PQ{m}"
    need = n * (8 + ID_BYTES) + nlist * d * 4 + d * d * 4
    raise CbirError(
        f"--memory-budget {budget / 2**20:.0f} MiB: too small for any index of {n} × {d}-d vectors "
        f"(the smallest, PQ8, needs about {need / 2**20:.0f} MiB)"
    )


def knob(index) -> str | None:
    """ "nprobe" for IVF indexes, "efSearch" for HNSW, None for exact ones."""
    import faiss

    if faiss_index.is_external(index):
        return index.knob

    inner = faiss_index.innermost(index)
    if faiss.try_extract_index_ivf(inner) is not None:
        return "nprobe"
    if hasattr(inner, "hnsw"):
        return "efSearch"
    return None


def set_search_params(index, params: dict | None) -> None:
    """Apply {"nprobe": n} or {"efSearch": n} to the index (through its wrappers)."""
    import faiss

    if not params:
        return
    if faiss_index.is_external(index):
        return index.set_params(params)
    inner = faiss_index.innermost(index)
    for name, value in params.items():
        if value is None:
            continue
        if name == "nprobe" and (ivf := faiss.try_extract_index_ivf(inner)) is not None:
            ivf.nprobe = int(value)
        elif name == "efSearch" and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(value)
        else:
            raise CbirError(
                f"--{'nprobe' if name == 'nprobe' else 'ef-search'} {value}: "
                f"does not apply to a {type(inner).__name__} index"
            )


def search_parameters(index, params: dict | None):
    """A per-call ``faiss.SearchParameters`` for {"nprobe": n} or {"efSearch": n} (None if empty), built
    through the wrappers (a PreTransform such as OPQ needs its own parameter object around the IVF one)."""
    import faiss

    params = {k: v for k, v in (params or {}).items() if v is not None}
    if not params:
        return None
    if faiss_index.is_external(index):  # a dict, applied per call
        name = next(iter(params))
        if name != index.knob:
            raise CbirError(
                f"--{'nprobe' if name == 'nprobe' else 'ef-search'} {params[name]}: "
                f"does not apply to a Milvus {index.kind} index"
            )
        return dict(params)
    inner = faiss_index.innermost(index)
    if "nprobe" in params and faiss.try_extract_index_ivf(inner) is not None:
        p = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    elif "efSearch" in params and hasattr(inner, "hnsw"):
        p = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
    else:
        name = next(iter(params))
        raise CbirError(
            f"--{'nprobe' if name == 'nprobe' else 'ef-search'} {params[name]}: "
            f"does not apply to a {type(inner).__name__} index"
        )
    node = faiss.downcast_index(index)
    while type(node).__name__ in ("IndexIDMap", "IndexIDMap2", "IndexPreTransform"):
        if type(node).__name__ == "IndexPreTransform":
            p = faiss.SearchParametersPreTransform(index_params=p)
            break  # one PreTransform level (OPQ/PCA) is what the factories here produce
        node = faiss.downcast_index(node.index)
    return p


def recall_per_query(truth: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|top-k ∩ exact top-k| / k of each query."""
    k = truth.shape[1]
    return np.array([len(set(t) & set(g)) / k for t, g in zip(truth.tolist(), got.tolist())], np.float64)


def recall_at_k(truth: np.ndarray, got: np.ndarray) -> float:
    """Mean |top-k ∩ exact top-k| / k over queries."""
    return float(np.mean(recall_per_query(truth, got)))


def interval95(per_query: np.ndarray) -> list[float]:
    """95 % interval of the mean of per-query recalls (normal approximation, clipped to [0, 1])."""
    n = len(per_query)
    if n < 2:
        return [float(np.mean(per_query)) if n else 1.0] * 2
    m, half = float(np.mean(per_query)), 1.96 * float(np.std(per_query, ddof=1)) / np.sqrt(n)
    return [round(max(0.0, m - half), 4), round(min(1.0, m + half), 4)]


def search_excluding(index, queries: np.ndarray, k: int, own: np.ndarray | None) -> np.ndarray:
    """Top-k ids, leaving out each query's own id (``own[i]``) when given."""
    _, ids = faiss_index.search(index, queries, k + (own is not None))
    if own is None:
        return ids[:, :k]
    return np.stack([row[row != o][:k] for row, o in zip(ids, own)])


def tune(
    index,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    max_ms: float | None = None,
    own: np.ndarray | None = None,
    repeats: int = 3,
) -> dict:
    """Lowest knob value meeting ``target`` recall@k (k = truth.shape[1]); returns the chosen params and
    the measured recall (and ``per_query``), ms/query (batch = all queries, median of ``repeats``) and
    the values tried. Exact indexes have no knob: their recall is measured all the same."""
    import faiss

    name = knob(index)
    k = truth.shape[1]
    queries = np.ascontiguousarray(queries, np.float32)
    tried = []
    if name is None:
        per = recall_per_query(truth, search_excluding(index, queries, k, own))
        ms = query_ms(index, queries, k, repeats)
        if max_ms is not None and ms > max_ms:
            raise CbirError(
                f"--max-ms-per-query {max_ms}: exact search takes {ms:.3f} ms/query here; build with "
                f"an ANN factory (--factory auto) to go faster"
            )
        return {"params": {}, "recall": float(per.mean()), "per_query": per, "ms_per_query": ms, "tried": tried}
    if faiss_index.is_external(index):
        top = index.nlist if name == "nprobe" else 4096
    else:
        top = (
            getattr(faiss.try_extract_index_ivf(faiss_index.innermost(index)), "nlist", None)
            if name == "nprobe"
            else 4096
        )
    value = 1
    while True:
        set_search_params(index, {name: value})
        per = recall_per_query(truth, search_excluding(index, queries, k, own))
        recall = float(per.mean())
        ms = query_ms(index, queries, k, repeats)
        tried.append({name: value, "recall": round(recall, 4), "ms_per_query": round(ms, 4)})
        if recall >= target:
            if max_ms is not None and ms > max_ms:
                raise CbirError(
                    f"--target-recall {target}: reached at {name} {value} but at {ms:.3f} ms/query, over "
                    f"--max-ms-per-query {max_ms}; lower the target or raise the limit"
                )
            return {"params": {name: value}, "recall": recall, "per_query": per, "ms_per_query": ms, "tried": tried}
        if value >= top:
            best = max(tried, key=lambda t: t["recall"])
            raise CbirError(
                f"--target-recall {target}: not reachable with this index and these queries (best "
                f"recall@{k} {best['recall']:.3f} at {name} {best[name]}); use a larger --memory-budget "
                f"or a target of at most {best['recall']:.3f}; nothing was changed"
            )
        value = min(value * 2, top)


def query_ms(index, queries: np.ndarray, k: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        index.search(queries, k)
        times.append((time.perf_counter() - t0) / len(queries) * 1e3)
    return float(np.median(times))
