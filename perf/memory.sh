#!/usr/bin/env bash
# RSS growth per instance of nacelle and r-nacos at 1,000,000 instances (10,000 services x 100,
# two short metadata entries each), registered over gRPC by loadgen from 100 connections and
# held while RSS is read. One server at a time; results in perf/results/memory.json.
#
#   bash perf/memory.sh            # INSTANCES=1000000 SERVICES=10000 CONNECTIONS=100
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-1000000}; SERVICES=${SERVICES:-10000}; CONNECTIONS=${CONNECTIONS:-100}
PORT=${PORT:-48848}; SERVERS=${SERVERS:-"nacelle rnacos"}
RNACOS=${RNACOS_BIN:-$(command -v rnacos || echo "$HOME/.cargo/bin/rnacos")}
cargo build --release -q -p nacelle-server -p loadgen
WORK=$(mktemp -d); PID=""
# set +e: pkill finds nothing after a normal run, and under -e that made the script exit 1.
cleanup() { set +e; [ -n "$PID" ] && kill "$PID" 2>/dev/null; pkill -f "loadgen register --targets 127.0.0.1:$PORT" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p perf/results
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
results=()
for server in $SERVERS; do
  case $server in
    nacelle) target/release/nacelle --bind 127.0.0.1 --http-port $PORT --data-dir "$WORK/data-$RANDOM" >"$WORK/server.log" 2>&1 & ;;
    rnacos) [ -x "$RNACOS" ] || cargo install --locked rnacos
      rm -rf "$WORK/rn"; mkdir -p "$WORK/rn"
      env RNACOS_HTTP_PORT=$PORT RNACOS_GRPC_PORT=$((PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=$((PORT + 2000)) \
        RNACOS_CONFIG_DB_DIR="$WORK/rn" RNACOS_DATA_DIR="$WORK/rn" RNACOS_RAFT_NODE_ADDR=127.0.0.1:$((PORT + 1000)) \
        "$RNACOS" >"$WORK/server.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" >/dev/null && break; sleep 0.1; done
  sleep 1
  before=$(rss)
  target/release/loadgen register --targets 127.0.0.1:$PORT --instances "$INSTANCES" --connections "$CONNECTIONS" \
    --services "$SERVICES" --metadata-entries 2 --no-verify --hold -1 >"$WORK/loadgen.log" 2>&1 &
  LG=$!
  until grep -q "holding" "$WORK/loadgen.log" 2>/dev/null; do
    kill -0 $LG 2>/dev/null || { echo "loadgen failed:"; cat "$WORK/loadgen.log"; exit 1; }
    sleep 2
  done
  sleep 5
  count=$(curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("instanceCount", -1))')
  after=$(rss)
  per=$(( (after - before) * 1024 / INSTANCES ))
  rate=$(grep -o "registered.*" "$WORK/loadgen.log" | head -1)
  echo "$server: rss before ${before} kB, after ${after} kB, instances reported ${count}: ${per} bytes/instance ($rate)"
  results+=("{\"server\":\"$server\",\"rss_before_kb\":$before,\"rss_after_kb\":$after,\"instances\":$INSTANCES,\"reported_instances\":$count,\"bytes_per_instance\":$per}")
  kill $LG 2>/dev/null; wait $LG 2>/dev/null || true
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
done
printf '{"machine":"%s","results":[%s]}\n' "$(uname -n) $(nproc) cpus" "$(IFS=,; echo "${results[*]}")" > perf/results/memory.json
cat perf/results/memory.json
