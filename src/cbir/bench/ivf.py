"""``cbir bench ivf``: IVF search in PyTorch on a device (``cbir.index.ann.torch_ivf``) beside FAISS's
CPU IVF on all cores, the same lists in both, at the same recall.

The gallery: ``n`` synthetic unit vectors (``bench.scale.Synthetic``'s distribution, drawn with
torch on ``device``: 10M × 320 is drawn in seconds there), ``nlist`` coarse centroids (default
4·√n rounded up to a power of two) from k-means in torch on a sample of 64 per list, and each
vector assigned to its nearest centroid on the device. One FAISS CPU index per kind — IVF-Flat and
IVF-SQ8 (8-bit per dimension, by residual, as ``IVFn,SQ8`` builds it) — is filled with those
assignments (``add_core``: FAISS does not assign 10M vectors again), and ``TorchIVF`` copies it.
Exact top-``k`` of fresh queries on the device gives the truth. ``nprobe``: ``index.ann.tuning.tune``'s,
the smallest power of two whose FAISS recall@k on ``tune`` other queries reaches ``target_recall``
(unreachable: refused, as ``cbir index tune`` refuses); both then search at it
(the same lists: the same recall up to FP16 near-ties, reported for each). q/s: medians of
``repeats`` interleaved passes over the queries in batches of ``batch``; then ``clients`` threads
sending single queries (the device combines what queues up, as under ``cbir serve``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cbir.bench.scale import LATENT, Synthetic


def _draw(torch, syn: Synthetic, count: int, gen, device: str):
    """``Synthetic.draw`` in torch on ``device`` (same distribution, torch's generator)."""
    proj = torch.from_numpy(syn.proj).to(device)
    centres = torch.from_numpy(syn.centres).to(device)
    z = centres[torch.randint(0, len(centres), (count,), generator=gen, device=device)]
    z = z + 0.7 * torch.randn((count, LATENT), generator=gen, device=device)
    x = z @ proj + 0.1 * torch.randn((count, proj.shape[1]), generator=gen, device=device)
    return x / x.norm(dim=1, keepdim=True)


def gallery(n: int, dim: int, device: str, seed: int = 0, chunk: int = 1_000_000):
    """(vectors [n, dim] float32 NumPy, the generator's torch state) drawn on ``device`` in chunks."""
    import torch

    syn, gen = Synthetic(n, dim, seed), torch.Generator(device=device).manual_seed(seed)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        x[s : s + chunk] = _draw(torch, syn, min(chunk, n - s), gen, device).cpu().numpy()
    return x, syn, gen


def kmeans(x: np.ndarray, nlist: int, device: str, iters: int = 10, seed: int = 0, per_list: int = 64) -> np.ndarray:
    """Coarse centroids [nlist, d] float32: Lloyd's k-means in torch on a sample of ``per_list`` × nlist."""
    import torch

    rng = np.random.default_rng(seed)
    sample = torch.from_numpy(x[np.sort(rng.choice(len(x), min(len(x), per_list * nlist), replace=False))]).to(device)
    c = sample[torch.from_numpy(rng.choice(len(sample), nlist, replace=False)).to(device)].clone()
    for _ in range(iters):
        a = assign(sample, c)
        sums = torch.zeros_like(c).index_add_(0, a, sample)
        counts = torch.bincount(a, minlength=nlist).float()[:, None]
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)  # an empty list keeps its centroid
    return c.cpu().numpy()


def assign(x, c, chunk: int = 1 << 18):
    """Nearest centroid (inner product, as the IVF's IndexFlatIP quantizer) of each row of ``x``; torch."""
    import torch

    return torch.cat([torch.argmax(x[s : s + chunk] @ c.T, dim=1) for s in range(0, len(x), chunk)])


def faiss_ivf(x: np.ndarray, centroids: np.ndarray, lists: np.ndarray, kind: str):
    """A FAISS CPU IVF-Flat / IVF-SQ8 index over ``centroids``, filled with ``x`` in the given ``lists``."""
    import faiss

    d, nlist = x.shape[1], len(centroids)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(centroids)
    if kind == "flat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 100_000), replace=False)])
    index.is_trained = True
    index.own_fields = True
    quantizer.this.disown()  # the index owns its quantizer from here on
    for s in range(0, len(x), 1_000_000):
        part = np.ascontiguousarray(x[s : s + 1_000_000])
        ids = np.arange(s, s + len(part), dtype=np.int64)
        coarse = np.ascontiguousarray(lists[s : s + len(part)], np.int64)
        index.add_core(len(part), faiss.swig_ptr(part), faiss.swig_ptr(ids), faiss.swig_ptr(coarse))
    return index


def _rate(index, q: np.ndarray, k: int, batch: int, params=None) -> tuple[float, np.ndarray]:
    ids, t0 = [], time.perf_counter()
    for s in range(0, len(q), batch):
        ids.append(index.search(q[s : s + batch], k, params=params)[1])
    return len(q) / (time.perf_counter() - t0), np.concatenate(ids)


def bench_ivf(
    n: int = 10_000_000,
    dim: int = 320,
    device: str = "cuda",
    nlist: int | None = None,
    kinds: tuple[str, ...] = ("flat", "sq8"),
    queries: int = 2000,
    tune: int = 500,
    batch: int = 100,
    k: int = 10,
    target_recall: float = 0.95,
    repeats: int = 3,
    clients: int = 16,
    seed: int = 0,
) -> dict:
    """See the module docstring."""
    import faiss
    import torch

    from cbir.cores import all_cores
    from cbir.index.ann.torch_flat import TorchFlat

    faiss.omp_set_num_threads(all_cores())
    t0 = time.perf_counter()
    x, syn, gen = gallery(n, dim, device, seed)
    q = _draw(torch, syn, queries + tune, gen, device).cpu().numpy()
    nlist = nlist or 1 << int(np.ceil(np.log2(4 * np.sqrt(n))))
    centroids = kmeans(x, nlist, device, seed=seed)
    c_dev = torch.from_numpy(centroids).to(device)
    lists = torch.cat(
        [assign(torch.from_numpy(x[s : s + 1_000_000]).to(device), c_dev) for s in range(0, n, 1_000_000)]
    )
    lists = lists.cpu().numpy()
    exact = TorchFlat(vectors=x, device=device)
    truth = exact.search(q, k)[1]
    del exact
    made_s = time.perf_counter() - t0
    out = {"n": n, "dim": dim, "device": device, "nlist": nlist, "k": k, "batch": batch, "queries": queries}
    out.update(threads_faiss=all_cores(), target_recall=target_recall, setup_s=round(made_s, 1), kinds={})
    for kind in kinds:
        out["kinds"][kind] = _one_kind(
            x,
            centroids,
            lists,
            kind,
            q[tune:],
            truth[tune:],
            q[:tune],
            truth[:tune],
            device,
            k,
            batch,
            target_recall,
            repeats,
            clients,
        )
    return out


def _one_kind(
    x, centroids, lists, kind, q, truth, q_tune, truth_tune, device, k, batch, target, repeats, clients
) -> dict:
    """One kind's FAISS CPU index and its torch copy, tuned and measured (see the module docstring)."""
    from cbir.index.ann import tuning
    from cbir.index.ann.torch_ivf import TorchIVF

    t0 = time.perf_counter()
    cpu = faiss_ivf(x, centroids, lists, kind)
    build_s = time.perf_counter() - t0
    nprobe = tuning.tune(cpu, q_tune, truth_tune, target, repeats=1)["params"]["nprobe"]  # sets it on ``cpu``
    t0 = time.perf_counter()
    dev = TorchIVF(cpu, device)
    load_s = time.perf_counter() - t0
    dev.search(q[:batch], k)  # warm-up
    rates: dict[str, list[float]] = {"faiss_cpu": [], "torch": []}
    for _ in range(repeats):  # interleaved: drift hits both alike
        r, got_cpu = _rate(cpu, q, k, batch)
        rates["faiss_cpu"].append(r)
        r, got_dev = _rate(dev, q, k, batch)
        rates["torch"].append(r)
    singles = {}
    if clients:
        for name, index in (("faiss_cpu", cpu), ("torch", dev)):
            with ThreadPoolExecutor(clients) as pool:
                t1 = time.perf_counter()
                list(pool.map(lambda i, ix=index: ix.search(q[i : i + 1], k), range(len(q))))
                singles[name] = round(len(q) / (time.perf_counter() - t1), 1)
    med = {name: float(np.median(v)) for name, v in rates.items()}
    return {
        "nprobe": nprobe,
        "faiss_build_s": round(build_s, 1),
        "torch_load_s": round(load_s, 1),
        "device_bytes": dev.memory_bytes(),
        "recall_at_k": {
            "faiss_cpu": round(tuning.recall_at_k(truth, got_cpu), 4),
            "torch": round(tuning.recall_at_k(truth, got_dev), 4),
        },
        "same_ids_as_faiss": round(tuning.recall_at_k(got_cpu, got_dev), 4),
        "queries_per_s": {name: round(v, 1) for name, v in med.items()},
        "ratio_torch_to_faiss_cpu": round(med["torch"] / med["faiss_cpu"], 2),
        "single_query_per_s": singles,
        "mean_combined": round(dev.requests / max(dev.batches, 1), 2),
    }
