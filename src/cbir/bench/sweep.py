"""``cbir bench sweep``: accuracy and latency for every arch × block, one report.

Per cell (arch × block × pooling, ONNX Runtime CPU): export (pretrained where offline weights exist,
i.e. Lite0–2, else random weights — accuracy is then ``n/a``), model-only img/s at batch 32, batch-1
latency p50, PyTorch eager at batch 32 in the same process (``speedup_vs_torch``), FLOPs per image
and the fraction of the machine's sgemm rate, and for pretrained cells Corel-protocol accuracy
(3 seeds, query kept in its ranking). Each finished cell is saved as ``cells/<name>.json``; an
interrupted sweep skips those on the next run. Outputs: report.json, report.csv, report.md,
pareto.png (latency vs mAP; matplotlib, optional).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cbir import fsio
from cbir.models.archs import get_arch

PUBLISHED = {  # the paper's Table I (fine-tuned, original-size Corel-1K): (arch short name, block) -> mAP
    ("b0", 6): 0.869,
    ("b0", 7): 0.913,
    ("b1", 6): 0.851,
    ("b1", 7): 0.921,
    ("b2", 6): 0.866,
    ("b2", 7): 0.934,
    ("b3", 6): 0.876,
    ("b3", 7): 0.938,
    ("b4", 6): 0.877,
    ("b4", 7): 0.935,
    ("b5", 6): 0.849,
    ("b5", 7): 0.922,
}
COLUMNS = [
    "model",
    "block",
    "d",
    "weights",
    "mAP",
    "mAP@10",
    "P@10",
    "P@100",
    "R@100",
    "img_s_bs32",
    "p50_ms_bs1",
    "torch_img_s_bs32",
    "speedup_vs_torch",
    "gflops_per_image",
    "sgemm_fraction",
    "paper_mAP",
]


def _has_offline_weights(arch: str) -> bool:
    from cbir.models.weights import lite_weights_path

    return lite_weights_path(arch) is not None


def run_cell(
    short: str,
    block: int,
    pooling: str,
    data: str | None,
    work: Path,
    sgemm: float,
    seeds: int,
    repeats: int,
    backends: tuple[str, ...] = (),
) -> dict:
    """One arch × block: export, speed on ONNX Runtime and PyTorch eager, accuracy; and for each
    extra ``backends`` spec (``backend[:precision]``, e.g. ``openvino:bf16``) its img/s at batch 8 and
    ratio to ONNX Runtime measured next to it, and its mAP (ΔmAP) when accuracy is measured."""
    from cbir.bench.accuracy import bench_accuracy
    from cbir.bench.flops import onnx_flops
    from cbir.bench.latency import latencies, throughput, torch_baseline
    from cbir.engine.embedder import Embedder
    from cbir.export.onnx import export_onnx

    spec = get_arch(short)
    pretrained = _has_offline_weights(spec.name)
    path = work / f"{short}_b{block}_{pooling}.onnx"
    t0 = time.perf_counter()
    exp = export_onnx(spec.name, path, block=block, pooling=pooling, pretrained=pretrained)
    export_s = time.perf_counter() - t0
    emb = Embedder(path)
    h, w = emb.info.input_size
    batch = np.random.default_rng(0).integers(0, 256, (32, h, w, 3), dtype=np.uint8)
    ours = throughput(emb.run, batch, repeats, 1)
    p50 = float(np.median(latencies(lambda: emb.run(batch[:1]), n=30, warmup=3)))
    torch_s = torch_baseline(emb.info, batch, repeats, 1)
    flops = onnx_flops(str(path))
    cell = {
        "model": short,
        "arch": spec.name,
        "block": block,
        "pooling": pooling,
        "d": emb.dim,
        "weights": "imagenet" if pretrained else "random",
        "img_s_bs32": ours["median"],
        "img_s_bs32_minmax": [ours["min"], ours["max"]],
        "p50_ms_bs1": p50,
        "torch_img_s_bs32": torch_s["median"],
        "speedup_vs_torch": ours["median"] / torch_s["median"],
        "gflops_per_image": flops / 1e9,
        "sgemm_fraction": flops * ours["median"] / (sgemm * 1e9),
        "export_seconds": round(export_s, 1),
        "parity_min_cosine": exp["min_cosine"],
        "paper_mAP": PUBLISHED.get((short, block)),
    }
    if pretrained and data:
        acc = bench_accuracy(str(path), data, seeds=seeds, embedder=emb)
        for k in ("mAP", "mAP@10", "P@10", "P@100", "R@100"):
            cell[k] = acc["metrics"][k]["mean"]
            cell[k + "_std"] = acc["metrics"][k]["std"]
    cell["backends"] = {}
    for spec in backends:
        from cbir.bench.latency import parse_spec

        backend, precision, _, options = parse_spec(spec, str(path))
        other = Embedder(path, backend=backend, precision=precision, **options)
        base8, theirs8 = throughput(emb.run, batch[:8], repeats, 1), throughput(other.run, batch[:8], repeats, 1)
        row = {"img_s_bs8": theirs8["median"], "ratio_vs_onnxruntime_bs8": theirs8["median"] / base8["median"]}
        if pretrained and data:
            row["mAP"] = bench_accuracy(str(path), data, seeds=seeds, embedder=other)["metrics"]["mAP"]["mean"]
            row["delta_mAP"] = row["mAP"] - cell["mAP"]
        cell["backends"][spec] = row
    path.unlink(missing_ok=True)  # models are rebuilt on demand; keep the report small
    return cell


def sweep(
    data: str | None,
    out: str | os.PathLike,
    archs: list[str],
    blocks: list[int],
    pooling: str = "gap",
    seeds: int = 3,
    repeats: int = 3,
    progress: bool = True,
    backends: tuple[str, ...] = (),
) -> dict:
    from cbir.bench.flops import sgemm_gflops
    from cbir.bench.machine import describe

    out = Path(out)
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    sgemm = sgemm_gflops()
    t_start = time.perf_counter()
    todo = [(a, b) for a in archs for b in blocks]
    cells = []
    for i, (a, b) in enumerate(todo, 1):
        f = cells_dir / f"{a}_b{b}_{pooling}.json"
        if f.is_file():
            cells.append(json.loads(f.read_text()))
            if progress:
                print(f"[{i}/{len(todo)}] {a} Block {b}: done earlier, skipped", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        cell = run_cell(a, b, pooling, data, out, sgemm["median"], seeds, repeats, tuple(backends))
        cell["seconds"] = round(time.perf_counter() - t0, 1)
        fsio.write_json(f, cell)
        cells.append(cell)
        if progress:
            print(
                f"[{i}/{len(todo)}] {a} Block {b}: {cell['img_s_bs32']:.1f} img/s, "
                f"mAP {cell.get('mAP', 'n/a')}, {cell['seconds']} s",
                file=sys.stderr,
            )
    report = {
        "machine": describe(),
        "sgemm_gflops": sgemm,
        "data": data,
        "pooling": pooling,
        "seeds": seeds,
        "sweep_seconds_this_run": round(time.perf_counter() - t_start, 1),
        "cells": cells,
    }
    fsio.write_json(out / "report.json", report)
    write_csv(cells, out / "report.csv")
    fsio.write_text(out / "report.md", markdown(report))
    plot(cells, out / "pareto.png")
    return report


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_csv(cells: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for c in cells:
            w.writerow({k: c.get(k, "n/a") if c.get(k) is not None else "n/a" for k in COLUMNS})


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
        f"sgemm: {report['sgemm_gflops']['median']:.0f} GFLOP/s (NumPy 1024³ float32, median). "
        f"Pooling {report['pooling']}; accuracy: Corel protocol, {report['seeds']} seeds, query kept in its ranking.",
        "",
        "| model | block | d | weights | mAP | mAP@10 | P@10 | P@100 | R@100 | img/s (bs 32) | p50 ms (bs 1) "
        "| speedup vs torch | GFLOP/img | sgemm fraction | paper mAP (fine-tuned) |",
        "|" + "---|" * 15,
    ]
    for c in report["cells"]:
        lines.append(
            "| "
            + " | ".join(
                [c["model"], str(c["block"]), str(c["d"]), c["weights"]]
                + [_fmt(c.get(k)) for k in ("mAP", "mAP@10", "P@10", "P@100", "R@100")]
                + [
                    _fmt(c["img_s_bs32"], 1),
                    _fmt(c["p50_ms_bs1"], 2),
                    _fmt(c["speedup_vs_torch"], 2),
                    _fmt(c["gflops_per_image"], 2),
                    _fmt(c["sgemm_fraction"], 2),
                    _fmt(c.get("paper_mAP")),
                ]
            )
            + " |"
        )
    specs = sorted({s for c in report["cells"] for s in c.get("backends", {})})
    if specs:
        lines += [
            "",
            "Backend × precision (img/s at batch 8, ratio to ONNX Runtime FP32 measured next to it, ΔmAP):",
            "",
            "| model | block | " + " | ".join(specs) + " |",
            "|" + "---|" * (2 + len(specs)),
        ]
        for c in report["cells"]:
            cols = []
            for s in specs:
                r = c.get("backends", {}).get(s)
                cols.append(
                    "–"
                    if r is None
                    else f"{r['img_s_bs8']:.0f} ({r['ratio_vs_onnxruntime_bs8']:.2f}×"
                    + (f", ΔmAP {r['delta_mAP']:+.4f})" if "delta_mAP" in r else ")")
                )
            lines.append(f"| {c['model']} | {c['block']} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def pareto(ax, pts: list[tuple[float, float, str]]) -> None:
    """(cost, accuracy, label) points on ``ax``, labelled, with their Pareto front (lower cost, higher accuracy)."""
    if not pts:
        return
    pts = sorted(pts)
    front, best = [], -1.0
    for x, y, _ in pts:
        if y > best:
            front.append((x, y))
            best = y
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    for x, y, name in pts:
        ax.annotate(name, (x, y), fontsize=8)
    ax.plot([p[0] for p in front], [p[1] for p in front], "r--", label="Pareto front")
    ax.legend()


def plot(cells: list[dict], path: Path) -> bool:
    """Latency (ms per image at bs 32) against mAP, Pareto front marked; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    pts = [
        (1000.0 / c["img_s_bs32"], c["mAP"], f"{c['model']} B{c['block']}") for c in cells if c.get("mAP") is not None
    ]
    pareto(ax1, pts)
    ax1.set_xlabel("ms per image (bs 32, ORT CPU)")
    ax1.set_ylabel("mAP (Corel-1K, off-the-shelf)")
    ax1.set_title("latency vs accuracy (pretrained models)")
    names = [f"{c['model']} B{c['block']}" for c in cells]
    ax2.barh(names, [c["img_s_bs32"] for c in cells])
    ax2.set_xlabel("img/s (bs 32)")
    ax2.set_title("throughput, all models")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
