#!/usr/bin/env bash
# Official-SDK conformance suites (Python gRPC, Node HTTP v1, Rust gRPC) against a server.
#
#   tests/sdk/run.sh nacelle   # uses ${NACELLE_BIN:-target/release/nacelle}
#   tests/sdk/run.sh rnacos    # uses ${RNACOS_BIN:-rnacos on PATH or ~/.cargo/bin/rnacos}
#   tests/sdk/run.sh nacelle-cluster
#       three nacelle nodes (127.0.0.1-3, same ports, one core each); every suite talks to
#       node 2, and test_cluster.py writes through one node and reads through the others
#
# Optional environment:
#   SDK_SUITES="python node rust"   which suites to run (default: all three)
#   SDK_SUITE_TIMEOUT=110            per-suite wall-clock cap in seconds
#   NACELLE_CORES=2                  --cores for nacelle
#   SDK_NO_INSTALL=1                 never install anything (fail instead)
#   SDK_KEEP_LOGS=1                  keep the temp dir with the server log
#
# Exit status: 0 only if every selected suite passed.
set -uo pipefail

KIND="${1:-}"
case "$KIND" in
  nacelle|rnacos|nacelle-cluster) ;;
  *) echo "usage: $0 nacelle|rnacos|nacelle-cluster" >&2; exit 2 ;;
esac

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SDK_DIR/../.." && pwd)"
SUITES="${SDK_SUITES:-python node rust}"
SUITE_TIMEOUT="${SDK_SUITE_TIMEOUT:-110}"
HOST=127.0.0.1
WORK="$(mktemp -d /tmp/nacos-sdk-conformance.XXXXXX)"
SERVER_PIDS=()

log() { printf '[sdk-conformance] %s\n' "$*"; }

cleanup() {
  local rc=$?
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ -n "${SDK_KEEP_LOGS:-}" ]]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

want() { [[ " $SUITES " == *" $1 "* ]]; }

# ---------------------------------------------------------------- installs (idempotent)
install_python() {
  if python3 -c 'import v2.nacos, pytest' 2>/dev/null; then return 0; fi
  [[ -n "${SDK_NO_INSTALL:-}" ]] && { log "python deps missing"; return 1; }
  log "installing nacos-sdk-python 3.x + pytest"
  python3 -m pip install -q --disable-pip-version-check 'nacos-sdk-python>=3,<4' pytest >/dev/null 2>&1 \
    || python3 -m pip install -q --disable-pip-version-check 'nacos-sdk-python>=3,<4' pytest
}

install_node() {
  if [[ -f "$SDK_DIR/node/node_modules/nacos/package.json" ]]; then return 0; fi
  [[ -n "${SDK_NO_INSTALL:-}" ]] && { log "node deps missing"; return 1; }
  log "installing npm nacos 2.x"
  (cd "$SDK_DIR/node" && if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund --loglevel=error;
                         else npm install --no-audit --no-fund --loglevel=error; fi) >/dev/null
}

build_rust() {
  log "building the Rust SDK suite (cargo -j${SDK_CARGO_JOBS:-$(nproc)})"
  (cd "$SDK_DIR/rust" && cargo test -j"${SDK_CARGO_JOBS:-$(nproc)}" --no-run --quiet) >"$WORK/rust-build.log" 2>&1 \
    || { tail -30 "$WORK/rust-build.log"; return 1; }
}

SETUP_FAIL=0
want python && { install_python || SETUP_FAIL=1; }
want node && { install_node || SETUP_FAIL=1; }
want rust && { build_rust || SETUP_FAIL=1; }

# ---------------------------------------------------------------- server binary
if [[ "$KIND" == nacelle* ]]; then
  BIN="${NACELLE_BIN:-$REPO_ROOT/target/release/nacelle}"
else
  BIN="${RNACOS_BIN:-$(command -v rnacos 2>/dev/null || echo "$HOME/.cargo/bin/rnacos")}"
  if [[ ! -x "$BIN" && -z "${SDK_NO_INSTALL:-}" ]]; then
    log "r-nacos not found; installing with cargo install --locked rnacos (slow)"
    cargo install --locked -j1 rnacos >"$WORK/rnacos-install.log" 2>&1 || tail -20 "$WORK/rnacos-install.log"
    BIN="$HOME/.cargo/bin/rnacos"
  fi
fi
[[ -x "$BIN" ]] || { log "server binary not found or not executable: $BIN"; exit 1; }

# ---------------------------------------------------------------- ports
# HTTP port P with P+1000 (gRPC), P+1001 (UDP, cluster peers) and P+2000 (r-nacos console)
# free on every host used.
if [[ "$KIND" == nacelle-cluster ]]; then NODES=(127.0.0.1 127.0.0.2 127.0.0.3); else NODES=("$HOST"); fi
read -r HTTP_PORT GRPC_PORT < <(python3 - "${NODES[@]}" <<'EOF'
import random, socket, sys
def free(host, p, kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((host, p)); return True
    except OSError:
        return False
    finally:
        s.close()
for _ in range(500):
    p = random.randint(20000, 40000)
    if all(free(h, p) and free(h, p + 1000) and free(h, p + 1001, socket.SOCK_DGRAM) and free(h, p + 2000)
           for h in sys.argv[1:]):
        print(p, p + 1000); break
EOF
)
[[ -n "${HTTP_PORT:-}" ]] || { log "could not find free ports"; exit 1; }

# ---------------------------------------------------------------- start server
SERVER_LOG="$WORK/server.log"
log "starting $KIND ($BIN) http=$HTTP_PORT grpc=$GRPC_PORT"
if [[ "$KIND" == nacelle ]]; then
  "$BIN" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --bind "$HOST" --cores "${NACELLE_CORES:-2}" \
    --data-dir "$WORK/nacelle-data" >"$SERVER_LOG" 2>&1 &
elif [[ "$KIND" == nacelle-cluster ]]; then
  MEMBERS=$(printf "%s:$HTTP_PORT," "${NODES[@]}"); MEMBERS=${MEMBERS%,}
  for i in "${!NODES[@]}"; do
    "$BIN" --http-port "$HTTP_PORT" --bind "${NODES[$i]}" --members "$MEMBERS" --insecure \
      --cores "${NACELLE_CORES:-1}" --data-dir "$WORK/nacelle-data-$((i + 1))" \
      >"$WORK/node$((i + 1)).log" 2>&1 &
    SERVER_PIDS+=($!)
  done
  # Suites talk to node 2: neither the first member nor the one they were written against.
  HOST=${NODES[1]}; SERVER_LOG="$WORK/node2.log"
else
  mkdir -p "$WORK/rnacos-data"
  env RNACOS_HTTP_PORT="$HTTP_PORT" RNACOS_GRPC_PORT="$GRPC_PORT" \
      RNACOS_HTTP_CONSOLE_PORT="$((HTTP_PORT + 2000))" \
      RNACOS_CONFIG_DB_DIR="$WORK/rnacos-data" RNACOS_DATA_DIR="$WORK/rnacos-data" \
      RNACOS_RAFT_NODE_ADDR="127.0.0.1:$GRPC_PORT" \
      "$BIN" >"$SERVER_LOG" 2>&1 &
fi
[[ "$KIND" == nacelle-cluster ]] || SERVER_PIDS+=($!)

all_alive() {
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || return 1; done
}
# A cluster node answers /operator/metrics while loading; it is ready when it says UP.
node_up() {
  curl -sf -m 2 "http://$1:$HTTP_PORT/nacos/v1/ns/operator/metrics" 2>/dev/null \
    | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin).get("status") != "UP")' 2>/dev/null
}
ready=0
for _ in $(seq 1 300); do
  if ! all_alive; then
    log "server exited during startup:"; tail -40 "$WORK"/*.log; exit 1
  fi
  if [[ "$KIND" == nacelle-cluster ]]; then
    up=1; for h in "${NODES[@]}"; do node_up "$h" || up=0; done
    [[ $up == 1 ]] && { ready=1; break; }
  elif curl -sf -m 2 "http://$HOST:$HTTP_PORT/nacos/v1/ns/operator/metrics" >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 0.2
done
[[ $ready == 1 ]] || { log "server not ready after 60 s:"; tail -40 "$SERVER_LOG"; exit 1; }
log "server ready: $(curl -s -m 2 "http://$HOST:$HTTP_PORT/nacos/v1/ns/operator/metrics" | head -c 200)"

export NACOS_HOST="$HOST" NACOS_HTTP_PORT="$HTTP_PORT" NACOS_GRPC_PORT="$GRPC_PORT" SERVER_KIND="$KIND"
# Suites that restart a server of their own (test_persistent.py) start this binary.
[[ "$KIND" == nacelle* ]] && export NACELLE_BIN="$BIN"
if [[ "$KIND" == nacelle-cluster ]]; then
  NACOS_CLUSTER_HOSTS=$(IFS=,; echo "${NODES[*]}"); export NACOS_CLUSTER_HOSTS
fi
# Keep SDK environment overrides from leaking into the Rust client.
unset NACOS_CLIENT_SERVER_ADDRESS NACOS_CLIENT_SERVER_PORT NACOS_CLIENT_NAMESPACE NACOS_CLIENT_ENDPOINT

# ---------------------------------------------------------------- suites
declare -A RESULT
run_suite() {
  local name="$1"; shift
  local out="$WORK/$name.log" start end rc
  log "---- $name suite ----"
  start=$(date +%s)
  ( "$@" ) >"$out" 2>&1
  rc=$?
  end=$(date +%s)
  cat "$out"
  if [[ $rc == 0 ]]; then RESULT[$name]="PASS ($((end - start))s)";
  elif [[ $rc == 124 ]]; then RESULT[$name]="FAIL (timeout after ${SUITE_TIMEOUT}s)";
  else RESULT[$name]="FAIL (exit $rc, $((end - start))s)"; fi
  log "$name: ${RESULT[$name]}"
}

want python && run_suite python bash -c "cd '$SDK_DIR/python' && timeout $SUITE_TIMEOUT python3 -m pytest"
want node && run_suite node bash -c "cd '$SDK_DIR/node' && timeout $SUITE_TIMEOUT node --test naming.test.js"
want rust && run_suite rust bash -c "cd '$SDK_DIR/rust' && timeout $SUITE_TIMEOUT cargo test -q -- --test-threads=4 --show-output"

if ! all_alive; then
  log "WARNING: a server process died during the run; last log lines:"; tail -40 "$WORK"/*.log
  SETUP_FAIL=1
fi

# ---------------------------------------------------------------- summary
echo
log "======== summary ($KIND) ========"
FAILED=$SETUP_FAIL
[[ $SETUP_FAIL == 0 ]] || log "setup: FAIL (see above)"
for s in python node rust; do
  want "$s" || continue
  r="${RESULT[$s]:-FAIL (not run)}"
  printf '[sdk-conformance]   %-7s %s\n' "$s" "$r"
  [[ "$r" == PASS* ]] || FAILED=1
done
if [[ $FAILED == 0 ]]; then log "ALL PASS"; else log "SOME SUITES FAILED"; fi
exit $FAILED
