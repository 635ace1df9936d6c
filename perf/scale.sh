#!/usr/bin/env bash
# The headline run: a 3-node Nacelle cluster on 127.0.0.1, .2 and .3 (CORES executors each,
# Distro over QUIC, --insecure) holding INSTANCES instances registered over gRPC through all
# three nodes from CONNECTIONS connections, then, while they are held:
#   1. query: ServiceQueryRequest open loop at QUERY_RATE/s for DURATION s, spread over the nodes;
#   2. push: SUB_SERVICES services x SUBSCRIBERS subscribers on node 1, a writer on node 1 changing
#      one instance at SUB_RATE/s (change sent -> push received);
#   3. convergence: the same, writer on node 1 and subscribers on nodes 2 and 3 (replication +
#      push, loadgen converge).
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
#     OUT=perf/results/scale-10m bash perf/scale.sh      # issue 19's 3-node run
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
# 1,000 connections x 4 requests in flight queue for seconds on a busy 2-CPU machine; with the
# default 3 s timeout the client cancels (resets) streams, h2's reset-flood guard then closes
# whole connections, and their instances go with them. A long timeout keeps the run closed-loop.
REGISTER_TIMEOUT_MS=${REGISTER_TIMEOUT_MS:-30000}
export REGISTER_TIMEOUT_MS REGISTER_RATE BATCH SKEW SKEW_MAX NODE_COUNT INSTANCES CONNECTIONS SERVICES CORES DURATION QUERY_RATE QUERY_CONNS SUB_SERVICES SUBSCRIBERS SUB_RATE
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

metrics() { curl -sf "http://$1:$PORT/nacos/v1/ns/operator/metrics"; }
field() { metrics "$1" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$2', ''))"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

LOADAVG_START=$(cut -d' ' -f1 /proc/loadavg); export LOADAVG_START
echo "== $NODE_COUNT node(s) ($CORES core(s) each) on ${NODES[*]}, HTTP port $PORT"
MEMBER_ARGS=(--members "$MEMBERS"); [ "$NODE_COUNT" = 1 ] && MEMBER_ARGS=()
for i in "${!NODES[@]}"; do
  "$NACELLE" --bind "${NODES[$i]}" --http-port "$PORT" "${MEMBER_ARGS[@]}" --insecure --cores "$CORES" --data-dir "$WORK/data-$i-$RANDOM" \
    >"$WORK/n$((i + 1)).log" 2>&1 &
  PIDS+=($!)
done
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
for _ in $(seq $((CATCHUP_TIMEOUT * 10))); do
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
RSS1=(); COUNTS=(); for i in "${!NODES[@]}"; do RSS1+=("$(rss_kb "${PIDS[$i]}")"); COUNTS+=("$(field "${NODES[$i]}" instanceCount)"); done
echo "RSS per node (MiB): before $(for k in "${RSS0[@]}"; do printf '%d ' $((k / 1024)); done)after $(for k in "${RSS1[@]}"; do printf '%d ' $((k / 1024)); done); instances held: ${COUNTS[*]}"

echo "== query at $QUERY_RATE/s for $DURATION s over the $NODE_COUNT node(s)"
"$LOADGEN" query --targets "$TARGETS" --services "$SERVICES" --connections "$QUERY_CONNS" --rate "$QUERY_RATE" \
  --duration "$DURATION" --no-progress --report "$WORK/query.json" | grep -E "^(ops|latency)"
echo "== push: $SUB_SERVICES services x $SUBSCRIBERS subscribers and the writer on node 1"
"$LOADGEN" subscribe --targets "${NODES[0]}:$PORT" --service-prefix sub-svc- --services "$SUB_SERVICES" \
  --subscribers "$SUBSCRIBERS" --instances-per-service 10 --rate "$SUB_RATE" --duration "$DURATION" \
  --no-progress --report "$WORK/subscribe.json" | grep -E "^(ops|latency|pushes)"
echo "== convergence: writer on node 1, subscribers on nodes 2 and 3"
"$LOADGEN" converge --targets "$TARGETS" --service-prefix conv-svc- --services "$SUB_SERVICES" \
  --subscribers "$SUBSCRIBERS" --instances-per-service 10 --rate "$SUB_RATE" --duration "$DURATION" \
  --no-progress --report "$WORK/converge.json" | grep -E "^(ops|latency|pushes)"
RSS2=(); for p in "${PIDS[@]}"; do RSS2+=("$(rss_kb "$p")"); done
kill -INT "$LG"; wait "$LG" || true; LG=""
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
env = {k: os.environ[k] for k in ("REGISTER_TIMEOUT_MS", "REGISTER_RATE", "BATCH", "SKEW", "SKEW_MAX", "NODE_COUNT", "INSTANCES", "CONNECTIONS", "SERVICES", "CORES", "DURATION", "QUERY_RATE",
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
json.dump(res, open(out + ".json", "w"), indent=1)
mib = lambda kb: f"{int(kb) / 1024:,.0f}"
md = [
    f"# Nacelle at scale: {env['NODE_COUNT']} node(s)", "",
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
