#!/usr/bin/env bash
# Regenerates wire/src/generated/_.rs from schemas/nacos_grpc_service.proto (needs protoc) and
# fails if the checked-in file differs. Usage: wire/regen.sh [--write]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/gen/src" "$tmp/out"
cat > "$tmp/gen/Cargo.toml" <<'TOML'
[package]
name = "nacelle-wire-gen"
version = "0.0.0"
edition = "2021"
[dependencies]
tonic-prost-build = "0.14"
[workspace]
TOML
cat > "$tmp/gen/src/main.rs" <<'RS'
fn main() {
    let mut args = std::env::args().skip(1);
    let (schemas, out) = (args.next().expect("schemas dir"), args.next().expect("out dir"));
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(&out)
        .compile_protos(&[format!("{schemas}/nacos_grpc_service.proto")], &[schemas])
        .expect("protoc failed");
}
RS
CARGO_TARGET_DIR="$root/target/wire-gen" cargo run -q --manifest-path "$tmp/gen/Cargo.toml" -- "$root/schemas" "$tmp/out"
if [ "${1:-}" = "--write" ]; then cp "$tmp/out/_.rs" "$root/wire/src/generated/_.rs"; echo "written"; exit 0; fi
diff -u "$root/wire/src/generated/_.rs" "$tmp/out/_.rs" && echo "generated code is up to date"
