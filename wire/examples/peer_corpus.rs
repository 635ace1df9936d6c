//! Writes the seed corpus of the `peer_frame` fuzz target: a few encoded frames of every
//! kind, each file a stream of length-prefixed frames as a connection carries them.
//!
//! `cargo run --release -p nacelle-wire --example peer_corpus [DIR]`
//! (default `fuzz/corpus/peer_frame`). Seeds are named `seed-*`; the fuzzer adds its own
//! finds beside them under hash names.

#[path = "../tests/peer_samples/mod.rs"]
mod peer_samples;

use std::path::PathBuf;

use nacelle_wire::peer::{Encoder, Frame};

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/peer_frame"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let mut enc = Encoder::new();
    let mut written = 0;
    let mut all = Vec::new();
    for (i, frame) in peer_samples::all_frames().iter().enumerate() {
        let mut out = Vec::new();
        enc.encode_frame(frame, &mut out);
        // Small seeds mutate faster; the big batches add nothing the small ones lack.
        if out.len() > 4_096 {
            continue;
        }
        all.extend_from_slice(&out);
        let kind = match frame {
            Frame::Hello { .. } => "hello",
            Frame::Partition { .. } => "partition",
            Frame::Forward { .. } => "forward",
            Frame::RelayedBeat { .. } => "relayed-beat",
            Frame::ForwardReply { .. } => "reply",
            Frame::Reachable { .. } => "reachable",
            Frame::Raft { .. } => "raft",
        };
        std::fs::write(dir.join(format!("seed-{i:02}-{kind}.bin")), &out)?;
        written += 1;
    }
    std::fs::write(dir.join("seed-stream.bin"), &all)?;
    println!("wrote {} seeds to {}", written + 1, dir.display());
    Ok(())
}
