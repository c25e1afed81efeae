"""``cbir bench latency``: speed of one model file on one backend, measured in one process run.

Reports (medians over ``repeats`` after ``warmup``, min/max beside them):
- model-only throughput (img/s) per batch size, on a fixed uint8 batch;
- batch-1 latency p50/p95/p99 through ``Embedder.embed_one`` and through the bare ``runner.run``
  (any backend: only the ``Runner`` protocol is used);
- end-to-end throughput from image files (``--data``) at the first batch size ≥ 32, and its ratio to
  the model-only figure at that batch size;
- the dynamic batcher under a concurrency sweep: throughput, p50/p95/p99, queue vs compute time;
- model load time and peak RSS; with ``baseline="torch"`` PyTorch eager (channels_last, inference
  mode, same trunk and head) and ``speedup_vs_torch``.
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cbir.errors import CbirError


def _stats(xs: list[float]) -> dict:
    a = np.asarray(xs)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs)
    return {f"p{p}": float(np.percentile(a, p)) for p in (50, 95, 99)}


def throughput(run, batch: np.ndarray, repeats: int = 5, warmup: int = 2, min_seconds: float = 0.5) -> dict:
    """img/s of ``run(batch)``; each repeat runs at least ``min_seconds``."""
    for _ in range(warmup):
        run(batch)
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (dt := time.perf_counter() - t0) < min_seconds or n == 0:
            run(batch)
            n += len(batch)
        rates.append(n / dt)
    return _stats(rates)


def latencies(fn, n: int = 50, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def batcher_sweep(
    emb,
    rows: list[np.ndarray],
    concurrencies: list[int],
    requests: int = 256,
    max_batch: int = 32,
    max_delay_ms: float = 5.0,
) -> list[dict]:
    out = []
    for c in concurrencies:
        with emb.batcher(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max(1024, c * 4)) as b:
            for r in rows[:4]:
                b.embed(r)
            b.timings.clear()
            lat: list[float] = []

            def one(i: int) -> None:
                t0 = time.perf_counter()
                b.embed(rows[i % len(rows)])
                lat.append((time.perf_counter() - t0) * 1e3)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
            tim = list(b.timings)
        out.append(
            {
                "concurrency": c,
                "requests": requests,
                "images_per_s": requests / wall,
                **_pct(lat),
                "queue_ms": _pct([t.queue_ms for t in tim]),
                "compute_ms": _pct([t.compute_ms for t in tim]),
                "mean_batch": float(np.mean([t.batch for t in tim])),
            }
        )
    return out


def torch_baseline(info, batch: np.ndarray, repeats: int, warmup: int) -> dict:
    """PyTorch eager, channels_last, inference mode, same trunk and head (random weights: speed only)."""
    import torch

    from cbir.cores import all_cores
    from cbir.models.retrieval import RetrievalModel
    from cbir.models.trunk import build_trunk

    model = RetrievalModel(build_trunk(info.arch, info.block), info.pooling, info.input_size[0]).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.from_numpy(batch)

    def run(_):
        with torch.inference_mode():
            return model(x)

    torch.set_num_threads(all_cores())
    return throughput(run, batch, repeats, warmup)


def bench_latency(
    model: str,
    backend: str = "onnxruntime",
    batch_sizes=(1, 8, 32, 64),
    data: str | None = None,
    baseline: str | None = None,
    concurrencies=(1, 8, 32),
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    precision: str | None = None,
) -> dict:
    from cbir.engine.embedder import Embedder

    t0 = time.perf_counter()
    emb = Embedder(model, backend=backend, threads=threads, precision=precision)
    load_s = time.perf_counter() - t0
    h, w = emb.info.input_size
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(max(batch_sizes))]
    big = np.stack(rows)
    model_only = {str(bs): throughput(emb.run, big[:bs], repeats, warmup) for bs in batch_sizes}
    api = latencies(lambda: emb.embed_one(rows[0]))
    bare = latencies(lambda: emb.runner.run(big[:1]))
    report = {
        "model": emb.info.public(),
        "backend": emb.runner.name,
        "providers": emb.runner.providers,
        "threads": threads,
        "load_seconds": round(load_s, 3),
        "batch_sizes": list(batch_sizes),
        "auto_batch_size": emb.auto_batch_size,
        "model_only_images_per_s": model_only,
        "batch1_latency_ms": {
            "api": _pct(api),
            "bare_runner": _pct(bare),
            "api_over_bare_p50": float(np.median(api) / np.median(bare)),
        },
    }
    e2e_bs = next((b for b in batch_sizes if b >= 32), max(batch_sizes))
    if data:
        from cbir.sources import find_images

        files = [str(p) for p in find_images([data])]
        runs = []
        for _ in range(max(1, repeats // 2)):
            res = emb.embed_files(files, batch_size=e2e_bs)
            runs.append(res.timings.as_dict()["images_per_s"])
        e2e = _stats(runs)
        mo = throughput(emb.run, big[:e2e_bs], repeats, warmup)  # re-measured next to the e2e runs
        report["end_to_end"] = {
            "batch_size": e2e_bs,
            "files": len(files),
            "images_per_s": e2e,
            "model_only_images_per_s": mo,
            "ratio": e2e["median"] / mo["median"],
            "stage_seconds_last_run": res.timings.as_dict(),
        }
    report["batcher"] = batcher_sweep(emb, rows, list(concurrencies))
    if baseline == "torch":
        bs = e2e_bs
        tb = torch_baseline(emb.info, big[:bs], repeats, warmup)
        ours = throughput(emb.run, big[:bs], repeats, warmup)
        report["torch_eager"] = {
            "batch_size": bs,
            "images_per_s": tb,
            "ours_images_per_s": ours,
            "speedup_vs_torch": ours["median"] / tb["median"],
        }
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


SPEC_OPTIONS = {
    "eager": {"cuda_graphs": False},
    "compile": {"compile": True},
    "cpu": {"device": "cpu"},
    "cuda": {"device": "cuda"},
    "gpudecode": {"decode": "gpu"},
    "oneslot": {"slots": 1},  # torch on CUDA: no copy overlapped with the model (default 2 slots)
    "notf32": {"tf32": False},  # torch FP32 on CUDA: IEEE FP32 convolutions and matmuls
    "spin": {"spinning": "always"},
    "runspin": {"spinning": "run"},
    "nospin": {"spinning": "never"},
}


AGREEMENT_FILES = 64


def parse_spec(spec: str, model: str) -> tuple[str, str | None, str, dict]:
    """``backend[:precision][+option...][@file]`` -> (backend, precision, file, Embedder options):
    "openvino:bf16" -> ("openvino", "bf16", model, {}); "openvino@m_int8.xml" -> ("openvino", None,
    "m_int8.xml", {}); "torch:fp16+eager" -> ("torch", "fp16", model, {"cuda_graphs": False}).
    Options: ``SPEC_OPTIONS`` (eager, compile, cpu, cuda, gpudecode; spin / runspin / nospin: ONNX
    Runtime's intra-op threads spinning always, inside a run only, never)."""
    spec, _, other = spec.partition("@")
    spec, *opts = spec.split("+")
    backend, _, precision = spec.partition(":")
    options: dict = {}
    for o in opts:
        if o not in SPEC_OPTIONS:
            raise CbirError(f"--compare {spec}+{o}: unknown option {o!r}; choose from {', '.join(SPEC_OPTIONS)}")
        options.update(SPEC_OPTIONS[o])
    return backend, precision or None, other or model, options


def _agreement(embs: dict, first: str, sample: list[str]) -> dict:
    """Each spec's cosines to the ``first`` spec's vectors on the same files (images, min, median)."""
    agreement = {}
    ref = embs[first].embed_files(sample)
    for s, emb in embs.items():
        got = emb.embed_files(sample)
        common, ia, ib = np.intersect1d(ref.indices, got.indices, return_indices=True)
        a, b = ref.vectors[ia], got.vectors[ib]  # cosines proper: l2n's eps leaves tiny raw vectors short of 1
        cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        agreement[s] = {
            "images": len(common),
            "min_cos": round(float(cos.min()), 6) if len(cos) else None,
            "median_cos": round(float(np.median(cos)), 6) if len(cos) else None,
        }
    return agreement


def compare_backends(
    model: str,
    specs: list[str],
    batch_sizes=(1, 8, 32),
    data: str | None = None,
    repeats: int = 5,
    e2e_batch: int | None = None,
    threads: int | None = None,
    e2e_images: int | None = None,
) -> dict:
    """Backend × precision (× model file: ``backend[:precision][@file]``) in one process run: model-only
    img/s per batch size and end-to-end img/s from image files (after one untimed pass), repeats
    interleaved round-robin (drift hits every backend alike), medians, and each spec's ratio to the
    first one. A spec other than the first that cannot start on this host is listed under
    "unavailable" with its error. End-to-end runs use ``e2e_batch`` (default: each one's auto batch size).
    With files, each spec also embeds the first ``AGREEMENT_FILES`` of them end to end and reports
    its cosine to the first spec's vectors (min and median): a faster spec must say what it costs.
    ``e2e_images``: each end-to-end run embeds that many inputs, the files cycled (steady state:
    many batches, the decode pool and the copies in flight all busy; default: the files once)."""
    from cbir.engine.embedder import Embedder

    embs, unavailable = {}, {}
    for s in specs:
        backend, precision, path, options = parse_spec(s, model)
        try:
            embs[s] = Embedder(path, backend=backend, precision=precision, threads=threads, **options)
        except CbirError as e:  # a spec this host cannot start is reported; the baseline (first) must start
            if s == specs[0]:
                raise
            unavailable[s] = str(e)
    specs = [s for s in specs if s in embs]
    h, w = next(iter(embs.values())).info.input_size
    big = np.random.default_rng(0).integers(0, 256, (max(batch_sizes), h, w, 3), dtype=np.uint8)
    files = None
    if data:
        from cbir.sources import find_images

        files = [str(p) for p in find_images([data])]
    timed = files if not (files and e2e_images) else [files[i % len(files)] for i in range(e2e_images)]
    runs: dict = {s: {"model_only": {str(b): [] for b in batch_sizes}, "end_to_end": []} for s in specs}
    if files:  # untimed first pass: CUDA graphs, decoder state and first-shape kernels are built here
        for emb in embs.values():
            emb.embed_files(files, batch_size=e2e_batch)
    for _ in range(repeats):
        for s, emb in embs.items():
            for b in batch_sizes:
                runs[s]["model_only"][str(b)].append(throughput(emb.run, big[:b], 1, 1)["median"])
            if files:
                runs[s]["end_to_end"].append(
                    emb.embed_files(timed, batch_size=e2e_batch).timings.as_dict()["images_per_s"]
                )
    agreement = _agreement(embs, specs[0], files[:AGREEMENT_FILES]) if files else {}
    base = specs[0]
    out = {
        "model": next(iter(embs.values())).info.public(),
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "files": len(files) if files else 0,
        "e2e_images": len(timed) if files else 0,
        "e2e_batch": e2e_batch,
        "backends": {},
        "unavailable": unavailable,
    }
    for s in specs:
        mo = {b: _stats(v) for b, v in runs[s]["model_only"].items()}
        row = {
            "name": embs[s].runner.name,
            "providers": embs[s].runner.providers,
            "auto_batch_size": embs[s].auto_batch_size,
            "model_only_images_per_s": mo,
            "model_only_ratio": {b: mo[b]["median"] / _stats(runs[base]["model_only"][b])["median"] for b in mo},
        }
        if files:
            e2e = _stats(runs[s]["end_to_end"])
            row["end_to_end_images_per_s"] = e2e
            row["end_to_end_ratio"] = e2e["median"] / _stats(runs[base]["end_to_end"])["median"]
            row["agreement_with_first"] = agreement[s]
        out["backends"][s] = row
    return out
