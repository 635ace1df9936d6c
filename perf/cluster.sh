#!/usr/bin/env bash
# The Distro numbers of a local 3-node cluster (127.0.0.1-3, one core each), written to
# perf/results/cluster.json:
#   1. convergence: a change written through node 1, pushed to subscribers on nodes 2 and 3
#      (loadgen converge; the latency includes the 50 ms push merge window);
#   2. verify traffic: digest bytes per verify round per peer pair with CLIENTS agreeing HTTP
#      ip:port clients (registered with wrk), read from nacelle_distro_digest_bytes_total;
#   3. join: INSTANCES instances registered over gRPC, then a 4th node starts; time until its
#      /operator/metrics says UP, and the instances it then holds.
#
#   bash perf/cluster.sh          # INSTANCES=1000000 CLIENTS=100000
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-1000000}; CLIENTS=${CLIENTS:-100000}; PORT=${PORT:-38848}
cargo build --release -q -p nacelle-server -p loadgen
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; pkill -f "loadgen register --targets 127.0.0.1:$PORT" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p perf/results
MEMBERS="127.0.0.1:$PORT,127.0.0.2:$PORT,127.0.0.3:$PORT,127.0.0.4:$PORT"
start() { target/release/nacelle --bind "127.0.0.$1" --http-port $PORT --members "$MEMBERS" --insecure --cores 1 --data-dir "$WORK/data-$1" >"$WORK/n$1.log" 2>&1 & PIDS+=($!); }
metrics() { curl -sf "http://127.0.0.$1:$PORT/nacos/v1/ns/operator/metrics"; }
is_up() { metrics "$1" 2>/dev/null | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["status"] != "UP")' 2>/dev/null; }
prom() { curl -sf "http://127.0.0.$1:$PORT/metrics" | awk -v n="$2" '$1==n {print $2}'; }
for i in 1 2 3; do start $i; done
for _ in $(seq 100); do is_up 3 && break; sleep 0.1; done
sleep 3

echo "== convergence (write on node 1, subscribers on nodes 2 and 3)"
target/release/loadgen converge --targets 127.0.0.1:$PORT,127.0.0.2:$PORT,127.0.0.3:$PORT \
  --services 20 --subscribers 5 --rate 200 --duration 20 --no-progress --report "$WORK/converge.json" | tail -6

echo "== verify traffic with $CLIENTS agreeing HTTP clients"
wrk -t2 -c64 -d60s -s perf/http/register.lua "http://127.0.0.1:$PORT" -- 1000 $((CLIENTS / 2)) 0 lasting >/dev/null
sleep 12   # let sync settle and a verify round pass
b0=$(prom 1 nacelle_distro_digest_bytes_total); f0=$(prom 1 nacelle_distro_verify_sent_total); d0=$(prom 2 nacelle_distro_verify_differed_total)
sleep 20   # four rounds
b1=$(prom 1 nacelle_distro_digest_bytes_total); f1=$(prom 1 nacelle_distro_verify_sent_total); d1=$(prom 2 nacelle_distro_verify_differed_total)
held=$(metrics 2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["instanceCount"])')
rounds=4   # node 1 sends to nodes 2 and 3 (node 4 is down: no digests to it)
per_pair=$(( (b1 - b0) / rounds / 2 ))
echo "node 2 holds $held instances; digest bytes per round per peer pair: $per_pair; digests that differed meanwhile: $((d1 - d0))"

echo "== join: $INSTANCES instances, then node 4 starts"
target/release/loadgen register --targets 127.0.0.1:$PORT,127.0.0.2:$PORT,127.0.0.3:$PORT --instances "$INSTANCES" \
  --connections 300 --services 10000 --batch 100 --no-verify --hold -1 --no-progress >"$WORK/lg.log" 2>&1 &
LG=$!; PIDS+=($LG)
until grep -q "holding" "$WORK/lg.log" 2>/dev/null; do kill -0 $LG 2>/dev/null || { cat "$WORK/lg.log"; exit 1; }; sleep 2; done
total=$((INSTANCES + held))
for _ in $(seq 300); do [ "$(metrics 3 | python3 -c 'import json,sys; print(json.load(sys.stdin)["instanceCount"])')" -ge "$total" ] && break; sleep 1; done
t0=$(date +%s.%N); start 4
until is_up 4; do sleep 0.05; done
t1=$(date +%s.%N)
joined=$(metrics 4 | python3 -c 'import json,sys; print(json.load(sys.stdin)["instanceCount"])')
up_s=$(python3 -c "print(round($t1 - $t0, 2))")
echo "node 4 reported UP after ${up_s} s holding $joined of $total instances"

python3 - "$WORK/converge.json" "$per_pair" "$held" "$up_s" "$joined" "$total" <<'EOF' > perf/results/cluster.json
import json, os, sys
conv = json.load(open(sys.argv[1]))
print(json.dumps({
    "machine": f"{os.uname().nodename} {os.cpu_count()} cpus", "nodes": 3, "cores_per_node": 1,
    "converge": {k: conv.get(k) for k in ("ops", "errors", "latency_us")},
    "verify_bytes_per_round_per_peer_pair": int(sys.argv[2]), "verify_clients": int(sys.argv[3]),
    "join": {"seconds_to_up": float(sys.argv[4]), "instances_at_up": int(sys.argv[5]), "instances": int(sys.argv[6])},
}, indent=1))
EOF
cat perf/results/cluster.json
