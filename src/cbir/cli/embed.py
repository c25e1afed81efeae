"""`cbir embed`: image files to a .npy of vectors."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbir.cli.common import engine_args, open_embedder, print_json


def cmd_embed(a: argparse.Namespace) -> int:
    import numpy as np

    from cbir.walk import find_images

    paths = find_images(a.images)
    emb = open_embedder(a, a.model)
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
        print_json(summary)
    else:
        print(f"wrote {out}: {len(kept)} × {emb.dim} vectors; {res.timings.summary()}")
    return 0


def register(sub) -> None:
    m = sub.add_parser("embed", help="embed image files into a .npy file")
    m.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    m.add_argument("--model", required=True)
    m.add_argument("-o", "--output", required=True, help="vectors .npy [N, D] float32")
    m.add_argument("--paths-out", help="text file with the path of each row")
    engine_args(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_embed)
