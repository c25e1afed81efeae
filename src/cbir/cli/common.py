"""Helpers every command group shares: JSON output and the engine options."""
from __future__ import annotations

import argparse
import json

from cbir.errors import CbirError


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def open_embedder(a: argparse.Namespace, model: str):
    from cbir.engine.embedder import Embedder

    return Embedder(model, backend=a.backend, threads=a.threads, workers=a.workers, precision=a.precision)


def source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--files-from", help="text file: one path or URI per line, added to the inputs")
    p.add_argument("--parquet-column", help="Parquet inputs: the column with image bytes")
    p.add_argument("--parquet-path-column", help="Parquet inputs: the column with image paths or URLs")


def parquet_spec(a: argparse.Namespace):
    from cbir.sources import ParquetSpec

    if a.parquet_column and a.parquet_path_column:
        raise CbirError("--parquet-column and --parquet-path-column: give one of them")
    return ParquetSpec(a.parquet_column, a.parquet_path_column)


def backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="onnxruntime",
                   help="onnxruntime (default), openvino, onnxruntime-cuda, onnxruntime-trt, tensorrt (a plan from `cbir compile`)")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="--backend openvino: run precision (default fp32; bf16 where the CPU has it)")


def engine_args(p: argparse.ArgumentParser) -> None:
    backend_args(p)
    p.add_argument("--batch-size", type=int, help="images per inference call (default: auto, measured at load)")
    p.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    p.add_argument("--workers", type=int, help="decode threads (default: all cores)")

