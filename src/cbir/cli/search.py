"""`cbir search`: query an index with images."""

from __future__ import annotations

import argparse
import sys

from cbir.cli.common import engine_args, print_json, rerank_args, rerank_from_args
from cbir.hits import mark


def cmd_search(a: argparse.Namespace) -> int:
    from cbir.index.gallery import Gallery

    g = Gallery(a.index, search_device=a.search_device)
    g.embedder(a.model, backend=a.backend, threads=a.threads, workers=a.workers, precision=a.precision, device=a.device)
    rerank = rerank_from_args(a, g.settings.rerank)
    results = g.search(a.queries, k=a.k, rerank=rerank, nprobe=a.nprobe, ef_search=a.ef_search)
    if a.html:
        write_html(g, results, a.html)
    if a.json:
        print_json(results)
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['query']}: error: {r['error']}", file=sys.stderr)
            continue
        print(r["query"])
        for rank, h in enumerate(r["results"], 1):
            how = mark(h)
            print(f"  {rank:3d}. {h['score']:.4f}  {h['path']}  (id {h['id']}{'  ' + how if how else ''})")
    return 0


def write_html(g, results: list[dict], out: str) -> None:
    from cbir import fsio
    from cbir.cli import contact_sheet
    from cbir.engine.preprocess import ImageError
    from cbir.serve.thumbs import Thumbnails

    thumbnails = Thumbnails(g.root, g.store)

    def thumbnail(hit: dict) -> bytes:
        got = thumbnails.get(hit["id"])  # the index's cached thumbnail, shrunk for the sheet
        if got is None:
            raise ImageError(hit["path"], "no longer in the index")
        return contact_sheet.make(got[0], hit["path"], contact_sheet.SIZE, contact_sheet.QUALITY)

    fsio.write_text(out, contact_sheet.render(results, thumbnail, title=f"cbir search: {g.root}"))
    print(f"wrote {out}", file=sys.stderr)


def register(sub) -> None:
    s = sub.add_parser("search", help="search an index with query images")
    s.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    s.add_argument("--index", required=True)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--nprobe", type=int, help="IVF lists to visit (default: the index's tuned value)")
    s.add_argument("--ef-search", type=int, help="HNSW efSearch (default: the index's tuned value)")
    s.add_argument("--model", help="model file (default: the one recorded in the index; must match it)")
    rerank_args(s)
    engine_args(s)
    s.add_argument(
        "--search-device",
        choices=["cuda", "cpu"],
        help="exact search of a Flat index in PyTorch on this device (FP16 on cuda), where faiss-gpu is absent",
    )
    s.add_argument("--json", action="store_true")
    s.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML contact sheet of the results")
    s.set_defaults(fn=cmd_search)
