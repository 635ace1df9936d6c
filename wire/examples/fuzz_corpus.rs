//! Writes the seed corpora of the `grpc_payload`, `http_params` and `udp_ack` fuzz targets from
//! `nacelle_wire::fuzzing::seeds` (requests as the official SDKs send them) and
//! `nacelle_wire::udp_push::fuzz_seeds`, and of `raft_message` from `nacelle_wire::raft::seeds`
//! (one message of each kind).
//!
//! `cargo run --release -p nacelle-wire --example fuzz_corpus [DIR]` (default `fuzz/corpus`),
//! one `seed-NN-<name>.bin` per request under `<DIR>/<target>/`. `wire/tests/fuzz.rs` checks
//! that the checked-in seeds are what this writes.

use std::path::PathBuf;

use nacelle_wire::fuzzing::seeds;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"),
        PathBuf::from,
    );
    for (target, list) in [
        ("grpc_payload", seeds::grpc_payload()),
        ("http_params", seeds::http_params()),
        ("raft_message", nacelle_wire::raft::seeds()),
        ("udp_ack", nacelle_wire::udp_push::fuzz_seeds()),
    ] {
        let dir = dir.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, (name, bytes)) in list.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}-{name}.bin")), bytes)?;
        }
        println!("{} seeds in {}", list.len(), dir.canonicalize()?.display());
    }
    Ok(())
}
