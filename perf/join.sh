#!/usr/bin/env bash
# Join time alone: 3 nodes (127.0.0.1-3, one core each) hold INSTANCES gRPC instances
# (300 connections, 10,000 services) and CLIENTS HTTP ip:port clients, then a 4th node starts;
# prints the seconds until its /operator/metrics says UP, the instances it then holds, and
# its own "startup snapshot loaded" time. RUNS fresh clusters, one line each.
#
#   bash perf/join.sh                    # INSTANCES=1000000 CLIENTS=0 RUNS=3
#   CLIENTS=100000 bash perf/join.sh
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-1000000}; CLIENTS=${CLIENTS:-0}; RUNS=${RUNS:-3}; PORT=${PORT:-37848}
cargo build --release -q -p nacelle-server -p loadgen
WORK=$(mktemp -d); cp target/release/nacelle target/release/loadgen "$WORK/"; PIDS=()
stop_all() { set +e; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; PIDS=(); set -e; }
trap 'stop_all; rm -rf "$WORK"' EXIT
MEMBERS="127.0.0.1:$PORT,127.0.0.2:$PORT,127.0.0.3:$PORT,127.0.0.4:$PORT"
start() { "$WORK/nacelle" --bind "127.0.0.$1" --http-port "$PORT" --members "$MEMBERS" --insecure --cores 1 --data-dir "$WORK/data-$1" >"$WORK/n$1.log" 2>&1 & PIDS+=($!); }
field() { curl -sf -m 5 "http://127.0.0.$1:$PORT/nacos/v1/ns/operator/metrics" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || echo "?"; }
for run in $(seq "$RUNS"); do
  for i in 1 2 3; do start $i; done
  until [ "$(field 3 status)" = UP ]; do sleep 0.2; done
  held=0
  if [ "$CLIENTS" -gt 0 ]; then
    command -v wrk >/dev/null || { echo "CLIENTS needs wrk" >&2; exit 1; }
    wrk -t2 -c64 -d60s -s perf/http/register.lua "http://127.0.0.1:$PORT" -- 1000 $((CLIENTS / 2)) 0 lasting >/dev/null
    # What the nodes hold, not CLIENTS: wrk calls request() once more than it sends (it
    # checks the script's first request before the run), so CLIENTS - 1 arrive.
    sleep 2; held=$(field 1 instanceCount)
  fi
  total=$((INSTANCES + held))
  "$WORK/loadgen" register --targets "127.0.0.1:$PORT,127.0.0.2:$PORT,127.0.0.3:$PORT" --instances "$INSTANCES" \
    --connections 300 --services 10000 --batch 100 --no-verify --hold -1 --no-progress >"$WORK/lg.log" 2>&1 &
  PIDS+=($!)
  until grep -q holding "$WORK/lg.log"; do sleep 1; done
  for _ in $(seq 300); do [ "$(field 3 instanceCount)" = "$total" ] && break; sleep 1; done
  t0=$(date +%s.%N); start 4
  until [ "$(field 4 status)" = UP ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  loaded=$(grep -o 'after_ms[^ ]*' "$WORK/n4.log" | sed 's/\x1b\[[0-9;]*m//g' | head -1)
  echo "run $run: node 4 UP after $(python3 -c "print(round($t1 - $t0, 2))") s holding $(field 4 instanceCount) of $total ($loaded)"
  stop_all
done
