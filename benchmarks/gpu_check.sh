#!/usr/bin/env bash
# The GPU path, measured on the lent GPU machine in one call (≤ 8 minutes), v3 (issue 38). Steps, in
# priority order (a step that would pass the deadline is skipped, so the summary is always written):
#   env         torch/CUDA/GPU, cores, and whether FP32 convolutions / matmuls run in TF32
#   tests_gpu   tests/gpu (torch.compile's test left to the compile step)
#   lite0       model-only img/s, ONNX Runtime on all cores vs torch FP32 (TF32 / IEEE), FP16 with CUDA
#               graphs, FP16 eager, at batch 1/32/128/256; end to end at steady state: ≥ 20,000 decodes of
#               the carried JPEGs cycled, after a warm pass — FP16 with 2 slots (default), 1 slot, --decode gpu
#   build       `cbir bench build`: each build stage alone at 1 and 16 workers, the model alone, what
#               limits a default build (with local features), two real builds of 20,000 inputs
#   ivf         `cbir bench ivf`: 10M × 320 IVF-Flat and IVF-SQ8 in PyTorch vs FAISS CPU IVF, same recall
#   b4          as lite0 for B4 380 px (end to end: 5,000 inputs)
#   large       end to end on large JPEGs (the carried ones enlarged to 4000 × 3000 here), Lite0 FP16
#   sweep       `cbir bench sweep-device`: B0–B5 × Block 6/7, FP16, batch 1 latency and batch 128 img/s
#   serve       `cbir serve --backend torch --device cuda --search-device cuda` + `cbir bench http`
#               at concurrency 1/32/128, --rerank none and default, client on the same host
#   compile     torch.compile max-autotune FP16 vs CUDA-graph eager FP16, Lite0 batch 256, cosines to ORT
# Results under $OUT: summary.json, summary.md, steps.tgz (each step's stdout JSON and stderr) and the
# sweep's pareto.png.
#   device:  bash benchmarks/gpu_check.sh              (carry: benchmarks/gpu_carry from gpu_prepare.sh;
#            bounded by GPU_CHECK_LIMIT seconds, default 480: on an H100 the first five steps fill it)
#            bash benchmarks/gpu_check.sh --steps b4,large,sweep,serve,compile   (the second call)
#   here:    bash benchmarks/gpu_check.sh --cpu-dry-run  (every step on the CPU at tiny sizes, ≤ 3 min)
# Random weights (speed does not depend on them); agreement columns are cosines to ORT FP32.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0; ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --steps) ONLY=",$2,"; shift ;;
    *) echo "gpu_check: unknown argument $1 (--cpu-dry-run, --steps a,b,...)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-/tmp/gpu_check_out}; mkdir -p "$OUT"
WORK=$(mktemp -d); S="$WORK/steps"; mkdir -p "$S"
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_LIMIT:-480} ))
PY=${PY:-python3}; [ $DRY = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -f benchmarks/gpu_carry/site.tar.xz ] && ! $PY -c "import faiss, onnxscript" 2>/dev/null; then
  mkdir -p "$WORK/site" && tar -C "$WORK/site" -xJf benchmarks/gpu_carry/site.tar.xz
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
  for lib in "$WORK"/site/nvidia/*/lib "$WORK"/site/nvidia/*/*/lib; do  # nvJPEG for nvImageCodec
    [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
fi
IMAGES=benchmarks/gpu_carry/images
if [ ! -d "$IMAGES" ]; then  # the dry run without a carry: a few real photos from scikit-image
  IMAGES="$WORK/images"; mkdir -p "$IMAGES/a" "$IMAGES/b"
  $PY -c "
import skimage.data as d; from PIL import Image
for i, n in enumerate(['astronaut', 'chelsea', 'coffee', 'rocket', 'camera', 'immunohistochemistry']):
    Image.fromarray(getattr(d, n)()).convert('RGB').save('$IMAGES/' + 'ab'[i % 2] + f'/{n}.jpg', quality=90)"
fi
if [ $DRY = 1 ]; then
  DEV=cpu; BS=1,8; SIZE="--image-size 64"; REP=1; E2E=60; E2E_B4=30; BUILD_N=40; WORKERS=1,2
  SPECS=onnxruntime,torch:fp32; E2E_SPECS=torch:fp32,torch:fp32+eager
  IVF="--n 20000 --dim 32 --queries 200 --tune 100 --clients 4"; SWEEP="--archs b0,b1 --image-size 64 --batch 8 --runs 5"
  HTTP="--concurrency 1,4 --requests 20"; COMPILE_SPECS=onnxruntime,torch:fp32
else
  DEV=cuda; BS=1,32,128,256; SIZE=""; REP=3; E2E=20000; E2E_B4=5000; BUILD_N=20000; WORKERS=1,16
  SPECS=onnxruntime,torch:fp32,torch:fp32+notf32,torch:fp16,torch:fp16+eager
  E2E_SPECS=torch:fp16,torch:fp16+oneslot,torch:fp16+gpudecode,torch:fp32
  IVF="--n 10000000 --dim 320 --queries 2000 --tune 500 --clients 16"; SWEEP="--runs 50"
  HTTP="--concurrency 1,32,128 --requests 3000"; COMPILE_SPECS=onnxruntime,torch:fp16,torch:fp16+compile
fi
CBIR="$PY -m cbir"
step() {  # step NAME TIMEOUT COMMAND...: stdout → $S/NAME.json, stderr → $S/NAME.err, status → steps.tsv
  local name=$1 limit=$2; shift 2
  if [ -n "$ONLY" ] && [ "$name" != env ] && [[ "$ONLY" != *",$name,"* ]]; then return; fi
  local t0=$(date +%s); local left=$(( DEADLINE - t0 - 15 ))  # 15 s kept for the summary
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then echo -e "$name\tskipped\t0" >> "$S/steps.tsv"; echo "step $name: skipped (no time left)" >&2; return; fi
  if declare -F "$1" > /dev/null; then  # a function of this script: run by a bash that has it
    timeout "$limit" bash -c "$*" > "$S/$name.json" 2> "$S/$name.err"
  else
    timeout "$limit" "$@" > "$S/$name.json" 2> "$S/$name.err"
  fi
  local rc=$?
  echo -e "$name\t$rc\t$(( $(date +%s) - t0 ))" >> "$S/steps.tsv"
  echo "step $name: rc $rc in $(( $(date +%s) - t0 )) s" >&2
}
export_model() {  # export_model ARCH_SHORT TIMM_NAME
  [ -f "$WORK/$1.onnx" ] || $CBIR export --arch "$2" --block 7 --pooling gap $SIZE --torch-checkpoint -o "$WORK/$1.onnx" --json >&2
}
: > "$S/steps.tsv"
step env 60 $PY -c "
import json, os, platform, torch
print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'cpus': os.cpu_count(), 'dry_run': $DRY,
  'cudnn_allow_tf32': torch.backends.cudnn.allow_tf32, 'matmul_allow_tf32': torch.backends.cuda.matmul.allow_tf32}))"
step tests_gpu 130 $PY -m pytest -q -rs tests/gpu -p no:cacheprovider -k "not compile"
latency_model() {  # latency_model SHORT TIMM_NAME E2E_INPUTS: model only, then end to end at steady state
  export_model "$1" "$2" || return 1
  $CBIR bench latency --model "$WORK/$1.onnx" --compare $SPECS --batch-sizes $BS --repeats $REP --json > "$WORK/$1_mo.json" || return 1
  $CBIR bench latency --model "$WORK/$1.onnx" --compare $E2E_SPECS --batch-sizes 256 --repeats 2 --data "$IMAGES" \
      --e2e-images "$3" --json > "$WORK/$1_e2e.json" || return 1
  $PY -c "import json; print(json.dumps({'model_only': json.load(open('$WORK/$1_mo.json')), 'end_to_end': json.load(open('$WORK/$1_e2e.json'))}))"
}
export WORK DRY SIZE CBIR PY SPECS E2E_SPECS E2E E2E_B4 BS REP IMAGES DEV HTTP
export -f export_model latency_model
step lite0 150 latency_model lite0 tf_efficientnet_lite0 $E2E
build() {
  export_model lite0 tf_efficientnet_lite0 || return 1
  $CBIR bench build --model "$WORK/lite0.onnx" --data "$IMAGES" --backend torch --device $DEV --workers $WORKERS \
      --images $BUILD_N --repeats 1 --json
}
export WORKERS BUILD_N COMPILE_SPECS
export -f build
step build 100 build
step ivf 150 $CBIR bench ivf $IVF --device $DEV --repeats $REP --json
step b4 150 latency_model b4 efficientnet_b4 $E2E_B4
large() {
  export_model lite0 tf_efficientnet_lite0 || return 1
  mkdir -p "$WORK/large/a"
  $PY -c "
import glob; from PIL import Image
for i, f in enumerate(sorted(glob.glob('$IMAGES/*/*.jpg'))[:20]):
    Image.open(f).convert('RGB').resize((4000, 3000) if $DRY == 0 else (800, 600)).save(f'$WORK/large/a/{i:02d}.jpg', quality=90)"
  $CBIR bench latency --model "$WORK/lite0.onnx" --compare $(echo $E2E_SPECS | cut -d, -f1,3) --batch-sizes 32 --repeats 2 \
      --data "$WORK/large" --e2e-images $([ $DRY = 1 ] && echo 20 || echo 2000) --json
}
export -f large
step large 80 large
step sweep 150 $CBIR bench sweep-device --out "$WORK/sweep" --device $DEV $SWEEP --repeats $REP \
     --cpu-report benchmarks/sweep/report.json --json
serve() {
  export_model lite0 tf_efficientnet_lite0 || return 1
  $CBIR index build "$IMAGES" --model "$WORK/lite0.onnx" --index "$WORK/idx" --backend torch --device $DEV >&2 || return 1
  local args=(--index "$WORK/idx" --port 8765 --backend torch --device $DEV)
  [ $DRY = 0 ] && args+=(--search-device cuda)
  $CBIR serve "${args[@]}" 2> "$WORK/serve.err" & local pid=$!
  trap "kill $pid 2> /dev/null" EXIT
  $PY -c "
import time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=1); break
    except Exception:
        time.sleep(0.5)" 
  $CBIR bench http --url http://127.0.0.1:8765 --image "$IMAGES" --rerank none,default $HTTP --json; local rc=$?
  kill $pid; wait $pid 2>/dev/null; return $rc
}
export -f serve
step serve 120 serve
compile() {
  export_model lite0 tf_efficientnet_lite0 || return 1
  $CBIR bench latency --model "$WORK/lite0.onnx" --compare $COMPILE_SPECS --batch-sizes 256 --repeats $REP \
      --data "$IMAGES" --json
}
export -f compile
step compile 150 compile
$PY benchmarks/gpu_summary.py "$S" "$OUT"
[ -f "$WORK/sweep/pareto.png" ] && cp "$WORK/sweep/pareto.png" "$OUT/sweep_pareto.png"
tar -C "$S" -czf "$OUT/steps.tgz" .
rm -rf "$WORK"
