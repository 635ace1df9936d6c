#!/usr/bin/env bash
# Runs Nacelle's whole test suite, installing what it needs first (the Python and Node Nacos
# SDKs, pytest; the Rust SDK comes from crates.io). Used by CI through .ci/run.
#
#   bash scripts/test.sh
#
# Steps: formatting, clippy (-D warnings), unit + property + socket tests (release build,
# shared with the server binary), criterion benches in test mode (one iteration each), and the
# official-SDK conformance suites against a freshly started nacelle, then against node 2 of a
# 3-node cluster, then the web console in a real browser (tests/console), then every
# fault-injection scenario (root; perf/chaos/).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n==== %s ==== (%ss into the run)\n' "$*" "$((SECONDS - started))"; }

# The tests build ~20 binaries that each link the whole server. The release profile's thin LTO
# and debug info (kept for profiling) made that build 15.5 min of a 30-min CI run on 2 cores;
# without them it takes 5.5 min. Tests and the binaries the SDK and fault suites start stay
# optimized (opt-level 3); `cargo build --release` outside this script is unchanged.
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-off}"
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-0}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-16}"

step "toolchain"
cargo --version
command -v python3 >/dev/null || { echo "python3 is required for the SDK suites" >&2; exit 1; }
command -v node >/dev/null || { echo "node is required for the SDK suites" >&2; exit 1; }

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --release -- -D warnings

# Over 10,000 simulator seeds: DISTRO_SEEDS standard runs, a fifth of it crash-only and four
# times it of short runs (Scenario::short), one thread per CPU (about 6 min of the 2-core
# machine in all); DISTRO_SEEDS overrides.
export DISTRO_SEEDS=${DISTRO_SEEDS:-2000}
step "unit, property, socket and cluster tests (Distro simulator: $DISTRO_SEEDS seeds, a fifth of it crash-only, four times it short)"
cargo test --workspace --release

step "benches (test mode)"
# The whole workspace, so features unify as in the step above and no dependency is rebuilt.
cargo test --workspace --benches --release

step "fuzzing (${FUZZ_SECONDS:-15} s per target; stable mirrors when nightly is missing)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

step "official SDK conformance (Python gRPC, Node HTTP, Rust gRPC)"
NACELLE_BIN="$PWD/target/release/nacelle" bash tests/sdk/run.sh nacelle

step "official SDKs against a 3-node cluster (suites on node 2; test_cluster.py writes on one node, reads on the others)"
NACELLE_BIN="$PWD/target/release/nacelle" bash tests/sdk/run.sh nacelle-cluster

step "official SDKs with --auth (Python gRPC, Node HTTP, Rust gRPC: good credentials, none, wrong password, forged/expired token, outside permissions)"
NACELLE_BIN="$PWD/target/release/nacelle" bash tests/sdk/auth.sh

step "the web console in a real browser (Debian's chromium headless via playwright-core: 3 nodes, 2,000 services; search, edit, push to an SDK subscriber, a killed node DOWN)"
NACELLE_BIN="$PWD/target/release/nacelle" bash tests/console/run.sh

# Every fault scenario of perf/chaos, with shorter faults (--quick: about 3.5 min for the
# ephemeral ones, 1 min for the persistent (Raft) ones). Needs root for network namespaces;
# where that is impossible chaos.py exits 2 and this says so.
step "fault injection: 3 nodes in network namespaces (perf/chaos --quick: partition, one-way partition, isolation, kill -9, kill during load, SIGSTOP, rolling restart, loss, delay/reorder/dup; persistent instances: leader kill -9, leader isolated, every node kill -9, peer loss)"
chaos_rc=0
python3 perf/chaos/chaos.py --quick partition asymmetric isolate kill kill-during-load pause \
  rolling-restart loss delay-reorder-dup persistent --out "${TMPDIR:-/tmp}/nacelle-chaos-ci.json" || chaos_rc=$?
if [ "$chaos_rc" -eq 2 ]; then
  echo "!!!! FAULT-INJECTION SCENARIOS NOT RUN: this machine cannot run them (reason above) !!!!" >&2
elif [ "$chaos_rc" -ne 0 ]; then
  exit "$chaos_rc"
fi

printf '\nall tests passed in %ss\n' "$((SECONDS - started))"
