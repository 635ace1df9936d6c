//! Fuzzes the node-to-node decoder with bytes a hostile peer could send.
//!
//! The input is tried as one frame body and as a stream of length-prefixed frames (the form of
//! the seeds in `corpus/peer_frame/`), split by the `FrameReader` the peer transport uses, fed
//! whole and in pieces (`wire::fuzzing::peer_stream`: the same bodies however the stream is
//! cut). Beyond "never panics", it checks what a decoded frame promises: re-encoding it gives a
//! frame that decodes to the same value (every value that got through is valid), and
//! `peek_partition` routes it where the decoder says it belongs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::peer::{decode_frame, encode_frame, peek_partition, Frame, LENGTH_PREFIX};

fn check(body: &[u8]) {
    let peeked = peek_partition(body);
    let Ok(frame) = decode_frame(body) else {
        return;
    };
    match &frame {
        Frame::Partition { partition, .. } => assert_eq!(peeked, Some(*partition)),
        _ => assert_eq!(peeked, None),
    }
    let mut out = Vec::new();
    encode_frame(&frame, &mut out);
    let again = decode_frame(&out[LENGTH_PREFIX..]).expect("a decoded frame re-encodes validly");
    // `ClientOp` has no `PartialEq`; `Debug` shows every field.
    assert_eq!(format!("{frame:?}"), format!("{again:?}"));
}

fuzz_target!(|data: &[u8]| {
    check(data);
    for body in wire::fuzzing::peer_stream(data, 1 << 20) {
        check(&body);
    }
});
