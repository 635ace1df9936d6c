//! Fuzzes the UDP push datagrams: the bytes as an ack reaching the push socket (anyone can
//! send one) and as a push reaching a client (gzip sniffing and inflation). The property
//! lives in `nacelle_wire::udp_push::fuzz_property` (shared with the stable mirror
//! `wire/tests/fuzz_udp_push.rs`); seeds in `corpus/udp_ack/` are acks of each SDK and pushes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wire::udp_push::fuzz_property(data));
