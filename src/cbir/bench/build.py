"""``cbir bench build``: where a default ``cbir index build`` spends its time, stage by stage, and
which stage limits it.

Each CPU stage runs alone on the same files (cycled to ``images``: steady state), at every worker count asked
for (threads: Pillow's decode and resize and OpenCV's ORB release the GIL): **read** (the file's
bytes), **decode** (the model's input row and the item's mean colour, what the bulk pipeline's
workers do), **local_features** (ORB of the bytes, what the copy search needs). **model**: the
backend alone at the build's batch size on random rows (no decode). Rates are the median of
``repeats``. Then the whole build, twice in one run, into throw-away index directories: local
features in a separate pass after the vectors (the CPU default) and in the decode workers (the GPU
default: ``ingest.pipeline.features_in_decode``), each with its img/s and stage timings; the builds
take the same ``images`` inputs, one symlink each (an index takes a path once).

``limit``: with decode and local features sharing one worker pool, the pool's rate is
1 / (1 / decode + 1 / local_features) at the most workers. With the model on a GPU the build's bound
is the smaller of that and the model's rate, and ``limited_by`` names it; with the model on the CPU
all three share the same cores, so the bound is 1 / (1 / pool + 1 / model) and ``limited_by`` says
"cpu cores". ``scaling``: each CPU stage's rate at the most
workers over its rate at the fewest (the decode pool's scaling, 1 → 2 workers on this machine).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir.errors import CbirError
from cbir.sources import find_images


def _rate(fn: Callable, items: Sequence, workers: int, repeats: int) -> float:
    """Median img/s of ``fn`` over ``items`` on a pool of ``workers`` threads (one warm-up pass of a few)."""
    rates = []
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items[: 4 * workers]))
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(fn, items))
            rates.append(len(items) / (time.perf_counter() - t0))
    return float(np.median(rates))


def cpu_stages(embedder, files: Sequence[str], workers: Sequence[int], repeats: int = 3) -> dict:
    """{stage: {workers: img/s}} for read, decode (model row + colour) and local features."""
    from cbir.copies import local_features
    from cbir.engine.bulk import read_source
    from cbir.engine.row_stats import row_stats

    datas = [read_source(f)[0] for f in files]
    h, w = embedder.preprocess.size

    def decode(data: bytes) -> None:
        out = np.empty((h, w, 3), np.uint8)
        embedder.preprocess(data, out)
        row_stats(out, structure=False)

    stages = {
        "read": (lambda f: read_source(f)[0], files),
        "decode": (decode, datas),
        "local_features": (lambda d: local_features.extract(d, "bench"), datas),
    }
    return {
        name: {str(n): round(_rate(fn, items, n, repeats), 1) for n in workers} for name, (fn, items) in stages.items()
    }


def model_rate(embedder, batch_size: int, repeats: int = 3) -> float:
    """The backend alone: img/s at ``batch_size`` on random rows."""
    from cbir.bench.latency import throughput

    h, w = embedder.info.input_size
    rows = np.random.default_rng(0).integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8)
    return float(throughput(embedder.run, rows, repeats, 1)["median"])


def timed_build(embedder, files: Sequence[str], fused: bool, root: Path) -> dict:
    """A default build of ``files`` into ``root`` (removed first) with local features in the decode
    workers (``fused``) or after the vectors; its img/s and the pipeline's stage timings."""
    from cbir.index.gallery import Gallery
    from cbir.index.ingest import pipeline

    shutil.rmtree(root, ignore_errors=True)
    g = Gallery.create(root, embedder)
    with g.writing():
        t0 = time.perf_counter()
        g.scan(list(files))
        work = pipeline.process_pending(g, fused=fused)
        t1 = time.perf_counter()
        g.extract_features()
        t2 = time.perf_counter()
        g.rebuild_index()
        wall = time.perf_counter() - t0
    if work["failed_now"]:
        raise CbirError(f"bench build: {work['failed_now']} files failed to embed; give a folder of readable images")
    return {
        "features": "in decode workers" if fused else "separate pass",
        "images": work["indexed"],
        "seconds": round(wall, 3),
        "images_per_s": round(work["indexed"] / wall, 1),
        "embed_s": round(t1 - t0, 3),
        "separate_features_s": round(t2 - t1, 3),
        "timings": work["timings"],
    }


STAGE_IMAGES = 2000  # the most inputs a stage is timed on (one worker is slow: ORB ≈ 200 img/s per core)


def bench_build(
    embedder, data: str, workers: Sequence[int] = (1, 2), images: int | None = None, repeats: int = 3
) -> dict:
    """Stage rates (on the first ``STAGE_IMAGES`` inputs), the build's bound and what limits it, and
    two real builds of all ``images`` inputs (see the module docstring)."""
    found = [str(p) for p in find_images([data])]
    if not found:
        raise CbirError(f"--data {data}: no images")
    files = [found[i % len(found)] for i in range(images or len(found))]
    workers = sorted(set(workers))
    stages = cpu_stages(embedder, files[:STAGE_IMAGES], workers, repeats)
    batch = embedder.resolve_batch_size()
    model = model_rate(embedder, batch, repeats)
    top = str(workers[-1])
    pool = 1.0 / (1.0 / stages["decode"][top] + 1.0 / stages["local_features"][top])
    bound = {"decode_and_local_features_pool": round(pool, 1), "model": round(model, 1)}
    on_gpu = bool(getattr(embedder.runner, "on_gpu", False))
    if not on_gpu:
        bound["cpu_cores_shared"] = round(1.0 / (1.0 / pool + 1.0 / model), 1)
    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-build-"))
    try:  # an index takes a path once: the cycled files are built through one symlink each
        (tmp / "files").mkdir()
        links = []
        for i, f in enumerate(files):
            links.append(tmp / "files" / f"{i:07d}{Path(f).suffix}")
            links[-1].symlink_to(Path(f).resolve())
        builds = [
            timed_build(embedder, [str(x) for x in links], fused, tmp / f"idx{int(fused)}") for fused in (False, True)
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "files": len(set(files)),
        "images": len(files),
        "stage_images": min(len(files), STAGE_IMAGES),
        "workers": workers,
        "batch_size": batch,
        "providers": list(embedder.runner.providers),
        "stages_images_per_s": stages,
        "model_images_per_s": round(model, 1),
        "scaling": {k: round(v[top] / v[str(workers[0])], 2) for k, v in stages.items()},
        "bound_images_per_s": bound,
        "limited_by": min(bound, key=bound.get)
        if on_gpu
        else "cpu cores (model, decode and local features share them)",
        "builds": builds,
    }
