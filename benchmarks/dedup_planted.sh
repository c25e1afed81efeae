#!/usr/bin/env bash
# The dedup planted set (BENCHMARKS "Dedup, per edit"): Corel-1K + 210 own edits of 30 images +
# 60 template copies of 20 others + the first 20 (sorted paths) of ten AugLy edits from an AugLy
# suite + 20 byte-identical copies (every 50th Corel image), then an index over it with the default
# Lite0 model.   usage: benchmarks/dedup_planted.sh CORELDIR AUGLY_SUITE MODEL.onnx OUTDIR
set -euo pipefail
corel=$(realpath "$1"); suite=$(realpath "$2"); model=$(realpath "$3"); out=$4
rm -rf "$out" && mkdir -p "$out/g/copies"
cp -r "$corel" "$out/g/corel" && rm -f "$out/g/corel/README.md"
cbir bench copies "$corel" "$out/g/copies" -n 30 --seed 0
cbir bench copies "$corel" "$out/g/copies" -n 20 --suite templates
for e in hflip vflip pip screenshot chain2 crop pixelization perspective_transform overlay_text blur; do
  (cd "$suite/copies/$e" && find . -type f | sort | head -20) | while read -r f; do
    mkdir -p "$out/g/copies/$e/$(dirname "$f")" && cp "$suite/copies/$e/$f" "$out/g/copies/$e/$f"; done
done
(cd "$corel" && find . -type f -name '*.jpg' | sort | awk 'NR % 50 == 1' | head -20) | while read -r f; do
  mkdir -p "$out/g/copies/identical/$(dirname "$f")" && cp "$corel/$f" "$out/g/copies/identical/$f"; done
echo "planted: $(find "$out/g/copies" -type f | wc -l) copies"
cbir index build "$out/g" --model "$model" --index "$out/idx"
