"""The ``cbir`` command line. One module per command group, each registering its own subparsers
beside its handlers (``register(sub)``); each command is a thin layer over the library. Errors that
users can fix (``CbirError``) are printed as one line and exit with status 2."""

from __future__ import annotations

import argparse
import sys

from cbir.cli import bench, dedup, doctor, embed, export, finetune, index, search, serve, validate, whiten
from cbir.errors import CbirError

GROUPS = (export, validate, finetune, serve, doctor, embed, index, search, dedup, whiten, bench)


def build_parser() -> argparse.ArgumentParser:
    from cbir.version import __version__

    p = argparse.ArgumentParser(
        prog="cbir", description="Image embedding and retrieval with EfficientNet, ONNX Runtime and FAISS."
    )
    p.add_argument("--version", action="version", version=f"cbir {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


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
