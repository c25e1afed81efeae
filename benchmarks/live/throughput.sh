#!/bin/bash
# The default search vs --rerank none through `cbir serve`, interleaved (issue 37, BENCHMARKS.md "A live gallery").
# usage: benchmarks/live/throughput.sh INDEX PORT OUT.json REQUESTS CONCURRENCY ROUNDS QUERY...
#   SERVER_PYTHONPATH=/path/to/other/checkout/src runs the server from another checkout (the "before").
# e.g. benchmarks/live/throughput.sh /tmp/live/corel.idx 8801 new.json 160 1,8 3 /tmp/tpq
set -u
cd "$(dirname "$0")/../.."
INDEX=$1; PORT=$2; OUT=$3; REQ=$4; CONC=$5; ROUNDS=$6; shift 6
PYTHONPATH=${SERVER_PYTHONPATH:-} .venv/bin/cbir serve --index "$INDEX" --port "$PORT" > "$OUT.serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 1; done
.venv/bin/cbir bench http --url "http://127.0.0.1:$PORT" --image "$@" --rerank none,default --concurrency "$CONC" \
  --requests "$REQ" --rounds "$ROUNDS" --json > "$OUT"
kill $PID; wait $PID 2>/dev/null
.venv/bin/python benchmarks/live/summarize_http.py "$OUT"
