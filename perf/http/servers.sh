# Sourced by perf/compare-http.sh and perf/http-closed-loop.sh: start and stop nacelle or
# r-nacos on $PORT in a placement, with $NACELLE, $RNACOS and $WORK set by the caller.
#   start nacelle|rnacos pinned|shared   sets PID (pinned: the server on CPU 0 alone)
#   stop
#   load_cmd pinned|shared               prints the taskset prefix for the load generator
start() {
  local pin=()
  [ "$2" = pinned ] && pin=(taskset -c 0)
  case $1 in
    nacelle) "${pin[@]}" "$NACELLE" --bind 127.0.0.1 --http-port "$PORT" --data-dir "$WORK/data-$RANDOM" >"$WORK/server.log" 2>&1 & ;;
    rnacos) rm -rf "$WORK/rn"; mkdir -p "$WORK/rn"
      env RNACOS_HTTP_PORT="$PORT" RNACOS_GRPC_PORT=$((PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=$((PORT + 2000)) \
        RNACOS_CONFIG_DB_DIR="$WORK/rn" RNACOS_DATA_DIR="$WORK/rn" RNACOS_RAFT_NODE_ADDR=127.0.0.1:$((PORT + 1000)) \
        "${pin[@]}" "$RNACOS" >"$WORK/server.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" >/dev/null && return; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
load_cmd() {
  if [ "$1" = pinned ] && [ "$(nproc)" -ge 2 ]; then echo "taskset -c 1-$(($(nproc) - 1))"; fi
}
