"""Bulk embedding on Ray Data (``cbir index build ... --distributed ray``); ``ray`` imported lazily.

The same shard unit and done-markers as a local build: the coordinator (this process) scans the
folder and assigns files to shards in SQLite as usual; each pending shard becomes one row of a Ray
dataset; ``map_batches`` runs ``ShardWorker`` in a fixed-size actor pool (``ActorPoolStrategy``),
each actor holding one loaded model and decoding in its own process; a worker embeds a whole shard
with ``pipeline.embed_shard`` — the code a local build runs — and writes the shard's output file
(vectors + metadata rows) into the index directory. The coordinator commits every shard as its
result streams back, so an interrupted run resumes like a local one (finished-but-uncommitted
outputs are adopted, unfinished shards are redone), then builds the FAISS index from the shards.

The index directory must be reachable at the same path from every worker (a shared filesystem on a
real cluster). ``ray_address`` None starts a local Ray with ``num_workers`` CPUs; "auto" or
"ray://host:port" connects to a running cluster. Each worker gets ``cpus_per_worker`` CPUs (its ORT
threads and decode threads) and ``gpus_per_worker`` GPUs (use a GPU backend with it).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cbir.errors import CbirError


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CbirError("--distributed ray needs Ray Data: pip install 'cbir[distributed]'") from None
    return ray


class ShardWorker:
    """Ray Data callable class: one model per actor; each input row is one shard."""

    def __init__(self, model: str, root: str, backend: str, threads: int, fingerprint: str, batch_size: int | None):
        from cbir.engine.embedder import Embedder

        self.embedder = Embedder(model, backend=backend, threads=threads, workers=threads)
        if self.embedder.fingerprint != fingerprint:
            raise CbirError(
                f"worker loaded {model} with fingerprint {self.embedder.fingerprint}, index wants {fingerprint}"
            )
        self.root, self.batch_size = root, batch_size

    def __call__(self, batch: dict) -> dict:
        from pathlib import Path

        from cbir.engine.bulk import Timings
        from cbir.index.ingest.pipeline import embed_shard

        shards, indexed, failed, seconds = [], [], [], []
        for shard, ids, paths in zip(batch["shard"], batch["ids"], batch["paths"]):
            t0 = time.perf_counter()
            out = embed_shard(
                self.embedder,
                Path(self.root),
                int(shard),
                list(zip(map(int, ids), map(str, paths))),
                self.batch_size,
                Timings(),
            )
            shards.append(int(shard))
            indexed.append(len(out.ids))
            failed.append(len(out.failed_ids))
            seconds.append(time.perf_counter() - t0)
        return {
            "shard": np.array(shards),
            "indexed": np.array(indexed),
            "failed": np.array(failed),
            "seconds": np.array(seconds),
        }


def process_with_ray(
    gallery,
    batch_size: int | None = None,
    progress: bool = False,
    ray_address: str | None = None,
    num_workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    backend: str = "onnxruntime",
) -> dict:
    ray = import_ray()
    from cbir.index.storage.shards import read_shard

    work = gallery.pending_work()
    total = sum(len(items) for _, items in work)
    t0 = time.perf_counter()
    if not work:
        return {"indexed": 0, "failed_now": 0, "timings": {"wall": 0.0, "images": 0, "images_per_s": 0.0}}
    if num_workers < 1:
        raise CbirError(f"--num-workers {num_workers}: must be ≥ 1")
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_workers * cpus_per_worker, include_dashboard=False, log_to_driver=False)
    rows = [{"shard": s, "ids": [i for i, _ in items], "paths": [p for _, p in items]} for s, items in work]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    model = gallery.settings.model_path
    results = ds.map_batches(
        ShardWorker,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        fn_constructor_kwargs={
            "model": model,
            "root": str(gallery.root.resolve()),
            "backend": backend,
            "threads": cpus_per_worker,
            "fingerprint": gallery.fingerprint,
            "batch_size": batch_size,
        },
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc=f"ray × {num_workers}")
    indexed = failed = 0
    for row in results.iter_rows():
        n_ok, n_bad = gallery.commit_shard(int(row["shard"]), read_shard(gallery.root, int(row["shard"])))
        indexed += n_ok
        failed += n_bad
        if bar is not None:
            bar.update(n_ok + n_bad)
            bar.set_postfix(failed=failed, img_s=f"{(indexed + failed) / (time.perf_counter() - t0):.1f}")
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    return {
        "indexed": indexed,
        "failed_now": failed,
        "timings": {
            "wall": round(wall, 3),
            "images": indexed,
            "failed": failed,
            "images_per_s": round(indexed / wall, 2) if wall else 0.0,
            "workers": num_workers,
            "distributed": "ray",
        },
    }
