"""`cbir bench accuracy|latency|search|sweep|http`: the benchmarks (figures go to BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbir.cli.common import backend_args, print_json, rerank_args, rerank_from_args
from cbir.errors import CbirError


def cmd_bench_accuracy(a: argparse.Namespace) -> int:
    from cbir.bench.accuracy import axis_config, bench_accuracy
    from cbir.engine.embedder import Embedder

    axis = {n: axis_config(n) for n in a.rerank_axis.split(",")} if a.rerank_axis else None
    r = bench_accuracy(
        a.model,
        a.data,
        seeds=a.seeds,
        rerank=rerank_from_args(a),
        queries=a.queries,
        exclude_self=a.exclude_self,
        embedder=Embedder(a.model, resampling=a.resampling, backend=a.backend, precision=a.precision, device=a.device),
        whiten_dim=a.whiten_dim,
        whiten_force=a.whiten_force,
        copies=a.copies,
        axis=axis,
        pad_to=a.pad_to,
        progress=not a.json and sys.stderr.isatty(),
    )
    if a.json:
        print_json(r)
        return 0
    print(
        f"{r['model']['arch']} Block {r['model']['block']} {r['model']['pooling']}: {r['images']} images, "
        f"{r['seeds']} run(s) × {r['queries_per_run']} queries, exclude_self={r['exclude_self']}"
    )
    runs = r["axis"] or {"rerank": r}
    print(f"  gallery {r['gallery']} items, ranking depth {r['ranking_depth']}")
    print(
        f"  {'re-ranking':14s} {'mAP':>7s} {'mAP@10':>7s} {'P@10':>7s} {'ms/q@10':>7s}"
        + ("  copy rank-1  ms/q" if a.copies else "")
    )
    for name, run in runs.items():
        m = run["metrics"]
        line = (
            f"  {name:14s} {m['mAP']['mean']:7.4f} {m['mAP@10']['mean']:7.4f} {m['P@10']['mean']:7.4f} "
            f"{run['k10_ms_per_query']:7.2f}"
        )
        if run["copies"]:
            c = run["copies"]
            line += f"  {c['rank1']:11.4f} {c['search_ms_per_query']:6.2f}  " + " ".join(
                f"{e}={v:.2f}" for e, v in c["rank1_per_edit"].items()
            )
        print(line)
    return 0


def cmd_bench_dedup(a: argparse.Namespace) -> int:
    import time

    from cbir.bench.copies import score_dedup
    from cbir.bench.distractors import grow, score_groups
    from cbir.copies import dedup
    from cbir.index.gallery import Gallery

    g, grown = Gallery(a.index), {}
    if a.distractors:
        grown = grow(g, a.distractors, _sizes(a.at)[0], g.store.count("indexed"), progress=True)
    t0 = time.perf_counter()
    groups = dedup.find(g, k=a.k, threshold=a.threshold, verify=not a.no_verify, partial=a.partial)
    if a.distractors:
        grown.update(score_groups(groups, a.distractors), items=g.store.count("indexed"))
    r = {
        **score_dedup(groups, a.data, a.copies),
        **grown,
        "seconds": round(time.perf_counter() - t0, 2),
        "k": a.k,
        "threshold": a.threshold,
        "verify": not a.no_verify,
        "partial": a.partial,
    }
    if a.peers is not None:
        from cbir.bench.dedup_peers import PEERS, run_peers
        from cbir.errors import CbirError

        names = a.peers.split(",") if a.peers else list(PEERS)
        for n in names:
            if n not in PEERS:
                raise CbirError(f"--peers {n}: unknown; choose from {', '.join(PEERS)}")
        r = {"cbir": r, **run_peers([a.data, a.copies], a.data, a.copies, names)}
    print_json(r)
    return 0


def cmd_bench_copies(a: argparse.Namespace) -> int:
    from cbir.bench.copies import EDITS, make
    from cbir.errors import CbirError

    if a.suite == "augly":
        from cbir.bench.augly_suite import make_suite

        n = make_suite(a.src, a.out, a.n, a.seed, a.edits.split(",") if a.edits else None, a.negatives)
        print(
            f"wrote {n['copies']} copies under {a.out}/copies and {n['negatives']} edited negatives under {a.out}/negatives"
        )
        return 0
    if a.suite == "templates":
        from cbir.bench.augly_suite import make_templates

        print(f"wrote {make_templates(a.src, a.out, a.n, a.seed)} template copies under {a.out}")
        return 0
    edits = a.edits.split(",") if a.edits else list(EDITS)
    for e in edits:
        if e not in EDITS:
            raise CbirError(f"--edits {e}: unknown; choose from {', '.join(EDITS)}")
    written = make(a.src, a.out, a.n, a.seed, edits)
    print(f"wrote {len(written)} copies of {len(written) // len(edits)} images ({', '.join(edits)}) under {a.out}")
    return 0


def cmd_bench_copy_search(a: argparse.Namespace) -> int:
    from cbir.bench.augly_suite import AUGS
    from cbir.bench.copy_search import at_sizes, copy_search
    from cbir.index.gallery import Gallery

    g = Gallery(a.index)
    opts = dict(
        rerank=rerank_from_args(a, g.settings.rerank),
        per_aug=a.per_aug,
        skip=a.skip,
        keeps={n: v[1] for n, v in AUGS.items()},
    )
    if a.distractors or a.from_vectors:
        rows = at_sizes(
            g, a.data, a.suite, a.distractors, _sizes(a.at), progress=not a.json, vectors=a.from_vectors, **opts
        )
        if a.json:
            print_json(rows)
            return 0
        for r in rows:
            _print_copy_search(r, f"{r['size']:,} items: ")
        return 0
    r = copy_search(g, a.data, a.suite, **opts)
    if a.json:
        print_json(r)
        return 0
    _print_copy_search(r)
    return 0


def cmd_bench_class_search(a: argparse.Namespace) -> int:
    from cbir.bench.class_search import class_search
    from cbir.index.gallery import Gallery

    g = Gallery(a.index)
    r = class_search(g, a.data, rerank_from_args(a, g.settings.rerank))
    if a.json:
        print_json(r)
        return 0
    print(
        f"{r['queries']} queries over {r['items']} items ({r['store']}): mAP {r['mAP']:.4f}, mAP@10 {r['mAP@10']:.4f}, "
        f"P@10 {r['P@10']:.4f}, P@100 {r['P@100']:.4f}; {r['ms_per_query']} ms/query"
    )
    return 0


def _sizes(text: str | None) -> list[int]:
    try:
        sizes = [int(t.replace("_", "")) for t in (text or "").split(",") if t.strip()]
    except ValueError:
        raise CbirError(f"--at {text!r}: not a comma-separated list of gallery sizes") from None
    if not sizes or min(sizes) < 1:
        raise CbirError(f"--at {text!r}: give the gallery sizes to search at, e.g. --at 20000,100000")
    return sizes


def _print_copy_search(r: dict, head: str = "") -> None:
    for kind in ("per_aug", "per_aug_negatives"):
        for name, row in r[kind].items():
            extra = f"rank-1 {row['rank1']:.3f}  top-10 {row['in_top10']:.3f}  " if "rank1" in row else ""
            print(
                f"{'copies' if kind == 'per_aug' else 'negatives':9s} {name:22s} n={row['n']:<4d} "
                f"{extra}first verified {row['first_verified']:.3f}"
            )
    print(
        f"{head}rank-1 {r.get('rank1')}, top-10 {r.get('in_top10')}, worst keeping ≥25 %: "
        f"{r.get('min_rank1_keeping')}; verified false positives {r.get('verified_false_positives')}/"
        f"{r.get('negatives')} (negatives reaching n inliers: {r.get('negatives_inliers_at_least')}); "
        f"crashes {r['crashes']}; ms/query {r['ms_per_query']}"
        + (f"; peak RSS {r['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in r else "")
    )


def cmd_bench_build(a: argparse.Namespace) -> int:
    from cbir.bench.build import bench_build
    from cbir.engine.embedder import Embedder

    emb = Embedder(
        a.model,
        backend=a.backend,
        precision=a.precision,
        device=a.device,
        batch_size=a.batch_size,
        decode=a.decode,
    )
    r = bench_build(emb, a.data, _sizes(a.workers), a.images, a.repeats)
    if a.json:
        print_json(r)
        return 0
    top = str(r["workers"][-1])
    for name, rates in r["stages_images_per_s"].items():
        per = ", ".join(f"{w} workers {v:.0f}" for w, v in rates.items())
        print(f"{name:15s} {per} img/s (scaling {r['scaling'][name]}×)")
    print(f"{'model':15s} {r['model_images_per_s']:.0f} img/s at batch {r['batch_size']} ({r['providers'][0]})")
    b = r["bound_images_per_s"]
    print(
        f"bound: decode + local features on {top} workers {b['decode_and_local_features_pool']:.0f} img/s, "
        f"model {b['model']:.0f} img/s"
        + (f", both on the CPU cores {b['cpu_cores_shared']:.0f} img/s" if "cpu_cores_shared" in b else "")
        + f": limited by {r['limited_by']}"
    )
    for run in r["builds"]:
        print(f"build, local features {run['features']}: {run['images']} images, {run['images_per_s']:.0f} img/s")
    return 0


def cmd_bench_ivf(a: argparse.Namespace) -> int:
    from cbir.bench.ivf import bench_ivf

    kinds = tuple(k.strip() for k in a.kinds.split(","))
    if not kinds or set(kinds) - {"flat", "sq8"}:
        raise CbirError(f"--kinds {a.kinds!r}: choose from flat, sq8 (comma-separated)")
    r = bench_ivf(
        a.n, a.dim, a.device, a.nlist, kinds, a.queries, a.tune, a.batch, a.k, a.target_recall, a.repeats, a.clients
    )
    if a.json:
        print_json(r)
        return 0
    for kind, row in r["kinds"].items():
        qps, rec = row["queries_per_s"], row["recall_at_k"]
        print(
            f"IVF{r['nlist']},{kind} over {r['n']:,} × {r['dim']} at nprobe {row['nprobe']}: torch on {r['device']} "
            f"{qps['torch']:.0f} q/s (recall@{r['k']} {rec['torch']}), FAISS CPU ({r['threads_faiss']} threads) "
            f"{qps['faiss_cpu']:.0f} q/s ({rec['faiss_cpu']}) = {row['ratio_torch_to_faiss_cpu']}×"
        )
    return 0


def cmd_bench_exact(a: argparse.Namespace) -> int:
    from cbir.bench.exact import bench_exact

    r = bench_exact(a.n, a.dim, a.device, a.queries, a.batch, a.k, a.repeats, clients=a.clients)
    if a.json:
        print_json(r)
    else:
        print(
            f"exact k={r['k']} over {r['n']:,} × {r['dim']}: torch on {r['device']} ({r['dtype']}) "
            f"{r['queries_per_s']['torch']:.0f} q/s, FAISS CPU Flat ({r['threads_faiss']} threads) "
            f"{r['queries_per_s']['faiss_cpu']:.0f} q/s = {r['ratio_torch_to_faiss_cpu']}×; recall@k vs FAISS {r['recall_at_k_vs_faiss']}"
        )
        if r["single_query_per_s"]:
            sq = r["single_query_per_s"]
            print(
                f"single-query requests from {r['clients']} threads: torch {sq['torch']:.0f} q/s "
                f"({r['mean_combined']} requests per matmul), FAISS CPU {sq['faiss_cpu']:.0f} q/s"
            )
    return 0


def cmd_bench_latency(a: argparse.Namespace) -> int:
    from cbir.bench.latency import bench_latency

    bs = [int(x) for x in a.batch_sizes.split(",")]
    cc = [int(x) for x in a.concurrency.split(",")]
    if a.compare:
        from cbir.bench.latency import compare_backends

        r = compare_backends(
            a.model, a.compare.split(","), bs, a.data, a.repeats, threads=a.threads, e2e_images=a.e2e_images
        )
        if a.json:
            print_json(r)
            return 0
        for spec, row in r["backends"].items():
            mo = ", ".join(
                f"bs {b}: {s['median']:.0f} img/s ({row['model_only_ratio'][b]:.2f}×)"
                for b, s in row["model_only_images_per_s"].items()
            )
            e2e = (
                f"; end-to-end {row['end_to_end_images_per_s']['median']:.0f} img/s ({row['end_to_end_ratio']:.2f}×)"
                if r["files"]
                else ""
            )
            print(f"{spec:20s} {mo}{e2e}")
        return 0
    r = bench_latency(
        a.model, a.backend, bs, a.data, a.baseline, cc, a.repeats, threads=a.threads, precision=a.precision
    )
    if a.json:
        print_json(r)
        return 0
    print(
        f"{r['model']['arch']} Block {r['model']['block']} {r['model']['pooling']} on {r['backend']} (load {r['load_seconds']} s)"
    )
    for b, s in r["model_only_images_per_s"].items():
        print(f"  model-only bs {b:>3}: {s['median']:.1f} img/s (min {s['min']:.1f}, max {s['max']:.1f})")
    l = r["batch1_latency_ms"]
    print(
        f"  batch-1 p50/p95/p99: API {l['api']['p50']:.2f}/{l['api']['p95']:.2f}/{l['api']['p99']:.2f} ms, "
        f"bare runner.run {l['bare_runner']['p50']:.2f}/{l['bare_runner']['p95']:.2f}/{l['bare_runner']['p99']:.2f} ms"
    )
    if "end_to_end" in r:
        e = r["end_to_end"]
        print(
            f"  end-to-end bs {e['batch_size']}: {e['images_per_s']['median']:.1f} img/s = {e['ratio']:.3f} × model-only"
        )
    for s in r["batcher"]:
        print(
            f"  batcher c={s['concurrency']:>3}: {s['images_per_s']:.1f} img/s, "
            f"p50/p95/p99 {s['p50']:.1f}/{s['p95']:.1f}/{s['p99']:.1f} ms, "
            f"queue p50 {s['queue_ms']['p50']:.1f} ms, compute p50 {s['compute_ms']['p50']:.1f} ms, mean batch {s['mean_batch']:.1f}"
        )
    if "torch_eager" in r:
        t = r["torch_eager"]
        print(
            f"  torch eager bs {t['batch_size']}: {t['images_per_s']['median']:.1f} img/s; speedup {t['speedup_vs_torch']:.2f}×"
        )
    print(f"  peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


def cmd_bench_search(a: argparse.Namespace) -> int:
    from cbir.bench.scale import bench_search, bench_shift

    if a.shift:
        out = [
            bench_shift(int(n), a.dim, a.memory_budget, a.target_recall, eval_queries=a.queries)
            for n in a.sizes.split(",")
        ]
        if a.json:
            print_json(out)
            return 0
        for r in out:
            print(f"n={r['n']:,} (auto {r['auto_choice']}), queries between clusters, {r['eval_queries']} evaluated:")
            for row in r["rows"]:
                print(
                    f"  tuned on {row['basis']:<8} ({row['tuned_on']}): {row['params']}, estimate {row['estimate']} "
                    f"(95 % {row['ci95'][0]}–{row['ci95'][1]}), true recall@10 {row['true_recall']}, {row['ms_per_query']} ms/query"
                )
        return 0
    if not set(a.store.split(",")) <= {"faiss", "milvus-lite"}:
        raise CbirError(f"--store {a.store}: choose faiss, milvus-lite or faiss,milvus-lite")
    rows = bench_search(
        [int(x) for x in a.sizes.split(",")],
        a.dim,
        a.memory_budget,
        a.target_recall,
        a.queries,
        shard_size=a.shard_size,
        workdir=a.workdir,
        keep=a.keep,
        on_disk=a.on_disk,
        stores=tuple(a.store.split(",")),
    )
    if a.json:
        print_json(rows)
        return 0
    for r in rows:
        print(
            f"n={r['n']:>9} {r['store']}: auto {r['auto_choice']} {r['search']}, build {r['build_s']} s, peak RSS {r['peak_rss_mb']} MB, "
            f"index {(r['bytes']['index.faiss'] + r['bytes']['ivflists']) / 1e6:.0f} MB; recall@{r['k']} {r['recall_at_k']:.3f}, "
            f"{r['ms_per_query_batch1']:.3f} ms/query at batch 1, {r['ms_per_query_batch']:.3f} at batch {r['queries']}"
        )
    return 0


def cmd_bench_requests(a: argparse.Namespace) -> int:
    from cbir.bench.requests import bench_requests

    r = bench_requests(a.n, a.dim, a.threads, a.queries)
    if a.json:
        print_json(r)
        return 0
    print(f"{r['n']:,} × {r['dim']} vectors, {r['threads']} searches at once:")
    for row in r["rows"]:
        print(
            f"  {row['setting']:<50} estimate {row['estimate_mib']:>6.1f} MiB {row['estimate_gflop']:>6.2f} GFLOP; "
            f"RSS {row['baseline_rss_mb']} -> {row['peak_rss_mb']} MB (+{row['request_mb']}); {row['ms_per_query']} ms/query"
        )
    return 0


def cmd_bench_sweep(a: argparse.Namespace) -> int:
    from cbir.bench.sweep import sweep

    r = sweep(
        a.data,
        a.out,
        [x.strip() for x in a.archs.split(",")],
        [int(b) for b in a.blocks.split(",")],
        a.pooling,
        a.seeds,
        a.repeats,
        progress=not a.json,
        backends=tuple(s.strip() for s in a.backends.split(",")) if a.backends else (),
    )
    if a.json:
        print_json(r)
    else:
        print((Path(a.out) / "report.md").read_text())
    return 0


def cmd_bench_sweep_device(a: argparse.Namespace) -> int:
    from cbir.bench.sweep_device import sweep_device

    archs = [x.strip() for x in a.archs.split(",") if x.strip()]
    blocks = [int(x) for x in a.blocks.split(",")]
    r = sweep_device(
        a.out, archs, blocks, a.device, a.precision, a.batch, a.repeats, a.runs, a.cpu_report, a.image_size
    )
    if a.json:
        print_json(r)
    else:
        from cbir.bench.sweep_device import markdown

        print(markdown(r), end="")
    return 0


def cmd_bench_http(a: argparse.Namespace) -> int:
    from cbir.bench.http import bench_http
    from cbir.sources import expand

    images = expand(a.image)
    if not images:
        raise CbirError(f"--image {' '.join(a.image)}: no images there")
    reranks = [None] if not a.rerank else a.rerank.split(",")
    rows = bench_http(a.url, images, [int(x) for x in a.concurrency.split(",")], a.requests, a.k, reranks, a.rounds)
    if a.json:
        print_json(rows)
        return 0
    for r in rows:
        s = r["server_p50_ms"]
        print(
            f"round {r['round']} rerank {r['rerank']:>13} c={r['concurrency']:>3}: {r['requests_per_s']:.1f} req/s, "
            f"p50/p95/p99 {r['p50_ms']:.1f}/{r['p95_ms']:.1f}/{r['p99_ms']:.1f} ms, "
            f"status {r['status']}, server p50 queue {s.get('queue_ms', 0):.1f} / inference {s.get('inference_ms', 0):.1f} / "
            f"search {s.get('search_ms', 0):.2f} ms, mean batch {r['mean_batch']:.1f}"
        )
    return 0


def cmd_bench_live(a: argparse.Namespace) -> int:
    from cbir.bench.live import LiveConfig, main_live
    from cbir.sources import expand

    queries = expand(a.queries)
    if not queries:
        raise CbirError(f"--queries {' '.join(a.queries)}: no images there")
    if not a.base and not a.index:
        raise CbirError("bench live: give --base folders to build the index from, or --index to copy one")
    cfg = LiveConfig(
        Path(a.model),
        [Path(p).resolve() for p in a.base or []],
        [Path(p).resolve() for p in a.churn],
        [Path(q) for q in queries],
        Path(a.work).resolve(),
        a.idle,
        a.writing,
        a.after,
        a.readers,
        a.k,
        a.kill_every,
        timeout_s=a.timeout,
        seed=a.seed,
        from_index=Path(a.index).resolve() if a.index else None,
    )
    r = main_live(cfg, Path(a.out) if a.out else None, Path(a.plot) if a.plot else None)
    if a.json:
        print_json(
            {k: v for k, v in r.items() if k not in ("rss_curve", "writer")}
            | {"writer": {k: v for k, v in r["writer"].items() if k != "log"}}
        )
        return 0
    for name, p in {**r["phases"], "fresh server": r["fresh"]}.items():
        if p["requests"]:
            print(
                f"{name:>12}: {p['requests']} requests, p50/p95/p99/max {p['p50_ms']:.0f}/{p['p95_ms']:.0f}/"
                f"{p['p99_ms']:.0f}/{p['max_ms']:.0f} ms, status {p['status']}, non-JSON {p['non_json']}, "
                f"short {p['short']}, partial {p['partial']}, past deadline {p['past_deadline']}"
            )
    w, m = r["writer"], r["rss_mb"]
    print(
        f"resurrected {r['resurrected']}; writer: {w['ops']} ops ({w['adds']} adds, {w['removes']} removes, "
        f"{w['killed']} killed, {w['failed']} failed); RSS MB start {m['start']:.0f}, peak {m['peak']:.0f}, after "
        f"writes {m['after_writes']:.0f}, fresh server {m['fresh_same_index']:.0f} ({m['after_vs_fresh']:.2f}x)"
    )
    return 0


def cmd_bench_distractors(a: argparse.Namespace) -> int:
    from cbir.bench.distractors import make

    if a.vectors_of:
        return _vector_distractors(a)
    r = make(a.out, a.n, a.sources, a.seed)
    if a.json:
        print_json(r)
    else:
        print(
            f"{r['distractors']} distractors from {r['sources']} source photos under {r['out']} ({r['written']} written)"
        )
    return 0


def _accuracy_parser(bench) -> None:
    ba = bench.add_parser("accuracy", help="retrieval metrics on a labelled folder (Corel protocol)")
    ba.add_argument("--model", required=True)
    ba.add_argument("--data", required=True, help="class-per-folder images, or N.jpg with class N // 100")
    ba.add_argument("--seeds", type=int, default=3)
    ba.add_argument(
        "--queries",
        choices=["split", "every10", "all"],
        default="split",
        help="split: the 20%% test split per seed (default); every10: every 10th image; all: every image",
    )
    ba.add_argument("--exclude-self", action="store_true", help="drop the query from its own ranking")
    rerank_args(ba)
    ba.add_argument(
        "--rerank-axis",
        help="compare re-rankings in one run: base, presets, or stages joined by + "
        "(aqe dba diffusion regional verify), e.g. base,aqe,regional,dba+aqe,default",
    )
    ba.add_argument(
        "--pad-to",
        type=int,
        help="grow the gallery to N items with synthetic distractor vectors "
        "(e.g. 100000); rankings then stop at depth 1000",
    )
    ba.add_argument(
        "--copies",
        help="folder of edited copies (<edit>/<path of the original>, see `cbir bench copies`): "
        "also report the original's rank-1",
    )
    ba.add_argument("--whiten-dim", type=int, help="fit PCA-whitening on the searched set to D dims and apply it")
    ba.add_argument("--whiten-force", action="store_true", help="fit even below 10 vectors per dim")
    backend_args(ba)
    ba.add_argument(
        "--resampling", choices=["opencv", "pillow"], help="override the model's resampling policy (to compare)"
    )
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(fn=cmd_bench_accuracy)


def _copies_parser(bench) -> None:
    bc = bench.add_parser(
        "copies", help="write edited copies of images (crop, rotate, jpeg, colour, downscale, border, caption)"
    )
    bc.add_argument("src", help="image folder (the gallery the copies come from)")
    bc.add_argument("out", help="output folder: OUT/<edit>/<path relative to SRC>")
    bc.add_argument("-n", type=int, default=100, help="images to copy, spread over SRC's folders (default 100)")
    bc.add_argument("--seed", type=int, default=0)
    bc.add_argument(
        "--edits", help="comma-separated subset of the edits (default all; with --suite augly its augmentations)"
    )
    bc.add_argument(
        "--suite",
        choices=["own", "augly", "templates"],
        default="own",
        help="own: the 7 edits above (default); augly: AugLy's augmentations, chains and templates, with "
        "edited negatives (OUT/copies, OUT/negatives; needs `pip install augly`); templates: every "
        "AugLy template applied to N different images (dedup's precision set)",
    )
    bc.add_argument(
        "--negatives",
        help="--suite augly: folder of photos that are not in the gallery "
        "(default: scikit-image's and scikit-learn's bundled photos)",
    )
    bc.set_defaults(fn=cmd_bench_copies)


def _vector_distractors(a: argparse.Namespace) -> int:
    from cbir.bench import vector_distractors
    from cbir.index.gallery import Gallery

    if not a.under:
        raise CbirError("--vectors-of needs --under DIR: the folder whose indexed items are the parents")
    r = vector_distractors.write(a.out, Gallery(a.vectors_of), a.under, a.n, a.seed)
    if a.json:
        print_json(r)
    else:
        print(
            f"{r['vectors']} vectors from {r['parents']} parents in {r['out']}: child-parent cosine "
            f"{r['child_nearest_parent_cosine']} (parents' nearest neighbour {r['neighbour_cosine']})"
        )
    return 0


def _copy_search_parser(bench) -> None:
    bs = bench.add_parser(
        "copy-search",
        help="find the original of every copy of a suite through an index, "
        "one query at a time as a user searches: rank-1 per edit, verified false positives",
    )
    bs.add_argument("--index", required=True, help="an index holding --data")
    bs.add_argument("--data", required=True, help="the originals (as indexed)")
    bs.add_argument(
        "--suite", required=True, help="folder written by `cbir bench copies --suite augly` (copies/, negatives/)"
    )
    bs.add_argument("--per-aug", type=int, help="at most N queries per edit (default all)")
    bs.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out the first N queries per edit (path order) before --per-aug: "
        "--skip 50 --per-aug 50 is the held-out half of a 100-per-edit suite",
    )
    bs.add_argument(
        "--distractors",
        help="folder written by `cbir bench distractors`: grow the index with them to each --at size "
        "and search at each (writes to --index: use a copy)",
    )
    bs.add_argument(
        "--from-vectors",
        help="a .npy of vectors (`cbir bench distractors OUT.npy --vectors-of INDEX`): past the --distractors, "
        "grow the index with them as vectors-only items to each --at size",
    )
    bs.add_argument(
        "--at", help="gallery sizes for --distractors / --from-vectors, comma-separated (e.g. 20000,100000)"
    )
    rerank_args(bs)
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(fn=cmd_bench_copy_search)


def _class_search_parser(bench) -> None:
    bc = bench.add_parser(
        "class-search",
        help="class mAP through an index (its vector store and stored re-ranking): every labelled image "
        "searched by its stored vector and features",
    )
    bc.add_argument("--index", required=True, help="an index holding --data")
    bc.add_argument("--data", required=True, help="class-per-folder images (as indexed), or N.jpg with class N // 100")
    rerank_args(bc)
    bc.add_argument("--json", action="store_true")
    bc.set_defaults(fn=cmd_bench_class_search)


def _dedup_parser(bench) -> None:
    bd = bench.add_parser("dedup", help="recall and purity of `cbir dedup` on an index holding DATA and planted COPIES")
    bd.add_argument("--index", required=True)
    bd.add_argument("--data", required=True, help="the original images (as indexed)")
    bd.add_argument("--copies", required=True, help="the planted copies (as indexed; `cbir bench copies` layout)")
    bd.add_argument("-k", type=int, default=10)
    bd.add_argument("--threshold", type=float, default=0.5)
    bd.add_argument("--no-verify", action="store_true")
    bd.add_argument(
        "--partial", type=int, default=3, help="as `cbir dedup --partial` (default 3; 0: whole images only)"
    )
    bd.add_argument(
        "--distractors",
        help="folder written by `cbir bench distractors`: grow the index with them to the --at size first "
        "(writes to --index: use a copy) and count the groups that join them to anything else",
    )
    bd.add_argument("--at", help="with --distractors: the gallery size to dedup at (e.g. 21000)")
    bd.add_argument(
        "--peers",
        nargs="?",
        const="",
        help="also run peers on DATA + COPIES: comma-separated subset of "
        "imagededup-phash,fastdup (default both; each an optional install)",
    )
    bd.set_defaults(fn=cmd_bench_dedup)


def _build_parser(bench) -> None:
    bb = bench.add_parser(
        "build", help="a default index build's stages alone, its bound and limit, and two real builds"
    )
    bb.add_argument("--model", required=True)
    bb.add_argument("--data", required=True, help="image folder (its files are also built into throw-away indexes)")
    backend_args(bb)
    bb.add_argument("--batch-size", type=int, help="the build's batch size (default: auto)")
    bb.add_argument("--decode", choices=["cpu", "gpu"], default="cpu")
    bb.add_argument("--workers", default="1,2", help="decode-pool sizes for the stage rates (default 1,2)")
    bb.add_argument("--images", type=int, help="inputs per stage run, the files cycled (default: each once)")
    bb.add_argument("--repeats", type=int, default=3)
    bb.add_argument("--json", action="store_true")
    bb.set_defaults(fn=cmd_bench_build)


def _ivf_parser(bench) -> None:
    bi = bench.add_parser(
        "ivf", help="IVF-Flat / IVF-SQ8 search in PyTorch on a device beside FAISS CPU IVF, same lists"
    )
    bi.add_argument("--n", type=int, default=10_000_000)
    bi.add_argument("--dim", type=int, default=320)
    bi.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    bi.add_argument("--nlist", type=int, help="coarse lists (default: 4·√n rounded up to a power of two)")
    bi.add_argument("--kinds", default="flat,sq8", help="flat, sq8 or both (default)")
    bi.add_argument("--queries", type=int, default=2000, help="measured queries")
    bi.add_argument("--tune", type=int, default=500, help="other queries nprobe is tuned on")
    bi.add_argument("--target-recall", type=float, default=0.95)
    bi.add_argument("--batch", type=int, default=100, help="queries per search call")
    bi.add_argument("-k", type=int, default=10)
    bi.add_argument("--repeats", type=int, default=3)
    bi.add_argument("--clients", type=int, default=16, help="threads sending single-query searches (0: skip)")
    bi.add_argument("--json", action="store_true")
    bi.set_defaults(fn=cmd_bench_ivf)


def _exact_parser(bench) -> None:
    be = bench.add_parser("exact", help="exact k-NN in PyTorch (FP16 on cuda) beside FAISS's CPU Flat, same vectors")
    be.add_argument("--n", type=int, default=1_000_000)
    be.add_argument("--dim", type=int, default=320)
    be.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    be.add_argument("--queries", type=int, default=1000)
    be.add_argument("--batch", type=int, default=100, help="queries per search call")
    be.add_argument("-k", type=int, default=10)
    be.add_argument("--repeats", type=int, default=3)
    be.add_argument("--clients", type=int, default=16, help="threads sending single-query searches (0: skip)")
    be.add_argument("--json", action="store_true")
    be.set_defaults(fn=cmd_bench_exact)


def _latency_parser(bench) -> None:
    bl = bench.add_parser("latency", help="throughput and latency of a model")
    bl.add_argument("--model", required=True)
    backend_args(bl)
    bl.add_argument(
        "--compare",
        help="backend[:precision][+option][@file] list measured side by side in one run, ratios "
        "to the first, e.g. onnxruntime,openvino:bf16,openvino@model_int8.xml,torch:fp16,"
        "torch:fp16+eager (options: eager = no CUDA graphs, compile = torch.compile max-autotune, cpu, cuda, "
        "gpudecode, oneslot = no copy overlap, notf32 = IEEE FP32, spin / runspin / nospin)",
    )
    bl.add_argument("--batch-sizes", default="1,8,32,64")
    bl.add_argument("--concurrency", default="1,8,32")
    bl.add_argument("--data", help="image folder for the end-to-end figure")
    bl.add_argument(
        "--e2e-images", type=int, help="inputs per end-to-end run, the --data files cycled (default: each file once)"
    )
    bl.add_argument("--baseline", choices=["torch"], help="also measure PyTorch eager in the same run")
    bl.add_argument("--repeats", type=int, default=5)
    bl.add_argument("--threads", type=int)
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(fn=cmd_bench_latency)


def _sweep_parser(bench) -> None:
    sw = bench.add_parser("sweep", help="accuracy + latency for every arch × block; report.md/csv/json + pareto.png")
    sw.add_argument("--data", help="labelled image folder for accuracy (pretrained models only)")
    sw.add_argument("--out", required=True, help="report directory (an interrupted sweep resumes there)")
    sw.add_argument("--archs", default="b0,b1,b2,b3,b4,b5,lite0,lite1,lite2")
    sw.add_argument("--backends", help="extra backend[:precision] specs per cell, e.g. openvino:fp32,openvino:bf16")
    sw.add_argument("--blocks", default="6,7")
    sw.add_argument("--pooling", default="gap")
    sw.add_argument("--seeds", type=int, default=3)
    sw.add_argument("--repeats", type=int, default=3)
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(fn=cmd_bench_sweep)


def _sweep_device_parser(bench) -> None:
    sd = bench.add_parser(
        "sweep-device", help="B0–B5 × Block 6/7 latency on a device (torch, FP16), beside the CPU sweep"
    )
    sd.add_argument("--out", required=True, help="report directory: report.json, report.md, pareto.png")
    sd.add_argument("--archs", default="b0,b1,b2,b3,b4,b5")
    sd.add_argument("--blocks", default="6,7")
    sd.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    sd.add_argument("--precision", choices=["fp16", "fp32"], help="default: fp16 on cuda, fp32 on cpu")
    sd.add_argument("--batch", type=int, default=128, help="the throughput batch (default 128)")
    sd.add_argument("--repeats", type=int, default=3)
    sd.add_argument("--runs", type=int, default=50, help="batch-1 calls timed per cell")
    sd.add_argument("--cpu-report", help="`cbir bench sweep`'s report.json: its img/s, p50 and mAP beside each cell")
    sd.add_argument("--image-size", type=int, help="override every model's input size (CPU dry runs)")
    sd.add_argument("--json", action="store_true")
    sd.set_defaults(fn=cmd_bench_sweep_device)


def _http_parser(bench) -> None:
    bh = bench.add_parser("http", help="load-test POST /search of a running `cbir serve` on loopback")
    bh.add_argument("--url", default="http://127.0.0.1:8000")
    bh.add_argument("--image", required=True, nargs="+", help="query images (files or folders), sent in turn")
    bh.add_argument(
        "--rerank", help="comma-separated presets compared interleaved, e.g. none,default (default: the index's)"
    )
    bh.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    bh.add_argument("--concurrency", default="1,8,32")
    bh.add_argument("--requests", type=int, default=200)
    bh.add_argument("-k", type=int, default=10)
    bh.add_argument("--json", action="store_true")
    bh.set_defaults(fn=cmd_bench_http)


def _live_parser(bench) -> None:
    lv = bench.add_parser(
        "live",
        help="soak `cbir serve` while writers add, remove and die: latency, errors, short or resurrected answers, RSS",
    )
    lv.add_argument("--model", required=True)
    lv.add_argument("--base", nargs="+", help="folders indexed and never touched (≥ k images)")
    lv.add_argument("--index", help="instead of --base: an existing index, copied into --work and never touched")
    lv.add_argument(
        "--churn",
        nargs="+",
        required=True,
        help="folders whose fresh copies the writer adds and later removes, in turn (images arriving and taken down)",
    )
    lv.add_argument("--queries", nargs="+", required=True, help="query images (files or folders)")
    lv.add_argument("--work", required=True, help="a new folder: the index, logs and samples.json")
    lv.add_argument("--idle", type=float, default=60.0, help="seconds of reads before the writer starts (default 60)")
    lv.add_argument("--writing", type=float, default=600.0, help="seconds of reads with the writer (default 600)")
    lv.add_argument("--after", type=float, default=60.0, help="seconds after it, and for the fresh server (default 60)")
    lv.add_argument("--readers", type=int, default=3)
    lv.add_argument("-k", type=int, default=10)
    lv.add_argument("--kill-every", type=int, default=3, help="SIGKILL every Nth add after 1-8 s (0: never)")
    lv.add_argument("--timeout", type=float, default=5.0, help="the server's request deadline (default 5 s)")
    lv.add_argument("--seed", type=int, default=0)
    lv.add_argument("--out", help="the whole report as JSON")
    lv.add_argument("--plot", help="latency over time and RSS, PNG (matplotlib)")
    lv.add_argument("--json", action="store_true")
    lv.set_defaults(fn=cmd_bench_live)


def _search_parser(bench) -> None:
    bs_ = bench.add_parser(
        "search", help="the index at scale: auto choice, build time, peak RSS, bytes, recall, ms/query"
    )
    bs_.add_argument(
        "--sizes", default="1000000", help="gallery sizes (synthetic clustered vectors), e.g. 1000000,10000000"
    )
    bs_.add_argument("--dim", type=int, default=320)
    bs_.add_argument("--memory-budget", default="4GB")
    bs_.add_argument("--target-recall", type=float, default=0.95)
    bs_.add_argument("--queries", type=int, default=200, help="fresh queries for recall and the batch latency")
    bs_.add_argument("--shard-size", type=int, default=65_536)
    bs_.add_argument("--workdir", help="where vectors and indexes go (default: a temporary folder, removed after)")
    bs_.add_argument("--keep", action="store_true", help="keep the vectors and indexes")
    bs_.add_argument("--on-disk", action="store_true", help="build with on-disk inverted lists (memory-mapped)")
    bs_.add_argument(
        "--store",
        default="faiss",
        help="faiss, milvus-lite, or both (faiss,milvus-lite): the same vectors in each, side by side",
    )
    bs_.add_argument(
        "--shift",
        action="store_true",
        help="query-shift scenario: queries unlike the gallery; the "
        "gallery-basis estimate vs the query-basis estimate (100 tuning queries) vs the truth",
    )
    bs_.add_argument("--json", action="store_true")
    bs_.set_defaults(fn=cmd_bench_search)


def _requests_parser(bench) -> None:
    br = bench.add_parser("requests", help="peak RSS and time of the heaviest searches the work budget allows")
    br.add_argument("--n", type=int, default=100_000, help="gallery size (synthetic clustered vectors)")
    br.add_argument("--dim", type=int, default=320)
    br.add_argument("--threads", type=int, help="searches at once (default: half the cores, as serve's max_heavy)")
    br.add_argument("--queries", type=int, default=4)
    br.add_argument("--json", action="store_true")
    br.set_defaults(fn=cmd_bench_requests)


def _distractors_parser(bench) -> None:
    bd = bench.add_parser(
        "distractors",
        help="real photos that are not the benchmark's (random crops of Debian's wallpapers and backgrounds, "
        "or of --from folders) to grow a gallery for copy detection at scale",
    )
    bd.add_argument("out", help="folder to write them to (resumes)")
    bd.add_argument("-n", type=int, default=20_000, help="how many (default 20,000)")
    bd.add_argument("--from", dest="sources", nargs="+", help="source folders (default: the installed wallpapers)")
    bd.add_argument(
        "--vectors-of",
        metavar="INDEX",
        help="write vectors instead (OUT: a .npy): -n vectors made from the vectors of INDEX's items under --under",
    )
    bd.add_argument("--under", help="with --vectors-of: the folder whose indexed items are the parents")
    bd.add_argument("--seed", type=int, default=0)
    bd.add_argument("--json", action="store_true")
    bd.set_defaults(fn=cmd_bench_distractors)


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    _accuracy_parser(bench)
    _copies_parser(bench)
    _copy_search_parser(bench)
    _class_search_parser(bench)
    _distractors_parser(bench)
    _dedup_parser(bench)
    _build_parser(bench)
    _exact_parser(bench)
    _ivf_parser(bench)
    _latency_parser(bench)
    _sweep_parser(bench)
    _sweep_device_parser(bench)
    _http_parser(bench)
    _live_parser(bench)
    _search_parser(bench)
    _requests_parser(bench)
