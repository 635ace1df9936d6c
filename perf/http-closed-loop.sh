#!/usr/bin/env bash
# Closed-loop HTTP/1.1 load (a fixed number of keep-alive connections, one request in flight
# each: loadgen's `http_closed_loop`, not wrk) against nacelle, and r-nacos when RNACOS_BIN (or
# `rnacos` on PATH) is there: registrations of INSTANCES distinct instances in SERVICES
# services, light beats of them, /instance/list of a 100-instance service, and liveness (the
# cheapest route: the floor of a request's cost). Reports requests/s and the server's CPU per
# request, user and kernel apart, from /proc/<pid>/stat.
#
# Placements: pinned (server on CPU 0, so one core; client on the other CPUs) and shared
# (both on all CPUs). One JSON line per (server, placement, conns, phase) in
# perf/results/http-closed-loop.json.
#
#   bash perf/http-closed-loop.sh          # CONNS="16 64" MODES="pinned shared" SECONDS_PER=8
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-16 64}; MODES=${MODES:-pinned shared}; SECONDS_PER=${SECONDS_PER:-8}
INSTANCES=${INSTANCES:-200000}; SERVICES=${SERVICES:-2000}; PORT=${PORT:-38848}
CPUS=$(nproc)
# The test script's build settings (scripts/test.sh), so a build here reuses its artifacts.
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-off}"
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-0}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}"
if [ -z "${NACELLE_BIN:-}" ]; then cargo build --release -q -p nacelle-server --bin nacelle; fi
cargo build --release -q -p loadgen --bin http_closed_loop
NACELLE=${NACELLE_BIN:-target/release/nacelle}
CLIENT=target/release/http_closed_loop
RNACOS=${RNACOS_BIN:-$(command -v rnacos || true)}
SERVERS="nacelle"; [ -n "$RNACOS" ] && [ -x "$RNACOS" ] && SERVERS="nacelle rnacos"
OUT=perf/results/http-closed-loop.json
WORK=$(mktemp -d); PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p perf/results; : >"$OUT"

start() {
  local pin=()
  [ "$2" = pinned ] && pin=(taskset -c 0)
  case $1 in
    nacelle) "${pin[@]}" "$NACELLE" --bind 127.0.0.1 --http-port $PORT --data-dir "$WORK/data-$RANDOM" >"$WORK/server.log" 2>&1 & ;;
    rnacos) rm -rf "$WORK/rn"; mkdir -p "$WORK/rn"
      env RNACOS_HTTP_PORT=$PORT RNACOS_GRPC_PORT=$((PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=$((PORT + 2000)) \
        RNACOS_CONFIG_DB_DIR="$WORK/rn" RNACOS_DATA_DIR="$WORK/rn" RNACOS_RAFT_NODE_ADDR=127.0.0.1:$((PORT + 1000)) \
        "${pin[@]}" "$RNACOS" >"$WORK/server.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" >/dev/null && return; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }

for mode in $MODES; do
  load=()
  [ "$mode" = pinned ] && [ "$CPUS" -ge 2 ] && load=(taskset -c 1-$((CPUS - 1)))
  for conns in $CONNS; do
    for server in $SERVERS; do
      start "$server" "$mode"
      "${load[@]}" "$CLIENT" --addr 127.0.0.1:$PORT --pid "$PID" --conns "$conns" --seconds "$SECONDS_PER" \
        --instances "$INSTANCES" --services "$SERVICES" --phases register,beat,list,liveness \
        | sed "s/^{/{\"server\":\"$server\",\"placement\":\"$mode\",\"load_avg\":\"$(cut -d' ' -f1 /proc/loadavg)\",/" | tee -a "$OUT"
      stop
    done
  done
done
echo "saved $OUT"
