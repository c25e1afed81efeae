#!/bin/bash
# ONNX Runtime spinning always (the code before) vs inside a run only (this change), never beside them in the model bench: model-only + bulk, then one-image searches at 1k and 101k
set -x
C=/work/shared/datasets/corel1k; M=/tmp/live/lite0.onnx; P=/work/main/.venv/bin/python; cd /tmp/spin
$P -m cbir bench latency --model $M --compare onnxruntime+spin,onnxruntime+runspin,onnxruntime+nospin --batch-sizes 1,8,32 --data $C --repeats 5 --json > latency_compare.json 2> latency_compare.err
for r in 1 2; do
  PYTHONPATH=/tmp/spin/base/src $P -m cbir bench copy-search --index /tmp/m40/local.idx --data $C --suite /tmp/c37/suite --per-aug 20 --json > copy1k_spin_$r.json 2> copy1k_spin_$r.err
  $P -m cbir bench copy-search --index /tmp/m40/local.idx --data $C --suite /tmp/c37/suite --per-aug 20 --json > copy1k_run_$r.json 2> copy1k_run_$r.err
done
PYTHONPATH=/tmp/spin/base/src $P -m cbir bench copy-search --index /tmp/c42/grow --data $C --suite /tmp/c37/suite --per-aug 10 --json > copy101k_spin.json 2> copy101k_spin.err
$P -m cbir bench copy-search --index /tmp/c42/grow --data $C --suite /tmp/c37/suite --per-aug 10 --json > copy101k_run.json 2> copy101k_run.err
touch done
