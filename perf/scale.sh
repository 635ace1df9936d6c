#!/usr/bin/env bash
# The headline run: a 3-node Nacelle cluster on 127.0.0.1, .2 and .3 (CORES executors each,
# Distro over QUIC, --insecure) holding INSTANCES instances registered over gRPC through all
# three nodes from CONNECTIONS connections, then, while they are held:
#   1. query: ServiceQueryRequest open loop at QUERY_RATE/s for DURATION s, spread over the nodes;
#   2. push: SUB_SERVICES services x SUBSCRIBERS subscribers on node 1, a writer on node 1 changing
#      one instance at SUB_RATE/s (change sent -> push received);
#   3. convergence: the same, writer on node 1 and subscribers on nodes 2 and 3 (replication +
#      push, loadgen converge);
#   and before them, verify's traffic between agreeing nodes over a quiet window (VERIFY_WINDOW)
#   and a walk through every page of the service list (LIST_PAGE_SIZE); after them, optionally,
#   a 4th node joining (JOIN=1), the last node killed and restarted (KILL=1), or one node
#   restarted with its clients registering again (RESTART=1). SERVER=rnacos runs one r-nacos.
# Reported: registration rate, how long the other nodes took to hold every instance after the
# last registration was acknowledged, RSS per node before/after, query p99, push p99,
# convergence p99. Written to perf/results/scale.json and scale.md. loadgen runs on the same
# CPUs as the three nodes (2 on the development VM), so the machine bounds every number.
#
# Each node's Distro and peer counters (/metrics) are saved too: sync batches, items, instances
# and retries (spurious: acknowledged after all), resyncs (and those not resent because a change
# was on its way), peer bytes sent, frames dropped, shed requests.
#
#   bash perf/scale.sh       # INSTANCES=500000 CONNECTIONS=1000 SERVICES=5000 CORES=1 BATCH=1
#   INSTANCES=20000 CONNECTIONS=100 SERVICES=200 DURATION=5 bash perf/scale.sh    # smoke test
#   INSTANCES=10000000 SERVICES=100000 CONNECTIONS=1000 BATCH=100 CATCHUP_TIMEOUT=600 \
#     JOIN=1 KILL=1 OUT=perf/results/scale-10m bash perf/scale.sh      # issue 19's 3-node run
#   NODE_COUNT=1 INSTANCES=50000000 SERVICES=500000 CONNECTIONS=1000 BATCH=100 RESTART=1 \
#     CATCHUP_TIMEOUT=600 OUT=perf/results/scale-50m bash perf/scale.sh  # and its one-node run
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-500000}; CONNECTIONS=${CONNECTIONS:-1000}; SERVICES=${SERVICES:-5000}
CORES=${CORES:-1}; DURATION=${DURATION:-20}; QUERY_RATE=${QUERY_RATE:-2000}; QUERY_CONNS=${QUERY_CONNS:-48}
SUB_SERVICES=${SUB_SERVICES:-100}; SUBSCRIBERS=${SUBSCRIBERS:-5}; SUB_RATE=${SUB_RATE:-200}
PORT=${PORT:-25848}; OUT=${OUT:-perf/results/scale}; CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-120}
# Instances per request: 1 = InstanceRequest, >1 = BatchInstanceRequest (one per service and connection).
BATCH=${BATCH:-1}
# REGISTER_RATE=<requests/s>: registration paced (loadgen --rate) instead of as fast as possible.
REGISTER_RATE=${REGISTER_RATE:-}
# SKEW=<shape>: service sizes from a Pareto law (loadgen --skew; 1.2 = most small, some thousands),
# at most SKEW_MAX instances per service; unset: equal sizes.
SKEW=${SKEW:-}; SKEW_MAX=${SKEW_MAX:-10000}
# NODE_COUNT=1: one standalone node instead of three (the replication columns are then empty).
NODE_COUNT=${NODE_COUNT:-3}
# VERIFY_WINDOW=<s>: with several nodes, count the peer bytes sent over this quiet window after
# the catch-up (nothing changes: verify between agreeing nodes); 0 skips it.
VERIFY_WINDOW=${VERIFY_WINDOW:-20}
# LIST_PAGE_SIZE=<n>: page through the whole service list (ServiceListRequest) on node 1; 0 skips.
LIST_PAGE_SIZE=${LIST_PAGE_SIZE:-100}
# JOIN=1 (several nodes): a 4th node (127.0.0.4, in --members from the start) starts while
# everything is held: seconds until it is UP and until it holds what node 1 holds.
# KILL=1 (several nodes): the last node is killed (SIGKILL) and restarted on its data dir:
# seconds until it is UP and holds what node 1 holds (its own clients' connections are gone).
# RESTART=1 (one node): the node is killed and restarted and the clients come back (a second
# loadgen registers the same plan, as the SDKs' redo does): seconds until it holds everything.
JOIN=${JOIN:-0}; KILL=${KILL:-0}; RESTART=${RESTART:-0}
# SERVER=rnacos (one node): the same run against r-nacos (RNACOS_BIN, or `cargo install --locked rnacos`).
SERVER=${SERVER:-nacelle}
if [ "$SERVER" = rnacos ]; then
  [ "$NODE_COUNT" = 1 ] || { echo "SERVER=rnacos needs NODE_COUNT=1" >&2; exit 1; }
  RNACOS=${RNACOS_BIN:-$(command -v rnacos || echo "$HOME/.cargo/bin/rnacos")}
  [ -x "$RNACOS" ] || { cargo install --locked rnacos; RNACOS=$HOME/.cargo/bin/rnacos; }
fi
# 1,000 connections x 4 requests in flight queue for seconds on a busy 2-CPU machine; with the
# default 3 s timeout the client cancels (resets) streams, h2's reset-flood guard then closes
# whole connections, and their instances go with them. A long timeout keeps the run closed-loop.
REGISTER_TIMEOUT_MS=${REGISTER_TIMEOUT_MS:-30000}
export SERVER VERIFY_WINDOW LIST_PAGE_SIZE JOIN KILL RESTART REGISTER_TIMEOUT_MS REGISTER_RATE BATCH SKEW SKEW_MAX NODE_COUNT INSTANCES CONNECTIONS SERVICES CORES DURATION QUERY_RATE QUERY_CONNS SUB_SERVICES SUBSCRIBERS SUB_RATE
NACELLE=${NACELLE:-target/release/nacelle}; LOADGEN=target/release/loadgen   # NACELLE=<binary>: another build (e.g. the baseline)
if [ ! -x "$NACELLE" ] || [ ! -x "$LOADGEN" ] || [ -n "${BUILD:-}" ]; then
  cargo build --release -p nacelle-server -p loadgen
fi
WORK=$(mktemp -d); PIDS=(); LG=""; POLLER=""
cleanup() {
  set +e   # kill every process we started even if some are already gone
  [ -n "$POLLER" ] && kill "$POLLER" 2>/dev/null
  [ -n "$LG" ] && kill "$LG" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT
BUILD_INFO="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain -- engine server wire 2>/dev/null | grep -q . && echo ' + uncommitted changes in engine/server/wire'), nacelle built $(date -r "$NACELLE" '+%F %T') ($NACELLE)"
[ "$SERVER" = rnacos ] && BUILD_INFO="r-nacos $("$RNACOS" -V | awk '{print $2}') ($RNACOS)"
export BUILD_INFO
# Private copies: a build running meanwhile in target/ must not swap the binaries mid-run.
cp "$NACELLE" "$WORK/nacelle"; cp "$LOADGEN" "$WORK/loadgen"; NACELLE=$WORK/nacelle; LOADGEN=$WORK/loadgen
mkdir -p "$(dirname "$OUT")"
NODES=(127.0.0.1 127.0.0.2 127.0.0.3); NODES=("${NODES[@]:0:$NODE_COUNT}")
for ip in "${NODES[@]}"; do
  for p in $PORT $((PORT + 1000)); do
    if ss -Hltn "src $ip:$p" | grep -q .; then echo "$ip:$p is in use; set PORT=" >&2; exit 1; fi
  done
done
MEMBERS=$(printf "%s:$PORT," "${NODES[@]}"); MEMBERS=${MEMBERS%,}
TARGETS=$MEMBERS
[ "$JOIN" = 1 ] && [ "$NODE_COUNT" -gt 1 ] && MEMBERS="$MEMBERS,127.0.0.4:$PORT"

metrics() { curl -sf "http://$1:$PORT/nacos/v1/ns/operator/metrics"; }
field() { metrics "$1" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$2', ''))"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

LOADAVG_START=$(cut -d' ' -f1 /proc/loadavg); export LOADAVG_START
echo "== $NODE_COUNT node(s) ($CORES core(s) each) on ${NODES[*]}, HTTP port $PORT"
MEMBER_ARGS=(--members "$MEMBERS"); [ "$NODE_COUNT" = 1 ] && MEMBER_ARGS=()
# start_node IP INDEX: node INDEX (0-based) on IP, its data in $WORK/data-INDEX; sets NODE_PID.
start_node() {
  if [ "$SERVER" = rnacos ]; then
    mkdir -p "$WORK/data-$2"
    env RNACOS_HTTP_PORT=$PORT RNACOS_GRPC_PORT=$((PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=$((PORT + 2000)) \
      RNACOS_CONFIG_DB_DIR="$WORK/data-$2" RNACOS_DATA_DIR="$WORK/data-$2" RNACOS_RAFT_NODE_ADDR=127.0.0.1:$((PORT + 1000)) \
      "$RNACOS" >>"$WORK/n$(($2 + 1)).log" 2>&1 &
    NODE_PID=$!; return
  fi
  "$NACELLE" --bind "$1" --http-port "$PORT" "${MEMBER_ARGS[@]}" --insecure --cores "$CORES" --data-dir "$WORK/data-$2" \
    >>"$WORK/n$(($2 + 1)).log" 2>&1 &
  NODE_PID=$!
}
for i in "${!NODES[@]}"; do start_node "${NODES[$i]}" "$i"; PIDS+=("$NODE_PID"); done
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# wait_held IP TARGET TIMEOUT START: seconds from START until IP is UP, and until it holds
# TARGET instances (@IP2: as many as IP2 holds at that moment) (-1: not within TIMEOUT s), as
# "up held target" (the target met).
wait_held() {
  local up=-1 held=-1 t n want=$2 deadline=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do   # by the clock: each poll itself takes a while
    t=$(date +%s.%N)
    if [ "$up" = -1 ] && [ "$(field "$1" status 2>/dev/null)" = UP ]; then up=$(since "$4" "$t"); fi
    case $2 in @*) want=$(field "${2#@}" instanceCount 2>/dev/null || echo -1) ;; esac
    if [ "$up" != -1 ] && n=$(field "$1" instanceCount 2>/dev/null) && [ "${want:--1}" -ge 0 ] && [ "${n:-0}" -ge "$want" ]; then held=$(since "$4" "$t"); break; fi
    sleep 0.1
  done
  printf '%.2f %.2f %s\n' "$up" "$held" "$want"
}
for ip in "${NODES[@]}"; do
  for _ in $(seq 300); do [ "$(field "$ip" status 2>/dev/null)" = UP ] && break; sleep 0.1; done
  [ "$(field "$ip" status 2>/dev/null)" = UP ] || { echo "$ip did not come UP" >&2; tail -n 20 "$WORK"/n*.log >&2; exit 1; }
done
sleep 2
RSS0=(); for p in "${PIDS[@]}"; do RSS0+=("$(rss_kb "$p")"); done

echo "== register $INSTANCES instances in $SERVICES services over $CONNECTIONS connections through the $NODE_COUNT node(s)"
# Every node's instanceCount every 50 ms ("time c1 c2 c3"), for the replication catch-up.
python3 - "$PORT" "${NODES[@]}" >"$WORK/counts" <<'PY' &
import json, sys, time, urllib.request
port, nodes = sys.argv[1], sys.argv[2:]
while True:
    row = []
    for ip in nodes:
        try:
            url = f"http://{ip}:{port}/nacos/v1/ns/operator/metrics"
            row.append(json.load(urllib.request.urlopen(url, timeout=2)).get("instanceCount", 0))
        except OSError:
            row.append(-1)
    print(time.time(), *row, flush=True)
    time.sleep(0.05)
PY
POLLER=$!
"$LOADGEN" register --targets "$TARGETS" --instances "$INSTANCES" --services "$SERVICES" \
  --connections "$CONNECTIONS" --batch "$BATCH" ${REGISTER_RATE:+--rate "$REGISTER_RATE"} ${SKEW:+--skew "$SKEW" --skew-max "$SKEW_MAX"} --timeout-ms "$REGISTER_TIMEOUT_MS" --hold -1 --no-progress --report "$WORK/register.json" >"$WORK/register.log" 2>&1 &
LG=$!
until grep -q "^registered " "$WORK/register.log" 2>/dev/null; do
  kill -0 "$LG" 2>/dev/null || { echo "loadgen register failed:" >&2; cat "$WORK/register.log" >&2; exit 1; }
  sleep 0.05
done
t_acked=$(date +%s.%N)
grep "^registered " "$WORK/register.log"
ACKED=$(sed -n 's|^registered \([0-9]*\)/.*|\1|p' "$WORK/register.log")
# Replication catch-up: seconds from the last acknowledged registration until each node holds at
# least the ACKED instances (requests that timed out on the client may have been applied too).
for _ in $(seq $((NODE_COUNT > 1 ? CATCHUP_TIMEOUT * 10 : 0))); do   # one node: it acknowledged them
  tail -1 "$WORK/counts" | awk -v n="$ACKED" '{ok = 1; for (i = 2; i <= NF; i++) if ($i < n) ok = 0; exit !ok}' && break; sleep 0.1
done
kill "$POLLER" 2>/dev/null || true; wait "$POLLER" 2>/dev/null || true; POLLER=""
read -r -a catchup < <(awk -v t="$t_acked" -v n="$ACKED" '
  { for (i = 2; i <= NF; i++) if (!(i in at) && $i >= n) at[i] = $1; nf = NF }
  END { for (i = 2; i <= nf; i++) printf "%s ", (i in at) ? sprintf("%.2f", (at[i] > t ? at[i] - t : 0)) : -1; print "" }' "$WORK/counts")
echo "every node holds the $ACKED acknowledged instances: ${catchup[*]} s after the last acknowledgement (-1 = not within ${CATCHUP_TIMEOUT} s)"
until grep -q "^holding" "$WORK/register.log" 2>/dev/null; do
  kill -0 "$LG" 2>/dev/null || { cat "$WORK/register.log" >&2; exit 1; }; sleep 0.2
done
sleep 5
# r-nacos's /operator/metrics has no instanceCount: -1 there (its loadgen verify counts instead).
RSS1=(); COUNTS=(); for i in "${!NODES[@]}"; do RSS1+=("$(rss_kb "${PIDS[$i]}")"); c=$(field "${NODES[$i]}" instanceCount); COUNTS+=("${c:--1}"); done
echo "RSS per node (MiB): before $(for k in "${RSS0[@]}"; do printf '%d ' $((k / 1024)); done)after $(for k in "${RSS1[@]}"; do printf '%d ' $((k / 1024)); done); instances held: ${COUNTS[*]}"

prom_sum() {  # prom_sum IP NAME: a counter of node IP's /metrics
  curl -sf "http://$1:$PORT/metrics" | awk -v n="nacelle_$2" '$1 == n {printf "%.0f\n", $2}' || echo 0
}
VERIFY_RESULT="{}"
if [ "$NODE_COUNT" -gt 1 ] && [ "$VERIFY_WINDOW" -gt 0 ]; then
  echo "== verify between agreeing nodes: peer bytes over a quiet ${VERIFY_WINDOW} s"
  declare -A B0 D0 V0
  for ip in "${NODES[@]}"; do B0[$ip]=$(prom_sum "$ip" peer_bytes_sent_total); D0[$ip]=$(prom_sum "$ip" distro_digest_bytes_total); V0[$ip]=$(prom_sum "$ip" distro_verify_sent_total); done
  sleep "$VERIFY_WINDOW"
  VERIFY_RESULT="{"
  for ip in "${NODES[@]}"; do
    b=$(( $(prom_sum "$ip" peer_bytes_sent_total) - B0[$ip] )); d=$(( $(prom_sum "$ip" distro_digest_bytes_total) - D0[$ip] )); v=$(( $(prom_sum "$ip" distro_verify_sent_total) - V0[$ip] ))
    VERIFY_RESULT+="\"$ip\": {\"peer_bytes\": $b, \"digest_bytes\": $d, \"verify_sent\": $v},"
    echo "$ip: $b peer bytes ($d digest bytes, $v verify messages) in ${VERIFY_WINDOW} s"
  done
  VERIFY_RESULT="${VERIFY_RESULT%,}}"
fi
echo "$VERIFY_RESULT" >"$WORK/verify.json"
echo '{}' >"$WORK/list.json"
if [ "$LIST_PAGE_SIZE" -gt 0 ]; then
  echo "== service list: every page of $LIST_PAGE_SIZE on node 1"
  "$LOADGEN" list --targets "${NODES[0]}:$PORT" --page-size "$LIST_PAGE_SIZE" --timeout-ms 30000 --no-progress \
    --report "$WORK/list.json" | grep -E "^(list|latency)" || echo "list failed"
fi
echo "== query at $QUERY_RATE/s for $DURATION s over the $NODE_COUNT node(s)"
"$LOADGEN" query --targets "$TARGETS" --services "$SERVICES" --connections "$QUERY_CONNS" --rate "$QUERY_RATE" \
  --duration "$DURATION" --no-progress --report "$WORK/query.json" | grep -E "^(ops|latency)"
echo "== push: $SUB_SERVICES services x $SUBSCRIBERS subscribers and the writer on node 1"
"$LOADGEN" subscribe --targets "${NODES[0]}:$PORT" --service-prefix sub-svc- --services "$SUB_SERVICES" \
  --subscribers "$SUBSCRIBERS" --instances-per-service 10 --rate "$SUB_RATE" --duration "$DURATION" \
  --no-progress --report "$WORK/subscribe.json" | grep -E "^(ops|latency|pushes)"
echo "== convergence: writer on node 1, subscribers on the other nodes (one node: itself)"
CONVERGE_TARGETS=$TARGETS; [ "$NODE_COUNT" = 1 ] && CONVERGE_TARGETS="$TARGETS,$TARGETS"   # one node: write and read through it
"$LOADGEN" converge --targets "$CONVERGE_TARGETS" --service-prefix conv-svc- --services "$SUB_SERVICES" \
  --subscribers "$SUBSCRIBERS" --instances-per-service 10 --rate "$SUB_RATE" --duration "$DURATION" \
  --no-progress --report "$WORK/converge.json" | grep -E "^(ops|latency|pushes)"
RSS2=(); for p in "${PIDS[@]}"; do RSS2+=("$(rss_kb "$p")"); done
JOIN_RESULT=null; KILL_RESULT=null; RESTART_RESULT=null
if [ "$JOIN" = 1 ] && [ "$NODE_COUNT" -gt 1 ]; then
  target=$(field "${NODES[0]}" instanceCount); t0=$(date +%s.%N)
  echo "== join: 127.0.0.4 starts while the cluster holds $target"
  start_node 127.0.0.4 3; PIDS+=("$NODE_PID")
  read -r up held _ < <(wait_held 127.0.0.4 "$target" "$CATCHUP_TIMEOUT" "$t0")
  echo "joined: UP after $up s, holding $target after $held s (-1: not within ${CATCHUP_TIMEOUT} s)"
  JOIN_RESULT="{\"target\": $target, \"up_s\": $up, \"holding_s\": $held, \"rss_kb\": $(rss_kb "$NODE_PID")}"
fi
if [ "$KILL" = 1 ] && [ "$NODE_COUNT" -gt 1 ]; then
  last=$((NODE_COUNT - 1)); ip=${NODES[$last]}
  echo "== kill: $ip (SIGKILL), then restart on its data dir"
  kill -9 "${PIDS[$last]}"; wait "${PIDS[$last]}" 2>/dev/null || true
  sleep 1; t0=$(date +%s.%N)
  start_node "$ip" "$last"; PIDS[$last]=$NODE_PID
  # The killed node's clients are gone with their connections (loadgen does not redo), so
  # "everything" is what node 1 holds at that moment.
  read -r up held target < <(wait_held "$ip" "@${NODES[0]}" "$CATCHUP_TIMEOUT" "$t0")
  echo "restarted: UP after $up s, holding node 1's $target after $held s"
  KILL_RESULT="{\"target\": $target, \"up_s\": $up, \"holding_s\": $held}"
fi
kill -INT "$LG"; wait "$LG" || true; LG=""
if [ "$RESTART" = 1 ] && [ "$NODE_COUNT" = 1 ] && [ "$SERVER" = nacelle ]; then   # r-nacos reports no instance count
  echo "== restart: the node is killed, restarted, and $ACKED instances come back"
  kill -9 "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
  t0=$(date +%s.%N)
  start_node "${NODES[0]}" 0; PIDS[0]=$NODE_PID
  for _ in $(seq 600); do [ "$(field "${NODES[0]}" status 2>/dev/null)" = UP ] && break; sleep 0.1; done
  up=$(since "$t0" "$(date +%s.%N)")
  "$LOADGEN" register --targets "$TARGETS" --instances "$INSTANCES" --services "$SERVICES" \
    --connections "$CONNECTIONS" --batch "$BATCH" ${SKEW:+--skew "$SKEW" --skew-max "$SKEW_MAX"} --timeout-ms "$REGISTER_TIMEOUT_MS" \
    --hold -1 --no-verify --no-progress --report "$WORK/reregister.json" >"$WORK/reregister.log" 2>&1 &
  LG=$!
  # Back to holding what the clients registered again (a few requests may be shed with 503).
  until grep -q "^registered " "$WORK/reregister.log" 2>/dev/null; do
    kill -0 "$LG" 2>/dev/null || { cat "$WORK/reregister.log" >&2; exit 1; }; sleep 0.2
  done
  again=$(sed -n 's|^registered \([0-9]*\)/.*|\1|p' "$WORK/reregister.log")
  read -r _ held _ < <(wait_held "${NODES[0]}" "$again" "$CATCHUP_TIMEOUT" "$t0")
  echo "restarted: UP after $up s, holding the $again registered again (of $ACKED) after $held s"
  RESTART_RESULT="{\"up_s\": $up, \"holding_s\": $held, \"target\": $again, \"before\": $ACKED}"
  kill -INT "$LG"; wait "$LG" || true; LG=""
fi
echo "{\"join\": $JOIN_RESULT, \"kill\": $KILL_RESULT, \"restart\": $RESTART_RESULT}" >"$WORK/faults.json"
for ip in "${NODES[@]}"; do
  metrics "$ip" >"$WORK/metrics-$ip.json" || echo '{}' >"$WORK/metrics-$ip.json"
  curl -sf "http://$ip:$PORT/metrics" >"$WORK/prom-$ip.txt" || : >"$WORK/prom-$ip.txt"
done

python3 - "$WORK" "$OUT" "${NODES[*]}" "${RSS0[*]}" "${RSS1[*]}" "${RSS2[*]}" "${COUNTS[*]}" "${catchup[*]}" <<'PY'
import json, os, platform, sys
work, out = sys.argv[1], sys.argv[2]
nodes, rss0, rss1, rss2, counts, catchup = (a.split() for a in sys.argv[3:9])
j = lambda n: json.load(open(f"{work}/{n}.json"))
reg, q, sub, conv = j("register"), j("query"), j("subscribe"), j("converge")
verify_window, lst, faults = j("verify"), j("list"), j("faults")
env = {k: os.environ[k] for k in ("SERVER", "VERIFY_WINDOW", "LIST_PAGE_SIZE", "JOIN", "KILL", "RESTART", "REGISTER_TIMEOUT_MS", "REGISTER_RATE", "BATCH", "SKEW", "SKEW_MAX", "NODE_COUNT", "INSTANCES", "CONNECTIONS", "SERVICES", "CORES", "DURATION", "QUERY_RATE",
                                  "QUERY_CONNS", "SUB_SERVICES", "SUBSCRIBERS", "SUB_RATE")}
n = reg["instances_registered"]
lat = lambda r: {k: round(r["latency_us"][k] / 1000, 3) for k in ("p50", "p90", "p99", "p999", "max")}
COUNTERS = ("distro_sync_batches_total", "distro_sync_items_total", "distro_sync_instances_total",
            "distro_sync_retries_total", "distro_sync_spurious_retries_total", "distro_resyncs_total",
            "distro_resyncs_underway_total", "distro_queue_overflows_total", "peer_bytes_sent_total",
            "peer_frames_dropped_total", "peer_reconnects_total", "shed_reads_total", "shed_writes_total")
def prom(ip):
    out = {}
    for line in open(f"{work}/prom-{ip}.txt"):
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("nacelle_") and "{" not in parts[0]:
            name = parts[0][len("nacelle_"):]
            if name in COUNTERS:
                out[name] = int(float(parts[1]))
    return out
per_node = []
for i, ip in enumerate(nodes):
    m = json.load(open(f"{work}/metrics-{ip}.json"))
    c = prom(ip)
    per_node.append({
        "node": ip, "rss_before_kb": int(rss0[i]), "rss_after_register_kb": int(rss1[i]),
        "rss_end_kb": int(rss2[i]), "instances_held": int(counts[i]),
        "rss_bytes_per_instance": round((int(rss1[i]) - int(rss0[i])) * 1024 / n),
        "catchup_s": float(catchup[i]), "status_at_end": m.get("status"), "counters": c,
    })
res = {
    "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.platform()}",
    "note": f"{env['NODE_COUNT']} node(s) and loadgen share the machine's CPUs; one run; numbers move with other load",
    "loadavg_start_end": [float(os.environ["LOADAVG_START"]), float(open("/proc/loadavg").read().split()[0])],
    "nacelle_build": os.environ["BUILD_INFO"], "config": env,
    "register": {"instances_registered": reg["instances_registered"], "errors": reg["errors"],
                 "errors_by_kind": reg["errors_by_kind"], "instances_per_s": reg["instances_per_s"],
                 "seconds": reg["duration_s"], "latency_ms": lat(reg), "verify": reg.get("verify"),
                 "connections_up": reg.get("connections_up"),
                 "connections_alive_after_hold": reg.get("connections_alive_after_hold")},
    "replication_catchup_s_max": -1 if min(map(float, catchup)) < 0 else max(map(float, catchup)),
    "nodes": per_node,
    "query": {"rate": q["target_rate"], "ops_per_s": q["ops_per_s"], "errors": q["errors"],
              "errors_by_kind": q["errors_by_kind"], "latency_ms": lat(q)},
    "push": {"ops": sub["ops"], "expected": sub.get("push_expected"), "errors": sub["errors"],
             "latency_ms": lat(sub)},
    "converge": {"ops": conv["ops"], "expected": conv.get("push_expected"), "errors": conv["errors"],
                 "latency_ms": lat(conv),
                 "visibility_us_by_target": conv.get("visibility_us_by_target")},
}
peers = len(nodes) - 1
rounds = int(env["VERIFY_WINDOW"]) / 5  # the default verify interval: 5 s
if verify_window and peers > 0:
    res["verify_quiet"] = {ip: dict(v, peer_bytes_per_round_per_peer=round(v["peer_bytes"] / rounds / peers),
                                    digest_bytes_per_round_per_peer=round(v["digest_bytes"] / rounds / peers))
                           for ip, v in verify_window.items()}
if lst:
    res["service_list"] = {"pages": lst.get("pages"), "page_size": lst.get("page_size"), "names": lst.get("names"),
                           "duplicates": lst.get("duplicates"), "count": lst.get("count_last"),
                           "seconds": lst.get("duration_s"), "latency_ms": lat(lst)}
res.update({k: v for k, v in faults.items() if v is not None})
json.dump(res, open(out + ".json", "w"), indent=1)
mib = lambda kb: f"{int(kb) / 1024:,.0f}"
md = [
    f"# {'r-nacos' if env['SERVER'] == 'rnacos' else 'Nacelle'} at scale: {env['NODE_COUNT']} node(s)", "",
    f"`bash perf/scale.sh` on {res['machine']}: {env['NODE_COUNT']} node(s) (127.0.0.1-{env['NODE_COUNT']}, {env['CORES']} core(s) each, "
    f"Distro over QUIC, `--insecure`), {int(env['INSTANCES']):,} instances in {int(env['SERVICES']):,} services "
    + (f"(sizes skewed: Pareto shape {env['SKEW']}, at most {env['SKEW_MAX']} per service) " if env['SKEW'] else "(equal sizes) ")
    + f"registered over gRPC through every node from {int(env['CONNECTIONS']):,} connections "
    + ("(one InstanceRequest each)" if env['BATCH'] == "1" else f"(BatchInstanceRequest of up to {env['BATCH']})")
    + " and held while the load runs. loadgen shares the CPUs with the three nodes; one run, so "
    "treat the numbers as orders of magnitude (the load average at the end says what else ran).", "",
    "| | |", "|---|---|",
    f"| registrations/s (whole cluster) | {reg['instances_per_s']:,.0f} ({reg['instances_registered']:,} in {reg['duration_s']:.0f} s, {reg['errors']} errors) |",
    f"| every node holds every acknowledged instance | {res['replication_catchup_s_max']:.2f} s after the last acknowledgement (-1: not within the timeout) |",
    f"| query p50 / p99 at {env['QUERY_RATE']}/s over the nodes | {res['query']['latency_ms']['p50']:.2f} / {res['query']['latency_ms']['p99']:.2f} ms ({q['errors']} errors) |",
    f"| push p50 / p99 (writer and subscribers on node 1) | {res['push']['latency_ms']['p50']:.1f} / {res['push']['latency_ms']['p99']:.1f} ms |",
    f"| convergence p50 / p99 (write node 1, push from nodes 2 and 3) | {res['converge']['latency_ms']['p50']:.1f} / {res['converge']['latency_ms']['p99']:.1f} ms |",
] + ([f"| service list: {res['service_list']['pages']:,} pages of {res['service_list']['page_size']} "
        f"({res['service_list']['names']:,} names, {res['service_list']['duplicates']} duplicates) | "
        f"{res['service_list']['seconds']:.1f} s; per page p50 / p99 {res['service_list']['latency_ms']['p50']:.2f} / "
        f"{res['service_list']['latency_ms']['p99']:.2f} ms |"] if "service_list" in res else []) + (
    [f"| verify between agreeing nodes (quiet {env['VERIFY_WINDOW']} s) | "
     + ", ".join(f"{ip}: {v['peer_bytes_per_round_per_peer']:,} B peer traffic ({v['digest_bytes_per_round_per_peer']:,} B digests) per round per peer"
                 for ip, v in res["verify_quiet"].items()) + " |"] if "verify_quiet" in res else []) + (
    [f"| 4th node joins | UP after {res['join']['up_s']:.1f} s, holding {res['join']['target']:,} after {res['join']['holding_s']:.1f} s |"]
    if "join" in res else []) + (
    [f"| last node killed and restarted | UP after {res['kill']['up_s']:.1f} s, holding node 1's {res['kill']['target']:,} after {res['kill']['holding_s']:.1f} s |"]
    if "kill" in res else []) + (
    [f"| restart, clients register again | UP after {res['restart']['up_s']:.1f} s, holding {res['restart']['target']:,} after {res['restart']['holding_s']:.1f} s |"]
    if "restart" in res else []) + [
    "", "| node | RSS before | RSS after registration | RSS at the end | instances held | RSS growth per instance |",
    "|---|---|---|---|---|---|",
]
for p in per_node:
    md.append(f"| {p['node']} | {mib(p['rss_before_kb'])} MiB | {mib(p['rss_after_register_kb'])} MiB | "
              f"{mib(p['rss_end_kb'])} MiB | {p['instances_held']:,} | {p['rss_bytes_per_instance']} B |")
md += ["", "| node | sync batches | items | instances sent | retries (spurious) | resyncs (not resent) | peer bytes sent | bytes per instance sent | frames dropped | shed reads / writes |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for p in per_node:
    c = p["counters"]; g = lambda k: c.get(k, 0)
    per = g("peer_bytes_sent_total") / max(1, g("distro_sync_instances_total"))
    md.append(f"| {p['node']} | {g('distro_sync_batches_total'):,} | {g('distro_sync_items_total'):,} | {g('distro_sync_instances_total'):,} | "
              f"{g('distro_sync_retries_total'):,} ({g('distro_sync_spurious_retries_total'):,}) | {g('distro_resyncs_total'):,} ({g('distro_resyncs_underway_total'):,}) | "
              f"{g('peer_bytes_sent_total'):,} | {per:.0f} | {g('peer_frames_dropped_total'):,} | {g('shed_reads_total'):,} / {g('shed_writes_total'):,} |")
md += ["", "Peer bytes count everything sent to both peers (sync to each, verify, snapshot), so bytes per "
       "instance sent is per instance per peer, all traffic included.", ""]
md += ["", "Push and convergence latencies include the 50 ms push merge window (`--push-delay-ms`). "
       "RSS growth per instance counts everything a node holds for them: its own clients' instances, "
       "the replicas of the other nodes' instances, the connections, and the Distro state. "
       f"Load average (1 min) at start / end: {res['loadavg_start_end'][0]} / {res['loadavg_start_end'][1]} "
       f"on {os.cpu_count()} CPUs.", ""]
open(out + ".md", "w").write("\n".join(md))
print("\n".join(md))
PY
echo "wrote $OUT.json $OUT.md"
