#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh carries to the lent GPU machine (Python 3.12, no network,
# ≤ 64 MiB per call): wheels its fixed image lacks, installed there with pip --no-index --target,
# and a stratified sample of Corel-1K JPEGs for the end-to-end figure. Writes benchmarks/gpu_carry/
# (git-ignored: pass it in the run's carry list) and prints its size.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=benchmarks/gpu_carry
DATA=${DATA:-../shared/datasets/corel1k}
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/images"
PIP=${PIP:-.venv/bin/pip}
# faiss-cpu: the FAISS CPU baseline and the index code; onnxscript + onnx-ir + ml-dtypes: torch.onnx's
# exporter; pytest + pluggy + iniconfig: tests/gpu; nvidia-nvimgcodec-cu13 + nvidia-nvjpeg: --decode gpu.
# All for CPython 3.12, manylinux x86-64.
$PIP download -q --only-binary=:all: --python-version 3.12 --no-deps -d "$CARRY/wheels" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    faiss-cpu onnxscript onnx-ir ml-dtypes pytest pluggy iniconfig nvidia-nvimgcodec-cu13 nvidia-nvjpeg 2>&1 | grep -v "^WARNING: Location" || true
# 20 images per class, 200 in all
for d in "$DATA"/*/; do
  c=$(basename "$d"); mkdir -p "$CARRY/images/$c"
  ls "$d" | grep -i '\.jpg$' | sort | head -20 | while read -r f; do cp "$d/$f" "$CARRY/images/$c/"; done
done
du -sh "$CARRY"
kb=$(du -sk "$CARRY" | cut -f1)
[ "$kb" -le $((60 * 1024)) ] || { echo "gpu_prepare: $CARRY is ${kb} KiB, over the 60 MiB left beside the tree" >&2; exit 1; }
