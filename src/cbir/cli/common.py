"""Helpers every command group shares: JSON output and the engine options."""

from __future__ import annotations

import argparse
import json

from cbir.errors import CbirError


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def open_embedder(a: argparse.Namespace, model: str):
    from cbir.engine.embedder import Embedder

    return Embedder(
        model,
        backend=a.backend,
        threads=a.threads,
        workers=a.workers,
        precision=a.precision,
        device=a.device,
        decode=getattr(a, "decode", None) or "cpu",
    )


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
    p.add_argument(
        "--backend",
        default="onnxruntime",
        help="onnxruntime (default), openvino, onnxruntime-cuda, onnxruntime-trt, tensorrt (a plan from "
        "`cbir compile`), torch (the model rebuilt in PyTorch: export with --torch-checkpoint)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="--backend openvino: fp32 (default) or bf16 where the CPU has it; --backend torch: fp16 "
        "(default on cuda) or fp32",
    )
    p.add_argument(
        "--device", choices=["cuda", "cpu"], help="--backend torch: where it runs (default cuda when visible)"
    )


def engine_args(p: argparse.ArgumentParser) -> None:
    backend_args(p)
    p.add_argument("--batch-size", type=int, help="images per inference call (default: auto, measured at load)")
    p.add_argument("--threads", type=int, help="inference threads (default: all cores)")
    p.add_argument("--workers", type=int, help="decode threads (default: all cores)")
    p.add_argument(
        "--decode",
        choices=["cpu", "gpu"],
        default="cpu",
        help="bulk decode: cpu (default) or gpu (nvImageCodec on the device, with a GPU --backend; "
        "what it cannot decode falls back to the CPU per image)",
    )


def rerank_args(p: argparse.ArgumentParser) -> None:
    """Re-ranking options (``cbir.index.query.rerank``): a preset, then per-stage overrides."""
    from cbir.index.query.rerank import PRESETS, Rerank

    d = Rerank()
    g = p.add_argument_group("re-ranking (default: the index's stored setting)")
    g.add_argument(
        "--rerank",
        choices=list(PRESETS),
        help="preset: default (copies verified first, then class-level re-ranking), class, copy, none",
    )
    g.add_argument("--shortlist", type=int, help=f"candidates re-ranked (default {d.shortlist})")
    g.add_argument("--shortlist-dba", type=int, help="DBA over N neighbours inside the shortlist (0 = off)")
    g.add_argument("--shortlist-dba-alpha", type=float, help=f"its weight exponent (default {d.shortlist_dba_alpha})")
    g.add_argument("--qe", type=int, help="α-query expansion over the top N (0 = off)")
    g.add_argument("--qe-alpha", type=float, help=f"α-QE exponent (0 = average QE; default {d.qe_alpha})")
    g.add_argument("--diffusion", type=int, help="diffusion on the shortlist's mutual k-NN graph, k (0 = off)")
    g.add_argument("--diffusion-alpha", type=float, help=f"diffusion α (default {d.diffusion_alpha})")
    g.add_argument(
        "--regional",
        type=int,
        help="re-rank the top N by their best regional descriptor (needs a model exported with --regions; 0 = off)",
    )
    g.add_argument("--verify", type=int, help="spatially verify the top N (0 = off)")
    g.add_argument(
        "--min-inliers", type=int, help=f"RANSAC inliers that make a match verified (default {d.min_inliers})"
    )
    g.add_argument(
        "--partial",
        type=int,
        help="when nothing verified, search the query's 5 half-size windows and verify "
        "their top N each: finds a photo pasted into another, a screenshot (0 = off)",
    )
    g.add_argument(
        "--keep-first",
        type=float,
        help="the k-NN's first result stays first (after verified ones) when its cosine is at least this (0 = off)",
    )


def rerank_overrides(a: argparse.Namespace) -> dict:
    from dataclasses import fields

    from cbir.index.query.rerank import Rerank

    return {f.name: getattr(a, f.name) for f in fields(Rerank) if getattr(a, f.name, None) is not None}


def rerank_from_args(a: argparse.Namespace, base: dict | None = None):
    from cbir.index.query.rerank import resolve

    return resolve(base, a.rerank, **rerank_overrides(a))
