"""``cbir bench search``: the index at scale, through the path a user's build takes.

For each size n: synthetic unit vectors (``Synthetic``; d = 320 by default; fresh draws from the same
distribution are the held-out queries) are written as ``.npy`` parts; then a child process runs ``index build
--from-vectors --factory auto``
(streaming ingest into shard files, index chosen for ``--memory-budget`` and tuned to
``--target-recall`` on held-out gallery vectors) and measures, on ``queries`` fresh vectors never
seen by the tuning: recall@k against exact search (NumPy, streamed over the shards), ms/query at
batch 1 and at batch ``queries`` (medians of 3), build time, the child's peak RSS and bytes on disk.
The child keeps the RSS figure honest: the parent's generation buffers are not in it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK = 1_000_000
LATENT = 24  # intrinsic dimension of the synthetic embeddings


class Synthetic:
    """Embeddings near a low-dimensional manifold, as image embeddings are: a Gaussian mixture in
    ``LATENT`` dims (n/1000 centres, within-cluster sd 0.7 vs centre sd 1), mapped to ``dim`` by a fixed
    random projection, plus 0.1 isotropic noise, L2-normalised. Neighbourhoods are continuous, so
    inverted lists cut through them (on 100k vectors IVF1024 needs nprobe 8 for recall@10 0.96;
    isotropic clusters in 320-d are separable enough that nprobe 1 finds everything)."""

    def __init__(self, n: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.proj = (rng.normal(size=(LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        self.centres = rng.normal(size=(max(n // 1000, 10), LATENT)).astype(np.float32)

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        z = self.centres[rng.integers(0, len(self.centres), count)] + 0.7 * rng.normal(size=(count, LATENT)).astype(
            np.float32
        )
        x = z @ self.proj + 0.1 * rng.normal(size=(count, self.proj.shape[1])).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def draw_between(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Shifted queries: the midpoint of two random centres (a low-density region of the gallery)
        plus the same within-cluster spread — queries unlike any gallery vector, as user photos
        against a catalogue are."""
        a, b = rng.integers(0, len(self.centres), (2, count))
        z = (self.centres[a] + self.centres[b]) / 2 + 0.7 * rng.normal(size=(count, LATENT)).astype(np.float32)
        x = z @ self.proj + 0.1 * rng.normal(size=(count, self.proj.shape[1])).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic(root: Path, n: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """``root/vectors/part-NNNN.npy`` (≤ 1M rows each) and ``root/paths.txt``."""
    parts = root / "vectors"
    parts.mkdir(parents=True, exist_ok=True)
    gen = Synthetic(n, dim, seed)
    rng = np.random.default_rng(seed + 1)
    with open(root / "paths.txt", "w") as f:
        for i, start in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - start)
            np.save(parts / f"part-{i:04d}.npy", gen.draw(m, rng))
            f.write("".join(f"/synthetic/{j:09d}\n" for j in range(start, start + m)))
    return parts, root / "paths.txt"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that across fork and
    exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def measure(
    root: Path,
    n: int,
    dim: int,
    memory_budget: str,
    target_recall: float,
    queries: int,
    k: int,
    shard_size: int,
    seed: int = 0,
    on_disk: bool = False,
    store: str = "faiss",
) -> dict:
    """The child's work: build, then measure (see module doc). ``store``: ``faiss`` (index.faiss) or
    ``milvus-lite`` (a Milvus Lite file beside the index, in this process: its memory is in the RSS)."""
    from cbir.index.ann import maintain, tuning
    from cbir.index.gallery import Gallery
    from cbir.index.ingest.from_vectors import VectorSource, ingest, read_paths

    t0 = time.perf_counter()
    source = VectorSource(root / "vectors")
    g = Gallery.create(
        root / "idx",
        None,
        factory="auto",
        memory_budget=memory_budget,
        target_recall=target_recall,
        shard_size=shard_size,
        dim=dim,
        on_disk=on_disk,
        store=f"milvus-lite:{root / store}.db" if store != "faiss" else None,
    )
    ingest(g, source, read_paths(root / "paths.txt", len(source)))
    build_s = time.perf_counter() - t0
    rss_build = peak_rss_mb()
    q = Synthetic(n, dim, seed).draw(queries, np.random.default_rng(seed + 99))
    t1 = time.perf_counter()
    _, truth = maintain.exact_topk(g, q, k)
    exact_ms = (time.perf_counter() - t1) / queries * 1e3
    index = g.index
    got = index.search(q, k)[1]
    batch, single = [], []
    for _ in range(3):
        t = time.perf_counter()
        index.search(q, k)
        batch.append((time.perf_counter() - t) / queries * 1e3)
        t = time.perf_counter()
        for i in range(queries):
            index.search(q[i : i + 1], k)
        single.append((time.perf_counter() - t) / queries * 1e3)
    disk = _bytes(g.root, root / f"{store}.db" if store != "faiss" else None)
    cfg = g.config
    return {
        "store": store,
        "n": n,
        "dim": dim,
        "memory_budget": memory_budget,
        "target_recall": target_recall,
        "on_disk": on_disk,
        "auto_choice": cfg["index_factory"],
        "search": cfg.get("search"),
        "trained_on": cfg.get("trained_on"),
        "tuning": {key: cfg["tuning"][key] for key in ("recall_at_10", "ms_per_query", "held_out_queries", "tried")},
        "build_s": round(build_s, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "peak_rss_build_mb": round(rss_build),
        "bytes": disk,
        "queries": queries,
        "k": k,
        "recall_at_k": tuning.recall_at_k(truth, got),
        "ms_per_query_batch": float(np.median(batch)),
        "ms_per_query_batch1": float(np.median(single)),
        "exact_numpy_ms_per_query": round(exact_ms, 3),
    }


def _bytes(index_dir: Path, milvus_dir: Path | None) -> dict:
    """Bytes on disk of the index's parts; ``index.faiss``: the Milvus Lite folder when there is one."""
    disk = {
        name: sum(f.stat().st_size for f in (index_dir / name).rglob("*") if f.is_file())
        if (index_dir / name).is_dir()
        else (index_dir / name).stat().st_size
        for name in ("index.faiss", "meta.sqlite", "shards")
        if (index_dir / name).exists()
    }
    disk["ivflists"] = sum(f.stat().st_size for f in index_dir.glob("ivflists-*.bin"))
    if milvus_dir is not None:
        disk["index.faiss"] = sum(f.stat().st_size for f in milvus_dir.rglob("*") if f.is_file())
    return disk


def bench_search(
    sizes=(1_000_000,),
    dim: int = 320,
    memory_budget: str = "4GB",
    target_recall: float = 0.95,
    queries: int = 200,
    k: int = 10,
    shard_size: int = 65_536,
    workdir: str | None = None,
    keep: bool = False,
    seed: int = 0,
    on_disk: bool = False,
    stores: tuple[str, ...] = ("faiss",),
) -> list[dict]:
    """One row per size and store (``faiss``, ``milvus-lite``): the same vectors and queries for each."""
    out = []
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cbir-bench-search-"))
    for n in sizes:
        root = base / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic(root, n, dim, seed)
        gen_s = time.perf_counter() - t0
        for store in stores:
            shutil.rmtree(root / "idx", ignore_errors=True)
            row = _child(root, n, dim, memory_budget, target_recall, queries, k, shard_size, seed, on_disk, store)
            row["generate_s"] = round(gen_s, 1)
            out.append(row)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if not keep and not workdir:
        shutil.rmtree(base, ignore_errors=True)
    return out


def _child(root: Path, n: int, *rest) -> dict:
    """``measure`` in a process of its own (its peak RSS is the build's and the search's alone);
    ``rest``: ``measure``'s arguments after ``n``, in order."""
    args = [
        sys.executable,
        "-m",
        "cbir.bench.scale",
        str(root),
        str(n),
        *(str(int(a) if isinstance(a, bool) else a) for a in rest),
    ]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if r.returncode != 0:
        from cbir.errors import CbirError

        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode
        raise CbirError(f"bench search n={n}: the build failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure_shift(
    root: Path,
    n: int,
    dim: int,
    memory_budget: str,
    target_recall: float,
    tune_queries: int = 100,
    eval_queries: int = 1000,
    seed: int = 0,
) -> dict:
    """The query-shift scenario: gallery from ``Synthetic.draw``, queries from ``draw_between``. The
    index is built with ``--factory auto`` (tuned on held-out gallery vectors), then tuned again on
    ``tune_queries`` shifted queries; both estimates are set against the truth on ``eval_queries``
    other shifted queries (exact search), with the nprobe each chose and its ms/query."""
    from cbir.index.ann import maintain, tuning
    from cbir.index.gallery import Gallery
    from cbir.index.ingest.from_vectors import VectorSource, ingest, read_paths

    source = VectorSource(root / "vectors")
    g = Gallery.create(
        root / "idx",
        None,
        factory="auto",
        memory_budget=memory_budget,
        target_recall=target_recall,
        shard_size=65_536,
        dim=dim,
    )
    ingest(g, source, read_paths(root / "paths.txt", len(source)))
    q = Synthetic(n, dim, seed).draw_between(tune_queries + eval_queries, np.random.default_rng(seed + 77))
    q_tune, q_eval = q[:tune_queries], q[tune_queries:]
    _, truth = maintain.exact_topk(g, q_eval, 10)

    def truth_at(params: dict) -> tuple[float, float]:
        index = g.index
        tuning.set_search_params(index, params)
        got = index.search(q_eval, 10)[1]
        return tuning.recall_at_k(truth, got), tuning.query_ms(index, q_eval[:200], 10, 3)

    rows = []
    for basis, queries in (("gallery", None), ("queries", q_tune)):
        t = g.settings.tuning if queries is None else g.tune(target_recall, queries=q_tune)
        params = dict(g.settings.search)
        true_recall, ms = truth_at(params)
        rows.append(
            {
                "basis": basis,
                "tuned_on": t["queries"],
                "estimate": t["recall_at_10"],
                "ci95": t["recall_ci95"],
                "params": params,
                "true_recall": round(true_recall, 4),
                "ms_per_query": round(ms, 4),
            }
        )
    return {
        "n": n,
        "dim": dim,
        "memory_budget": memory_budget,
        "target_recall": target_recall,
        "auto_choice": g.settings.index_factory,
        "eval_queries": eval_queries,
        "rows": rows,
    }


def bench_shift(
    n: int,
    dim: int = 320,
    memory_budget: str = "4GB",
    target_recall: float = 0.95,
    tune_queries: int = 100,
    eval_queries: int = 1000,
    seed: int = 0,
) -> dict:
    root = Path(tempfile.mkdtemp(prefix="cbir-bench-shift-"))
    try:
        write_synthetic(root, n, dim, seed)
        return measure_shift(root, n, dim, memory_budget, target_recall, tune_queries, eval_queries, seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    root, n, dim, budget, target, queries, k, shard_size, seed, on_disk, store = sys.argv[1:]
    print(
        json.dumps(
            measure(
                Path(root),
                int(n),
                int(dim),
                budget,
                float(target),
                int(queries),
                int(k),
                int(shard_size),
                int(seed),
                bool(int(on_disk)),
                store,
            )
        )
    )
