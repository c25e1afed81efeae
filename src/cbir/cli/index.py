"""`cbir index build|add|remove|info`: the gallery index directory."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from cbir.cli.common import (
    engine_args,
    open_embedder,
    parquet_spec,
    print_json,
    rerank_args,
    rerank_from_args,
    source_args,
)
from cbir.cli.embed import read_list
from cbir.errors import CbirError
from cbir.index.query.rerank import PRESETS
from cbir.index.storage.lock import DirectoryGone


def _create(a: argparse.Namespace, root, emb, **extra):
    """``Gallery.create`` with the build options of ``index build`` (``extra``: what differs by source)."""
    from cbir.index.gallery import Gallery

    return Gallery.create(
        root,
        emb,
        factory=a.factory,
        shard_size=a.shard_size,
        whitening=a.whitening,
        dba=a.dba,
        dba_alpha=a.dba_alpha,
        memory_budget=a.memory_budget,
        target_recall=a.target_recall,
        wait=a.wait,
        on_disk=a.on_disk,
        store=a.store,
        **extra,
    )


def cmd_index_build(a: argparse.Namespace) -> int:

    root = Path(a.index)
    if (a.images_dir is None) == (a.from_vectors is None):
        raise CbirError("index build: give IMAGES_DIR or --from-vectors V.npy --paths P.txt (one of them)")
    if a.from_vectors is not None:
        return build_from_vectors(a, root)
    if a.model is None:
        raise CbirError("index build IMAGES_DIR: --model is required")
    if "://" not in a.images_dir and not Path(a.images_dir).exists():
        raise CbirError(f"IMAGES {a.images_dir}: no such file or directory")
    inputs = [a.images_dir] + read_list(a.files_from)  # every argument is checked before anything is written
    distributed = None
    if a.distributed == "ray":
        distributed = {
            "ray_address": a.ray_address,
            "num_workers": a.num_workers,
            "gpus_per_worker": a.gpus_per_worker,
            "cpus_per_worker": a.cpus_per_worker,
            "backend": a.backend,
        }
    elif a.distributed is not None:
        raise CbirError(f"--distributed {a.distributed!r}: only 'ray' is supported")
    emb = open_embedder(a, a.model)
    for attempt in range(3):  # a first build started beside one that failed and undid its folder starts afresh
        g = _create(a, root, emb, local_features=a.local_features, rerank=a.rerank)
        if not g.created and not a.json:
            print(
                f"cbir index build: {root} exists: resuming (only unfinished shards and new files are embedded)",
                file=sys.stderr,
            )
        try:
            with _discard_on_refusal(g):
                if a.tune_queries:
                    g.set_tune_queries(g.query_vectors(a.tune_queries))
                report = g.build(
                    inputs,
                    batch_size=a.batch_size,
                    progress=not a.json and sys.stderr.isatty(),
                    distributed=distributed,
                    retry_failed=a.retry_failed,
                    parquet=parquet_spec(a),
                    restore=a.restore,
                )
            _note_gallery_basis(g, a.index)
            return _print_report(a, report, "indexed")
        except DirectoryGone:
            g.close()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _note_gallery_basis(g, where: str) -> None:
    """One plain line when an ``auto`` index was tuned on held-out gallery vectors (not real queries)."""
    from cbir.index.ann.maintain import GALLERY_BASIS_NOTE

    if g.settings.factory == "auto" and (g.settings.tuning or {}).get("basis") == "gallery":
        print("note: " + GALLERY_BASIS_NOTE.format(root=where), file=sys.stderr)


@contextmanager
def _discard_on_refusal(g):
    """A first build refused before any shard was done leaves nothing behind — only what it made
    (``Gallery.discard``): never a file the user had, never another writer's work."""
    try:
        yield
    except CbirError:
        g.discard()
        raise


def build_from_vectors(a: argparse.Namespace, root: Path) -> int:
    """Every input is checked before anything is written: vectors, paths, dimension, memory budget."""
    from cbir.index.ann import tuning
    from cbir.index.gallery import INDEX_JSON
    from cbir.index.ingest.from_vectors import VectorSource, check_dim, ingest, read_paths

    if a.paths is None:
        raise CbirError("--from-vectors needs --paths P.txt (one path or URI per row)")
    source = VectorSource(a.from_vectors)
    paths = read_paths(a.paths, len(source))
    emb = open_embedder(a, a.model) if a.model else None
    if emb is not None:
        check_dim(source, emb.dim)
    if a.factory == "auto" and not (root / INDEX_JSON).is_file():
        tuning.choose_factory(len(source), source.dim, tuning.parse_bytes(a.memory_budget or "4GB"))
    g = _create(a, root, emb, dim=source.dim, local_features=a.local_features or "none", rerank=a.rerank or "none")
    with _discard_on_refusal(g):
        if a.tune_queries:
            g.set_tune_queries(g.query_vectors(a.tune_queries))
        report = ingest(g, source, paths, progress=not a.json and sys.stderr.isatty(), restore=a.restore)
    _note_gallery_basis(g, a.index)
    return _print_report(a, report, "indexed")


def cmd_index_features(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    g = Gallery(a.index, wait=a.wait)
    n = g.extract_features(progress=not a.json and sys.stderr.isatty(), enable=True)
    out = {"shards_written": n, "local_features": g.settings.local_features, "rerank": g.settings.rerank}
    if a.json:
        print_json(out)
    else:
        print(
            f"local features: {n} shards written; verification works now (e.g. `cbir index rerank {a.index} --rerank default`)"
        )
    return 0


def cmd_index_rerank(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    g = Gallery(a.index, wait=a.wait)
    with g.writing():  # the settings are read and changed under the lock (one field: rerank)
        cfg = g.rerank_config(rerank_from_args(a, g.settings.rerank))  # refuses verification without features
        g.config["rerank"] = cfg.to_dict()
        g.save_config()
    if a.json:
        print_json(g.settings.rerank)
    else:
        print(", ".join(f"{k}={v}" for k, v in g.settings.rerank.items()))
    return 0


def _print_report(a: argparse.Namespace, report: dict, verb: str) -> int:
    for f in report["failed"]:
        print(f"cbir: failed {f['path']}: {f['error']}", file=sys.stderr)
    for w in report.get("warnings", []):
        print(
            f"cbir: warning: {w['path']}: {w['stage']}: {w['error']} (indexed; it cannot be spatially verified)",
            file=sys.stderr,
        )
    if a.json:
        print_json(report)
    else:
        t = report["timings"]
        print(
            f"{verb} {report['indexed']} images ({len(report['skipped'])} unchanged, {len(report['failed'])} failed"
            + (
                f", {len(report['still_failed'])} of them unchanged and not retried (--retry-failed)"
                if report["still_failed"]
                else ""
            )
            + (
                f", {len(report['still_removed'])} removed earlier and left out (--restore)"
                if report.get("still_removed")
                else ""
            )
            + "); "
            f"index holds {report['count']}; {t.get('images_per_s', 0)} img/s, total {t['total']} s"
        )
    return 0


def cmd_index_add(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    g = Gallery(a.index, wait=a.wait)
    g.embedder(backend=a.backend, threads=a.threads, workers=a.workers, precision=a.precision, device=a.device)
    return _print_report(
        a,
        g.add(
            list(a.paths) + read_list(a.files_from),
            batch_size=a.batch_size,
            retry_failed=a.retry_failed,
            parquet=parquet_spec(a),
            restore=a.restore,
        ),
        "added",
    )


def cmd_index_remove(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    r = Gallery(a.index, wait=a.wait).remove(a.paths)
    print_json(r) if a.json else print(f"removed {r['removed']}; index holds {r['count']}")
    return 0


def cmd_index_tune(a: argparse.Namespace) -> int:
    from cbir.index.ann.maintain import GALLERY_BASIS_NOTE
    from cbir.index.gallery import Gallery
    from cbir.serve.audit import audited_queries

    g = Gallery(a.index, wait=a.wait)
    if a.queries and a.from_audit:
        raise CbirError("index tune: give --queries or --from-audit, not both")
    queries = g.query_vectors(a.queries) if a.queries else audited_queries(g) if a.from_audit else None
    t = g.tune(a.target_recall, a.max_ms_per_query, queries=queries)
    if a.json:
        print_json(t)
    else:
        ms = (
            f"{t['ms_per_query']:.3f} ms/query (batch {t['queries']})"
            if t["ms_per_query"] is not None
            else "empty index"
        )
        what = "real queries" if t["basis"] == "queries" else "held-out gallery vectors"
        lo, hi = t["recall_ci95"]
        print(
            f"{a.index}: {g.config['search'] or 'exact search'}; recall@10 {t['recall_at_10']} (95 % {lo}–{hi}) on "
            f"{t['queries']} {what}, {ms}"
        )
    if t["basis"] == "gallery":
        print("note: " + GALLERY_BASIS_NOTE.format(root=a.index), file=sys.stderr)
    return 0


def cmd_index_info(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    info = Gallery(a.index).info()
    if a.json:
        print_json(info)
    else:
        m = info["model"]
        t = info["tuning"]
        print(
            f"{info['path']}: {info['count']} images, d={info['dim']}, factory {info['index_factory']}"
            + (
                f", search {info['search']}, recall@10 {t['recall_at_10']} on {t.get('queries', t.get('held_out_queries'))} "
                f"{'real queries' if t.get('basis') == 'queries' else 'held-out gallery vectors'}, {t['ms_per_query']:.3f} ms/query"
                if t and t.get("ms_per_query") is not None
                else ""
            )
            + (
                f", {info['index_bytes'] or 0:,} bytes, "
                if info["store"] == "index.faiss"
                else f", vectors in {info['store']}, "
            )
            + f"model {m['arch']} Block {m['block']} {m['pooling']} ({m['fingerprint']}), "
            f"{info['failed']} failed, {info['removed']} removed, {info['pending_shards']} shards pending"
        )
        if t and t.get("basis", "gallery") == "gallery" and t.get("ms_per_query") is not None:
            from cbir.index.ann.maintain import GALLERY_BASIS_NOTE

            print("note: " + GALLERY_BASIS_NOTE.format(root=a.index))
    return 0


def cmd_index_check(a: argparse.Namespace) -> int:
    """Exit 0 when the index is whole, 1 when something is damaged (listed), 2 on a usage error."""
    from cbir.index.check import check
    from cbir.index.gallery import Gallery

    r = check(Gallery(a.index))
    if a.json:
        print_json(r)
    else:
        for p in r["problems"]:
            print(f"{p['part']}" + (f" (shard {p['shard']})" if p["shard"] is not None else "") + f": {p['problem']}")
        c = r["checked"]
        print(
            f"{a.index}: {'ok' if r['ok'] else 'DAMAGED'}: {c['shards']} shards, {c['indexed']} indexed items"
            + ("" if r["ok"] else f"; `cbir index repair {a.index}` fixes what is derived and lists what is lost")
        )
    return 0 if r["ok"] else 1


def cmd_index_repair(a: argparse.Namespace) -> int:
    from cbir.index.check import repair
    from cbir.index.gallery import Gallery

    g = Gallery(a.index, wait=a.wait)
    if g.settings.model_path is not None:
        g.embedder(backend=a.backend, threads=a.threads, workers=a.workers, precision=a.precision, device=a.device)
    r = repair(g, progress=not a.json and sys.stderr.isatty())
    if a.json:
        print_json(r)
    else:
        for line in r["done"]:
            print(line)
        for f in r["lost"]:
            print(f"lost: {f['path']}: {f['error']}", file=sys.stderr)
        print(
            f"{a.index}: {'ok' if r['ok'] else 'still damaged'}; {r['recovered']} items embedded again, "
            f"{len(r['lost'])} lost"
        )
    return 0 if r["ok"] else 1


def wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="wait for another writer to this index instead of failing")


RESTORE_HELP = (
    "index again items removed earlier (`cbir index remove`) that are among the inputs; "
    "without it they stay removed and are listed as such"
)


def _build_parser(ix) -> None:
    b = ix.add_parser("build", help="index a folder of images (resumable)")
    b.add_argument(
        "images_dir", nargs="?", help="folder, .tar shard, .parquet file or URL of images (or use --from-vectors)"
    )
    source_args(b)
    b.add_argument("--from-vectors", help="index existing embeddings: a .npy [N, D] or a folder of .npy files")
    b.add_argument("--paths", help="with --from-vectors: text file, one path or URI per row")
    b.add_argument(
        "--model",
        help="the cbir model (required for images; optional with --from-vectors: "
        "without it the index answers vector queries only)",
    )
    b.add_argument("--index", required=True, help="index directory (created, or resumed if it exists)")
    # Build options are fixed when the index is created: None = default for a new index, "as recorded" for
    # an existing one; an explicit value that differs from the recorded one is refused.
    b.add_argument(
        "--factory",
        help='FAISS factory string, e.g. "Flat" (default), "IVF1024,PQ32", "HNSW32", or "auto": '
        "chosen from the gallery size and --memory-budget, tuned to --target-recall",
    )
    b.add_argument("--memory-budget", help="index memory budget for --factory auto, e.g. 4GB (default 4GB)")
    b.add_argument("--target-recall", type=float, help="recall@10 vs exact search for --factory auto (default 0.95)")
    b.add_argument(
        "--tune-queries",
        nargs="+",
        metavar="Q",
        help="tune --factory auto on these real queries (images, "
        "folders, URIs or one .npy of vectors) instead of held-out gallery vectors; kept for later rebuilds",
    )
    b.add_argument("--shard-size", type=int, help="images per resumable shard (default 1024)")
    b.add_argument("--whitening", help="whitening file applied to stored and query vectors")
    b.add_argument("--dba", type=int, help="database-side augmentation over N neighbours (default off)")
    b.add_argument("--dba-alpha", type=float, help="DBA weight exponent (default 0)")
    b.add_argument(
        "--on-disk",
        action="store_true",
        default=None,
        help="IVF inverted lists in a memory-mapped file (INDEX_DIR/ivflists-*.bin), built by a streaming merge",
    )
    b.add_argument(
        "--store",
        metavar="URI",
        help="keep the vectors in a Milvus collection instead of index.faiss: milvus://HOST:PORT/COLLECTION "
        "or milvus-lite:PATH.db[/COLLECTION] (pip install 'cbir[milvus]'); add, remove, repair and every "
        "search follow it",
    )
    b.add_argument(
        "--local-features",
        choices=["orb", "none"],
        help="local features for spatial verification, stored per shard (default orb for images: "
        "~18 KB and ~2 ms per image; none for --from-vectors)",
    )
    b.add_argument(
        "--rerank",
        choices=list(PRESETS),
        help="the re-ranking preset stored for searches (default: "
        "'default' with local features, else 'class'); change later with `cbir index rerank`",
    )
    b.add_argument("--retry-failed", action="store_true", help="embed again files that failed before even if unchanged")
    b.add_argument("--restore", action="store_true", help=RESTORE_HELP)
    b.add_argument("--resume", action="store_true", help="continue an interrupted build (also automatic)")
    b.add_argument(
        "--distributed", choices=["ray"], help="embed shards on Ray Data workers (pip install 'cbir[distributed]')"
    )
    b.add_argument("--ray-address", help="auto | ray://host:port (default: start a local Ray)")
    b.add_argument("--num-workers", type=int, default=2, help="Ray actors, one model each (default 2)")
    b.add_argument("--cpus-per-worker", type=int, default=1)
    b.add_argument("--gpus-per-worker", type=float, default=0)
    engine_args(b)
    b.add_argument("--json", action="store_true")
    wait_arg(b)
    b.set_defaults(fn=cmd_index_build)


def _add_parser(ix) -> None:
    ad = ix.add_parser("add", help="add new or changed files or folders")
    ad.add_argument("index")
    ad.add_argument("paths", nargs="*", help="files, folders, tar shards, parquet files or URLs")
    source_args(ad)
    ad.add_argument(
        "--retry-failed", action="store_true", help="embed again files that failed before even if unchanged"
    )
    ad.add_argument("--restore", action="store_true", help=RESTORE_HELP)
    engine_args(ad)
    ad.add_argument("--json", action="store_true")
    wait_arg(ad)
    ad.set_defaults(fn=cmd_index_add)


def _remove_parser(ix) -> None:
    rm = ix.add_parser("remove", help="remove files or folders from the index")
    rm.add_argument("index")
    rm.add_argument("paths", nargs="+")
    rm.add_argument("--json", action="store_true")
    wait_arg(rm)
    rm.set_defaults(fn=cmd_index_remove)


def _tune_parser(ix) -> None:
    tu = ix.add_parser("tune", help="tune nprobe / efSearch to a recall target on held-out vectors")
    tu.add_argument("index")
    tu.add_argument("--target-recall", type=float, required=True, help="recall@10 vs exact search, e.g. 0.95")
    tu.add_argument("--max-ms-per-query", type=float, help="refuse a setting slower than this")
    tu.add_argument(
        "--queries",
        nargs="+",
        metavar="Q",
        help="tune on these queries: images, folders, URIs, or one "
        ".npy of query vectors (kept for later rebuilds); default: the queries tuned on before, else "
        "held-out gallery vectors",
    )
    tu.add_argument("--from-audit", action="store_true", help="tune on the queries `cbir serve --audit-rate` sampled")
    tu.add_argument("--json", action="store_true")
    wait_arg(tu)
    tu.set_defaults(fn=cmd_index_tune)


def _features_parser(ix) -> None:
    fe = ix.add_parser(
        "features",
        help="add local features (spatial verification) to an index built without them, "
        "or write again those of an older cbir that lack the image's frame size (used to stretch "
        "a squeezed copy back)",
    )
    fe.add_argument("index")
    fe.add_argument("--json", action="store_true")
    wait_arg(fe)
    fe.set_defaults(fn=cmd_index_features)


def _rerank_parser(ix) -> None:
    rr = ix.add_parser("rerank", help="set the re-ranking searches use by default (stored in index.json)")
    rr.add_argument("index")
    rerank_args(rr)
    rr.add_argument("--json", action="store_true")
    wait_arg(rr)
    rr.set_defaults(fn=cmd_index_rerank)


def _check_parser(ix) -> None:
    ck = ix.add_parser(
        "check", help="verify shard files, features, regions and index.faiss against SQLite (exit 1 on damage)"
    )
    ck.add_argument("index")
    ck.add_argument("--json", action="store_true")
    ck.set_defaults(fn=cmd_index_check)


def _repair_parser(ix) -> None:
    rp = ix.add_parser(
        "repair", help="rebuild what is derived from the shards, embed lost shards again, report what is lost"
    )
    rp.add_argument("index")
    engine_args(rp)
    rp.add_argument("--json", action="store_true")
    wait_arg(rp)
    rp.set_defaults(fn=cmd_index_repair)


def _info_parser(ix) -> None:
    inf = ix.add_parser("info", help="what an index holds")
    inf.add_argument("index")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(fn=cmd_index_info)


def register(sub) -> None:
    ix = sub.add_parser("index", help="build and edit a gallery index").add_subparsers(
        dest="index_command", required=True
    )
    _build_parser(ix)
    _add_parser(ix)
    _remove_parser(ix)
    _tune_parser(ix)
    _features_parser(ix)
    _rerank_parser(ix)
    _check_parser(ix)
    _repair_parser(ix)
    _info_parser(ix)
