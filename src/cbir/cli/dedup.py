"""`cbir dedup INDEX`: exact and near-duplicate groups of an index (see ``cbir.copies.dedup``)."""

from __future__ import annotations

import argparse
import csv
import sys

from cbir.cli.common import print_json


def cmd_dedup(a: argparse.Namespace) -> int:
    from cbir import fsio
    from cbir.copies import dedup
    from cbir.index.gallery import Gallery

    g = Gallery(a.index)
    groups = dedup.find(
        g,
        k=a.k,
        threshold=a.threshold,
        verify=not a.no_verify,
        partial=a.partial,
        progress=not a.json and sys.stderr.isatty(),
    )
    if a.csv:
        with fsio.atomic_path(a.csv, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["group", "kind", "id", "path", "identical"])
            for n, grp in enumerate(groups):
                same = {p: k for k, ps in enumerate(grp.get("identical", [])) for p in ps}
                for i, p in zip(grp["ids"], grp["paths"]):
                    w.writerow([n, grp["kind"], i, p, same.get(p, "")])
    if a.json:
        print_json({"groups": groups})
        return 0
    for n, grp in enumerate(groups):
        print(f"group {n} ({grp['kind']}, {len(grp['paths'])} images)")
        same = {p: k for k, ps in enumerate(grp.get("identical", [])) for p in ps}
        for p in grp["paths"]:
            print(f"  {p}" + (f"  (byte-identical set {same[p]})" if p in same else ""))
    exact = sum(1 for grp in groups if grp["kind"] == "exact")
    print(f"{exact} exact and {len(groups) - exact} near-duplicate groups", file=sys.stderr)
    return 0


def register(sub) -> None:
    d = sub.add_parser("dedup", help="exact and near-duplicate groups in an index")
    d.add_argument("index")
    d.add_argument("-k", type=int, default=10, help="neighbours checked per image (default 10)")
    d.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="cosine a neighbour needs before verification (default 0.5: verification decides)",
    )
    d.add_argument(
        "--no-verify", action="store_true", help="keep every pair over --threshold (no local features needed)"
    )
    d.add_argument(
        "--partial",
        type=int,
        default=3,
        metavar="N",
        help="windows pass: each image's five half-size windows, its layout box and the part its matches "
        "leave out are embedded, searched (N nearest each) and verified, for a photo inside another "
        "image "
        "(default 3; 0: whole images only, no re-embedding, ~7x faster)",
    )
    d.add_argument("--csv", metavar="FILE", help="also write one row per (group, image)")
    d.add_argument(
        "--json",
        action="store_true",
        help='print {"groups": [{"kind": "exact"|"near", "ids": [...], "paths": [...], '
        '"identical": [[byte-identical paths], ...]}, ...]}',
    )
    d.set_defaults(fn=cmd_dedup)
