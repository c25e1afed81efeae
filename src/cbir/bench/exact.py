"""``cbir bench exact``: exact k-NN in PyTorch (``cbir.index.ann.torch_flat``, FP16 on CUDA) beside
FAISS's CPU Flat index on the same random unit vectors, in one run: queries/s of each (medians of
``repeats`` passes over the same query batches), the ratio, and recall@k of the torch answers
against FAISS's (FP16 storage may swap near-ties). ``clients`` threads then send single-query
searches, as ``cbir serve`` does: torch combines what queues up into one matmul (``mean_combined``
requests per matmul), FAISS answers each on its own."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cbir.vectors import l2_normalize


def bench_exact(
    n: int = 1_000_000,
    dim: int = 320,
    device: str = "cuda",
    queries: int = 1000,
    batch: int = 100,
    k: int = 10,
    repeats: int = 3,
    seed: int = 0,
    clients: int = 16,
) -> dict:
    import faiss

    from cbir.cores import all_cores
    from cbir.index.ann.torch_flat import TorchFlat

    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        x[s : s + 100_000] = l2_normalize(rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32))
    q = l2_normalize(rng.standard_normal((queries, dim), dtype=np.float32))
    faiss.omp_set_num_threads(all_cores())
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(x)
    t0 = time.perf_counter()
    dev = TorchFlat(vectors=x, device=device)
    load_s = time.perf_counter() - t0
    dev.search(q[:batch], k)  # warm-up: kernels, allocator

    def run(index) -> tuple[float, np.ndarray]:
        ids = []
        t0 = time.perf_counter()
        for s in range(0, queries, batch):
            ids.append(index.search(q[s : s + batch], k)[1])
        return queries / (time.perf_counter() - t0), np.concatenate(ids)

    rates: dict[str, list[float]] = {"faiss_cpu": [], "torch": []}
    for _ in range(repeats):  # interleaved: drift hits both alike
        r, want = run(cpu)
        rates["faiss_cpu"].append(r)
        r, got = run(dev)
        rates["torch"].append(r)

    def concurrent(index) -> float:
        with ThreadPoolExecutor(clients) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda i: index.search(q[i : i + 1], k), range(queries)))
        return queries / (time.perf_counter() - t0)

    singles: dict[str, float] = {}
    if clients:
        dev.batches = dev.requests = 0
        singles = {"faiss_cpu": concurrent(cpu), "torch": concurrent(dev)}
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want)]))
    med = {name: float(np.median(v)) for name, v in rates.items()}
    return {
        "n": n,
        "dim": dim,
        "device": device,
        "dtype": str(dev.dtype).replace("torch.", ""),
        "queries": queries,
        "batch": batch,
        "k": k,
        "repeats": repeats,
        "threads_faiss": all_cores(),
        "load_s": round(load_s, 2),
        "queries_per_s": {name: round(v, 1) for name, v in med.items()},
        "ratio_torch_to_faiss_cpu": round(med["torch"] / med["faiss_cpu"], 2),
        "recall_at_k_vs_faiss": round(recall, 4),
        "clients": clients,
        "single_query_per_s": {name: round(v, 1) for name, v in singles.items()},
        "mean_combined": round(dev.requests / max(dev.batches, 1), 2),
    }
