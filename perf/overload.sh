#!/usr/bin/env bash
# Overload: does a saturated node keep the latency of the requests it admits bounded, and shed
# the rest with 503 "over threshold" instead of queueing them?
#   1. a standalone nacelle on CORES core(s) holds SERVICES services x PER_SERVICE instances;
#   2. saturation: queries offered beyond capacity (SAT_OFFER/s, at most 2,000 in flight so
#      that loadgen itself does not drown) with shedding off (--overload-lag-ms 0); S = the
#      queries/s answered;
#   3. 2 x S offered for DURATION s with shedding on (the default) and, for contrast, off:
#      answered/s, shed/s, p50/p99/max latency of the answered ones (from the intended send
#      time, loadgen's open loop), server RSS before and after.
# For MODE in grpc (ServiceQueryRequest) and http (GET /nacos/v1/ns/instance/list).
# Writes perf/results/overload.json and prints a table.
#
#   bash perf/overload.sh        # CORES=1 SERVICES=100 PER_SERVICE=100 DURATION=15 MODES="grpc http"
set -euo pipefail
cd "$(dirname "$0")/.."
CORES=${CORES:-1}; SERVICES=${SERVICES:-100}; PER_SERVICE=${PER_SERVICE:-100}
DURATION=${DURATION:-15}; SAT_OFFER=${SAT_OFFER:-15000}; MODES=${MODES:-grpc http}
PORT=${PORT:-29848}; OUT=${OUT:-perf/results/overload.json}; CONNS=${CONNS:-32}
cargo build --release -q -p nacelle-server -p loadgen
WORK=$(mktemp -d); cp target/release/nacelle target/release/loadgen "$WORK/"; PID=""
trap 'set +e; [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for p in $PORT $((PORT + 1000)); do
  if ss -Hltn "sport = :$p" | grep -q .; then echo "port $p is in use; set PORT=" >&2; exit 1; fi
done

start() {  # start <overload-lag-ms>
  "$WORK/nacelle" --bind 127.0.0.1 --http-port "$PORT" --cores "$CORES" --overload-lag-ms "$1" \
    >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" >/dev/null && return; sleep 0.1; done
  echo "nacelle did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
query() {  # query <mode> <rate> <report> [flags]; --prepare registers the instances (gRPC, held while it runs)
  local mode=$1 rate=$2 report=$3; shift 3
  "$WORK/loadgen" query --targets "127.0.0.1:$PORT" --mode "$mode" --services "$SERVICES" \
    --prepare --instances-per-service "$PER_SERVICE" --connections "$CONNS" --rate "$rate" \
    --duration "$DURATION" --no-progress --report "$report" "$@" >"$report.log" 2>&1 || { cat "$report.log" >&2; exit 1; }
}
field() { python3 -c "import json,sys; print(json.load(open('$1'))$2)"; }

for mode in $MODES; do
  start 0
  query "$mode" "$SAT_OFFER" "$WORK/$mode-sat.json" --max-inflight 2000
  stop
  sat=$(field "$WORK/$mode-sat.json" "['ops_per_s']")
  offer=$(python3 -c "print(round(2 * $sat))")
  echo "$mode: saturation $sat answered/s when offered $SAT_OFFER/s; offering $offer/s (2x)"
  for lag in 50 0; do
    start "$lag"
    r0=$(rss_kb)
    query "$mode" "$offer" "$WORK/$mode-$lag.json"
    r1=$(rss_kb)
    stop
    printf '{"rss_before_kb":%s,"rss_after_kb":%s}\n' "$r0" "$r1" >"$WORK/$mode-$lag.rss"
  done
done

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$WORK" "$OUT" "$MODES" "$CORES" "$DURATION" "$LOADAVG" <<'PY'
import json, platform, os, sys
work, out, modes, cores, duration, loadavg = sys.argv[1:7]
res = {"machine": f"{os.cpu_count()} cpus {platform.platform()}", "cores": int(cores),
       "duration_s": float(duration), "loadavg_end": loadavg, "modes": {}}
print(f"{'mode':<5} {'shedding':<9} {'offered/s':>9} {'answered/s':>10} {'shed/s':>8} "
      f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>9} {'RSS MiB':>12}")
for mode in modes.split():
    sat = json.load(open(f"{work}/{mode}-sat.json"))
    m = {"saturation_ops_per_s": sat["ops_per_s"], "runs": {}}
    for lag, name in (("50", "on"), ("0", "off")):
        r = json.load(open(f"{work}/{mode}-{lag}.json"))
        rss = json.load(open(f"{work}/{mode}-{lag}.rss"))
        shed = r.get("errors_by_kind", {}).get("nacos:503", 0) + r.get("errors_by_kind", {}).get("http:503", 0)
        lat = r["latency_us"]
        row = {"offered_per_s": round(2 * sat["ops_per_s"]), "answered_per_s": r["ops_per_s"],
               "shed_per_s": round(shed / r["duration_s"], 1), "errors_by_kind": r.get("errors_by_kind", {}),
               "latency_us": lat, **rss}
        m["runs"][name] = row
        print(f"{mode:<5} {name:<9} {row['offered_per_s']:>9} {row['answered_per_s']:>10.0f} "
              f"{row['shed_per_s']:>8.0f} {lat['p50']/1000:>8.2f} {lat['p99']/1000:>8.2f} "
              f"{lat['max']/1000:>9.1f} {rss['rss_before_kb']//1024:>5}->{rss['rss_after_kb']//1024:<5}")
    res["modes"][mode] = m
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, "w"), indent=1)
print(f"saved {out}")
PY
