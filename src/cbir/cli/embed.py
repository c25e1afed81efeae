"""`cbir embed`: images (folders, files, tar shards, Parquet, URLs) to vectors: one .npy, or sharded
outputs other tools read (``--out DIR --format npy|parquet``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbir.cli.common import engine_args, open_embedder, parquet_spec, print_json, source_args
from cbir.errors import CbirError


def cmd_embed(a: argparse.Namespace) -> int:
    import numpy as np

    from cbir.sources import expand

    if (a.output is None) == (a.out is None):
        raise CbirError("cbir embed: give -o VECTORS.npy or --out DIR (sharded outputs), one of them")
    uris = expand(list(a.images) + read_list(a.files_from), parquet_spec(a))
    emb = open_embedder(a, a.model)
    progress = not a.json and sys.stderr.isatty()
    if a.out is not None:
        from cbir.engine.outputs import write_sharded

        report = write_sharded(emb, uris, a.out, a.format, a.shard_rows, a.batch_size, progress)
        for f in report["failed"]:
            print(f"cbir embed: skipped {f['uri']}: {f['error']}", file=sys.stderr)
        print_json(report) if a.json else print(
            f"wrote {a.out} ({a.format}): {report['embedded']} vectors now, "
            f"{report['already_done']} from earlier runs, {len(report['failed'])} failed"
        )
        return 0
    res = emb.embed_files(uris, batch_size=a.batch_size, progress=progress)
    out = Path(a.output)
    np.save(out, res.vectors)
    kept = [uris[i] for i in res.indices]
    if a.paths_out:
        Path(a.paths_out).write_text("".join(p + "\n" for p in kept))
    for _, src, reason in res.errors:
        print(f"cbir embed: skipped {src}: {reason}", file=sys.stderr)
    summary = {
        "output": str(out),
        "embedded": len(kept),
        "dim": emb.dim,
        "failed": [{"path": s, "error": r} for _, s, r in res.errors],
        "timings": res.timings.as_dict(),
    }
    if a.json:
        print_json(summary)
    else:
        print(f"wrote {out}: {len(kept)} × {emb.dim} vectors; {res.timings.summary()}")
    return 0


def read_list(path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise CbirError(f"--files-from {path}: cannot read ({e.strerror or e})") from None


def register(sub) -> None:
    m = sub.add_parser("embed", help="embed images into a .npy file or sharded npy/parquet outputs")
    m.add_argument("images", nargs="*", help="folders, image files, WebDataset .tar shards, .parquet files, or URLs")
    m.add_argument("--model", required=True)
    m.add_argument("-o", "--output", help="vectors .npy [N, D] float32 (one file)")
    m.add_argument("--paths-out", help="with -o: text file with the URI of each row")
    m.add_argument(
        "--out", help="sharded outputs: DIR/embeddings + DIR/metadata (embedding-reader's layout), resumable"
    )
    m.add_argument("--format", default="npy", choices=["npy", "parquet"], help="with --out (default npy)")
    m.add_argument(
        "--shard-rows", type=int, default=1_000_000, help="with --out: input items per shard (default 1,000,000)"
    )
    source_args(m)
    engine_args(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_embed)
