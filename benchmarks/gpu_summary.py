"""gpu_check.sh's summary: its steps' JSON (``steps/NAME.json``) → ``summary.json`` + ``summary.md``.

Usage: python benchmarks/gpu_summary.py STEPS_DIR OUT_DIR. A step that failed or was skipped is
listed with its status; what it printed is in steps.tgz.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(steps: Path, name: str):
    try:
        return json.loads((steps / f"{name}.json").read_text())
    except Exception:
        return None


def latency_md(title: str, r: dict) -> list[str]:
    """One table of `bench latency --compare`: model-only img/s per batch (ratio), end to end, agreement."""
    bs = r["batch_sizes"]
    md = [
        "",
        f"**{title}** (img/s, ratio to the first spec; end to end over {r.get('e2e_images') or r['files']} inputs)",
        "",
    ]
    md += ["| spec | " + " | ".join(f"bs {b}" for b in bs) + " | end to end | e2e / model-only | min cos to first |"]
    md += ["|---" * (len(bs) + 4) + "|"]
    for spec, row in r["backends"].items():
        cells = [
            f"{row['model_only_images_per_s'][str(b)]['median']:.0f} ({row['model_only_ratio'][str(b)]:.2f}×)"
            for b in bs
        ]
        e2e = row.get("end_to_end_images_per_s", {}).get("median")
        best = max(row["model_only_images_per_s"][str(b)]["median"] for b in bs)
        agree = row.get("agreement_with_first", {}).get("min_cos", "-")
        md.append(
            f"| {spec} | "
            + " | ".join(cells)
            + f" | {e2e if e2e is None else round(e2e)} | "
            + (f"{e2e / best:.2f}" if e2e else "-")
            + f" | {agree} |"
        )
    md += [f"| {spec} | unavailable: {err} |" for spec, err in r.get("unavailable", {}).items()]
    return md


def build_md(r: dict) -> list[str]:
    top = str(r["workers"][-1])
    md = ["", f"**build** ({r['images']} inputs, {r['providers'][0]}, batch {r['batch_size']})", ""]
    md += [
        f"- {k}: " + ", ".join(f"{w} workers {v:.0f}" for w, v in rates.items()) + f" img/s ({r['scaling'][k]}×)"
        for k, rates in r["stages_images_per_s"].items()
    ]
    md += [f"- model alone {r['model_images_per_s']:.0f} img/s; bound {r['bound_images_per_s']}"]
    md += [f"- limited by {r['limited_by']} (at {top} workers)"]
    md += [f"- build, features {b['features']}: {b['images_per_s']:.0f} img/s ({b['seconds']} s)" for b in r["builds"]]
    return md


def ivf_md(r: dict) -> list[str]:
    md = [
        "",
        f"**ivf** {r['n']:,} × {r['dim']}, nlist {r['nlist']}, k {r['k']}, batch {r['batch']}, target recall {r['target_recall']}",
        "",
    ]
    md += [
        "| kind | nprobe | recall torch / FAISS | torch q/s | FAISS CPU q/s | ratio | singles torch / FAISS | device GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in r["kinds"].items():
        rec, q, s = row["recall_at_k"], row["queries_per_s"], row["single_query_per_s"]
        md.append(
            f"| {kind} | {row['nprobe']} | {rec['torch']} / {rec['faiss_cpu']} | {q['torch']:.0f} | {q['faiss_cpu']:.0f} | "
            f"{row['ratio_torch_to_faiss_cpu']}× | {s.get('torch')} / {s.get('faiss_cpu')} | {row['device_bytes'] / 1e9:.2f} |"
        )
    return md


def http_md(r) -> list[str]:
    rows = r if isinstance(r, list) else r.get("runs", r.get("results", []))
    md = ["", "**serve** (POST /search, client on the same host)", ""]
    md += [
        "| rerank | concurrency | requests/s | p50 ms | p99 ms | status | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        md.append(
            f"| {x['rerank']} | {x['concurrency']} | {x['requests_per_s']:.0f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} "
            f"| {x['status']} | {x.get('mean_batch')} |"
        )
    return md


def main(steps: Path, dest: Path) -> None:
    rows = [line.split("\t") for line in (steps / "steps.tsv").read_text().split("\n") if line]
    res = {"steps": {n: {"rc": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": int(s)} for n, rc, s in rows}}
    res["env"] = load(steps, "env")
    md = [f"# gpu_check v3 {res['env']}", "", "| step | rc | s |", "|---|---|---|"] + [
        f"| {n} | {rc} | {s} |" for n, rc, s in rows
    ]
    for name in ("lite0", "b4"):
        r = load(steps, name)
        if r:
            res[name] = r
            md += latency_md(f"{name} model only", r["model_only"]) + latency_md(f"{name} end to end", r["end_to_end"])
    for name, fmt in (("build", build_md), ("ivf", ivf_md), ("serve", http_md)):
        r = load(steps, name)
        if r:
            res[name] = r
            md += fmt(r)
    for name in ("large", "compile"):
        r = load(steps, name)
        if r:
            res[name] = r
            md += latency_md(name, r)
    r = load(steps, "sweep")
    if r:
        from cbir.bench.sweep_device import markdown

        res["sweep"] = r
        md += ["", "**sweep**", "", markdown(r)]
    t = (steps / "tests_gpu.json").read_text().strip().splitlines() if (steps / "tests_gpu.json").exists() else []
    md += ["", "tests/gpu: " + (t[-1] if t else "no output")]
    (dest / "summary.json").write_text(json.dumps(res, indent=1))
    (dest / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
