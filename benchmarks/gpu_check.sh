#!/usr/bin/env bash
# The GPU path, measured on the lent GPU machine in one call (≤ 8 minutes): GPU tests, model-only and
# end-to-end throughput of ONNX Runtime (CPU, all cores) vs --backend torch (FP32, FP16 with CUDA
# graphs, FP16 eager, FP16 with --decode gpu) for Lite0 and B4 at batch 1/32/128/256, each spec's
# cosine to ORT FP32 on the carried photos, and exact search over 1M × 320 in PyTorch vs FAISS CPU
# Flat (plus 16 clients of single queries). Results under $OUT: summary.json, summary.md and
# steps.tgz (each step's stdout JSON and stderr; one tarball, as the device returns at most 8 files).
#   device:  bash benchmarks/gpu_check.sh                (carry: benchmarks/gpu_carry from gpu_prepare.sh;
#            the whole script is bounded by GPU_CHECK_LIMIT seconds, default 520, so a stuck step
#            still leaves the others' results)
#   here:    bash benchmarks/gpu_check.sh --cpu-dry-run  (every step on the CPU at tiny sizes, ≤ 3 min)
# Random weights for both models (speed does not depend on them; the torch-vs-ORT cosine is checked
# by tests/gpu and by the latency step's agreement figures).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; [ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"
WORK=$(mktemp -d); S="$WORK/steps"; mkdir -p "$S"
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_LIMIT:-520} ))
PY=${PY:-python3}; [ $DRY = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -f benchmarks/gpu_carry/site.tar.xz ] && ! $PY -c "import faiss, onnxscript" 2>/dev/null; then
  mkdir -p "$WORK/site" && tar -C "$WORK/site" -xJf benchmarks/gpu_carry/site.tar.xz
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
  for lib in "$WORK"/site/nvidia/*/lib "$WORK"/site/nvidia/*/*/lib; do  # nvJPEG for nvImageCodec
    [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi
IMAGES=benchmarks/gpu_carry/images; [ -d "$IMAGES" ] || IMAGES=""
if [ $DRY = 1 ]; then
  BS=1,8; SPECS=onnxruntime,torch:fp32; N=20000; DIM=64; Q=200; QB=50; SIZE="--image-size 64"; REP=1
else
  BS=1,32,128,256; SPECS=onnxruntime,torch:fp32,torch:fp16,torch:fp16+eager,torch:fp16+gpudecode; N=1000000; DIM=320; Q=2000; QB=100; SIZE=""; REP=3
fi
CBIR="$PY -m cbir"
step() {  # step NAME TIMEOUT COMMAND...: stdout → $S/NAME.json, stderr → $S/NAME.err, status → steps.tsv
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s); local left=$(( DEADLINE - t0 - 15 ))  # 15 s kept for the summary
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo -e "$name\tskipped\t0" >> "$S/steps.tsv"; echo "step $name: skipped (no time left)" >&2; return; fi
  timeout "$limit" "$@" > "$S/$name.json" 2> "$S/$name.err"; local rc=$?
  echo -e "$name\t$rc\t$(( $(date +%s) - t0 ))" >> "$S/steps.tsv"
  echo "step $name: rc $rc in $(( $(date +%s) - t0 )) s" >&2
}
: > "$S/steps.tsv"
step env 60 $PY -c "
import json, os, platform, torch
print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'cpus': os.cpu_count(), 'dry_run': $DRY}))"
step tests_gpu 150 $PY -m pytest -q -rs tests/gpu -p no:cacheprovider
for arch in lite0 b4; do
  name=tf_efficientnet_lite0; [ $arch = b4 ] && name=efficientnet_b4
  step export_$arch 120 $CBIR export --arch $name --block 7 --pooling gap $SIZE --torch-checkpoint -o "$WORK/$arch.onnx" --json
  step latency_$arch $([ $arch = b4 ] && echo 240 || echo 150) $CBIR bench latency --model "$WORK/$arch.onnx" --compare $SPECS --batch-sizes $BS \
       --repeats $REP ${IMAGES:+--data $IMAGES} --json
done
step exact 150 $CBIR bench exact --n $N --dim $DIM --queries $Q --batch $QB --repeats $REP \
     --device "$([ $DRY = 1 ] && echo cpu || echo cuda)" --json
$PY - "$S" "$OUT" <<'PYEOF'
import json, sys, pathlib
out, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
steps = [l.split("\t") for l in (out / "steps.tsv").read_text().split("\n") if l]
res = {"steps": {n: {"rc": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": int(s)} for n, rc, s in steps}}
def load(n):
    try:
        return json.loads((out / f"{n}.json").read_text())
    except Exception:
        return None
res["env"] = load("env")
md = [f"# gpu_check {res['env']}", "", "| step | rc | s |", "|---|---|---|"] + [f"| {n} | {rc} | {s} |" for n, rc, s in steps]
for arch in ("lite0", "b4"):
    r = load(f"latency_{arch}")
    if not r:
        continue
    res[f"latency_{arch}"] = r
    md += ["", f"**{arch}** model-only img/s (ratio to the first)", "", "| backend | " + " | ".join(f"bs {b}" for b in r["batch_sizes"]) + " | end-to-end | min cos to first |", "|---" * (len(r["batch_sizes"]) + 3) + "|"]
    for spec, row in r["backends"].items():
        cells = [f"{row['model_only_images_per_s'][str(b)]['median']:.0f} ({row['model_only_ratio'][str(b)]:.2f}×)" for b in r["batch_sizes"]]
        e2e = f"{row['end_to_end_images_per_s']['median']:.0f}" if "end_to_end_images_per_s" in row else "-"
        agree = row.get("agreement_with_first", {}).get("min_cos", "-")
        md.append(f"| {spec} | " + " | ".join(cells) + f" | {e2e} | {agree} |")
    md += [f"| {spec} | unavailable: {err} |" for spec, err in r.get("unavailable", {}).items()]
e = load("exact")
if e:
    res["exact"] = e
    md += ["", f"exact k={e['k']} over {e['n']:,} × {e['dim']}: torch {e['queries_per_s']['torch']} q/s vs FAISS CPU {e['queries_per_s']['faiss_cpu']} q/s = {e['ratio_torch_to_faiss_cpu']}×, recall {e['recall_at_k_vs_faiss']}",
           f"single queries from {e.get('clients')} threads: {e.get('single_query_per_s')} ({e.get('mean_combined')} per matmul)"]
t = (out / "tests_gpu.json").read_text().strip().splitlines() if (out / "tests_gpu.json").exists() else []
md += ["", "tests/gpu: " + (t[-1] if t else "no output")]
(dest / "summary.json").write_text(json.dumps(res, indent=1))
(dest / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PYEOF
tar -C "$S" -czf "$OUT/steps.tgz" .
rm -rf "$WORK"
