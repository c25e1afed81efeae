"""``cbir bench sweep-device``: the B0–B5 × Block 6/7 latency table on a device, beside the CPU sweep.

Each cell's model is built in PyTorch from its spec (``TorchRunner.from_spec``: timm trunk cut after
the block + GAP head, random weights — speed does not depend on them; no ONNX export, so all 12 fit
one short call) and run as ``--backend torch`` runs it: FP16 trunk with CUDA graphs, channels-last, on
``device``. Per cell: batch-1 latency (p50 / p99 ms of ``latency_runs`` single-image calls, the answer
back on the host) and img/s at ``batch`` (median of ``repeats``). Accuracy is not measured here: the
CPU sweep's report (``--cpu-report``, ``cbir bench sweep``'s report.json) gives its img/s and p50 and,
where it had offline weights, mAP; the paper's Table I mAP (fine-tuned) stands beside every B0–B5
cell. The Pareto plot puts device latency against the paper's mAP (the only accuracy a random-weight
B0–B5 has) and is labelled so. Outputs in ``out``: report.json, report.md, pareto.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from cbir import fsio
from cbir.bench.sweep import PUBLISHED, pareto


def device_cell(
    short: str, block: int, device: str, precision: str | None, batch: int, repeats: int, runs: int, image_size=None
) -> dict:
    """One arch × block on ``device``: batch-1 latency and throughput at ``batch``."""
    from cbir.bench.latency import latencies, throughput
    from cbir.engine.backends.torch import TorchRunner

    t0 = time.perf_counter()
    runner = TorchRunner.from_spec(short, block, image_size=image_size, device=device, precision=precision)
    h, w = runner.info.input_size
    x = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    lat = latencies(lambda: runner.run(x[:1]), n=runs, warmup=3)
    rate = throughput(runner.run, x, repeats, 1)
    runner.close()
    return {
        "model": short,
        "block": block,
        "d": runner.info.dim,
        "image_size": h,
        "providers": runner.providers,
        "p50_ms_bs1": round(float(np.median(lat)), 3),
        "p99_ms_bs1": round(float(np.percentile(lat, 99)), 3),
        f"img_s_bs{batch}": round(rate["median"], 1),
        "paper_mAP": PUBLISHED.get((short, block)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _cpu_cells(path: str | None) -> dict:
    if not path:
        return {}
    cells = json.loads(Path(path).read_text()).get("cells", [])
    return {(c["model"], c["block"]): c for c in cells}


def sweep_device(
    out: str,
    archs: Sequence[str] = ("b0", "b1", "b2", "b3", "b4", "b5"),
    blocks: Sequence[int] = (6, 7),
    device: str = "cuda",
    precision: str | None = None,
    batch: int = 128,
    repeats: int = 3,
    runs: int = 50,
    cpu_report: str | None = None,
    image_size: int | None = None,
) -> dict:
    """Every cell (see the module docstring); the report is written after each cell (a cut-off run
    keeps what it measured)."""
    from cbir.bench.machine import describe

    cpu = _cpu_cells(cpu_report)
    report = {"machine": describe(), "device": device, "batch": batch, "cpu_report": cpu_report, "cells": []}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for a in archs:
        for b in blocks:
            cell = device_cell(a, b, device, precision, batch, repeats, runs, image_size)
            c = cpu.get((a, b), {})
            cell.update({"cpu_img_s_bs32": c.get("img_s_bs32"), "cpu_p50_ms_bs1": c.get("p50_ms_bs1")})
            cell.update({"cpu_mAP": c.get("mAP"), "weights_cpu": c.get("weights")})
            report["cells"].append(cell)
            fsio.write_json(out_dir / "report.json", report)
    fsio.write_text(out_dir / "report.md", markdown(report))
    plot(report, out_dir / "pareto.png")
    return report


def _fmt(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    b = report["batch"]
    lines = [
        f"Device: {report['device']} ({report['cells'][0]['providers'][0] if report['cells'] else ''}); random weights.",
        "",
        f"| model | block | d | px | p50 ms (bs 1) | p99 ms (bs 1) | img/s (bs {b}) | CPU img/s (bs 32) "
        "| CPU p50 ms (bs 1) | CPU mAP (off-the-shelf) | paper mAP (fine-tuned) |",
        "|" + "---|" * 11,
    ]
    for c in report["cells"]:
        row = [c["model"], str(c["block"]), str(c["d"]), str(c["image_size"])]
        row += [_fmt(c["p50_ms_bs1"], 2), _fmt(c["p99_ms_bs1"], 2), _fmt(c[f"img_s_bs{b}"])]
        row += [_fmt(c["cpu_img_s_bs32"]), _fmt(c["cpu_p50_ms_bs1"], 2), _fmt(c["cpu_mAP"], 3), _fmt(c["paper_mAP"], 3)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """Device batch-1 p50 latency against the paper's mAP, one point per cell; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts = [(c["p50_ms_bs1"], c["paper_mAP"], f"{c['model']} B{c['block']}") for c in report["cells"] if c["paper_mAP"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pareto(ax, pts)
    ax.set_xlabel(f"p50 ms per image at batch 1 ({report['device']})")
    ax.set_ylabel("mAP, the paper's Table I (fine-tuned)")
    ax.set_title("latency on the device vs the paper's accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
