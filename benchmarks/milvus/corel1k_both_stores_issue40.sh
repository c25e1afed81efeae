#!/bin/bash
# Corel-1K through index.faiss and through Milvus Lite: class mAP and the AugLy copy suite; the base commit on the local index for speed
set -x
C=/work/shared/datasets/corel1k; M=/tmp/live/lite0.onnx; B=/work/main/.venv/bin; cd /tmp/m40
rm -rf local.idx milvus.idx corel.db
/usr/bin/time -v $B/cbir index build $C --model $M --index local.idx --json > build_local.json 2> build_local.err
/usr/bin/time -v $B/cbir index build $C --model $M --index milvus.idx --store milvus-lite:/tmp/m40/corel.db --json > build_milvus.json 2> build_milvus.err
for x in local milvus; do $B/cbir bench class-search --index $x.idx --data $C --json > class_$x.json 2> class_$x.err; done
PYTHONPATH=/tmp/m40/base/src $B/python -m cbir bench copy-search --index local.idx --data $C --suite /tmp/c37/suite --per-aug 50 --json > copy_local_base.json 2> copy_local_base.err
for x in local milvus; do $B/cbir bench copy-search --index $x.idx --data $C --suite /tmp/c37/suite --per-aug 50 --json > copy_$x.json 2> copy_$x.err; done
touch done
