//! Fuzzes what the gRPC port decodes from a client: the protobuf `Payload` envelope and its JSON
//! body, dispatched by `metadata.type` into every request type the server serves. The
//! properties live in `nacelle_wire::fuzzing::grpc_payload` (shared with the stable mirror
//! `wire/tests/fuzz.rs`); seeds in `corpus/grpc_payload/` are SDK requests. The same bytes
//! also go through the unary call's framing (`grpc_unary_body`), as the whole HTTP/2 body.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wire::fuzzing::grpc_payload(data);
    wire::fuzzing::grpc_unary_body(data);
});
