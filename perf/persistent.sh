#!/usr/bin/env bash
# Persistent (ephemeral=false, Raft) instances: nacelle vs r-nacos on this machine, side by side
# in one run (issue 15, "Numbers"). Every persistent instance is registered over HTTP v1 by
# `loadgen persist` on 127.0.0.0/8 addresses only (the servers health-check them):
#   1. throughput: 3 nacelle nodes (127.0.0.1-3, --cores 1 each, Raft over QUIC, every
#      acknowledgement fsynced on a majority) vs r-nacos standalone. Closed loop over CONNS
#      keep-alive connections with one request in flight each (as SDKs), then a pipelined flood
#      (PIPELINE requests written per connection before their answers are read); registrations/s
#      and the servers' CPU per registration (utime+stime from /proc, summed over the 3 nodes);
#      then a fixed rate of half each server's own closed-loop rate, and both at one common
#      rate (half the lower of the two): write latency p50/p99 from the intended send time.
#      Health checks are off for these services (healthChecker NONE) so the numbers are writes.
#   2. kill -9 of every node right after KILL_N acknowledged registrations, restart on the
#      same data, count the acknowledged instances present (nacelle: every node; r-nacos the
#      same way with its own data dir).
#   3. leader kill -9 under load (nacelle): writers on the two followers, closed loop; the
#      time from the kill until acknowledgements flow again (first acknowledgement after the
#      pause, and back to half the rate before the kill); every acknowledged write present.
#   4. a standalone nacelle with BIG_N persistent instances (registered over BIG_CONNS HTTP
#      connections, pipelined BIG_PIPELINE deep: the time is reported), kill -9, restart: time
#      until HTTP answers, until instanceCount reaches BIG_N, and until a full listing of every
#      service shows every acknowledged instance.
#   5. CHECK_N persistent instances TCP-checked every 5 s (the default checker) by a 3-node
#      cluster, `loadgen listen` accepting on CHECK_N/CHECK_PORTS 127.x.y.z addresses x
#      CHECK_PORTS ports: the cluster's CPU over CHECK_WINDOW s of checking, less the same
#      cluster's idle CPU measured before; checks/s; flips (false flips: every listener is up,
#      so any flip is false) and unhealthy instances after the window; RSS per instance per node;
#      the kernel's listen-queue overflow counters.
# Parts are chosen with PARTS (default 1,2,3,4,5); ROUNDS rounds of part 1 alternate which
# server goes first. Results: $OUT.json and $OUT.md (default perf/results/persistent).
#
#   bash perf/persistent.sh                                   # full size (about 25 minutes)
#   bash perf/persistent.sh --quick                           # every part, small, a few minutes
#   PARTS=1 ROUNDS=3 DURATION=20 bash perf/persistent.sh      # one part
# The machine's load average at the start and end of each part is recorded beside it: the
# three nodes, r-nacos and loadgen share the same CPUs, so compare ratios inside one run.
set -euo pipefail
cd "$(dirname "$0")/.."
VARS="QUICK SMOKE RNACOS_NODES PARTS ROUNDS DURATION CONNS PIPELINE SERVICES KILL_N LEADER_DURATION LEADER_KILL_AT BIG_N BIG_CONNS BIG_PIPELINE BIG_SERVICES CHECK_N CHECK_PORTS CHECK_WINDOW PORT OUT"
COMMAND="$(for v in $VARS; do if [ -n "${!v:-}" ]; then printf '%s=%s ' "$v" "${!v}"; fi; done)bash perf/persistent.sh${*:+ $*}"
UPTIME_START=$(uptime); export COMMAND UPTIME_START
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $arg (only --quick; everything else is an environment variable)" >&2; exit 2 ;;
  esac
done
if [ -n "${QUICK:-}${SMOKE:-}" ]; then   # every part, small: a few minutes
  QUICK=1
  : "${ROUNDS:=1}" "${DURATION:=5}" "${KILL_N:=2000}" "${LEADER_DURATION:=10}" "${LEADER_KILL_AT:=4}"
  : "${BIG_N:=20000}" "${CHECK_N:=2000}" "${CHECK_WINDOW:=8}" "${OUT:=perf/results/persistent-quick}"
fi
PARTS=${PARTS:-1,2,3,4,5}; ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-15}
CONNS=${CONNS:-16}; PIPELINE=${PIPELINE:-16}; SERVICES=${SERVICES:-100}
KILL_N=${KILL_N:-20000}
LEADER_DURATION=${LEADER_DURATION:-20}; LEADER_KILL_AT=${LEADER_KILL_AT:-8}
BIG_N=${BIG_N:-1000000}; BIG_CONNS=${BIG_CONNS:-64}; BIG_PIPELINE=${BIG_PIPELINE:-8}; BIG_SERVICES=${BIG_SERVICES:-1000}
CHECK_N=${CHECK_N:-100000}; CHECK_PORTS=${CHECK_PORTS:-4}; CHECK_WINDOW=${CHECK_WINDOW:-30}
RNACOS_NODES=${RNACOS_NODES:-3}
PORT=${PORT:-27848}; RPORT=$((PORT + 10)); OUT=${OUT:-perf/results/persistent}
export RNACOS_NODES PARTS ROUNDS DURATION CONNS PIPELINE SERVICES KILL_N LEADER_DURATION LEADER_KILL_AT BIG_N BIG_CONNS BIG_PIPELINE BIG_SERVICES CHECK_N CHECK_PORTS CHECK_WINDOW
has() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

NACELLE=target/release/nacelle; LOADGEN=target/release/loadgen
if [ ! -x "$NACELLE" ] || [ ! -x "$LOADGEN" ] || [ -n "${BUILD:-}" ]; then
  cargo build --release -p nacelle-server -p loadgen
fi
RNACOS=${RNACOS_BIN:-$(command -v rnacos || echo "$HOME/.cargo/bin/rnacos")}
if [ ! -x "$RNACOS" ]; then cargo install --locked rnacos; RNACOS=$HOME/.cargo/bin/rnacos; fi
RNACOS_VERSION=$("$RNACOS" -V | awk '{print $2}'); export RNACOS_VERSION
# 100,000 listeners need as many descriptors: raise the limit where allowed (part 5 splits
# its listeners over processes when the hard limit is lower).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d); PIDS=(); RNS=(); SOLO=""; LG=""; LSS=()
cleanup() {
  set +e   # kill every process we started, by pid, even if some are already gone
  for p in "$LG" "${RNS[@]}" "$SOLO" "${LSS[@]}" "${PIDS[@]}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null; rm -rf "$WORK"
}
trap cleanup EXIT
BUILD_INFO="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain -- engine server wire raft 2>/dev/null | grep -q . && echo ' + uncommitted changes'), nacelle built $(date -r "$NACELLE" '+%F %T')"
export BUILD_INFO
# Private copies: a build running meanwhile in target/ must not swap the binaries mid-run.
cp "$NACELLE" "$LOADGEN" "$WORK/"; NACELLE=$WORK/nacelle; LOADGEN=$WORK/loadgen
mkdir -p "$(dirname "$OUT")" "$WORK/res"
NODES=(127.0.0.1 127.0.0.2 127.0.0.3)
MEMBERS=$(printf "%s:$PORT," "${NODES[@]}"); MEMBERS=${MEMBERS%,}
TARGETS=$MEMBERS
for ip in "${NODES[@]}"; do
  if ss -Hltn "src $ip:$PORT" | grep -q . || ss -Hltn "sport = :$RPORT" | grep -q .; then echo "port $PORT or $RPORT in use; set PORT=" >&2; exit 1; fi
done
TICK=$(getconf CLK_TCK)
loadavg() { cut -d' ' -f1 /proc/loadavg; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b - a) / 1000}'; }
metrics() { curl -sf --max-time 2 "http://$1/nacos/v1/ns/operator/metrics"; }
field() { metrics "$1" 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin).get('$2', ''))" 2>/dev/null || true; }
prom() { curl -sf --max-time 2 "http://$1:$PORT/metrics" 2>/dev/null | awk -v n="$2" '$1==n {print $2}'; }
prom_sum() { local n=$1 s=0 v ip; for ip in "${NODES[@]}"; do v=$(prom "$ip" "$n"); s=$(awk -v a="$s" -v b="${v:-0}" 'BEGIN {print a + b}'); done; echo "$s"; }
LGC=("$LOADGEN" --threads "${LOADGEN_THREADS:-2}")   # an array, not a function: "&" then gives the pid of loadgen itself

# --- nacelle: a 3-node cluster on 127.0.0.1-3 or a standalone node --------------------------
start_node() {  # start_node <index 0-2> <data tag>
  local i=$1 tag=$2
  for _ in $(seq 20); do
    "$NACELLE" --bind "${NODES[$i]}" --http-port "$PORT" --members "$MEMBERS" --insecure --cores 1 \
      --data-dir "$WORK/$tag-n$i" >>"$WORK/$tag-n$i.log" 2>&1 &
    PIDS[$i]=$!
    sleep 0.3
    kill -0 "${PIDS[$i]}" 2>/dev/null && return
    grep -q "in use" "$WORK/$tag-n$i.log" || { tail -20 "$WORK/$tag-n$i.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "node $i did not start" >&2; tail -20 "$WORK/$tag-n$i.log" >&2; exit 1
}
start_cluster() { local i; PIDS=(); for i in 0 1 2; do start_node "$i" "$1"; done; }
roles() { local ip; for ip in "${NODES[@]}"; do printf '%s ' "$(prom "$ip" nacelle_raft_role)"; done; }
leader() {  # index of the leader once exactly one leads and the others follow
  local r; read -r -a r < <(roles)
  local l=-1 f=0 i
  for i in 0 1 2; do case "${r[$i]:-}" in 0) l=$i ;; 1) f=$((f + 1)) ;; esac; done
  [ "$l" -ge 0 ] && [ "$f" = 2 ] && echo "$l"
}
wait_cluster() {  # every node UP and a leader; prints the leader's index
  local t0; t0=$(now_ms)
  while :; do
    local up=0 ip; for ip in "${NODES[@]}"; do [ "$(field "$ip:$PORT" status)" = UP ] && up=$((up + 1)); done
    local l; l=$(leader || true)
    if [ "$up" = 3 ] && [ -n "$l" ]; then echo "$l"; return; fi
    if [ $(($(now_ms) - t0)) -gt 60000 ]; then echo "cluster not formed: roles $(roles)" >&2; tail -5 "$WORK"/*-n*.log >&2; exit 1; fi
    sleep 0.1
  done
}
kill9_cluster() { local p; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
stop_cluster() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }

# --- r-nacos: RNACOS_NODES (default 3) nodes on 127.0.0.1-3, Raft (async-raft) on its gRPC port
# Node 1 initialises the Raft group, nodes 2 and 3 join it through node 1, one after the other
# (joining together leaves one a non-voter). Its own TCP probe of persistent instances (every
# node, every 60 s, whatever the cluster's healthChecker says) is off (interval 0) outside
# part 5, as nacelle's healthChecker NONE: these parts measure writes.
rn_node_env() {  # rn_node_env <index> <data dir prefix>: the environment of one node
  local i=$1
  echo RNACOS_SDK_HOST="${NODES[$i]}" RNACOS_HTTP_PORT=$RPORT RNACOS_GRPC_PORT=$((RPORT + 1000)) \
    RNACOS_HTTP_CONSOLE_PORT=$((RPORT + 2000)) RNACOS_CONFIG_DB_DIR="$2-n$i" RNACOS_DATA_DIR="$2-n$i" \
    RNACOS_RAFT_NODE_ID=$((i + 1)) RNACOS_RAFT_NODE_ADDR="${NODES[$i]}:$((RPORT + 1000))" \
    RNACOS_NAMING_PERPETUAL_INSTANCE_PROBE_INTERVAL_SECOND="${RN_PROBE:-0}" \
    "$([ "$i" -gt 0 ] && echo RNACOS_RAFT_JOIN_ADDR="${NODES[0]}:$((RPORT + 1000))" || echo RNACOS_RAFT_JOIN_ADDR=)"
}
rn_start_node() {  # rn_start_node <index> <data dir prefix>
  mkdir -p "$2-n$1"
  # shellcheck disable=SC2046
  env $(rn_node_env "$1" "$2") "$RNACOS" >>"$2-n$1.log" 2>&1 &
  RNS[$1]=$!
}
rn_raft() { curl -sf --max-time 2 "http://${NODES[$1]}:$RPORT/nacos/v1/raft/metrics" 2>/dev/null; }
rn_leader() {  # index of the leader once it counts every node as a voter and all follow it
  # (only the leader's membership is looked at: a node restarted after kill -9 may show a stale
  # one, e.g. [1], while it follows the leader)
  python3 - "$RNACOS_NODES" "$(for i in "${!RNS[@]}"; do rn_raft "$i" || echo '{}'; echo; done)" <<'PY'
import json, sys
n = int(sys.argv[1]); ms = [json.loads(l) if l.strip() else {} for l in sys.argv[2].splitlines() if l.strip()]
leaders = [m["id"] for m in ms if m.get("state") == "Leader"]
ok = len(ms) == n and len(leaders) == 1 and all(m.get("current_leader") == leaders[0] for m in ms) \
     and all(len((m.get("membership_config") or {}).get("members") or []) == n for m in ms if m.get("state") == "Leader") \
     and sum(m.get("state") == "Follower" for m in ms) == n - 1
if ok: print(leaders[0] - 1)
PY
}
rn_wait() {  # every node answering, one leader with every node a voter; prints the leader's index
  local t0; t0=$(now_ms)
  while :; do
    local l; l=$(rn_leader || true)
    if [ -n "$l" ]; then
      local ok=1 i; for i in "${!RNS[@]}"; do metrics "${NODES[$i]}:$RPORT" >/dev/null 2>&1 || ok=0; done
      [ "$ok" = 1 ] && { echo "$l"; return; }
    fi
    if [ $(($(now_ms) - t0)) -gt 60000 ]; then echo "r-nacos cluster not formed" >&2; for i in "${!RNS[@]}"; do rn_raft "$i" >&2; echo >&2; done; exit 1; fi
    sleep 0.1
  done
}
start_rnacos() {  # start_rnacos <data dir prefix> (kept across restarts): RNACOS_NODES nodes, waits for a leader
  local i fresh=1; [ -d "$1-n0" ] && fresh=""
  RNS=()
  for ((i = 0; i < RNACOS_NODES; i++)); do
    rn_start_node "$i" "$1"
    if [ -n "$fresh" ]; then   # node 1 leading, then each joining node a member before the next starts
      # r-nacos sends its join request once, 0.5 s after starting, and under load the
      # leader sometimes adds the node as a non-voter without the membership change (retrying
      # cannot help: its join returns early for a node it knows). After 10 s the membership
      # change is asked of the leader directly (its /nacos/v1/raft/change-membership).
      local t0 asked=""; t0=$(now_ms)
      until rn_raft 0 | python3 -c "import json,sys; m=json.load(sys.stdin); sys.exit(0 if m.get('state') == 'Leader' and $((i + 1)) in m['membership_config']['members'] else 1)" 2>/dev/null; do
        kill -0 "${RNS[$i]}" 2>/dev/null || { echo "r-nacos node $i exited" >&2; tail -20 "$1-n$i.log" >&2; exit 1; }
        if [ -z "$asked" ] && [ $(($(now_ms) - t0)) -gt 10000 ]; then
          note "r-nacos node $((i + 1)) not a voter after 10 s: $(rn_raft 0); asking the leader for the membership change"
          curl -s --max-time 30 -H 'Content-Type: application/json' -d "[$(seq -s, 1 $((i + 1)))]" \
            "http://${NODES[0]}:$RPORT/nacos/v1/raft/change-membership" >&2 || true
          asked=1
        fi
        [ $(($(now_ms) - t0)) -gt 40000 ] && { echo "r-nacos node $i did not join" >&2; rn_raft 0 >&2; tail -20 "$1-n$i.log" >&2; exit 1; }
        sleep 0.1
      done
    fi
  done
  rn_wait >/dev/null; sleep 1
}
RN_TARGETS() { local i t=""; for ((i = 0; i < RNACOS_NODES; i++)); do t+="${NODES[$i]}:$RPORT,"; done; echo "${t%,}"; }
stop_rnacos() { local p; for p in "${RNS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${RNS[@]}"; do wait "$p" 2>/dev/null || true; done; RNS=(); }
kill9_rnacos() { local p; for p in "${RNS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; for p in "${RNS[@]}"; do wait "$p" 2>/dev/null || true; done; RNS=(); }

note() { echo "$*" | tee -a "$WORK/log.txt"; }
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

# --- part 1 ---------------------------------------------------------------------------------
part1_server() {  # part1_server <nacelle|rnacos> <round> (in a subshell: its own exit trap)
  trap 'for p in "${RNS[@]}" "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done' EXIT
  local s=$1 r=$2 d="$WORK/res/p1-$1-$2" targets pids=() tgt
  mkdir -p "$d"
  if [ "$s" = nacelle ]; then
    start_cluster "p1r$r"; wait_cluster >/dev/null; pids=("${PIDS[@]}"); tgt=$TARGETS
  else
    start_rnacos "$WORK/p1r$r-rn"; pids=("${RNS[@]}"); tgt=$(RN_TARGETS)
  fi
  local la0; la0=$(loadavg)
  shape() {  # shape <name> <ip base> [loadgen args]: one measured phase, CPU of the servers
    local name=$1 base=$2; shift 2
    local t0 t1 f0=0 f1=0; t0=$(ticks "${pids[@]}"); [ "$s" = nacelle ] && f0=$(prom_sum nacelle_raft_fsyncs_total)
    "${LGC[@]}" persist --targets "$tgt" --services "$SERVICES" --connections "$CONNS" --ip-base "$base" \
      --check '{"type":"NONE"}' --no-progress --report "$d/$name.json" "$@" >"$d/$name.log" 2>&1 \
      || { echo "loadgen $name failed against $s:" >&2; tail -5 "$d/$name.log" >&2; exit 1; }
    t1=$(ticks "${pids[@]}"); [ "$s" = nacelle ] && f1=$(prom_sum nacelle_raft_fsyncs_total)
    echo "{\"cpu_s\": $(awk -v a="$t0" -v b="$t1" -v t="$TICK" 'BEGIN {print (b - a) / t}'), \"fsyncs\": $(awk -v a="$f0" -v b="$f1" 'BEGIN {print b - a}')}" >"$d/$name.cpu.json"
  }
  shape closed 127.1.0.0 --instances 10000000 --duration "$DURATION"
  local rate; rate=$(jget "$d/closed.json" "d['ops_per_s']")
  shape flood 127.20.0.0 --instances 10000000 --duration "$DURATION" --pipeline "$PIPELINE"
  local half; half=$(awk -v r="$rate" 'BEGIN {printf "%d", r / 2}')
  shape half 127.40.0.0 --instances $((half * ${DURATION%.*})) --rate "$half" --duration $((${DURATION%.*} * 2))
  echo "$half" >"$d/half_rate"
  if [ "$s" = nacelle ]; then stop_cluster; else stop_rnacos; fi
  echo "{\"start\": $la0, \"end\": $(loadavg)}" >"$d/loadavg.json"
  python3 - "$d" "$s" "$r" <<'PY'
import json, sys
d, s, r = sys.argv[1:4]
for n in ("closed", "flood", "half"):
    j = json.load(open(f"{d}/{n}.json")); c = json.load(open(f"{d}/{n}.cpu.json"))
    us = c["cpu_s"] * 1e6 / max(j["ops"], 1)
    print(f"round {r} {s:<8} {n:<7} {j['ops_per_s']:>8.0f}/s  cpu {us:6.0f} µs/registration "
          f"({c['cpu_s'] / j['duration_s']:.2f} cores)  p50 {j['latency_us']['p50'] / 1000:7.2f} ms  "
          f"p99 {j['latency_us']['p99'] / 1000:7.2f} ms  errors {j['errors']} {j['errors_by_kind']}")
PY
}
part1_common() {  # both servers at the same rate: half the lower closed-loop rate of the round
  local r=$1 rate; rate=$(python3 -c "import json,sys; print(int(min(json.load(open(f'$WORK/res/p1-{s}-$r/closed.json'))['ops_per_s'] for s in ('nacelle','rnacos')) / 2))")
  local s
  for s in nacelle rnacos; do
    local d="$WORK/res/p1-$s-$r" pids=() tgt
    if [ "$s" = nacelle ]; then start_cluster "p1c$r"; wait_cluster >/dev/null; pids=("${PIDS[@]}"); tgt=$TARGETS
    else start_rnacos "$WORK/p1c$r-rn"; pids=("${RNS[@]}"); tgt=$(RN_TARGETS); fi
    local t0 t1; t0=$(ticks "${pids[@]}")
    "${LGC[@]}" persist --targets "$tgt" --services "$SERVICES" --connections "$CONNS" --ip-base 127.60.0.0 \
      --check '{"type":"NONE"}' --no-progress --report "$d/common.json" --instances $((rate * ${DURATION%.*})) --rate "$rate" >"$d/common.log" 2>&1
    t1=$(ticks "${pids[@]}")
    echo "{\"cpu_s\": $(awk -v a="$t0" -v b="$t1" -v t="$TICK" 'BEGIN {print (b - a) / t}'), \"rate\": $rate}" >"$d/common.cpu.json"
    if [ "$s" = nacelle ]; then stop_cluster; else stop_rnacos; fi
    note "round $r $s common rate $rate/s: $(jget "$d/common.json" "'p50 %.2f ms p99 %.2f ms errors %d' % (d['latency_us']['p50']/1000, d['latency_us']['p99']/1000, d['errors'])")"
  done
}
if has 1; then
  note "== part 1: registrations/s, $CONNS connections, nacelle 3 nodes vs r-nacos $RNACOS_VERSION, $ROUNDS round(s) of $DURATION s"
  for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="nacelle rnacos"; else order="rnacos nacelle"; fi
    for s in $order; do part1_server "$s" "$r" | tee -a "$WORK/log.txt"; done
    part1_common "$r"
  done
fi

# verify_until <target> <acked file> <ip base> <report>: lists the acknowledged instances on one
# node, again every 0.5 s until none is missing or VERIFY_WAIT s passed (a restarted follower
# catches up meanwhile); <report>.wait has how long it took from the first listing.
verify_until() {
  local t0 n top; t0=$(now_ms); n=$(wc -l <"$2"); top=$(awk '$1 + 0 > m {m = $1 + 0} END {print m + 1}' "$2")
  while :; do
    "${LGC[@]}" persist --targets "$1" --services "$SERVICES" --ip-base "$3" --instances "$top" \
      --verify "$2" --no-progress --report "$4" >"$4.log" 2>&1 || true
    if [ -s "$4" ] && [ "$(jget "$4" "d['missing']")" = 0 ]; then break; fi
    [ $(($(now_ms) - t0)) -gt $((${VERIFY_WAIT:-20} * 1000)) ] && break
    sleep 0.5
  done
  [ -s "$4" ] || echo "{\"acked\": $n, \"present\": 0, \"missing\": $n, \"unhealthy\": 0, \"failed\": true}" >"$4"
  echo "$(secs "$t0" "$(now_ms)")" >"$4.wait"
}

# --- part 2 ---------------------------------------------------------------------------------
if has 2; then
  note "== part 2: kill -9 of every node right after $KILL_N acknowledged registrations"
  d="$WORK/res/p2"; mkdir -p "$d"; la0=$(loadavg)
  start_cluster p2; wait_cluster >/dev/null
  "${LGC[@]}" persist --targets "$TARGETS" --services "$SERVICES" --connections "$CONNS" --ip-base 127.100.0.0 --check '{"type":"NONE"}' \
    --instances "$KILL_N" --acked-file "$d/nacelle.acked" --no-progress --report "$d/nacelle-reg.json" >"$d/nacelle-reg.log" 2>&1
  kill9_cluster
  start_cluster p2; t0=$(now_ms); wait_cluster >/dev/null; t1=$(now_ms)
  for i in 0 1 2; do verify_until "${NODES[$i]}:$PORT" "$d/nacelle.acked" 127.100.0.0 "$d/nacelle-verify-$i.json"; done
  echo "{\"restart_to_leader_s\": $(secs "$t0" "$t1")}" >"$d/nacelle-restart.json"
  stop_cluster
  note "nacelle: acked $(jget "$d/nacelle-reg.json" "d['acked']"), present after kill -9 of all 3 and restart: $(for i in 0 1 2; do printf '%s ' "$(jget "$d/nacelle-verify-$i.json" "d['present']")"; done)(per node), cluster back in $(secs "$t0" "$t1") s"
  start_rnacos "$WORK/p2-rn"
  "${LGC[@]}" persist --targets "$(RN_TARGETS)" --services "$SERVICES" --connections "$CONNS" --ip-base 127.100.0.0 --check '{"type":"NONE"}' \
    --instances "$KILL_N" --acked-file "$d/rnacos.acked" --no-progress --report "$d/rnacos-reg.json" >"$d/rnacos-reg.log" 2>&1
  kill9_rnacos
  t0=$(now_ms); start_rnacos "$WORK/p2-rn"; t1=$(now_ms)
  for ((i = 0; i < RNACOS_NODES; i++)); do verify_until "${NODES[$i]}:$RPORT" "$d/rnacos.acked" 127.100.0.0 "$d/rnacos-verify-$i.json"; done
  echo "{\"restart_to_leader_s\": $(secs "$t0" "$t1")}" >"$d/rnacos-restart.json"
  stop_rnacos
  note "r-nacos: acked $(jget "$d/rnacos-reg.json" "d['acked']"), present after kill -9 of all $RNACOS_NODES and restart: $(for ((i = 0; i < RNACOS_NODES; i++)); do printf '%s ' "$(jget "$d/rnacos-verify-$i.json" "d['present']")"; done)(per node)"
  echo "{\"start\": $la0, \"end\": $(loadavg)}" >"$d/loadavg.json"
fi

# --- part 3 ---------------------------------------------------------------------------------
part3() {  # part3 <nacelle|rnacos> <leader|follower>: kill -9 of that node under load
  local s=$1 victim=$2 d="$WORK/res/p3-$1-$2" l v i ftargets="" la0 port
  mkdir -p "$d"; la0=$(loadavg)
  if [ "$s" = nacelle ]; then start_cluster "p3$victim"; l=$(wait_cluster); port=$PORT
  else start_rnacos "$WORK/p3$victim-rn"; l=$(rn_wait); port=$RPORT; fi
  v=$l; [ "$victim" = follower ] && v=$(((l + 1) % 3))
  for i in 0 1 2; do [ "$i" != "$v" ] && ftargets+="${NODES[$i]}:$port,"; done; ftargets=${ftargets%,}
  "${LGC[@]}" persist --targets "$ftargets" --services "$SERVICES" --connections "$CONNS" --ip-base 127.110.0.0 --check '{"type":"NONE"}' \
    --instances 10000000 --duration "$LEADER_DURATION" --timeline-ms 10 --acked-file "$d/acked" --no-progress \
    --report "$d/load.json" >"$d/load.log" 2>&1 &
  LG=$!
  sleep "$LEADER_KILL_AT"
  local kill_ms; kill_ms=$(now_ms)
  if [ "$s" = nacelle ]; then kill -9 "${PIDS[$v]}"; wait "${PIDS[$v]}" 2>/dev/null || true
  else kill -9 "${RNS[$v]}"; wait "${RNS[$v]}" 2>/dev/null || true; fi
  wait "$LG" || { tail -5 "$d/load.log" >&2; exit 1; }; LG=""
  # the killed node back, then every acknowledged write on the leader and on every node
  local nl; if [ "$s" = nacelle ]; then start_node "$v" "p3$victim"; nl=$(wait_cluster)
  else rn_start_node "$v" "$WORK/p3$victim-rn"; nl=$(rn_wait); fi
  verify_until "${NODES[$nl]}:$port" "$d/acked" 127.110.0.0 "$d/verify.json"
  for i in 0 1 2; do verify_until "${NODES[$i]}:$port" "$d/acked" 127.110.0.0 "$d/verify-$i.json"; done
  if [ "$s" = nacelle ]; then stop_cluster; else stop_rnacos; fi
  echo "{\"kill_epoch_ms\": $kill_ms, \"leader\": $l, \"killed\": $v, \"new_leader\": $nl, \"loadavg\": {\"start\": $la0, \"end\": $(loadavg)}}" >"$d/kill.json"
  python3 - "$d" "$s" "$victim" <<'PY' | tee -a "$WORK/log.txt"
import json, sys
d, s, victim = sys.argv[1:4]
j = json.load(open(f"{d}/load.json")); k = json.load(open(f"{d}/kill.json")); v = json.load(open(f"{d}/verify.json"))
t = j["timeline"]; b = t["bucket_ms"]; ok = t["ok"]
kb = (k["kill_epoch_ms"] - t["start_epoch_ms"]) // b
before = ok[max(0, kb - 2000 // b):kb]
rate_before = sum(before) / (len(before) * b / 1000) if before else 0
# the longest run of empty buckets that starts at or after the kill: the pause
best, best_end, z = 0, kb, 0
for i in range(kb, len(ok)):
    z = z + 1 if ok[i] == 0 else 0
    if z > best: best, best_end = z, i + 1
# the dip: the first 100 ms window from the kill below half the rate before, then the first
# window after it at half the rate or more (no dip: 0)
w = max(1, 100 // b)
rate = lambda i: sum(ok[i:i + w]) / (w * b / 1000)
dip = next((i for i in range(kb, len(ok) - w + 1) if rate(i) < rate_before / 2), None)
half = kb if dip is None else next((i for i in range(dip, len(ok) - w + 1) if rate(i) >= rate_before / 2), None)
tail = ok[max(kb, len(ok) - 2000 // b):]
per_node = [json.load(open(f"{d}/verify-{i}.json")) for i in range(3)]
res = {
    "server": s, "killed": victim, "rate_before_per_s": round(rate_before), "kill_at_s": kb * b / 1000,
    "longest_pause_s": round(best * b / 1000, 3), "longest_pause_ends_s": round((best_end - kb) * b / 1000, 3),
    "below_half_from_s": None if dip is None else round((dip - kb) * b / 1000, 3),
    "half_rate_again_s": 0.0 if dip is None else None if half is None else round((half + w - kb) * b / 1000, 3),
    "rate_last_2s_per_s": round(sum(tail) / (len(tail) * b / 1000)) if tail else 0,
    "errors_after_kill": sum(t["err"][kb:]),
    "errors": j["errors"], "errors_by_kind": j["errors_by_kind"], "acked": j["acked"],
    "present_on_leader": v["present"], "missing_on_leader": v["missing"],
    "present_per_node": [x["present"] for x in per_node], "missing_per_node": [x["missing"] for x in per_node],
    "loadavg": k["loadavg"],
}
json.dump(res, open(f"{d}/result.json", "w"))
print(f"{s} {victim} kill -9 under load: {res['rate_before_per_s']}/s before; longest pause without an ack {res['longest_pause_s']} s "
      f"(ending {res['longest_pause_ends_s']} s after the kill), below half the rate from {res['below_half_from_s']} s, half the rate again "
      f"{res['half_rate_again_s']} s after the kill ({res['rate_last_2s_per_s']}/s over the last 2 s); "
      f"acked {res['acked']}, missing on the leader {res['missing_on_leader']}, per node {res['missing_per_node']}; errors {res['errors_by_kind']}")
PY
}
if has 3; then
  note "== part 3: kill -9 of a follower, then of the leader, under load (writers on the other two nodes, $CONNS connections, closed loop)"
  for s in nacelle rnacos; do
    [ "$s" = rnacos ] && [ "$RNACOS_NODES" != 3 ] && continue
    for victim in follower leader; do part3 "$s" "$victim"; done
  done
fi

# --- part 4 ---------------------------------------------------------------------------------
if has 4; then
  note "== part 4: standalone nacelle restarting with $BIG_N persistent instances"
  d="$WORK/res/p4"; mkdir -p "$d"; la0=$(loadavg)
  solo() { "$NACELLE" --bind 127.0.0.1 --http-port "$PORT" --data-dir "$WORK/p4-data" >>"$WORK/p4.log" 2>&1 & SOLO=$!; }
  solo
  for _ in $(seq 300); do metrics "127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 0.1; done
  rss0=$(rss_kb "$SOLO"); c0=$(ticks "$SOLO")
  "${LGC[@]}" persist --targets "127.0.0.1:$PORT" --services "$BIG_SERVICES" --connections "$BIG_CONNS" --pipeline "$BIG_PIPELINE" \
    --ip-base 127.64.0.0 --check '{"type":"NONE"}' --instances "$BIG_N" --timeout-ms 30000 --acked-file "$d/acked" \
    --no-progress --report "$d/reg.json" >"$d/reg.log" 2>&1 || { tail -5 "$d/reg.log" >&2; exit 1; }
  c1=$(ticks "$SOLO"); rss1=$(rss_kb "$SOLO")
  count0=$(field "127.0.0.1:$PORT" instanceCount)
  du0=$(du -sk "$WORK/p4-data" | cut -f1)
  kill -9 "$SOLO"; wait "$SOLO" 2>/dev/null || true
  t0=$(now_ms); solo
  until metrics "127.0.0.1:$PORT" >/dev/null 2>&1; do
    kill -0 "$SOLO" 2>/dev/null || { tail "$WORK/p4.log" >&2; exit 1; }
    if [ $(($(now_ms) - t0)) -gt $((${RESTART_WAIT:-600} * 1000)) ]; then   # a hung replay must not hang the run
      note "part 4: the restarted node did not answer HTTP within ${RESTART_WAIT:-600} s (log: $WORK/p4.log, kept)"; tail -5 "$WORK/p4.log" >&2
      trap - EXIT; kill -9 "$SOLO"; exit 1
    fi
    sleep 0.02
  done
  t_http=$(now_ms)
  acked=$(wc -l <"$d/acked")
  until [ "$(field "127.0.0.1:$PORT" instanceCount)" -ge "$acked" ] 2>/dev/null; do
    [ $(($(now_ms) - t0)) -gt 120000 ] && break; sleep 0.05
  done
  t_count=$(now_ms); count1=$(field "127.0.0.1:$PORT" instanceCount)
  "${LGC[@]}" persist --targets "127.0.0.1:$PORT" --services "$BIG_SERVICES" --ip-base 127.64.0.0 --instances "$BIG_N" \
    --verify "$d/acked" --no-progress --report "$d/verify.json" >"$d/verify.log" 2>&1
  t_list=$(now_ms); rss2=$(rss_kb "$SOLO")
  kill "$SOLO"; wait "$SOLO" 2>/dev/null || true; SOLO=""
  warns=$(grep -c "too many health-checked" "$WORK/p4.log" || true)
  python3 - "$d" "$c0 $c1" "$TICK" "${count0:-null}" "$du0" "$rss0 $rss1 $rss2" "$t0 $t_http $t_count $t_list" "${count1:-null}" "$warns" "$la0 $(loadavg)" <<'PY'
import json, sys
d = sys.argv[1]; c0, c1 = map(int, sys.argv[2].split()); tick = float(sys.argv[3])
reg, v = json.load(open(f"{d}/reg.json")), json.load(open(f"{d}/verify.json"))
rss = list(map(int, sys.argv[6].split())); t = list(map(int, sys.argv[7].split())); la = list(map(float, sys.argv[10].split()))
num = lambda x: None if x in ("null", "") else int(float(x))
json.dump({
    "registered": reg["acked"], "register_s": reg["duration_s"], "register_per_s": reg["ops_per_s"],
    "register_errors": reg["errors_by_kind"], "register_p99_ms": reg["latency_us"]["p99"] / 1000,
    "register_cpu_us_per_registration": round((c1 - c0) / tick * 1e6 / max(reg["ops"], 1), 1),
    "instance_count_before_kill": num(sys.argv[4]), "data_dir_kib": int(sys.argv[5]),
    "rss_before_kb": rss[0], "rss_after_register_kb": rss[1], "rss_after_restart_kb": rss[2],
    "http_answers_s": (t[1] - t[0]) / 1000, "instance_count_reached_s": (t[2] - t[0]) / 1000,
    "instance_count_after": num(sys.argv[8]), "full_listing_done_s": (t[3] - t[0]) / 1000, "listing_s": v["duration_s"],
    "present": v["present"], "missing": v["missing"], "too_many_health_checked_warnings": int(sys.argv[9] or 0),
    "loadavg": {"start": la[0], "end": la[1]},
}, open(f"{d}/result.json", "w"))
PY
  note "$(python3 -c "import json; r=json.load(open('$d/result.json')); print(f\"registered {r['registered']} in {r['register_s']} s ({r['register_per_s']:.0f}/s, {r['register_cpu_us_per_registration']} µs CPU each); restart: HTTP after {r['http_answers_s']} s, instanceCount {r['instance_count_after']} after {r['instance_count_reached_s']} s, every acked instance listed after {r['full_listing_done_s']} s (listing took {r['listing_s']} s; present {r['present']}, missing {r['missing']}); data dir {r['data_dir_kib']//1024} MiB; RSS {r['rss_after_register_kb']//1024} -> {r['rss_after_restart_kb']//1024} MiB; 'too many health-checked' warnings {r['too_many_health_checked_warnings']}\")")"
fi

# --- part 5 ---------------------------------------------------------------------------------
if has 5; then
  IPS=$(( (CHECK_N + CHECK_PORTS - 1) / CHECK_PORTS ))
  note "== part 5: $CHECK_N persistent instances TCP-checked by 3 nodes, listeners on $IPS addresses x $CHECK_PORTS ports (ulimit -n $(ulimit -n))"
  d="$WORK/res/p5"; mkdir -p "$d"; la0=$(loadavg)
  nst() { nstat -az TcpExtListenOverflows TcpExtListenDrops TcpExtTCPTimeWaitOverflow 2>/dev/null | awk 'NR>1 && $1 ~ /^TcpExt/ {printf "\"%s\": %s, ", $1, $2}'; }
  # RLIMIT_NOFILE's hard limit may be below the listener count (20,000 here, not raisable
  # without CAP_SYS_RESOURCE): split the addresses over processes of LISTEN_PER_PROC sockets.
  per=$(( ${LISTEN_PER_PROC:-15000} / CHECK_PORTS )); [ "$per" -ge 1 ] || per=1
  LSS=(); k=0
  for ((first = 0; first < IPS; first += per)); do
    n=$(( IPS - first < per ? IPS - first : per ))
    base=$(python3 -c "import ipaddress; print(ipaddress.IPv4Address('127.128.0.0') + $first)")
    "${LGC[@]}" listen --ips "$n" --ports "$CHECK_PORTS" --ip-base "$base" --backlog 128 --duration -1 --no-progress >"$d/listen-$k.log" 2>&1 &
    LSS+=($!); k=$((k + 1))
  done
  for k in "${!LSS[@]}"; do
    until grep -q "^listening" "$d/listen-$k.log"; do kill -0 "${LSS[$k]}" 2>/dev/null || { cat "$d/listen-$k.log" >&2; exit 1; }; sleep 0.2; done
  done
  note "${#LSS[@]} listener processes: $(cat "$d"/listen-*.log | grep -c ^listening) listening, $(cat "$d"/listen-*.log | sed -n 's/^listening on \([0-9]*\) .*/\1/p' | paste -sd+ | bc) addresses"
  start_cluster p5; wait_cluster >/dev/null; sleep 3
  rss0=(); for p in "${PIDS[@]}"; do rss0+=("$(rss_kb "$p")"); done
  ci0=$(ticks "${PIDS[@]}"); sleep "$CHECK_WINDOW"; ci1=$(ticks "${PIDS[@]}")
  idle=$(awk -v a="$ci0" -v b="$ci1" -v t="$TICK" -v w="$CHECK_WINDOW" 'BEGIN {printf "%.4f", (b - a) / t / w}')
  note "idle 3-node cluster: $idle cores"
  "${LGC[@]}" persist --targets "$TARGETS" --services "$SERVICES" --connections "$CONNS" --pipeline 4 --ip-base 127.128.0.0 \
    --ports "$CHECK_PORTS" --instances "$CHECK_N" --timeout-ms 30000 --acked-file "$d/acked" --no-progress \
    --report "$d/reg.json" >"$d/reg.log" 2>&1 || { tail -5 "$d/reg.log" >&2; exit 1; }
  note "registered $(jget "$d/reg.json" "d['acked']") in $(jget "$d/reg.json" "d['duration_s']") s ($(jget "$d/reg.json" "d['errors_by_kind']"))"
  # every instance under a checker, then past the first probes (2 s + up to 5 s jitter)
  for _ in $(seq 600); do [ "$(prom_sum nacelle_health_checked_instances)" -ge "$CHECK_N" ] 2>/dev/null && break; sleep 0.1; done
  sleep 10
  rss1=(); for p in "${PIDS[@]}"; do rss1+=("$(rss_kb "$p")"); done
  checked=(); for ip in "${NODES[@]}"; do checked+=("$(prom "$ip" nacelle_health_checked_instances)"); done
  f0=$(prom_sum nacelle_health_flips_total); k0=$(prom_sum nacelle_health_checks_total); e0=$(prom_sum nacelle_health_failures_total)
  l0=$(prom_sum nacelle_health_probe_latency_ms_total); n0="{$(nst)}"; lc0=$(ticks "${LSS[@]}")
  cc0=(); for p in "${PIDS[@]}"; do cc0+=("$(ticks "$p")"); done
  sleep "$CHECK_WINDOW"
  cc1=(); for p in "${PIDS[@]}"; do cc1+=("$(ticks "$p")"); done
  f1=$(prom_sum nacelle_health_flips_total); k1=$(prom_sum nacelle_health_checks_total); e1=$(prom_sum nacelle_health_failures_total)
  l1=$(prom_sum nacelle_health_probe_latency_ms_total); n1="{$(nst)}"; lc1=$(ticks "${LSS[@]}")
  tw=$(ss -Htan state time-wait | wc -l)
  "${LGC[@]}" persist --targets "${NODES[0]}:$PORT" --services "$SERVICES" --ip-base 127.128.0.0 --ports "$CHECK_PORTS" --instances "$CHECK_N" \
    --verify "$d/acked" --no-progress --report "$d/verify.json" >"$d/verify.log" 2>&1
  stop_cluster
  for p in "${LSS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; LSS=()
  python3 - "$d" "$CHECK_WINDOW" "$TICK" "$idle" "${rss0[*]}" "${rss1[*]}" "${cc0[*]}" "${cc1[*]}" "${checked[*]}" \
    "$f0 $f1" "$k0 $k1" "$e0 $e1" "$l0 $l1" "$lc0 $lc1" "$tw" "$la0 $(loadavg)" "${n0%, \}}}" "${n1%, \}}}" <<'PY' | tee -a "$WORK/log.txt"
import json, sys
d, window, tick, idle = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ints = lambda s: [float(x) for x in s.split()]
rss0, rss1, cc0, cc1, checked, flips, checks, fails, lat, lc, = (ints(a) for a in sys.argv[5:15])
tw = int(sys.argv[15]); la = ints(sys.argv[16])
def nst(s):
    try: return json.loads(s.replace(", }", "}"))
    except Exception: return {}
n0, n1 = nst(sys.argv[17]), nst(sys.argv[18])
reg, v = json.load(open(f"{d}/reg.json")), json.load(open(f"{d}/verify.json"))
n = reg["acked"]
per_node_cores = [(b - a) / tick / window for a, b in zip(cc0, cc1)]
total = sum(per_node_cores)
res = {
    "instances": n, "register_s": reg["duration_s"], "register_per_s": reg["ops_per_s"], "register_errors": reg["errors_by_kind"],
    "checked_per_node": checked, "window_s": window,
    "cluster_cores_checking": round(total, 4), "cluster_cores_idle_before": idle,
    "cluster_cores_for_checks": round(total - idle, 4), "cores_per_node": [round(x, 4) for x in per_node_cores],
    "checks_per_s": round((checks[1] - checks[0]) / window), "failures_in_window": fails[1] - fails[0],
    "cpu_us_per_check": round((total - idle) * 1e6 / max((checks[1] - checks[0]) / window, 1), 2),
    "mean_probe_ms": round((lat[1] - lat[0]) / max(checks[1] - checks[0], 1), 3),
    "flips_in_window": flips[1] - flips[0], "flips_since_start": flips[1],
    "unhealthy_after": v["unhealthy"], "present_after": v["present"],
    "rss_before_kb": rss0, "rss_after_kb": rss1,
    "rss_bytes_per_instance_per_node": [round((b - a) * 1024 / max(n, 1)) for a, b in zip(rss0, rss1)],
    "listener_cores": round((lc[1] - lc[0]) / tick / window, 4), "time_wait_sockets_at_end": tw,
    "kernel_counters_delta": {k: n1.get(k, 0) - n0.get(k, 0) for k in n1},
    "loadavg": {"start": la[0], "end": la[1]},
}
json.dump(res, open(f"{d}/result.json", "w"))
print(f"checking {n} instances: cluster {res['cluster_cores_checking']:.3f} cores ({res['cluster_cores_idle_before']:.3f} idle before) "
      f"= {res['cluster_cores_for_checks']:.3f} cores for {res['checks_per_s']} checks/s ({res['cpu_us_per_check']} µs each, "
      f"mean probe {res['mean_probe_ms']} ms); flips in window {res['flips_in_window']}, since start {res['flips_since_start']}, "
      f"failures {res['failures_in_window']}, unhealthy after {res['unhealthy_after']}; RSS/instance per node "
      f"{res['rss_bytes_per_instance_per_node']} B; listener {res['listener_cores']} cores; kernel {res['kernel_counters_delta']}")
PY
fi

# --- results --------------------------------------------------------------------------------
python3 - "$WORK/res" "$OUT" <<'PY'
import glob, json, os, platform, statistics, sys
res_dir, out = sys.argv[1], sys.argv[2]
parts = os.environ["PARTS"].split(","); rounds = int(os.environ["ROUNDS"])
L = lambda p: json.load(open(p))
res = {"machine": f"{platform.node()} {os.cpu_count()} cpus {platform.platform()}",
       "note": "3 nacelle nodes, r-nacos, loadgen (and, on a shared machine, other builds) on the same CPUs; compare the ratios inside one run",
       "nacelle_build": os.environ["BUILD_INFO"], "rnacos_version": os.environ["RNACOS_VERSION"],
       "config": {k: os.environ[k] for k in ("PARTS", "ROUNDS", "DURATION", "CONNS", "PIPELINE", "SERVICES", "KILL_N", "LEADER_DURATION",
                                             "LEADER_KILL_AT", "BIG_N", "BIG_CONNS", "BIG_PIPELINE", "BIG_SERVICES", "CHECK_N", "CHECK_PORTS", "CHECK_WINDOW")}}
rn_n = int(os.environ["RNACOS_NODES"]); rn_name = f"r-nacos, {rn_n} nodes" if rn_n > 1 else "r-nacos standalone"
res["command"] = os.environ["COMMAND"]; res["uptime_start"] = os.environ["UPTIME_START"]
res["uptime_end"] = os.popen("uptime").read().strip()
md = [f"# Persistent instances: nacelle (3 nodes, Raft) vs {rn_name.replace('r-nacos', 'r-nacos ' + res['rnacos_version'])}", "",
      f"`{res['command']}` on {res['machine']}; {res['nacelle_build']}.", "",
      f"**Provisional**: the machine was shared with other work (uptime at the start: `{res['uptime_start'].strip()}`; "
      f"at the end: `{res['uptime_end']}`), and the nodes of both servers and the load generator share its CPUs. "
      "Compare the ratios inside one run; the load average (1 min) is given beside each part.", "",
      "Acknowledgements are not the same promise: nacelle answers a registration after its Raft entry is fsynced on a "
      "majority; r-nacos answers after updating the receiving node's memory and hands the write to its Raft group without "
      "waiting (fire-and-forget, 2 retries 3 s apart), and its Raft log is flushed to the OS, not fsynced.", ""]
if "1" in parts:
    runs = {s: [] for s in ("nacelle", "rnacos")}
    for s in runs:
        for r in range(1, rounds + 1):
            d = f"{res_dir}/p1-{s}-{r}"
            row = {}
            for n in ("closed", "flood", "half", "common"):
                j, c = L(f"{d}/{n}.json"), L(f"{d}/{n}.cpu.json")
                row[n] = {"per_s": j["ops_per_s"], "ops": j["ops"], "errors": j["errors"], "errors_by_kind": j["errors_by_kind"],
                          "p50_ms": j["latency_us"]["p50"] / 1000, "p99_ms": j["latency_us"]["p99"] / 1000,
                          "server_cpu_us_per_registration": c["cpu_s"] * 1e6 / max(j["ops"], 1),
                          "server_cores": c["cpu_s"] / max(j["duration_s"], 1e-9), "rate": c.get("rate"),
                          "fsyncs_per_registration": c.get("fsyncs", 0) / max(j["ops"], 1)}
            row["half"]["rate"] = int(open(f"{d}/half_rate").read())
            row["loadavg"] = L(f"{d}/loadavg.json")
            runs[s].append(row)
    med = lambda s, n, k: statistics.median(x[n][k] for x in runs[s])
    p1 = {"runs": runs, "median": {s: {n: {k: med(s, n, k) for k in ("per_s", "p50_ms", "p99_ms", "server_cpu_us_per_registration", "server_cores", "fsyncs_per_registration")}
                                      for n in ("closed", "flood", "half", "common")} for s in runs}}
    res["part1"] = p1
    m = p1["median"]; c = os.environ["CONNS"]; pl = os.environ["PIPELINE"]
    f = lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    rows = [(f"registrations/s, closed loop, {c} connections x 1 in flight", "closed", "per_s", True),
            ("server CPU per registration (µs), closed loop", "closed", "server_cpu_us_per_registration", False),
            (f"registrations/s, pipelined flood ({c} connections x {pl})", "flood", "per_s", True),
            ("server CPU per registration (µs), flood", "flood", "server_cpu_us_per_registration", False),
            ("write p50 (ms) at half its own closed-loop rate", "half", "p50_ms", False),
            ("write p99 (ms) at half its own closed-loop rate", "half", "p99_ms", False),
            ("server CPU per registration (µs), at half its own rate", "half", "server_cpu_us_per_registration", False),
            ("write p50 (ms), both at half the lower closed-loop rate", "common", "p50_ms", False),
            ("write p99 (ms), both at half the lower closed-loop rate", "common", "p99_ms", False),
            ("server CPU per registration (µs), both at the common rate", "common", "server_cpu_us_per_registration", False)]
    md += [f"## 1. Throughput and latency (medians of {rounds} alternating round(s))", "",
           f"| | nacelle, 3 nodes (ack = fsync on a majority) | {rn_name} | nacelle / r-nacos |", "|---|---|---|---|"]
    for label, n, k, _ in rows:
        a, b = m["nacelle"][n][k], m["rnacos"][n][k]
        md.append(f"| {label} | {f(a)} | {f(b)} | {a / b:.2f} |" if b else f"| {label} | {f(a)} | {f(b)} | - |")
    half_rates = {s: [x['half']['rate'] for x in runs[s]] for s in runs}
    md += ["", f"nacelle fsyncs per registration (all nodes, closed loop / flood): {m['nacelle']['closed']['fsyncs_per_registration']:.3f} / "
           f"{m['nacelle']['flood']['fsyncs_per_registration']:.3f} (group commit). Server cores busy (closed loop): nacelle "
           f"{m['nacelle']['closed']['server_cores']:.2f}, r-nacos {m['rnacos']['closed']['server_cores']:.2f}.",
           "", f"Half rates (per round): {half_rates}; common rates: {[x['common']['rate'] for x in runs['nacelle']]}. "
           "Server CPU is utime+stime from /proc over the phase (the 3 nodes summed) / acknowledged registrations. "
           f"Errors (closed/flood/half/common, summed): " + json.dumps({s: sum(x[n]['errors'] for x in runs[s] for n in ('closed', 'flood', 'half', 'common')) for s in runs}), "",
           "Per round (closed loop /s, flood /s, load average at the start of the server's phase): " + "; ".join(
               f"{s} " + ", ".join(f"{x['closed']['per_s']:,.0f} / {x['flood']['per_s']:,.0f} (la {x['loadavg']['start']})" for x in runs[s]) for s in runs), ""]
if "2" in parts:
    d = f"{res_dir}/p2"; rn_n = int(os.environ["RNACOS_NODES"])
    p2 = {"nacelle": {"acked": L(f"{d}/nacelle-reg.json")["acked"], "present_per_node": [L(f"{d}/nacelle-verify-{i}.json")["present"] for i in range(3)],
                      "restart_to_leader_s": L(f"{d}/nacelle-restart.json")["restart_to_leader_s"]},
          "rnacos": {"acked": L(f"{d}/rnacos-reg.json")["acked"], "present_per_node": [L(f"{d}/rnacos-verify-{i}.json")["present"] for i in range(rn_n)],
                     "restart_to_leader_s": L(f"{d}/rnacos-restart.json")["restart_to_leader_s"]},
          "loadavg": L(f"{d}/loadavg.json")}
    res["part2"] = p2
    md += ["## 2. kill -9 of every node right after the last acknowledgement, restart", "",
           "| | acknowledged | present after restart (each node listed) | restart until a leader (s) |", "|---|---|---|---|"]
    for s, name in (("nacelle", "nacelle, 3 nodes"), ("rnacos", f"r-nacos, {rn_n} node(s)")):
        x = p2[s]
        md.append(f"| {name} | {x['acked']:,} | {' / '.join(f'{v:,}' for v in x['present_per_node'])} | {x['restart_to_leader_s']} |")
    md += ["", f"Load average (1 min) at start / end: {p2['loadavg']['start']} / {p2['loadavg']['end']}.", ""]
if "3" in parts:
    runs = {}
    for s in ("nacelle", "rnacos"):
        for v in ("follower", "leader"):
            f = f"{res_dir}/p3-{s}-{v}/result.json"
            if os.path.exists(f): runs[f"{s}-{v}"] = L(f)
    res["part3"] = runs
    md += ["## 3. kill -9 of one node under load (closed loop, writers on the two other nodes)", "",
           "| | rate before (/s) | longest pause without an ack (s, ends at) | half the rate again after (s) | rate over the last 2 s (/s) | acknowledged | missing on the leader | missing per node | errors after the kill (by kind, whole run) | load avg |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in runs.items():
        md.append(f"| {r['server']}, {r['killed']} killed | {r['rate_before_per_s']:,} | {r['longest_pause_s']} ({r['longest_pause_ends_s']}) | {r['half_rate_again_s']} | "
                  f"{r['rate_last_2s_per_s']:,} | {r['acked']:,} | {r['missing_on_leader']} | {r['missing_per_node']} | {r['errors_after_kill']} {r['errors_by_kind']} | "
                  f"{r['loadavg']['start']} / {r['loadavg']['end']} |")
    md += ["", "Times are from the kill -9 (10 ms buckets of answers; 'half the rate again': the first 100 ms window at half the rate "
           "before the kill or more (its end), after the first one below it; 0 when the rate never fell below half). The killed node is restarted on its data after the run, then every "
           "acknowledged instance is looked for on the leader and on every node (each polled until complete, at most VERIFY_WAIT s).", ""]
if "4" in parts:
    r = L(f"{res_dir}/p4/result.json"); res["part4"] = r
    md += ["## 4. A standalone node restarting with its persistent instances", "",
           f"{r['registered']:,} registered in {r['register_s']} s ({r['register_per_s']:,.0f}/s, {os.environ['BIG_CONNS']} connections x "
           f"{os.environ['BIG_PIPELINE']} pipelined, {r['register_cpu_us_per_registration']} µs server CPU each); data dir "
           f"{r['data_dir_kib'] / 1024:,.0f} MiB; kill -9, restart: HTTP answering after {r['http_answers_s']} s, instanceCount "
           f"{r['instance_count_after']} after {r['instance_count_reached_s']} s, a full listing showed {r['present']:,} of them "
           f"({r['missing']} missing) {r['full_listing_done_s']} s after the restart (the listing itself {r['listing_s']} s). "
           f"RSS {r['rss_after_register_kb'] / 1024:,.0f} MiB before the kill, {r['rss_after_restart_kb'] / 1024:,.0f} MiB after the restart.", ""]
if "5" in parts:
    r = L(f"{res_dir}/p5/result.json"); res["part5"] = r
    md += ["## 5. TCP health checks by a 3-node cluster", "",
           "| | |", "|---|---|",
           f"| persistent instances (registered in {r['register_s']} s) | {r['instances']:,} (checked per node {r['checked_per_node']}) |",
           f"| cluster CPU while checking / idle before | {r['cluster_cores_checking']:.3f} / {r['cluster_cores_idle_before']:.3f} cores |",
           f"| CPU for checking (whole cluster) | {r['cluster_cores_for_checks']:.3f} cores ({r['cpu_us_per_check']} µs per check) |",
           f"| checks/s | {r['checks_per_s']:,} (mean probe {r['mean_probe_ms']} ms) |",
           f"| flips in the window / since start (false flips) | {r['flips_in_window']:.0f} / {r['flips_since_start']:.0f} |",
           f"| failed checks in the window, unhealthy after | {r['failures_in_window']:.0f}, {r['unhealthy_after']} |",
           f"| RSS per persistent instance, per node | {r['rss_bytes_per_instance_per_node']} B |",
           f"| listener process CPU | {r['listener_cores']} cores |",
           f"| kernel counters during the window | {r['kernel_counters_delta']} |", ""]
json.dump(res, open(out + ".json", "w"), indent=1)
open(out + ".md", "w").write("\n".join(md))
print("\n".join(md))
PY
echo "wrote $OUT.json $OUT.md"
