#!/usr/bin/env bash
# Overload: does a saturated node keep the latency of the requests it admits bounded, and shed
# the rest with 503 "over threshold" instead of queueing them?
#   1. a standalone nacelle on CORES core(s) (taskset to CPUs 0..CORES-1, one executor pinned
#      to each) holds SERVICES services x PER_SERVICE instances (registered by loadgen --prepare, held during the run),
#      with SERVER_FLAGS (default `--cache-bytes 0`: every query encodes its answer, as for
#      services beyond the answer cache; with hot cached answers one server core answers about
#      as many queries as one generator core can send, so it cannot be offered 2x);
#   2. saturation: `loadgen flood` (one thread pinned to GEN_CPU; PROTOCOL=grpc, the default:
#      pre-encoded gRPC ServiceQueryRequests over raw HTTP/2 to the gRPC port; PROTOCOL=http:
#      pre-encoded GET /nacos/v1/ns/instance/list over CONNS keep-alive HTTP/1.1 connections to
#      the HTTP port, pipelined, at most PIPELINE unanswered per connection, 0 = no limit)
#      offers SAT_OFFER/s with shedding off (--overload-lag-ms 0) and at most SAT_INFLIGHT
#      queries in flight (the rest are dropped by the generator, so the server's backlog stays
#      under the 3 s client timeout: without the cap, timed-out gRPC calls are reset, the server
#      closes connections for reset floods and answers far less; timed-out HTTP requests stay
#      in the pipeline and are still served); S = the queries/s answered (median of RUNS);
#   3. 2 x S offered for DURATION s with shedding on (the default, 50 ms) and off, RUNS times
#      each, alternating: answered/s, shed/s, p50/p99/max latency of the answered queries (from
#      the intended send time), server RSS before/after and its peak (VmHWM), the server's
#      shed counter (nacelle_shed_reads_total in /metrics, which counts gRPC and HTTP sheds
#      alike; --prepare registers over gRPC, so only the flood's reads are in it), the
#      generator's CPU and send lag (did it really offer 2 x S?).
# The generator counts as shed what the server refused as over threshold: gRPC ErrorResponse
# 503 (`nacos:503`) or HTTP status 503 (`http:503`); the report fields are the same.
# Writes perf/results/overload.json (PROTOCOL=http: perf/results/overload-http.json; every
# run, per-second timelines, medians) and prints a table of medians.
#
#   bash perf/overload.sh   # CORES=1 SERVICES=100 PER_SERVICE=100 CONNS=32 DURATION=10 RUNS=3
#   PROTOCOL=http bash perf/overload.sh   # the same over HTTP/1.1 (PIPELINE=0)
set -euo pipefail
cd "$(dirname "$0")/.."
CORES=${CORES:-1}; SERVICES=${SERVICES:-100}; PER_SERVICE=${PER_SERVICE:-100}
DURATION=${DURATION:-10}; SAT_OFFER=${SAT_OFFER:-20000}; RUNS=${RUNS:-3}; CONNS=${CONNS:-32}
SERVER_FLAGS=${SERVER_FLAGS---cache-bytes 0}; SAT_INFLIGHT=${SAT_INFLIGHT:-2000}
GEN_CPU=${GEN_CPU:-1}; LAG_MS=${LAG_MS:-50}; PROTOCOL=${PROTOCOL:-grpc}; PIPELINE=${PIPELINE:-0}
case "$PROTOCOL" in
  grpc) DEFAULT_OUT=perf/results/overload.json; PROTO_FLAGS=() ;;
  http) DEFAULT_OUT=perf/results/overload-http.json; PROTO_FLAGS=(--protocol http --pipeline "$PIPELINE") ;;
  *) echo "PROTOCOL must be grpc or http" >&2; exit 1 ;;
esac
PORT=${PORT:-29848}; OUT=${OUT:-$DEFAULT_OUT}
NACELLE=${NACELLE:-}; LOADGEN=${LOADGEN:-}   # prebuilt binaries (default: cargo build)
if [ -z "$NACELLE" ] || [ -z "$LOADGEN" ]; then
  cargo build --release -q -p nacelle-server -p loadgen
fi
WORK=$(mktemp -d)
cp "${NACELLE:-target/release/nacelle}" "$WORK/nacelle"; cp "${LOADGEN:-target/release/loadgen}" "$WORK/loadgen"
PID=""
trap 'set +e; [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for p in $PORT $((PORT + 1000)); do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is in use; set PORT=" >&2; exit 1; fi
done

start() {  # start <overload-lag-ms>
  taskset -c "0-$((CORES - 1))" "$WORK/nacelle" --bind 127.0.0.1 --http-port "$PORT" --cores "$CORES" --data-dir "$WORK/data-$RANDOM" \
    --overload-lag-ms "$1" $SERVER_FLAGS >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" >/dev/null && return; sleep 0.1; done
  echo "nacelle did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
status_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$PID/status"; }
shed_total() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^nacelle_shed_reads_total/ {s += $2} END {print s + 0}'; }
flood() {  # flood <lag-ms> <rate> <name> [loadgen flags]: one run on a fresh server
  local lag=$1 rate=$2 name=$3; shift 3
  start "$lag"
  local r0 h0 s0 r1 h1 s1
  r0=$(status_kb VmRSS); s0=$(shed_total)
  taskset -c "$GEN_CPU" "$WORK/loadgen" --threads 1 flood --targets "127.0.0.1:$PORT" \
    --services "$SERVICES" --prepare --instances-per-service "$PER_SERVICE" \
    --connections "$CONNS" --rate "$rate" --duration "$DURATION" --no-progress "${PROTO_FLAGS[@]}" \
    --report "$WORK/$name.report.json" "$@" >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log" >&2; exit 1; }
  r1=$(status_kb VmRSS); h1=$(status_kb VmHWM); s1=$(shed_total)
  stop
  printf '{"lag_ms":%s,"rate":%s,"rss_before_kb":%s,"rss_after_kb":%s,"rss_peak_kb":%s,"server_shed":%s,"loadavg":"%s"}\n' \
    "$lag" "$rate" "$r0" "$r1" "$h1" "$((s1 - s0))" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$WORK/$name.server.json"
  grep -E '^(ops|latency|flood|errors|send lag)' "$WORK/$name.log" | sed "s/^/  $name: /"
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

echo "saturation ($PROTOCOL): offering $SAT_OFFER/s with shedding off, $RUNS runs"
sats=()
for i in $(seq "$RUNS"); do
  flood 0 "$SAT_OFFER" "sat-$i" --max-inflight "$SAT_INFLIGHT"
  sats+=("$(field "$WORK/sat-$i.report.json" "['ops_per_s']")")
done
S=$(python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "${sats[@]}")
OFFER=$(python3 -c "print(round(2 * $S))")
echo "S = $S answered/s (median of ${sats[*]}); offering $OFFER/s (2 x S)"
for i in $(seq "$RUNS"); do
  flood "$LAG_MS" "$OFFER" "on-$i"
  flood 0 "$OFFER" "off-$i"
done

SERVER_FLAGS="$SERVER_FLAGS" SAT_INFLIGHT="$SAT_INFLIGHT" PROTOCOL="$PROTOCOL" PIPELINE="$PIPELINE" python3 - "$WORK" "$OUT" "$RUNS" "$CORES" "$SERVICES" "$PER_SERVICE" "$CONNS" "$DURATION" "$SAT_OFFER" "$S" "$OFFER" "$LAG_MS" <<'PY'
import json, os, platform, statistics, sys
work, out = sys.argv[1:3]
runs, cores, services, per_service, conns = map(int, sys.argv[3:8])
duration, sat_offer, sat, offer = map(float, sys.argv[8:12])
lag_ms = int(sys.argv[12])
protocol = os.environ.get("PROTOCOL", "grpc")
flags = "" if protocol == "grpc" else f" --protocol http --pipeline {os.environ.get('PIPELINE', '0')}"
def load(name):
    r = json.load(open(f"{work}/{name}.report.json"))
    s = json.load(open(f"{work}/{name}.server.json"))
    lat = r["latency_us"]
    return {
        "offered_per_s": r["offered_per_s"], "answered_per_s": r["ops_per_s"],
        "shed_per_s": r["shed_per_s"], "errors_by_kind": r["errors_by_kind"],
        "latency_us": {k: lat[k] for k in ("p50", "p90", "p99", "p999", "max")},
        "send_lag_p99_us": r["send_lag_us"]["p99"], "loadgen_cpu_s": r["loadgen_cpu_s"],
        "loadgen_cpu_per_request_us": r["loadgen_cpu_per_request_us"],
        "duration_s": r["duration_s"], "unfinished": r["unfinished"],
        "connections_lost": r["connections_lost"], "timeline": r["timeline"], **s,
    }
def med(rows, f):
    return statistics.median(f(r) for r in rows)
res = {
    "machine": f"{os.cpu_count()} cpus {platform.platform()}",
    "command": "bash perf/overload.sh" if protocol == "grpc" else "PROTOCOL=http bash perf/overload.sh",
    "config": {"protocol": protocol,
               "cores": cores, "services": services, "instances_per_service": per_service,
               "connections": conns, "duration_s": duration, "runs": runs,
               "saturation_offer_per_s": sat_offer, "overload_lag_ms": lag_ms,
               "saturation_max_inflight": int(os.environ.get("SAT_INFLIGHT", "2000")),
               "server_flags": os.environ.get("SERVER_FLAGS", "--cache-bytes 0"),
               "generator": f"taskset -c GEN_CPU loadgen --threads 1 flood{flags}"},
    "saturation_ops_per_s": sat, "offered_2x_per_s": offer,
    "saturation_runs": [load(f"sat-{i}") for i in range(1, runs + 1)],
    "runs": {}, "median": {},
}
print(f"{protocol}: S = {sat:.0f}/s answered with shedding off; 2S = {offer:.0f}/s offered. Medians of {runs} runs:")
print(f"{'shedding':<9} {'offered/s':>9} {'answered/s':>10} {'shed/s':>8} {'p50 ms':>8} "
      f"{'p99 ms':>8} {'max ms':>8} {'RSS MiB before->after (peak)':>28} {'gen CPU %':>9} {'load':>5}")
for name in ("on", "off"):
    rows = [load(f"{name}-{i}") for i in range(1, runs + 1)]
    res["runs"][name] = rows
    m = {
        "offered_per_s": med(rows, lambda r: r["offered_per_s"]),
        "answered_per_s": med(rows, lambda r: r["answered_per_s"]),
        "shed_per_s": med(rows, lambda r: r["shed_per_s"]),
        "p50_us": med(rows, lambda r: r["latency_us"]["p50"]),
        "p99_us": med(rows, lambda r: r["latency_us"]["p99"]),
        "max_us": med(rows, lambda r: r["latency_us"]["max"]),
        "rss_before_kb": med(rows, lambda r: r["rss_before_kb"]),
        "rss_after_kb": med(rows, lambda r: r["rss_after_kb"]),
        "rss_peak_kb": med(rows, lambda r: r["rss_peak_kb"]),
        "loadgen_cpu_pct": med(rows, lambda r: 100 * r["loadgen_cpu_s"] / r["duration_s"]),
        "loadavg_1m": med(rows, lambda r: float(r["loadavg"].split()[0])),
    }
    res["median"][name] = m
    print(f"{name:<9} {m['offered_per_s']:>9.0f} {m['answered_per_s']:>10.0f} {m['shed_per_s']:>8.0f} "
          f"{m['p50_us']/1000:>8.1f} {m['p99_us']/1000:>8.1f} {m['max_us']/1000:>8.1f} "
          f"{m['rss_before_kb']/1024:>9.0f} -> {m['rss_after_kb']/1024:.0f} ({m['rss_peak_kb']/1024:.0f}) "
          f"{m['loadgen_cpu_pct']:>9.0f} {m['loadavg_1m']:>5.2f}")
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
json.dump(res, open(out, "w"), indent=1)
print(f"saved {out}")
PY
