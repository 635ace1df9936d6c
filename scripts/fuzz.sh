#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a time budget each, starting from its corpus
# (fuzz/corpus/<target>/), and fails on the first crash (the input lands in
# fuzz/artifacts/<target>/). Prints the executions of each target.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]     # default 20; fuzz/README.md: 600 for a real run
#
# Needs `cargo +nightly`; installs cargo-fuzz (`cargo install --locked cargo-fuzz`) when it is
# missing. Without nightly it says so and runs the stable mirrors of the targets instead
# (seeded mutations through the same properties, `cargo test -p nacelle-wire`), which check
# far less.
#
# Environment: FUZZ_TARGETS="a b" to run only those; FUZZ_MAX_LEN (default 65536) caps input
# size; FUZZ_TARGET_DIR builds somewhere else than fuzz/target. The fuzz crate builds wire
# without its `grpc` feature (no tonic/tokio/hyper), which keeps a cold build to a few minutes.
# FUZZ_SANITIZER (default address, cargo-fuzz's -s) picks the sanitizer: `none` builds from cold
# about 3 times faster (fuzz/README.md) and runs faster, but no longer catches memory errors in
# unsafe code (the flatbuffers accessors behind the peer verifier).
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-20}"
[[ "$budget" =~ ^[0-9]+$ && "$budget" -gt 0 ]] || {
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    cat >&2 <<'EOF'

!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  NO NIGHTLY TOOLCHAIN: the cargo-fuzz targets are NOT run.                                !!
!!  Running their stable mirrors instead (seeded mutations, far weaker than libFuzzer).       !!
!!  Install nightly for the real thing: rustup toolchain install nightly                     !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!

EOF
    exec cargo test --release -p nacelle-wire --test fuzz --test peer --test fuzz_udp_push --test raft --test fuzz_auth
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it (cargo install --locked cargo-fuzz)"
    install_started=$SECONDS
    cargo install --locked cargo-fuzz
    echo "installed cargo-fuzz in $((SECONDS - install_started))s"
fi

cd fuzz
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
started=$SECONDS
echo "building fuzz targets: $(echo $targets)"
# Build and run with the same options, or `fuzz run` builds again.
dir_args=(--sanitizer "${FUZZ_SANITIZER:-address}")
[ -n "${FUZZ_TARGET_DIR:-}" ] && dir_args+=(--target-dir "$FUZZ_TARGET_DIR")
echo "sanitizer: ${FUZZ_SANITIZER:-address}"
cargo +nightly fuzz build "${dir_args[@]}"
echo "built in $((SECONDS - started))s"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0
# One libFuzzer process is one thread: run as many targets at a time as there are CPUs
# (FUZZ_JOBS overrides), each for the whole budget, then report them in order.
jobs="${FUZZ_JOBS:-$(nproc)}"
run_target() {
    local t="$1"
    mkdir -p "corpus/$t"
    # -print_final_stats prints stat::number_of_executed_units at the end.
    if cargo +nightly fuzz run "${dir_args[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$budget" -max_len="${FUZZ_MAX_LEN:-65536}" \
        -print_final_stats=1 >"$logs/$t.log" 2>&1; then
        echo ok >"$logs/$t.status"
    else
        echo FAILED >"$logs/$t.status"
    fi
}
running=0
for t in $targets; do
    echo "---- $t: ${budget}s"
    run_target "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait
for t in $targets; do
    log="$logs/$t.log"
    status="$(cat "$logs/$t.status" 2>/dev/null || echo FAILED)"
    if [ "$status" != ok ]; then
        failed=1
        # The crash report: the panic, the input's path and how to replay it.
        grep -v '^#[0-9]' "$log" | tail -n 60
    fi
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    cov="$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')"
    line="$t: $status, ${execs:-?} executions in ${budget}s (coverage ${cov:-?})"
    echo "$line"
    summary+=("$line")
done

echo
echo "==== fuzz summary ($((SECONDS - started))s including the build)"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "a fuzz target crashed: see fuzz/artifacts/ and fuzz/README.md to replay it" >&2
    exit 1
fi
