#!/usr/bin/env bash
# Nacelle vs r-nacos over the Nacos 2.x gRPC protocol with the same loadgen scenarios:
#   1. register: INSTANCES instances over SERVICES services from CONNECTIONS connections, as fast
#      as possible (InstanceRequest, one per instance, loadgen's raw gRPC client with 4 in flight
#      per connection); registrations/s, the server's CPU per
#      registration, and the RSS growth per instance (VmRSS before/after, connections included);
#   2. query (while the instances are held): ServiceQueryRequest on the SERVICES services of
#      INSTANCES/SERVICES instances each, open loop at QUERY_RATE/s for p50/p99 (`loadgen query`,
#      tonic client), again at QUERY_LOAD_RATE/s (default 4,000/s: about three quarters of what
#      one r-nacos core answers, an eighth of one nacelle core), then at QUERY_MAX_RATE/s (excess dropped beyond 2,000 in flight) for the
#      QPS achieved (`loadgen flood`, whose raw client costs loadgen less than a query costs
#      either server, so the server's core is the limit);
#   3. subscribe (still holding): SUB_SERVICES services x SUBSCRIBERS subscribers, a writer
#      changing one instance at SUB_RATE/s; push latency p50/p99 (change sent -> push received).
# One server at a time on the same ports, a fresh process per round, ROUNDS rounds alternating
# which server goes first. loadgen and the server share this machine's CPUs, so absolute numbers
# are bounded by the machine; compare medians and ratios. Writes perf/results/compare-rnacos.json,
# .md and .svg (perf/chart.py).
#
#   bash perf/compare-rnacos.sh      # ROUNDS=3 INSTANCES=100000 SERVICES=1000 CONNECTIONS=1000
#   ROUNDS=1 INSTANCES=10000 CONNECTIONS=100 DURATION=3 bash perf/compare-rnacos.sh   # smoke test
#   PLACEMENT=pinned bash perf/compare-rnacos.sh   # server on CPU 0, loadgen on the other CPUs
# PLACEMENT=pinned (taskset; both servers' defaults then see one CPU) keeps loadgen from
# competing with the server, so the rates are what one server core delivers; results go to
# perf/results/compare-rnacos-pinned.* unless OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; INSTANCES=${INSTANCES:-100000}; SERVICES=${SERVICES:-1000}
CONNECTIONS=${CONNECTIONS:-1000}; DURATION=${DURATION:-10}
QUERY_RATE=${QUERY_RATE:-1000}; QUERY_LOAD_RATE=${QUERY_LOAD_RATE:-4000}; QUERY_MAX_RATE=${QUERY_MAX_RATE:-60000}; QUERY_CONNS=${QUERY_CONNS:-16}
SUB_SERVICES=${SUB_SERVICES:-100}; SUBSCRIBERS=${SUBSCRIBERS:-5}; SUB_RATE=${SUB_RATE:-200}
PORT=${PORT:-28848}; PLACEMENT=${PLACEMENT:-shared}
case $PLACEMENT in
  shared) PIN_SERVER=(); PIN_LOAD=(); OUT=${OUT:-perf/results/compare-rnacos} ;;
  pinned) [ "$(nproc)" -ge 2 ] || { echo "PLACEMENT=pinned needs 2 CPUs" >&2; exit 1; }
    PIN_SERVER=(taskset -c 0); PIN_LOAD=(taskset -c "1-$(($(nproc) - 1))")
    OUT=${OUT:-perf/results/compare-rnacos-pinned} ;;
  *) echo "PLACEMENT is shared or pinned" >&2; exit 1 ;;
esac
export PLACEMENT
export INSTANCES SERVICES CONNECTIONS DURATION QUERY_RATE QUERY_LOAD_RATE QUERY_MAX_RATE QUERY_CONNS SUB_SERVICES SUBSCRIBERS SUB_RATE
NACELLE=target/release/nacelle; LOADGEN=target/release/loadgen
if [ ! -x "$NACELLE" ] || [ ! -x "$LOADGEN" ] || [ -n "${BUILD:-}" ]; then
  cargo build --release -p nacelle-server -p loadgen
fi
RNACOS=${RNACOS_BIN:-$(command -v rnacos || echo "$HOME/.cargo/bin/rnacos")}
if [ ! -x "$RNACOS" ]; then cargo install --locked rnacos; RNACOS=$HOME/.cargo/bin/rnacos; fi
RNACOS_VERSION=$("$RNACOS" -V | awk '{print $2}')

WORK=$(mktemp -d); PID=""; LG=""
cleanup() {
  set +e   # kill every process we started even if some are already gone
  [ -n "$LG" ] && kill "$LG" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT
BUILD_INFO="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain -- engine server wire 2>/dev/null | grep -q . && echo ' + uncommitted changes in engine/server/wire'), nacelle built $(date -r "$NACELLE" '+%F %T')"
export BUILD_INFO
# Private copies: a build running meanwhile in target/ must not swap the binaries mid-run.
cp "$NACELLE" "$LOADGEN" "$WORK/"; NACELLE=$WORK/nacelle; LOADGEN=$WORK/loadgen
mkdir -p "$(dirname "$OUT")"
for p in $PORT $((PORT + 1000)) $((PORT + 2000)); do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is in use; set PORT=" >&2; exit 1; fi
done

metrics() { curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics"; }
start() {
  case $1 in
    nacelle) "${PIN_SERVER[@]}" "$NACELLE" --bind 127.0.0.1 --http-port "$PORT" --data-dir "$WORK/data-$RANDOM" >"$WORK/server.log" 2>&1 & ;;
    rnacos) rm -rf "$WORK/rn"; mkdir -p "$WORK/rn"
      env RNACOS_HTTP_PORT=$PORT RNACOS_GRPC_PORT=$((PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=$((PORT + 2000)) \
        RNACOS_CONFIG_DB_DIR="$WORK/rn" RNACOS_DATA_DIR="$WORK/rn" RNACOS_RAFT_NODE_ADDR=127.0.0.1:$((PORT + 1000)) \
        "${PIN_SERVER[@]}" "$RNACOS" >"$WORK/server.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 150); do metrics >/dev/null 2>&1 && { sleep 1; return; }; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK=$(getconf CLK_TCK)

run_one() {  # run_one <server> <round>: one fresh server through the three scenarios
  local s=$1 r=$2 d="$WORK/$1-$2"; mkdir -p "$d"
  start "$s"
  local rss0 t0; rss0=$(rss_kb); t0=$(cpu_ticks)
  "${PIN_LOAD[@]}" "$LOADGEN" register --targets "127.0.0.1:$PORT" --instances "$INSTANCES" --services "$SERVICES" \
    --connections "$CONNECTIONS" --hold -1 --no-progress --report "$d/register.json" >"$d/register.log" 2>&1 &
  LG=$!
  until grep -q "^registered " "$d/register.log" 2>/dev/null; do
    kill -0 "$LG" 2>/dev/null || { echo "loadgen register failed against $s:" >&2; cat "$d/register.log" >&2; exit 1; }
    sleep 0.2
  done
  local t1; t1=$(cpu_ticks)
  until grep -q "^holding" "$d/register.log" 2>/dev/null; do
    kill -0 "$LG" 2>/dev/null || { cat "$d/register.log" >&2; exit 1; }; sleep 0.2
  done
  sleep 3
  local rss1 count; rss1=$(rss_kb)
  count=$(metrics | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin).get("instanceCount")))')
  "${PIN_LOAD[@]}" "$LOADGEN" query --targets "127.0.0.1:$PORT" --services "$SERVICES" --connections "$QUERY_CONNS" \
    --rate "$QUERY_RATE" --duration "$DURATION" --no-progress --report "$d/query.json" >"$d/query.log" 2>&1
  "${PIN_LOAD[@]}" "$LOADGEN" query --targets "127.0.0.1:$PORT" --services "$SERVICES" --connections "$QUERY_CONNS" \
    --rate "$QUERY_LOAD_RATE" --duration "$DURATION" --no-progress --report "$d/query-load.json" >"$d/query-load.log" 2>&1
  local q0; q0=$(cpu_ticks)
  "${PIN_LOAD[@]}" "$LOADGEN" flood --targets "127.0.0.1:$PORT" --services "$SERVICES" --connections "$QUERY_CONNS" \
    --rate "$QUERY_MAX_RATE" --duration "$DURATION" --max-inflight 2000 --no-progress \
    --report "$d/query-max.json" >"$d/query-max.log" 2>&1
  local q1; q1=$(cpu_ticks)
  "${PIN_LOAD[@]}" "$LOADGEN" subscribe --targets "127.0.0.1:$PORT" --service-prefix sub-svc- --services "$SUB_SERVICES" \
    --subscribers "$SUBSCRIBERS" --instances-per-service 10 --rate "$SUB_RATE" --duration "$DURATION" \
    --no-progress --report "$d/subscribe.json" >"$d/subscribe.log" 2>&1
  kill -INT "$LG"; wait "$LG" || true; LG=""
  stop
  secs() { awk -v a="$1" -v b="$2" -v t="$TICK" 'BEGIN {printf "%.3f", (b - a) / t}'; }
  printf '{"rss_before_kb":%s,"rss_after_kb":%s,"server_cpu_s":%s,"query_cpu_s":%s,"instance_count":%s}\n' \
    "$rss0" "$rss1" "$(secs "$t0" "$t1")" "$(secs "$q0" "$q1")" "$count" >"$d/server.json"
  python3 - "$d" "$s" "$r" <<'PY'
import json, sys
d, s, r = sys.argv[1:4]
j = lambda n: json.load(open(f"{d}/{n}.json"))
reg, q, qm, sub, srv = j("register"), j("query"), j("query-max"), j("subscribe"), j("server")
ql = j("query-load")
print(f"round {r} {s:<8} register {reg['instances_per_s']:>8.0f}/s  "
      f"query p50 {q['latency_us']['p50']/1000:6.2f} ms p99 {q['latency_us']['p99']/1000:7.2f} ms  "
      f"loaded p99 {ql['latency_us']['p99']/1000:7.2f} ms  "
      f"max {qm['ops_per_s']:>8.0f}/s  push p50 {sub['latency_us']['p50']/1000:6.1f} ms "
      f"p99 {sub['latency_us']['p99']/1000:6.1f} ms  "
      f"rss {srv['rss_before_kb']//1024}->{srv['rss_after_kb']//1024} MiB "
      f"(errors: reg {reg['errors']} q {q['errors']} qmax {qm['errors']} push {sub['errors']})")
PY
  mkdir -p "$WORK/keep"; cp -r "$d" "$WORK/keep/"
}

LOADAVG_START=$(cut -d' ' -f1 /proc/loadavg); export LOADAVG_START
echo "nacelle vs r-nacos $RNACOS_VERSION: $ROUNDS rounds, $INSTANCES instances / $SERVICES services / $CONNECTIONS connections, port $PORT"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="nacelle rnacos"; else order="rnacos nacelle"; fi
  for s in $order; do run_one "$s" "$r"; done
done

python3 - "$WORK/keep" "$OUT" "$ROUNDS" "$RNACOS_VERSION" <<'PY'
import json, os, platform, statistics, sys
keep, out, rounds, rn_version = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
servers = ["nacelle", "rnacos"]

def load(s, r):
    d = f"{keep}/{s}-{r}"
    j = lambda n: json.load(open(f"{d}/{n}.json"))
    reg, q, qm, sub, srv = j("register"), j("query"), j("query-max"), j("subscribe"), j("server")
    ql = j("query-load")
    n = reg["instances_registered"]
    return {
        "register_per_s": reg["instances_per_s"],
        "register_errors": reg["errors"],
        "register_errors_by_kind": reg["errors_by_kind"],
        "register_latency_p50_ms": reg["latency_us"]["p50"] / 1000,
        "register_latency_p99_ms": reg["latency_us"]["p99"] / 1000,
        "instances_registered": n,
        "instances_seen": reg.get("verify", {}).get("instances_seen"),
        "instance_count_reported": srv["instance_count"],
        "server_cpu_us_per_registration": srv["server_cpu_s"] * 1e6 / max(n, 1),
        "rss_before_kb": srv["rss_before_kb"],
        "rss_after_kb": srv["rss_after_kb"],
        "rss_bytes_per_instance": (srv["rss_after_kb"] - srv["rss_before_kb"]) * 1024 / max(n, 1),
        "query_qps_at_fixed_rate": q["ops_per_s"],
        "query_errors": q["errors"],
        "query_p50_ms": q["latency_us"]["p50"] / 1000,
        "query_p99_ms": q["latency_us"]["p99"] / 1000,
        "query_load_p50_ms": ql["latency_us"]["p50"] / 1000,
        "query_load_p99_ms": ql["latency_us"]["p99"] / 1000,
        "query_load_errors": ql["errors"],
        "query_max_qps": qm["ops_per_s"],
        "query_max_errors": qm["errors"],
        "query_max_errors_by_kind": qm["errors_by_kind"],
        "server_cpu_us_per_query": srv["query_cpu_s"] * 1e6 / max(qm["ops"], 1),
        "push_p50_ms": sub["latency_us"]["p50"] / 1000,
        "push_p99_ms": sub["latency_us"]["p99"] / 1000,
        "push_delivered": sub.get("push_delivered"),
        "push_expected": sub.get("push_expected"),
        "push_errors": sub["errors"],
    }

runs = {s: [load(s, r) for r in range(1, rounds + 1)] for s in servers}
keys = list(runs["nacelle"][0].keys())
med = {s: {k: statistics.median(x[k] for x in runs[s])
           for k in keys if all(isinstance(x[k], (int, float)) for x in runs[s])} for s in servers}
ratio = {k: med["nacelle"][k] / med["rnacos"][k] for k in med["nacelle"] if med["rnacos"].get(k)}
env = {k: os.environ.get(k) for k in ("INSTANCES", "SERVICES", "CONNECTIONS", "DURATION", "QUERY_RATE", "QUERY_LOAD_RATE",
                                      "QUERY_MAX_RATE", "QUERY_CONNS", "SUB_SERVICES", "SUBSCRIBERS", "SUB_RATE")}
res = {
    "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.platform()}",
    "note": "loadgen and the server share the machine's CPUs; one server at a time, alternating; "
            "compare medians and ratios, not absolute values",
    "loadavg_start_end": [float(os.environ["LOADAVG_START"]), float(open("/proc/loadavg").read().split()[0])],
    "nacelle_build": os.environ["BUILD_INFO"], "rnacos_version": rn_version, "rounds": rounds, "config": env,
    "median": med, "ratio_nacelle_over_rnacos": ratio, "runs": runs,
}
rows = [  # (label, key, unit, higher is better)
    ("registrations/s", "register_per_s", None, True),
    ("server CPU per registration", "server_cpu_us_per_registration", "µs", False),
    ("RSS growth per instance", "rss_bytes_per_instance", "B", False),
    (f"query p50 at {env['QUERY_RATE']}/s", "query_p50_ms", "ms", False),
    (f"query p99 at {env['QUERY_RATE']}/s", "query_p99_ms", "ms", False),
    (f"query p50 at {env['QUERY_LOAD_RATE']}/s", "query_load_p50_ms", "ms", False),
    (f"query p99 at {env['QUERY_LOAD_RATE']}/s", "query_load_p99_ms", "ms", False),
    (f"queries/s achieved (offered {env['QUERY_MAX_RATE']}/s)", "query_max_qps", None, True),
    ("server CPU per query (saturation run)", "server_cpu_us_per_query", "µs", False),
    ("push p50", "push_p50_ms", "ms", False),
    ("push p99", "push_p99_ms", "ms", False),
]
def f(v):
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
pinned = os.environ.get("PLACEMENT") == "pinned"
where = ("the server on CPU 0 only, loadgen on the other CPUs (PLACEMENT=pinned), so the rates are "
         "what one server core delivers" if pinned else
         "loadgen runs on the same CPUs as the server, so the machine bounds both")
print(f"\nmedians over {rounds} alternating rounds ({where}):")
print(f"  {'':<50} {'nacelle':>10} {'r-nacos':>10} {'nacelle/r-nacos':>16}")
md = [f"# nacelle vs r-nacos {rn_version} (gRPC, loadgen)", "",
      f"`{'PLACEMENT=pinned ' if pinned else ''}bash perf/compare-rnacos.sh` on {res['machine']}: {rounds} alternating rounds, a fresh server "
      f"per round, medians. {env['INSTANCES']} instances in {env['SERVICES']} services from "
      f"{env['CONNECTIONS']} gRPC connections (one InstanceRequest each), queries on those "
      f"services while held ({env['QUERY_CONNS']} connections, {env['DURATION']} s per phase), "
      f"{env['SUB_SERVICES']} services x {env['SUBSCRIBERS']} subscribers with a writer at "
      f"{env['SUB_RATE']} changes/s. {where[0].upper() + where[1:]}; the ratios are the result, "
      f"absolute numbers move between runs.", "",
      "| | nacelle | r-nacos | nacelle / r-nacos | better |", "|---|---|---|---|---|"]
for label, k, unit, better in rows:
    a, b = med["nacelle"][k], med["rnacos"][k]
    rt = ratio.get(k)
    label = f"{label} ({unit})" if unit else label
    adv = (a / b if better else b / a) if a and b else float("nan")
    adv = f"nacelle {adv:.2f}× {'higher' if better else 'lower'}" if adv >= 1 else \
          f"r-nacos {1 / adv:.2f}× {'higher' if better else 'lower'}"
    print(f"  {label:<50} {f(a):>10} {f(b):>10} {rt:>15.3g}x   {adv}")
    md.append(f"| {label} | {f(a)} | {f(b)} | {rt:.3g} | {adv} |")
errs = {s: {k: sum(x[k] for x in runs[s]) for k in ("register_errors", "query_errors", "query_load_errors", "query_max_errors", "push_errors")} for s in servers}
md += ["", "Notes: the RSS growth includes the server side of the connections (1,000 HTTP/2 connections "
       "by default), not only the registry. Push latency includes each server's push merge delay "
       "(nacelle: 50 ms, `--push-delay-ms`). Registrations/s is closed-loop (loadgen's raw gRPC client, "
       "4 requests in flight per connection); queries/s achieved is `loadgen flood` (raw client, open "
       "loop). Both are bounded by the CPUs loadgen shares with the server unless PLACEMENT=pinned; the "
       "server CPU per operation (utime+stime of the server process over the phase / operations) is "
       "the figure the machine bounds least. Load average at start / end: "
       f"{os.environ.get('LOADAVG_START', '?')} / {open('/proc/loadavg').read().split()[0]}."]
md += ["", f"Errors summed over the rounds: {json.dumps(errs)} (query_max errors are mostly "
       "queries dropped by loadgen beyond 2,000 in flight, which is how the saturation run caps its backlog).",
       "", f"Per-round values are in `{os.path.basename(out)}.json` (`runs`); chart: `{os.path.basename(out)}.svg`.", ""]
print(f"  errors: {json.dumps(errs)}")
qr, qm_rate = env["QUERY_RATE"], env["QUERY_MAX_RATE"]
res["chart"] = {
    "title": f"nacelle vs r-nacos {rn_version}: Nacos gRPC, loadgen",
    "subtitle": f"medians of {rounds} alternating round{'s' if rounds > 1 else ''}, {env['INSTANCES']} instances, 2-CPU VM shared with loadgen",
    "series": ["nacelle", f"r-nacos {rn_version}"],
    "panels": [
        {"title": "Throughput (higher is better)", "unit": "operations/s", "xlabel": "operation", "groups": [
            {"label": "registrations/s", "values": [med[s]["register_per_s"] for s in servers]},
            {"label": "queries/s achieved", "values": [med[s]["query_max_qps"] for s in servers]}]},
        {"title": "Query latency (lower is better)", "unit": "ms", "xlabel": "percentile at a fixed rate", "groups": [
            {"label": f"p50 at {qr}/s", "values": [med[s]["query_p50_ms"] for s in servers]},
            {"label": f"p99 at {qr}/s", "values": [med[s]["query_p99_ms"] for s in servers]},
            {"label": f"p50 at {env['QUERY_LOAD_RATE']}/s", "values": [med[s]["query_load_p50_ms"] for s in servers]},
            {"label": f"p99 at {env['QUERY_LOAD_RATE']}/s", "values": [med[s]["query_load_p99_ms"] for s in servers]}]},
        {"title": "Push latency (lower is better)", "unit": "ms", "xlabel": "percentile", "groups": [
            {"label": "p50", "values": [med[s]["push_p50_ms"] for s in servers]},
            {"label": "p99", "values": [med[s]["push_p99_ms"] for s in servers]}]},
        {"title": "Server CPU per operation (lower is better)", "unit": "µs of CPU", "xlabel": "operation", "groups": [
            {"label": "registration", "values": [med[s]["server_cpu_us_per_registration"] for s in servers]},
            {"label": "query", "values": [med[s]["server_cpu_us_per_query"] for s in servers]}]},
        {"title": "Memory (lower is better)", "unit": "bytes / instance", "xlabel": "VmRSS after − before, / instances", "groups": [
            {"label": "RSS growth\nper instance", "values": [med[s]["rss_bytes_per_instance"] for s in servers]}]},
    ],
}
json.dump(res, open(out + ".json", "w"), indent=1)
open(out + ".md", "w").write("\n".join(md))
PY
python3 perf/chart.py "$OUT.json" "$OUT.svg"
echo "wrote $OUT.json $OUT.md $OUT.svg"
