#!/usr/bin/env bash
# The dedup planted set (BENCHMARKS "Dedup, per edit"): Corel-1K + 210 own edits of 30 images +
# 60 template copies of 20 others + 20 copies (sorted paths) of ten AugLy edits from an AugLy
# suite + 20 byte-identical copies (every 50th Corel image), then an index over it with the default
# Lite0 model.   usage: benchmarks/dedup_planted.sh CORELDIR AUGLY_SUITE MODEL.onnx OUTDIR [SEED]
# SEED 0 (default): the set the dedup rules were designed on — the first 20 AugLy copies per edit.
# SEED 1: a held-out set — other images for the own edits and templates, the last 20 AugLy copies
# per edit, the identical copies offset by 25.
set -euo pipefail
corel=$(realpath "$1"); suite=$(realpath "$2"); model=$(realpath "$3"); out=$4; seed=${5:-0}
pick=head; offset=1
if [ "$seed" != 0 ]; then pick=tail; offset=26; fi
rm -rf "$out" && mkdir -p "$out/g/copies"
cp -r "$corel" "$out/g/corel" && rm -f "$out/g/corel/README.md"
cbir bench copies "$corel" "$out/g/copies" -n 30 --seed "$seed"
cbir bench copies "$corel" "$out/g/copies" -n 20 --suite templates --seed "$seed"
for e in hflip vflip pip screenshot chain2 crop pixelization perspective_transform overlay_text blur; do
  (cd "$suite/copies/$e" && find . -type f | sort | $pick -20) | while read -r f; do
    mkdir -p "$out/g/copies/$e/$(dirname "$f")" && cp "$suite/copies/$e/$f" "$out/g/copies/$e/$f"; done
done
(cd "$corel" && find . -type f -name '*.jpg' | sort | awk -v o="$offset" 'NR % 50 == o % 50' | head -20) | while read -r f; do
  mkdir -p "$out/g/copies/identical/$(dirname "$f")" && cp "$corel/$f" "$out/g/copies/identical/$f"; done
echo "planted: $(find "$out/g/copies" -type f | wc -l) copies"
cbir index build "$out/g" --model "$model" --index "$out/idx"
