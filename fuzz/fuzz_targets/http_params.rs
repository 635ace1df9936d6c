//! Fuzzes what the HTTP OpenAPI decodes from a client: the query string and form body
//! (input `query\nbody`) and the v1/v2 instance and service parameter validation. The
//! properties live in `nacelle_wire::fuzzing::http_params` (shared with the stable mirror
//! `wire/tests/fuzz.rs`); seeds in `corpus/http_params/` are SDK and curl requests.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wire::fuzzing::http_params(data));
