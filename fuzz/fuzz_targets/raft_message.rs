//! Fuzzes the decoder of the CP store's Raft messages (`wire::raft`, the payload of a peer
//! `Frame::Raft`) with bytes a broken or hostile member could send: never a panic, and a
//! message that decodes re-encodes to the same message (`wire::raft::fuzz_property`).
//! Seeds: `wire::raft::seeds()` (written to `corpus/raft_message/` by
//! `cargo run --release -p nacelle-wire --example fuzz_corpus`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wire::raft::fuzz_property(data);
    // The same bytes inside a peer frame, as they arrive.
    if let Ok(wire::peer::Frame::Raft { payload }) = wire::peer::decode_frame(data) {
        wire::raft::fuzz_property(&payload);
    }
});
