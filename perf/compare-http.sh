#!/usr/bin/env bash
# Side-by-side HTTP v1 comparison of nacelle and r-nacos on this machine, with two loads:
#   wrk (open firehose, CONNS=64 connections):
#     1. registrations/s of distinct instances (POST /nacos/v1/ns/instance, 10,000 services),
#     2. /nacos/v1/ns/instance/list QPS on a 100-instance service;
#   closed loop (loadgen's http_closed_loop, as perf/http-closed-loop.sh: CLOSED_CONNS="16 64"
#   keep-alive connections, one request in flight each, as the SDKs' pooled clients behave):
#     registrations (INSTANCES in SERVICES services), light beats of them, /instance/list of a
#     100-instance service.
# Every run reports the server's CPU per request from its own counters (/proc/<pid>/stat
# utime + stime over the run). Servers run one at a time, alternating, ROUNDS times; medians
# and ratios are printed and saved to perf/results/compare-http.json, with a chart
# (perf/chart.py) in perf/results/compare-http.svg.
#
# Two placements, both in every round (MODES="shared pinned" by default):
#   shared - server and wrk float over all CPUs, as the issue's "same machine" setup. On 2 cores
#            the scheduler splits the CPUs between four busy threads, and that split, not the
#            server's cost per request, sets the rate: a change that made nacelle 12 % cheaper
#            per registration did not move it.
#   pinned - the server on CPU 0 only (its defaults see one CPU), wrk on the other CPUs: the
#            load generator no longer competes, so the rate is what one server core delivers.
#
#   bash perf/compare-http.sh            # ROUNDS=3 DURATION=10 CONNS=64 CLOSED_CONNS="16 64"
#   CLOSED_CONNS= bash perf/compare-http.sh   # wrk only; LOADS=closed: the closed loop only
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-64}; THREADS=${THREADS:-2}
PORT=${PORT:-38848}
MODES=${MODES:-shared pinned}
LOADS=${LOADS:-wrk closed}; CLOSED_CONNS=${CLOSED_CONNS-16 64}
INSTANCES=${INSTANCES:-200000}; SERVICES=${SERVICES:-2000}
CPUS=$(nproc)
if [ "$CPUS" -lt 2 ]; then MODES=shared; fi
case " $LOADS " in *" wrk "*) command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; } ;; esac
# The test script's build settings (scripts/test.sh), so a build here reuses its artifacts.
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-off}"
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-0}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}"
RNACOS=${RNACOS_BIN:-$(command -v rnacos || echo "$HOME/.cargo/bin/rnacos")}
[ -x "$RNACOS" ] || cargo install --locked rnacos
if [ -z "${NACELLE_BIN:-}" ]; then cargo build --release -q -p nacelle-server --bin nacelle; fi
cargo build --release -q -p loadgen --bin http_closed_loop
NACELLE=${NACELLE_BIN:-target/release/nacelle}
CLIENT=target/release/http_closed_loop
WORK=$(mktemp -d); PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p perf/results

. perf/http/servers.sh
cpu_ticks() { awk '{print $14+$15}' /proc/$PID/stat; }
rps() { grep Requests/sec | awk '{print $2}'; }

declare -A REG LIST REGCPU LISTCPU
CLOSED=$WORK/closed.jsonl; : >"$CLOSED"
us_per() { echo "($2-$1)*10000/($3*$DURATION)" | bc -l; }  # ticks before, after, rate
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    read -ra load <<<"$(load_cmd "$mode")"
    for server in nacelle rnacos; do
      case " $LOADS " in *" wrk "*)
      start $server $mode
      t0=$(cpu_ticks)
      r=$("${load[@]}" wrk -t$THREADS -c$CONNS -d${DURATION}s -s perf/http/register.lua http://127.0.0.1:$PORT -- 10000 100000000 $((round * 1000000000)) | rps)
      t1=$(cpu_ticks)
      for i in $(seq 100); do
        curl -sf -X POST "http://127.0.0.1:$PORT/nacos/v1/ns/instance?serviceName=list-100&ip=10.99.0.$i&port=8080&metadata=%7B%22zone%22%3A%22z1%22%7D" >/dev/null
      done
      hosts=$(curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/instance/list?serviceName=list-100" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["hosts"]))')
      [ "$hosts" = 100 ] || { echo "$server: list-100 has $hosts hosts, expected 100" >&2; exit 1; }
      t2=$(cpu_ticks)
      l=$("${load[@]}" wrk -t$THREADS -c$CONNS -d${DURATION}s -s perf/http/list.lua http://127.0.0.1:$PORT -- list-100 | rps)
      t3=$(cpu_ticks)
      stop
      rc=$(us_per "$t0" "$t1" "$r"); lc=$(us_per "$t2" "$t3" "$l")
      REG[$mode.$server]+="$r "; LIST[$mode.$server]+="$l "
      REGCPU[$mode.$server]+="$rc "; LISTCPU[$mode.$server]+="$lc "
      printf 'round %s %-6s %-8s wrk register %8.0f/s (%5.1f us cpu/req)  list %8.0f/s (%5.1f us cpu/req)\n' "$round" "$mode" "$server" "$r" "$rc" "$l" "$lc"
      ;; esac
      case " $LOADS " in *" closed "*)
      for conns in $CLOSED_CONNS; do
        start $server $mode
        "${load[@]}" "$CLIENT" --addr 127.0.0.1:$PORT --pid "$PID" --conns "$conns" --seconds "$DURATION" \
          --instances "$INSTANCES" --services "$SERVICES" --phases register,beat,list \
          | sed "s/^{/{\"round\":$round,\"server\":\"$server\",\"placement\":\"$mode\",\"load_avg\":\"$(cut -d' ' -f1 /proc/loadavg)\",/" >>"$CLOSED"
        stop
        python3 -c '
import json, sys
for l in open(sys.argv[1]).read().splitlines():
    j = json.loads(l)
    if j["round"] == int(sys.argv[2]) and j["placement"] == sys.argv[3] and j["server"] == sys.argv[4] and j["conns"] == int(sys.argv[5]):
        print("round %d %-6s %-8s closed c=%-3d %-8s %8.0f/s (%s us cpu/req, load %s)" % (j["round"], j["placement"], j["server"], j["conns"], j["phase"], j["rps"], j["server_cpu_us_per_request"], j["load_avg"]))
' "$CLOSED" "$round" "$mode" "$server" "$conns"
      done
      ;; esac
    done
  done
done

args=()
for mode in $MODES; do
  args+=("$mode" "${REG[$mode.nacelle]:-}" "${REG[$mode.rnacos]:-}" "${LIST[$mode.nacelle]:-}" "${LIST[$mode.rnacos]:-}"
    "${REGCPU[$mode.nacelle]:-}" "${REGCPU[$mode.rnacos]:-}" "${LISTCPU[$mode.nacelle]:-}" "${LISTCPU[$mode.rnacos]:-}")
done
python3 - "$ROUNDS" "$CPUS" "$CLOSED" "$(cut -d' ' -f1-3 /proc/loadavg)" "${args[@]}" <<'PY'
import json, statistics, sys, platform, os
rounds, cpus, closed, load, rest = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
placement = {
  "shared": "server and load generator on all CPUs",
  "pinned": f"server on CPU 0, load generator on CPUs 1-{cpus - 1}",
}
out = {"machine": f"{platform.node()} {os.cpu_count()} cpus {platform.platform()}", "rounds": rounds,
       "load_avg_at_end": load}
med = lambda v: statistics.median(v) if v else None
ratio = lambda a, b: a / b if a and b else None
fmt = lambda v, f: format(v, f) if v is not None else "-"
panels = []
print(f"\nmedians over {rounds} alternating rounds (load generator on the same machine):")
for i in range(0, len(rest), 9):
  mode = rest[i]
  vals = [list(map(float, a.split())) for a in rest[i + 1:i + 9]]
  if not vals[0]:
    continue
  m = [med(v) for v in vals]
  out[mode] = {
    "placement": placement[mode],
    "register_per_s": {"nacelle": vals[0], "rnacos": vals[1], "median_nacelle": m[0], "median_rnacos": m[1], "ratio": ratio(m[0], m[1])},
    "list_100_qps": {"nacelle": vals[2], "rnacos": vals[3], "median_nacelle": m[2], "median_rnacos": m[3], "ratio": ratio(m[2], m[3])},
    "register_cpu_us_per_request": {"median_nacelle": m[4], "median_rnacos": m[5]},
    "list_cpu_us_per_request": {"median_nacelle": m[6], "median_rnacos": m[7]},
  }
  print(f"  wrk -c64, {mode} ({placement[mode]}):")
  print(f"    register/s : nacelle {m[0]:9.0f}   r-nacos {m[1]:9.0f}   ratio {fmt(ratio(m[0], m[1]), '.2f')}x   cpu/req {m[4]:.1f} vs {m[5]:.1f} us")
  print(f"    list QPS   : nacelle {m[2]:9.0f}   r-nacos {m[3]:9.0f}   ratio {fmt(ratio(m[2], m[3]), '.2f')}x   cpu/req {m[6]:.1f} vs {m[7]:.1f} us")
  panels.append({"title": f"wrk -c64, {mode}", "unit": "requests/s",
                 "groups": [{"label": "register", "values": [m[0], m[1]]}, {"label": "list", "values": [m[2], m[3]]}]})
rows = [json.loads(l) for l in open(closed).read().splitlines() if l.strip()]
cl = {}
for r in rows:
  cl.setdefault((r["placement"], r["conns"], r["phase"]), {}).setdefault(r["server"], []).append(r)
closed_out = {}
for (mode, conns, phase), by in sorted(cl.items()):
  entry = {}
  for server, rs in by.items():
    cpu = [r["server_cpu_us_per_request"] for r in rs if r["server_cpu_us_per_request"] is not None]
    entry[server] = {"rps": [r["rps"] for r in rs], "median_rps": med([r["rps"] for r in rs]),
                     "median_cpu_us_per_request": med(cpu), "errors": sum(r["errors"] for r in rs),
                     "load_avg": [r["load_avg"] for r in rs]}
  n, rn = entry.get("nacelle", {}), entry.get("rnacos", {})
  entry["ratio_rps"] = ratio(n.get("median_rps"), rn.get("median_rps"))
  entry["ratio_cpu"] = ratio(rn.get("median_cpu_us_per_request"), n.get("median_cpu_us_per_request"))
  closed_out.setdefault(mode, {}).setdefault(f"c{conns}", {})[phase] = entry
  print(f"  closed loop {mode} c={conns} {phase:<8}: nacelle {fmt(n.get('median_rps'), '9.0f')}/s {fmt(n.get('median_cpu_us_per_request'), '6.1f')} us/req"
        f"   r-nacos {fmt(rn.get('median_rps'), '9.0f')}/s {fmt(rn.get('median_cpu_us_per_request'), '6.1f')} us/req"
        f"   rate {fmt(entry['ratio_rps'], '.2f')}x  cpu {fmt(entry['ratio_cpu'], '.2f')}x less")
if closed_out:
  out["closed_loop"] = closed_out
  for mode, by_conns in closed_out.items():
    for conns, phases in by_conns.items():
      for unit, key in (("requests/s", "median_rps"), ("server CPU us per request", "median_cpu_us_per_request")):
        panels.append({"title": f"closed loop {conns[1:]} conns, {mode}", "unit": unit,
                       "groups": [{"label": p, "values": [e.get("nacelle", {}).get(key) or 0, e.get("rnacos", {}).get(key) or 0]}
                                  for p, e in phases.items()]})
out["chart"] = {"title": "HTTP v1: nacelle vs r-nacos", "subtitle": f"medians of {rounds} alternating rounds, {out['machine']}",
                "series": ["nacelle", "r-nacos"], "panels": panels}
json.dump(out, open("perf/results/compare-http.json", "w"), indent=2)
PY
python3 perf/chart.py perf/results/compare-http.json perf/results/compare-http.svg
echo "saved perf/results/compare-http.json and .svg"
